"""Loading flows.yaml: a realistic file, and errors with paths and line numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from shared.errors import NotFoundError, ValidationError
from shared.flows.loader import FlowIssue, FlowsFileError, get_flow, json_schema, load_flows, load_flows_text
from shared.flows.model import (
    AzureDevOpsTrigger,
    AzureMLStep,
    BatchStep,
    BlobTrigger,
    DatabricksStep,
    DeployStep,
    Flow,
    ManualTrigger,
    RegisterStep,
    ScheduleTrigger,
)

EXAMPLE = textwrap.dedent(
    """\
    version: 1
    flows:
      retrain:
        description: Score every sales drop, retrain on it, ship the model if it wins.
        triggers:
          - kind: blob
            container: landing
            prefix: sales/
            suffix: .csv
            settle_seconds: 30
          - kind: schedule
            cron: "0 30 2 * * Mon-Fri"
            timezone: Europe/Amsterdam
          - kind: azure_devops
            events: [git.push]
            repository: conveyor-models
            branch: main
          - kind: manual
        steps:
          - name: split
            kind: batch
            params:
              command: python split.py --in {input} --out {output_dir}
              inputs: ${trigger.blob.url}
              resource_files: [http://127.0.0.1:10000/devstoreaccount1/apps/split.py]
              max_task_retries: 2
            retries: {count: 3, backoff_seconds: 10, on: any}
            timeout_seconds: 1800
          - name: features
            kind: databricks
            params:
              python_file: samples/databricks/features.py
              parameters: ["--input", "${steps.split.outputs.output_prefix}", "--literal", "$${not_a_ref}"]
          - name: train
            kind: azureml
            params:
              pipeline: samples/azureml/train.yaml
              experiment: sales
              inputs:
                features: ${steps.features.outputs.result.table_uri}
            poll: {initial_seconds: 5, max_seconds: 120}
          - name: register
            kind: register
            params:
              model_uri: ${steps.train.outputs.model_uri}
              metrics: {r2: "${steps.train.outputs.metrics.r2}"}
              tags: {source_etag: "${trigger.blob.etag}", run: "${run.id}"}
          - name: deploy
            kind: deploy
        policies:
          max_concurrent_runs: 2
        model:
          name: sales-forecast
          metric: r2
          direction: maximize
          min_improvement: 0.01
      nightly-report:
        triggers:
          - kind: schedule
            cron: "0 0 6 * * *"
        steps:
          - name: report
            kind: batch
            params:
              command: python report.py
              inputs: [reports/config.json]
    """
)


def line_of(text: str, needle: str, nth: int = 0) -> int:
    """1-based line of the ``nth`` line containing ``needle`` (so tests do not hard-code lines)."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) > nth, f"{needle!r} not in the test text"
    return hits[nth]


def errors_of(text: str, filename: str = "flows.yaml") -> FlowsFileError:
    with pytest.raises(FlowsFileError) as info:
        load_flows_text(text, filename)
    return info.value


def find(err: FlowsFileError, path: str) -> FlowIssue:
    matches = [i for i in err.issues if i.path == path]
    assert matches, f"no issue at {path}; got:\n{err}"
    return matches[0]


# ---------------------------------------------------------------- a valid file


def test_realistic_file_loads() -> None:
    flows = load_flows_text(EXAMPLE)
    assert set(flows.flows) == {"retrain", "nightly-report"}
    flow = get_flow(flows, "retrain")
    assert [type(t).__name__ for t in flow.triggers] == [
        c.__name__ for c in (BlobTrigger, ScheduleTrigger, AzureDevOpsTrigger, ManualTrigger)
    ]
    assert [type(s).__name__ for s in flow.steps] == [
        c.__name__ for c in (BatchStep, DatabricksStep, AzureMLStep, RegisterStep, DeployStep)
    ]
    blob = flow.triggers[0]
    assert isinstance(blob, BlobTrigger) and blob.matches("landing", "sales/2024-05-01.csv")
    split = flow.steps[0]
    assert isinstance(split, BatchStep)
    assert split.params.inputs == "${trigger.blob.url}"
    # YAML 1.2 booleans: ``on: any`` is the key "on", not True.
    assert split.retries.on == "any" and split.retries.count == 3
    deploy = flow.steps[4]
    assert isinstance(deploy, DeployStep) and deploy.params.version == "${steps.register.outputs.version}"
    assert flow.model is not None and flow.model.name == "sales-forecast"
    assert flow.policies.max_concurrent_runs == 2


def test_load_flows_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert load_flows(path) == load_flows_text(EXAMPLE)
    assert load_flows(str(path)).flows.keys() == {"retrain", "nightly-report"}


def test_get_flow_unknown_lists_known_names() -> None:
    flows = load_flows_text(EXAMPLE)
    with pytest.raises(NotFoundError, match=r"unknown flow 'nope'; known: nightly-report, retrain"):
        get_flow(flows, "nope")


def test_yaml_yes_no_stay_strings() -> None:
    text = EXAMPLE.replace("branch: main", "branch: no")
    trigger = load_flows_text(text).flows["retrain"].triggers[2]
    assert isinstance(trigger, AzureDevOpsTrigger) and trigger.branch == "no"


# ---------------------------------------------------------------- errors


def test_many_errors_at_once_each_with_path_and_line() -> None:
    text = (
        EXAMPLE.replace("container: landing", "container: Landing_Zone")
        .replace('cron: "0 30 2 * * Mon-Fri"', 'cron: "0 61 2 * * Mon-Fri"')
        .replace("timezone: Europe/Amsterdam", "timezone: Mars/Olympus")
        .replace("command: python split.py --in {input} --out {output_dir}", "comand: python split.py")
        .replace("experiment: sales", "experiment: sales\n          colour: blue")
        .replace("max_concurrent_runs: 2", "max_concurrent_runs: 0")
    )
    err = errors_of(text)
    assert isinstance(err, ValidationError)
    expected = {
        "flows.retrain.triggers[0].container": line_of(text, "container: Landing_Zone"),
        "flows.retrain.triggers[1].cron": line_of(text, "cron: "),
        "flows.retrain.triggers[1].timezone": line_of(text, "timezone: Mars"),
        "flows.retrain.steps[0].params.command": line_of(text, "params:"),  # missing: the params key
        "flows.retrain.steps[0].params.comand": line_of(text, "comand:"),
        "flows.retrain.steps[2].params.colour": line_of(text, "colour: blue"),
        "flows.retrain.policies.max_concurrent_runs": line_of(text, "max_concurrent_runs"),
    }
    got = {i.path: i.line for i in err.issues}
    assert got == expected, str(err)
    assert "minute: 61 is out of range 0-59" in find(err, "flows.retrain.triggers[1].cron").message
    assert "unknown time zone 'Mars/Olympus'" in find(err, "flows.retrain.triggers[1].timezone").message
    assert find(err, "flows.retrain.steps[0].params.command").message == "field required"
    assert "unknown field" in find(err, "flows.retrain.steps[0].params.comand").message
    assert "(got 0)" in find(err, "flows.retrain.policies.max_concurrent_runs").message
    # sorted by line, and one report line per issue, in the editor's file:line form
    lines = [i.line or 0 for i in err.issues]
    assert lines == sorted(lines)
    report = str(err).splitlines()
    assert len(report) == len(err.issues)
    assert report[0] == err.issues[0].format("flows.yaml")
    assert all(r.startswith(f"flows.yaml:{i.line}: {i.path}: ") for r, i in zip(report, err.issues, strict=True))
    # union tags such as 'batch' / 'blob' never leak into the paths
    assert not any(tag in i.path.split(".") for i in err.issues for tag in ("batch", "blob", "schedule", "azureml"))


def test_yaml_syntax_error_reports_its_line() -> None:
    text = EXAMPLE.replace("      - name: train\n", "      - name: train\n        params: [unclosed\n", 1)
    err = errors_of(text)
    assert len(err.issues) == 1
    issue = err.issues[0]
    assert issue.message.startswith("YAML syntax error")
    assert issue.line is not None
    assert line_of(text, "params: [unclosed") <= issue.line <= line_of(text, "name: register")
    assert str(err).startswith(f"flows.yaml:{issue.line}: YAML syntax error")


def test_tab_indentation_is_a_syntax_error_with_line() -> None:
    text = "flows:\n  a:\n\ttriggers: []\n"
    err = errors_of(text)
    assert err.issues[0].line == 3


def test_unknown_step_kind() -> None:
    text = EXAMPLE.replace("kind: databricks", "kind: spark")
    err = errors_of(text)
    issue = find(err, "flows.retrain.steps[1].kind")
    assert issue.line == line_of(text, "kind: spark")
    assert "unknown step kind 'spark'" in issue.message and "databricks" in issue.message


def test_missing_kind_and_unknown_trigger_kind() -> None:
    text = EXAMPLE.replace("      - kind: manual\n", "      - kind: carrier-pigeon\n").replace(
        "      - name: deploy\n        kind: deploy\n", "      - name: deploy\n"
    )
    err = errors_of(text)
    assert "unknown trigger kind 'carrier-pigeon'" in find(err, "flows.retrain.triggers[3].kind").message
    issue = find(err, "flows.retrain.steps[4].kind")
    assert issue.message.startswith("missing 'kind'")
    assert issue.line == line_of(text, "- name: deploy")


def test_step_referencing_a_later_step_points_at_the_param() -> None:
    text = EXAMPLE.replace("${steps.split.outputs.output_prefix}", "${steps.train.outputs.features_uri}")
    err = errors_of(text)
    assert len(err.issues) == 1, str(err)
    issue = err.issues[0]
    assert issue.path == "flows.retrain.steps[1].params.parameters[1]"
    assert issue.message == "references steps.train which is not an earlier step"
    assert issue.line == line_of(text, "parameters: [")


def test_cross_step_problems_are_reported_alongside_field_errors() -> None:
    # The flow-level validator cannot run while a field is invalid; the loader still reports both.
    text = EXAMPLE.replace("${steps.split.outputs.output_prefix}", "${steps.train.outputs.features_uri}").replace(
        "max_task_retries: 2", "max_task_retries: 99"
    )
    err = errors_of(text)
    assert {i.path for i in err.issues} == {
        "flows.retrain.steps[0].params.max_task_retries",
        "flows.retrain.steps[1].params.parameters[1]",
    }


def test_escaped_reference_to_a_later_step_is_fine() -> None:
    text = EXAMPLE.replace("$${not_a_ref}", "$${steps.deploy.outputs.x}")
    assert load_flows_text(text).flows["retrain"].steps[1].params.parameters[3] == "$${steps.deploy.outputs.x}"  # type: ignore[union-attr]


def test_unknown_reference_root() -> None:
    text = EXAMPLE.replace('run: "${run.id}"', 'run: "${rnu.id}"')
    issue = find(errors_of(text), "flows.retrain.steps[3].params.tags.run")
    assert "unknown reference ${rnu.id}" in issue.message
    assert issue.line == line_of(text, "${rnu.id}")


def test_duplicate_step_names() -> None:
    text = EXAMPLE.replace("- name: features", "- name: split")
    err = errors_of(text)
    issue = find(err, "flows.retrain.steps[1].name")
    assert issue.message == "duplicate step name 'split'"
    assert issue.line == line_of(text, "- name: split", nth=1)


def test_duplicate_yaml_keys_are_reported() -> None:
    text = EXAMPLE.replace("  nightly-report:", "  retrain:")
    err = errors_of(text)
    issue = find(err, "flows.retrain")
    assert "duplicate key 'retrain'" in issue.message
    assert issue.line == line_of(text, "  retrain:", nth=1)
    assert f"first at line {line_of(text, '  retrain:')}" in issue.message


def test_bad_cron_and_bad_timezone_in_one_trigger() -> None:
    text = EXAMPLE.replace('cron: "0 0 6 * * *"', 'cron: "6 * * *"\n        timezone: Europe/Nowhere')
    err = errors_of(text)
    cron = find(err, "flows.nightly-report.triggers[0].cron")
    assert "6 fields" in cron.message and cron.line == line_of(text, 'cron: "6 * * *"')
    tz = find(err, "flows.nightly-report.triggers[0].timezone")
    assert "unknown time zone 'Europe/Nowhere'" in tz.message and tz.line == line_of(text, "Europe/Nowhere")


def test_five_field_cron_loads_like_functions_reads_it() -> None:
    flows = load_flows_text(EXAMPLE.replace('cron: "0 0 6 * * *"', 'cron: "0 6 * * *"'))
    trig = flows.flows["nightly-report"].triggers[0]
    assert isinstance(trig, ScheduleTrigger) and trig.cron == "0 6 * * *"


@pytest.mark.parametrize(
    ("replacement", "path", "fragment"),
    [
        # issue 6, observation 7: non-ASCII digits were accepted (int() reads them)
        ('cron: "\u0660 \u0660 \u0666 * * *"', "cron", "ASCII only"),
        ('cron: "0 0 \uff16 * * *"', "cron", "ASCII only"),
        # ...and a 6,000-character time zone printed a RecursionError traceback
        ('cron: "0 0 6 * * *"\n        timezone: "' + "A/" * 2999 + 'A"', "timezone", "5999 characters"),
        ('cron: "0 0 6 * * *"\n        timezone: "' + "B" * 6000 + '"', "timezone", "6000 characters"),
        ('cron: "0 0 6 * * *"\n        timezone: "../../etc/passwd"', "timezone", "expected an IANA name"),
    ],
)
def test_outside_cron_and_time_zone_values_are_one_line_errors(replacement: str, path: str, fragment: str) -> None:
    text = EXAMPLE.replace('cron: "0 0 6 * * *"', replacement)
    err = errors_of(text)
    issue = find(err, f"flows.nightly-report.triggers[0].{path}")
    assert fragment in issue.message
    line = str(err).splitlines()
    assert len(line) == 1 and len(line[0]) < 300  # FILE:LINE: path: message, no traceback, no 6,000 characters
    assert line[0].startswith(f"flows.yaml:{issue.line}: flows.nightly-report.triggers[0].{path}: ")


def test_bad_flow_name() -> None:
    text = EXAMPLE.replace("  nightly-report:", "  Nightly Report:")
    issue = find(errors_of(text), "flows['Nightly Report']")
    assert issue.message.startswith("invalid name") and issue.line == line_of(text, "Nightly Report")


def test_register_without_model_needs_model_name() -> None:
    text = EXAMPLE.split("    policies:")[0] + "    policies: {}\n"
    assert "model:" not in text
    issue = find(errors_of(text), "flows.retrain.steps[3]")
    assert "needs the flow's model" in issue.message
    assert issue.line == line_of(text, "- name: register")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "got a list"),
        ("flows: {}\n", "flows"),
        ("version: 2\nflows: {a: {triggers: [{kind: manual}], steps: [{name: s, kind: deploy}]}}\n", "version"),
    ],
)
def test_degenerate_files(text: str, fragment: str) -> None:
    err = errors_of(text)
    assert err.issues and fragment in str(err)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "flows.yaml"
    with pytest.raises(FlowsFileError) as info:
        load_flows(path)
    assert "file not found" in str(info.value) and str(path) in str(info.value)
    assert info.value.issues[0].line is None


