"""Untrusted input never becomes code where a template meets a command line.

Observation 1 of issue 6: blob names, manual params, DevOps branch names and step outputs
reached the shell through ``${...}`` (rendered raw, then re-templated by the ``{placeholder}``
stage), and placeholders written inside quotes broke the quoting. Here every such value goes
through the real path (HTTP route → ingest → queue → executor → the local batch, databricks
and azureml backends, which run real processes) and must arrive as exactly the argument it
was, with no file created by a payload. The Azure Batch command line is checked against the
Batch fake and then run the way a node runs it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.backends.azure_batch import AzureBatchBackend
from shared.backends.base import LaunchRequest
from shared.flows.loader import FlowsFileError, load_flows_text
from shared.host.runtime import LocalHost
from tests.conftest import REPO_ROOT, unique_suffix
from tests.functional.azure.batch.conftest import (  # noqa: F401  (fixtures of the Batch fake)
    MemoryBlobs,
    backend,
    batch_server,
    batch_tls,
    blobs,
    credential,
    fake,
    make_client,
)
from tests.functional.azure.batch.fake_batch import FakeBatchService
from tests.security.hostile_project import SecureHost

BLOB_NAMES = [
    "$(touch CANARY_B1).txt",
    "a;touch CANARY_B2;.txt",
    "`touch CANARY_B3`.txt",
    "x' ; touch CANARY_B4 ; echo '.txt",
    '" && touch CANARY_B5 && ".txt',
    "{output_dir}.txt",
    "{nosuch}.txt",
    "${run.id} $${HOME}.txt",
]
PARAMS: list[Any] = [
    "$(touch CANARY_P1)",
    "a\ntouch CANARY_P2\n",
    "`touch CANARY_P3`",
    "'; touch CANARY_P4; '",
    "{output_dir}",
    "{nosuch}",
    "${steps.echo.outputs.job_id}",
    ["a b", "$(touch CANARY_P5)"],
    7,
]
BRANCHES = [
    "refs/heads/x$(touch${IFS}CANARY_D1)",
    "refs/heads/y;touch${IFS}CANARY_D2",
    "refs/heads/`touch${IFS}CANARY_D3`",
]


def flows(container: str, out: str) -> str:
    return f"""\
        version: 1
        flows:
          blob-args:
            triggers:
              - {{kind: blob, container: {container}, prefix: drop/}}
            steps:
              - name: echo
                kind: batch
                params:
                  command: python args.py {{output_dir}} ${{trigger.blob.name}} {{input_name}} x${{trigger.blob.name}}y
                  inputs: ${{trigger.blob.url}}
                  resource_files: [{{APPS}}/args.py]
                  output_container: {out}
              - name: dbx
                kind: databricks
                params:
                  python_file: dbx_args.py
                  parameters: ["${{trigger.blob.name}}", "--name=${{trigger.blob.name}}"]
              - name: aml
                kind: azureml
                params:
                  pipeline: aml/pipeline.yml
                  inputs: {{text: "${{trigger.blob.name}}"}}
              - name: again
                kind: batch
                params:
                  command: python args.py {{output_dir}} ${{steps.dbx.outputs.result.0}}
                  inputs: ${{trigger.blob.url}}
                  resource_files: [{{APPS}}/args.py]
                  output_container: {out}
          manual-args:
            triggers: [{{kind: manual}}]
            steps:
              - name: echo
                kind: batch
                params:
                  command: python args.py {{output_dir}} ${{trigger.params.x}} --x=${{trigger.params.x}}
                  inputs: {container}/data/
                  resource_files: [{{APPS}}/args.py]
                  output_container: {out}
              - name: dbx
                kind: databricks
                params:
                  python_file: dbx_args.py
                  parameters: ["${{trigger.params.x}}"]
          devops-args:
            triggers:
              - {{kind: azure_devops, events: [git.push]}}
            steps:
              - name: echo
                kind: batch
                params:
                  command: python args.py {{output_dir}} ${{trigger.devops.branch}}
                  inputs: {container}/data/
                  resource_files: [{{APPS}}/args.py]
                  output_container: {out}
              - name: dbx
                kind: databricks
                params:
                  python_file: dbx_args.py
                  parameters: ["${{trigger.devops.branch}}"]
        """


def as_word(value: Any) -> str:
    """What a value becomes as one argument (the rendering of shared.flows.template)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def test_hostile_values_reach_every_local_backend_as_one_argument(
    secure_host: Callable[[str], SecureHost], canaries: Callable[[], list[Path]]
) -> None:
    container, out = f"sec{unique_suffix()}", f"out{unique_suffix()}"
    host = secure_host(flows(container, out))
    host.blobs.upload(container, "data/data.csv", b"store,day\n1,2\n")

    blob_runs = {host.drop(container, f"drop/{name}"): name for name in BLOB_NAMES}
    manual_runs = {host.start("manual-args", {"x": value}): value for value in PARAMS}
    devops_runs = {host.push(ref): ref.removeprefix("refs/heads/") for ref in BRANCHES}

    for run_id, name in blob_runs.items():
        run = host.wait(run_id)
        assert run.status.value == "succeeded", (name, [(s.name, s.error) for s in run.steps])
        full = f"drop/{name}"
        assert host.batch_output(run, "echo", "args.json") == [full, name, f"x{full}y"]
        assert run.step("dbx").outputs["result"] == [full, f"--name={full}"]
        aml_out = Path(run.step("aml").outputs["outputs"]["echo.out"])
        assert json.loads((aml_out / "args.json").read_text()) == [full, f"x{full}y"]
        assert host.batch_output(run, "again", "args.json") == [full]  # a step output is data too
    for run_id, value in manual_runs.items():
        run = host.wait(run_id)
        assert run.status.value == "succeeded", (value, [(s.name, s.error) for s in run.steps])
        word = as_word(value)
        assert host.batch_output(run, "echo", "args.json") == [word, f"--x={word}"]
        assert run.step("dbx").outputs["result"] == [word]
    for run_id, branch in devops_runs.items():
        run = host.wait(run_id)
        assert run.status.value == "succeeded", (branch, [(s.name, s.error) for s in run.steps])
        assert host.batch_output(run, "echo", "args.json") == [branch]
        assert run.step("dbx").outputs["result"] == [branch]
    assert canaries() == []


