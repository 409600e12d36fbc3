"""A task never sees the host's settings or secrets (issue 6, observation 2).

A task running ``env`` saw CONVEYOR_DEVOPS_PASSWORD and CONVEYOR_DEVOPS_SECRET (and could
upload them as an output). Here the host process holds such secrets in its environment and
a task of each local backend (batch, databricks, azureml) dumps what it sees: only the
allow-list (PATH, HOME, TMPDIR, TZ, locale), the step's ``env:`` and the task's own values.
Storage access is a read/list SAS, never a key or connection string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from shared.settings import AZURITE_KEY
from tests.conftest import unique_suffix
from tests.security.hostile_project import SecureHost

SECRETS = {
    "CONVEYOR_DEVOPS_PASSWORD": "pw-7f3c-never-in-a-task",
    "CONVEYOR_DEVOPS_SECRET": "hook-secret-91aa-never-in-a-task",
    "CONVEYOR_DATABRICKS_TOKEN": "dapi-0c1e-never-in-a-task",
    "CONVEYOR_DATABRICKS_CLIENT_SECRET": "client-secret-4d2b-never-in-a-task",
    "AZURE_CLIENT_SECRET": "azure-secret-55e1-never-in-a-task",
    "AZURE_STORAGE_CONNECTION_STRING": "DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=cHJvZC1rZXk=",
    "MY_TEAM_API_TOKEN": "team-token-1234-never-in-a-task",
}
# What a task may see: the host's allow-list, the service-style ids the backends set, its own values.
ALLOWED = re.compile(
    r"^(PATH|HOME|TMPDIR|TZ|LANG|LANGUAGE|LC_\w+|CONVEYOR_TASK_\w+|AZ_BATCH_\w+|AZUREML_\w+|DATABRICKS_RUN_ID"
    r"|TRACEPARENT|PYTHONPATH|PYTHONUNBUFFERED|GREETING)$"
)


@pytest.fixture
def host_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    yield


def flows(container: str, out: str, env: str = "") -> str:
    return f"""\
        version: 1
        flows:
          envs:
            triggers: [{{kind: manual}}]
            steps:
              - name: batch
                kind: batch
                {env}
                params:
                  command: python env_dump.py {{output_dir}}
                  inputs: {container}/data/
                  resource_files: [{{APPS}}/env_dump.py]
                  output_container: {out}
              - name: dbx
                kind: databricks
                {env}
                params: {{python_file: dbx_env.py}}
              - name: aml
                kind: azureml
                {env}
                params:
                  pipeline: aml/pipeline.yml
                  inputs: {{text: t}}
        """


def task_envs(host: SecureHost, params: dict[str, Any]) -> dict[str, dict[str, str]]:
    run = host.wait(host.start("envs", params))
    assert run.status.value == "succeeded", [(s.name, s.error) for s in run.steps]
    aml_out = Path(run.step("aml").outputs["outputs"]["env.out"])
    return {
        "batch": host.batch_output(run, "batch", "env.json"),
        "databricks": run.step("dbx").outputs["result"],
        "azureml": json.loads((aml_out / "env.json").read_text()),
    }


def assert_no_host_settings(envs: dict[str, dict[str, str]]) -> None:
    for backend, env in envs.items():
        stray = sorted(k for k in env if not ALLOWED.match(k))
        assert stray == [], f"{backend} task sees host variables {stray}"
        for name, value in env.items():
            for secret in SECRETS.values():
                assert secret not in value, f"{backend} task sees a host secret in {name}"
            assert "AccountKey" not in value and AZURITE_KEY not in value, f"{backend}: a storage key in {name}"


def test_tasks_of_every_local_backend_see_no_host_secrets(
    secure_host: Callable[[str], SecureHost], host_secrets: None
) -> None:
    container, out = f"env{unique_suffix()}", f"out{unique_suffix()}"
    host = secure_host(flows(container, out))
    host.blobs.upload(container, "data/in.csv", b"a,b\n")
    envs = task_envs(host, {})
    assert_no_host_settings(envs)
    for env in envs.values():
        assert env["PATH"] and env["HOME"]  # what programs need to run is there
    assert envs["batch"]["AZ_BATCH_TASK_ID"] == "task-00000"
    sas = envs["databricks"]["CONVEYOR_TASK_STORAGE_SAS"]  # storage through a scoped, expiring SAS
    assert "sp=rl" in sas and "sig=" in sas and "se=" in sas


def test_declared_env_is_templated_by_the_same_rule(
    secure_host: Callable[[str], SecureHost], host_secrets: None, canaries: Callable[[], list[Path]]
) -> None:
    container, out = f"env{unique_suffix()}", f"out{unique_suffix()}"
    host = secure_host(flows(container, out, env='env: {GREETING: "hi ${trigger.params.x}"}'))
    host.blobs.upload(container, "data/in.csv", b"a,b\n")
    value = "$(touch CANARY_E1) ${HOME} {output_dir} `touch CANARY_E2`"
    envs = task_envs(host, {"x": value})
    assert_no_host_settings(envs)
    assert {backend: env["GREETING"] for backend, env in envs.items()} == dict.fromkeys(envs, f"hi {value}")
    assert canaries() == []


# ---------------------------------------------------------------- the parts


def test_task_env_takes_only_the_allow_list_from_the_host() -> None:
    from shared.backends.task_env import task_env

    host = {"PATH": "/usr/bin", "HOME": "/home/u", "LC_ALL": "C.UTF-8", "TZ": "UTC", **SECRETS}
    env = task_env({"CONVEYOR_TASK_X": "1", "GREETING": "own wins"}, {"GREETING": "declared", "OTHER": "2"}, host)
    assert env["PATH"].endswith(":/usr/bin") and env["HOME"] == "/home/u" and env["LC_ALL"] == "C.UTF-8"
    assert env["GREETING"] == "own wins" and env["OTHER"] == "2" and env["CONVEYOR_TASK_X"] == "1"
    assert not set(SECRETS) & set(env)


@pytest.mark.parametrize(
    ("connection", "gives_sas"),
    [
        ("UseDevelopmentStorage=true", True),
        ("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;EndpointSuffix=x", True),
        ("BlobEndpoint=https://acct.blob.core.windows.net;SharedAccessSignature=sv=1&sig=abc", False),
        ("", False),
    ],
)
def test_a_task_gets_a_read_only_expiring_sas_never_the_key(connection: str, gives_sas: bool) -> None:
    from shared.backends.task_env import storage_sas

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    sas = storage_sas(connection, hours=2, now=now)
    if not gives_sas:
        assert sas is None
        return
    assert sas is not None
    fields = {k: unquote(v) for k, v in (p.split("=", 1) for p in sas.split("&"))}
    assert fields["sp"] == "rl" and fields["ss"] == "b" and fields["se"].startswith("2026-01-02T05:04")
    assert "c2VjcmV0LWtleQ" not in sas and AZURITE_KEY not in sas


def test_step_env_names_are_checked() -> None:
    from shared.flows.loader import FlowsFileError, load_flows_text

    base = "flows:\n  f:\n    triggers: [{kind: manual}]\n    steps:\n      - name: s\n        kind: databricks\n"
    for env, message in [
        ("{CONVEYOR_DEVOPS_PASSWORD: x}", "reserved"),
        ("{'bad-name': x}", "invalid name"),
        ('{A: "a\\0b"}', "NUL"),
        ('{A: "${trigger.blob.url}"}', "only blob triggers"),
    ]:
        with pytest.raises(FlowsFileError) as err:
            load_flows_text(base + f"        env: {env}\n        params: {{python_file: x.py}}\n")
        assert message in str(err.value), str(err.value)
        assert all(i.path.startswith("flows.f.steps[0].env") for i in err.value.issues), str(err.value)