def test_report_uses_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "my-flows.yaml"
    path.write_text(EXAMPLE.replace("kind: databricks", "kind: spark"), encoding="utf-8")
    with pytest.raises(FlowsFileError) as info:
        load_flows(path)
    assert str(info.value).startswith(f"{path}:")


def test_flow_model_validator_reports_every_problem_directly() -> None:
    data = yaml.safe_load(EXAMPLE.replace("on: any", '"on": any'))["flows"]["retrain"]
    data["steps"][1]["name"] = "split"
    data["steps"][2]["params"]["inputs"]["features"] = "${steps.deploy.outputs.x}"
    with pytest.raises(Exception) as info:  # pydantic.ValidationError
        Flow.model_validate(data)
    text = str(info.value)
    assert "steps[1].name: duplicate step name 'split'" in text
    assert "steps[2].params.inputs.features: references steps.deploy which is not an earlier step" in text


# ---------------------------------------------------------------- schema


def test_json_schema_accepts_the_example_and_rejects_a_bad_kind() -> None:
    schema = json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "Conveyor flows.yaml"
    data = yaml.safe_load(EXAMPLE.replace("on: any", '"on": any'))
    jsonschema.validate(data, schema)
    data["flows"]["retrain"]["steps"][0]["kind"] = "spark"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