def test_list_commands_fill_each_slot_into_one_argument(
    secure_host: Callable[[str], SecureHost], canaries: Callable[[], list[Path]]
) -> None:
    container, out = f"sec{unique_suffix()}", f"out{unique_suffix()}"
    script = 'printf "%s" "$2" > "$1/shell.txt"; python args.py "$@"'
    host = secure_host(
        f"""\
        version: 1
        flows:
          listed:
            triggers: [{{kind: manual}}]
            steps:
              - name: echo
                kind: batch
                params:
                  command: [sh, -c, '{script}', sh, "{{output_dir}}", "${{trigger.params.x}}", "{{input_name}}"]
                  inputs: {container}/data/
                  resource_files: [{{APPS}}/args.py]
                  output_container: {out}
        """
    )
    host.blobs.upload(container, "data/in put;$(touch CANARY_L2).csv", b"x")
    value = "$(touch CANARY_L1); `touch CANARY_L3` {input}"
    run = host.wait(host.start("listed", {"x": value}))
    assert run.status.value == "succeeded", [(s.name, s.error) for s in run.steps]
    assert host.batch_output(run, "echo", "args.json") == [value, "in put;$(touch CANARY_L2).csv"]
    assert canaries() == []


QUOTED = [
    "python args.py {output_dir} '{input_name}'",
    'python args.py {output_dir} "{input_name}"',
    "python args.py {output_dir} --name='{input_name}'",
    "python args.py {output_dir} '${trigger.blob.name}'",
    'sh -c "cat {input}"',
]


@pytest.mark.parametrize("command", QUOTED)
def test_quoted_slots_are_refused_with_the_fix(command: str) -> None:
    text = f"""\
flows:
  f:
    triggers: [{{kind: blob, container: landing}}]
    steps:
      - name: s
        kind: batch
        params:
          command: {json.dumps(command)}
          inputs: ${{trigger.blob.url}}
"""
    with pytest.raises(FlowsFileError) as err:
        load_flows_text(text)
    (issue,) = err.value.issues
    assert (issue.path, issue.line) == ("flows.f.steps[0].params.command", 8)
    assert "inside quotes" in issue.message and "remove the quotes" in issue.message


def test_a_host_never_starts_on_quoted_slots(security_settings: Any, project: Path) -> None:
    (project / "flows.yaml").write_text(
        "flows:\n  f:\n    triggers: [{kind: blob, container: landing}]\n    steps:\n"
        "      - {name: s, kind: batch, params: {command: \"python a.py '{input_name}'\", inputs: landing/}}\n"
    )
    host = LocalHost(security_settings, workers=0, watch=False, schedule=False)
    with pytest.raises(FlowsFileError, match="inside quotes"):
        host.start()
    host.stop()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("", "empty command"),
        ("   ", "empty command"),
        ("python a.py\x00 {input}", "NUL"),
        ("python a.py {nosuch}", "unknown placeholder {nosuch}"),
        ("python a.py {input} > {output_dir}/log", "shell syntax"),
        ("python a.py $HOME", "shell syntax"),
        ("${trigger.params.prog} {input}", "never choose the program"),
        ("python -c {input}", "inline script"),
        ("python a.py '{input}", "not closed"),
    ],
)
def test_validate_refuses_commands_that_cannot_run_as_written(command: str, message: str) -> None:
    text = (
        "flows:\n  f:\n    triggers: [{kind: manual}]\n    steps:\n      - name: s\n        kind: batch\n"
        f"        params: {{command: {json.dumps(command)}, inputs: landing/}}\n"
    )
    with pytest.raises(FlowsFileError) as err:
        load_flows_text(text)
    assert any(message in i.message and i.path == "flows.f.steps[0].params.command" for i in err.value.issues), str(
        err.value
    )


