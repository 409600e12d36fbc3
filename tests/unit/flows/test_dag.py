"""The DAG keys of flows.yaml: needs, for_each, max_parallel, if, run_if, policies — and
``conveyor validate``'s one line per problem (file:line: path: message)."""

from __future__ import annotations

import textwrap

import pytest

from shared.flows.dag import Graph
from shared.flows.loader import FlowsFileError, json_schema, load_flows_text

DAG = textwrap.dedent(
    """\
    version: 1
    flows:
      many:
        triggers: [{kind: manual}]
        policies: {on_failure: continue, max_items: 500}
        model: {name: sales, metric: r2}
        steps:
          - name: etl
            kind: databricks
            params: {python_file: etl.py}
          - name: train
            kind: azureml
            needs: [etl]
            for_each: "${steps.etl.outputs.result.partitions}"
            max_parallel: 4
            params:
              pipeline: p.yml
              inputs: {gold: "${item.path}", n: "${index}"}
          - name: quality
            kind: batch
            needs: [etl]
            params: {command: "check {input}", inputs: "${steps.etl.outputs.result.gold}"}
          - name: register
            kind: register
            needs: [train, quality]
            for_each: "${steps.train.outputs}"
            params: {model_name: "sales-${item.partition}", model_uri: "${item.model_uri}"}
          - name: notify
            kind: batch
            needs: [register]
            if: "${steps.quality.outputs.result.bad_rows} == 0 and ${run.trigger_kind} != 'manual'"
            run_if: always
            params: {command: "notify", inputs: "x/y"}
    """
)


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def problems(text: str) -> FlowsFileError:
    with pytest.raises(FlowsFileError) as info:
        load_flows_text(text)
    return info.value


def test_the_issue_s_syntax_loads() -> None:
    flow = load_flows_text(DAG).flows["many"]
    train, register, notify = flow.step("train"), flow.step("register"), flow.step("notify")
    assert train.needs == ["etl"] and train.for_each == "${steps.etl.outputs.result.partitions}"
    assert train.max_parallel == 4 and register.needs == ["train", "quality"]
    assert notify.run_if == "always" and notify.condition() is not None
    assert flow.policies.on_failure == "continue" and flow.policies.max_items == 500
    graph = flow.graph()
    assert graph.needs["quality"] == ("etl",) and graph.descendants("train") == {"register", "notify"}
    assert graph.ancestors("notify") == {"register", "train", "quality", "etl"}
    assert not graph.is_chain()


def test_steps_without_needs_are_a_chain_and_defaults_are_unchanged() -> None:
    text = DAG.replace("        needs: [etl]\n", "").replace("        needs: [train, quality]\n", "")
    text = text.replace("        needs: [register]\n", "")
    flow = load_flows_text(text).flows["many"]
    assert flow.graph().is_chain()
    assert flow.graph().needs["register"] == ("quality",)
    plain = load_flows_text(DAG.replace("    policies: {on_failure: continue, max_items: 500}\n", "")).flows["many"]
    assert plain.policies.on_failure == "fail_fast" and plain.policies.max_items == 10_000
    assert plain.step("etl").run_if == "all_succeeded" and plain.step("etl").if_ is None


def test_needs_may_point_forward_and_roots_say_so() -> None:
    text = DAG.replace("        needs: [etl]\n        for_each", "        needs: [quality]\n        for_each", 1)
    flow = load_flows_text(text).flows["many"]
    assert flow.graph().needs["train"] == ("quality",)
    # needs: [] makes a root, which then sees no other step's outputs
    err = problems(DAG.replace("        needs: [register]\n", "        needs: []\n"))
    assert [i.message for i in err.issues] == [
        "references steps.quality which is not upstream of this step (add it to needs)"
    ]
    assert Graph.of([{"name": "a"}, {"name": "b", "needs": []}]).needs["b"] == ()


