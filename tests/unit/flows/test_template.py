"""${...} templating of step params."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.engine.model import TriggerContext
from shared.errors import ValidationError
from shared.flows.template import TemplateError, references, render


def make_scope() -> dict[str, Any]:
    trigger = TriggerContext(
        kind="blob",
        blob={
            "url": "http://127.0.0.1:10000/devstoreaccount1/landing/sales/2024-05-01.csv",
            "container": "landing",
            "name": "sales/2024-05-01.csv",
            "etag": "0x8DC1",
            "size": 2048,
        },
        params={"retries": 3, "threshold": 0.25, "dry_run": False, "note": None},
    )
    return {
        "trigger": trigger.template_scope(),
        "steps": {
            "split": {
                "outputs": {"files": ["a.parquet", "b.parquet"], "count": 2, "stats": {"rows": 10}},
                "remote_id": "job-1",
                "state": "succeeded",
            },
            "train": {
                "outputs": {"model_uri": "runs:/abc/model", "metrics": {"r2": 0.91}},
                "remote_id": "run-7",
                "state": "succeeded",
            },
        },
        "run": {"id": "r123", "flow": "retrain", "created_at": datetime(2024, 5, 1, 12, tzinfo=UTC)},
        "flow": {"name": "retrain", "model": {"name": "sales-model", "metric": "r2"}},
    }


def test_lone_reference_keeps_the_value_type() -> None:
    scope = make_scope()
    assert render("${trigger.params.retries}", scope) == 3
    assert render("${trigger.params.threshold}", scope) == 0.25
    assert render("${trigger.params.dry_run}", scope) is False
    assert render("${trigger.params.note}", scope) is None
    assert render("${steps.train.outputs.metrics}", scope) == {"r2": 0.91}
    assert render("${steps.split.outputs.files}", scope) == ["a.parquet", "b.parquet"]
    assert render("${trigger.blob.size}", scope) == 2048


def test_lone_reference_is_a_copy_not_an_alias() -> None:
    scope = make_scope()
    got = render("${steps.train.outputs.metrics}", scope)
    got["r2"] = 0
    assert scope["steps"]["train"]["outputs"]["metrics"] == {"r2": 0.91}


def test_embedded_references_become_text() -> None:
    scope = make_scope()
    assert render("--model ${steps.train.outputs.model_uri} --n ${steps.split.outputs.count}", scope) == (
        "--model runs:/abc/model --n 2"
    )
    assert render("m=${steps.train.outputs.metrics}", scope) == 'm={"r2":0.91}'
    assert render("f=${steps.split.outputs.files}", scope) == 'f=["a.parquet","b.parquet"]'
    assert json.loads(render("${steps.split.outputs.stats} ", scope).strip()) == {"rows": 10}
    assert render("note=[${trigger.params.note}]", scope) == "note=[]"
    assert render("at ${run.created_at}", scope) == "at 2024-05-01T12:00:00+00:00"
    assert render("${run.flow}-${run.id}", scope) == "retrain-r123"


def test_list_indices_by_dot_or_bracket() -> None:
    scope = make_scope()
    assert render("${steps.split.outputs.files.1}", scope) == "b.parquet"
    assert render("${steps.split.outputs.files[0]}", scope) == "a.parquet"


def test_escape_renders_a_literal_dollar_brace() -> None:
    scope = make_scope()
    assert render("echo $${HOME}", scope) == "echo ${HOME}"
    assert render("$${run.id}=${run.id}", scope) == "${run.id}=r123"
    assert render("$${", scope) == "${"
    assert render("cost: $5 {not a ref}", scope) == "cost: $5 {not a ref}"


def test_render_walks_dicts_and_lists_without_mutating_input() -> None:
    scope = make_scope()
    params = {
        "command": "python score.py --in {input} --model ${steps.train.outputs.model_uri}",
        "inputs": ["${trigger.blob.url}", "${steps.split.outputs.files.0}"],
        "max_task_retries": "${trigger.params.retries}",
        "nested": {"tags": {"source_etag": "${trigger.blob.etag}"}, "untouched": 5},
        "flag": True,
    }
    before = copy.deepcopy(params)
    got = render(params, scope)
    assert params == before
    assert got == {
        "command": "python score.py --in {input} --model runs:/abc/model",
        "inputs": [scope["trigger"]["blob"]["url"], "a.parquet"],
        "max_task_retries": 3,
        "nested": {"tags": {"source_etag": "0x8DC1"}, "untouched": 5},
        "flag": True,
    }


@pytest.mark.parametrize(
    ("params", "field", "fragments"),
    [
        (
            {"inputs": ["${trigger.blob.uri}"]},
            "params.inputs[0]",
            ["${trigger.blob.uri}", "no 'uri' in trigger.blob", "url"],
        ),
        (
            {"command": "run ${steps.trian.outputs.model_uri}"},
            "params.command",
            ["${steps.trian.outputs.model_uri}", "no 'trian' in steps", "known: split, train"],
        ),
        ({"tags": {"a b": "${steps.split.outputs.files.5}"}}, 'params.tags["a b"]', ["no '5'", "list of 2"]),
        ({"x": "${steps.split.outputs.count.value}"}, "params.x", ["it is a value of type int, not a mapping"]),
        ({"x": "${nope}"}, "params.x", ["no 'nope' in the scope", "known: flow, run, steps, trigger"]),
    ],
)
def test_unknown_reference_names_field_and_known_keys(params: dict[str, Any], field: str, fragments: list[str]) -> None:
    with pytest.raises(TemplateError) as info:
        render(params, make_scope())
    err = info.value
    assert isinstance(err, ValidationError)
    assert err.field == field
    assert str(err).startswith(f"{field}: ")
    for fragment in fragments:
        assert fragment in err.message


def test_field_prefix_is_configurable() -> None:
    with pytest.raises(TemplateError) as info:
        render(["${run.missing}"], make_scope(), field="steps[2].params")
    assert info.value.field == "steps[2].params[0]"
    assert info.value.reference == "run.missing"


@pytest.mark.parametrize("text", ["${run.id", "a ${ b", "${}", "${a..b}", "${a b}"])
def test_malformed_references_are_errors(text: str) -> None:
    with pytest.raises(TemplateError):
        render({"x": text}, make_scope())
    with pytest.raises(TemplateError):
        references(text)


def test_non_strings_pass_through() -> None:
    assert render(5, {}) == 5
    assert render(None, {}) is None
    assert render({"a": [1, 2.5, False]}, {}) == {"a": [1, 2.5, False]}


def test_references_collects_normalised_paths() -> None:
    params = {
        "command": "x ${steps.train.outputs.model_uri} $${steps.later.outputs.y}",
        "inputs": ["${trigger.blob.url}", "${steps.split.outputs.files[1]}"],
        "n": 3,
    }
    assert references(params) == {"steps.train.outputs.model_uri", "trigger.blob.url", "steps.split.outputs.files.1"}
    assert references("plain") == set()