def test_conveyor_validate_prints_the_quoted_slot_fix(tmp_path: Path) -> None:
    path = tmp_path / "flows.yaml"
    path.write_text(
        "flows:\n  f:\n    triggers: [{kind: blob, container: landing}]\n    steps:\n"
        "      - name: s\n        kind: batch\n        params:\n"
        '          command: python a.py "{input_name}"\n          inputs: ${trigger.blob.url}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "shared.cli", "validate", "--file", str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CONVEYOR_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"{path}:8: flows.f.steps[0].params.command: {{input_name}} is written inside quotes")
    assert "write {input_name}" in line and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- Azure Batch


HOSTILE_NAMES = ["in put; $(touch CANARY_A1) `touch CANARY_A2`.csv", "x'\"$HOME{input}.csv"]


def test_azure_batch_command_line_keeps_each_word_when_a_node_runs_it(
    backend: AzureBatchBackend,  # noqa: F811
    fake: FakeBatchService,  # noqa: F811
    blobs: MemoryBlobs,  # noqa: F811
    tmp_path: Path,
    canaries: Callable[[], list[Path]],
) -> None:
    for name in HOSTILE_NAMES:
        blobs.add("drop", f"in/{name}")
    scope = {"trigger": {"params": {"x": "$(touch CANARY_A3) ${HOME} {output_dir}"}}}
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    command = f"{shlex.quote(sys.executable)} -c '{code}' {{input_name}} ${{trigger.params.x}} {{output_dir}}"
    request = LaunchRequest(
        run_id="0123456789abcdef0123456789abcdef",
        flow="f",
        step="score",
        kind="batch",
        key="0123456789abcdef0123456789abcdef-score-1",
        attempt=1,
        params={"command": command, "inputs": "drop/in/"},
        scope=scope,
        env={"GREETING": "hi $(touch CANARY_A4)"},
    )
    backend.launch(request)
    tasks = sorted(fake.tasks[request.key].values(), key=lambda t: t["id"])
    job = fake.jobs[request.key]
    assert {"name": "GREETING", "value": "hi $(touch CANARY_A4)"} in job["commonEnvironmentSettings"]
    for task, name in zip(tasks, sorted(HOSTILE_NAMES), strict=True):
        wd = tmp_path / task["id"]
        wd.mkdir()
        # a Linux node splits the command line into words and runs them in the task directory
        argv = shlex.split(task["commandLine"])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AZ_BATCH_TASK_WORKING_DIR": str(wd)}
        out = subprocess.run(argv, cwd=wd, env=env, capture_output=True, text=True, timeout=30, check=True)
        assert json.loads(out.stdout) == [name, scope["trigger"]["params"]["x"], "output"]
        assert (wd / "output").is_dir()
    assert canaries() == []


# ---------------------------------------------------------------- the rule's parts


@pytest.mark.parametrize(
    "text",
    ["a b", "a 'b c' d", 'a "b \\" c" d', "a\\ b c", "'' x", 'a"b"c', "x \\\\ y", "\ta\n b\r"],
)
def test_splitting_is_shlex(text: str) -> None:
    from shared.flows.argv import split_words

    assert ["".join(c for c, _ in w) for w in split_words(text)] == shlex.split(text)


def test_command_line_round_trips_through_a_shell(tmp_path: Path) -> None:
    from shared.flows.argv import command_line

    words = ["printf", "%s\\n", "a b", "$(touch CANARY_S1)", "'", '"', "`touch CANARY_S2`", "", "\n", "-x"]
    out = subprocess.run(command_line(words), shell=True, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout == "".join(w + "\n" for w in words[2:])
    assert not list(tmp_path.glob("*CANARY*"))


def test_a_value_is_never_scanned_again() -> None:
    from shared.flows.argv import parse_command

    template = parse_command("prog ${trigger.params.a}{input} x{input}${trigger.params.b}")
    scope = {"trigger": {"params": {"a": "{output_dir}", "b": "${trigger.params.a}"}}}
    assert template.argv(scope, {"input": "${trigger.params.b}", "output_dir": "/o"}) == [
        "prog",
        "{output_dir}${trigger.params.b}",
        "x${trigger.params.b}${trigger.params.a}",
    ]