@pytest.mark.parametrize(
    ("change", "path", "needle", "at"),
    [
        (("needs: [train, quality]", "needs: [train, ghost]"), "steps[3].needs[1]", "unknown step 'ghost'", "ghost"),
        (
            ("needs: [train, quality]", "needs: [train, register]"),
            "steps[3].needs[1]",
            "cannot need itself",
            "[train, register]",
        ),
        (
            ("needs: [train, quality]", "needs: [train, train]"),
            "steps[3].needs[1]",
            "'train' is listed twice",
            "[train, train]",
        ),
        (
            ("needs: [etl]\n        for_each", "needs: [notify]\n        for_each"),
            "steps[1].needs",
            "cycle: train -> notify -> register -> train",
            "needs: [notify]",
        ),
        (('"${item.path}"', '"${steps.quality.outputs.gold}"'), "steps[1].params.inputs.gold", "not upstream", "gold:"),
        (("check {input}", "check ${item}"), "steps[2].params.command", "only defined in a for_each step", "check"),
        (('if: "${steps', 'if: "${item} == 1 and ${steps'), "steps[4].if", "not defined in the if condition", "if:"),
        (("!= 'manual'\"", "!= 'manual' and\""), "steps[4].if", "bad expression", "if:"),
        (
            ("!= 'manual'\"", '== ${steps.train.outputs.0.x}"'),
            "steps[4].if",
            "cannot read its instances' outputs",
            "if:",
        ),
        (
            ('model_uri: "${item.model_uri}"', 'model_uri: "${steps.train.outputs.model_uri}"'),
            "steps[3].params.model_uri",
            "its outputs are a list",
            "model_uri",
        ),
        (("max_parallel: 4", "max_parallel: 0"), "steps[1].max_parallel", "greater than or equal to 1", "max_parallel"),
        (
            ("run_if: always", "run_if: sometimes"),
            "steps[4].run_if",
            "'all_succeeded', 'always' or 'any_failed'",
            "run_if",
        ),
        (("on_failure: continue", "on_failure: panic"), "policies.on_failure", "'fail_fast' or 'continue'", "policies"),
        (
            ('"${steps.etl.outputs.result.partitions}"', '"partitions: ${steps.etl.outputs.result.partitions}"'),
            "steps[1].for_each",
            "one ${...} reference",
            "for_each",
        ),
        (
            ('inputs: "${steps.etl.outputs.result.gold}"}', 'inputs: "x"}\n        max_parallel: 2'),
            "steps[2].max_parallel",
            "only a for_each step",
            "max_parallel: 2",
        ),
    ],
)
def test_each_problem_is_one_line_with_its_line_and_path(
    change: tuple[str, str], path: str, needle: str, at: str
) -> None:
    text = DAG.replace(*change)
    assert text != DAG
    err = problems(text)
    matches = [i for i in err.issues if i.path == f"flows.many.{path}"]
    assert matches, str(err)
    issue = matches[0]
    assert needle in issue.message, str(err)
    assert issue.line == line_of(text, at)
    assert "\n" not in issue.format()
    assert issue.format().startswith(f"flows.yaml:{issue.line}: flows.many.{path}: ")


def test_graph_problems_are_reported_alongside_field_errors() -> None:
    text = DAG.replace("needs: [train, quality]", "needs: [train, ghost]").replace(
        "max_parallel: 4", "max_parallel: -1"
    )
    err = problems(text)
    assert {"flows.many.steps[3].needs[1]", "flows.many.steps[1].max_parallel"} <= {i.path for i in err.issues}


def test_chains_keep_their_message_for_later_steps() -> None:
    text = textwrap.dedent(
        """\
        flows:
          f:
            triggers: [{kind: manual}]
            steps:
              - {name: a, kind: databricks, params: {python_file: "${steps.b.outputs.x}"}}
              - {name: b, kind: databricks, params: {python_file: b.py}}
        """
    )
    (issue,) = problems(text).issues
    assert issue.message == "references steps.b which is not an earlier step"


def test_json_schema_knows_the_new_keys() -> None:
    import jsonschema
    import yaml

    schema = json_schema()
    jsonschema.validate(yaml.safe_load(DAG), schema)
    bad = yaml.safe_load(DAG.replace("run_if: always", "run_if: never"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_graph_edges_in_file_order() -> None:
    graph = Graph.of([{"name": "a"}, {"name": "b", "needs": []}, {"name": "c", "needs": ["a", "b"]}])
    assert graph.edges() == [("a", "c"), ("b", "c")]
    assert graph.dependants["a"] == ("c",)
