"""Fixtures: a project of small scripts and a local host to run hostile input through.

Imported by conftest.py (so the fixtures are found); used by the template/env/loader tests.

``project``: a project root (flows.yaml's relative paths resolve here) with scripts that
report exactly what they were given: ``args.py`` (a Batch task: its argv, as uploaded output),
``dbx_args.py`` (the Databricks entry: its argv as the exit value), ``aml/`` (an Azure ML
pipeline whose command job writes its argv), and ``env_dump.py`` for each backend.
``secure_host``: starts a :class:`LocalHost` (real HTTP routes, queue workers, local batch,
databricks and azureml backends on the session Azurite) for a flows text.
``canaries``: every file named ``CANARY_<X><n>`` under the test's tmp dir, the repository,
the cwd and /tmp: the payloads here create such files when they run as code.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.engine.model import Run
from shared.host.runtime import LocalHost
from shared.host.watcher import account_name
from shared.ingest.eventgrid import blob_created_event
from shared.settings import Settings
from tests.conftest import REPO_ROOT, unique_suffix
from tests.e2e.conftest import DEVOPS_PASSWORD, DEVOPS_USER, basic_auth, free_ports, post

ARGS_PY = """\
import json, os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "args.json"), "w") as f:
    json.dump(sys.argv[2:], f)
"""

DBX_ARGS_PY = """\
import json, sys
dbutils.notebook.exit(json.dumps(sys.argv[1:]))
"""

ENV_DUMP_PY = """\
import json, os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "env.json"), "w") as f:
    json.dump(dict(os.environ), f)
"""

DBX_ENV_PY = """\
import json, os
dbutils.notebook.exit(json.dumps(dict(os.environ)))
"""

AML_PIPELINE = """\
type: pipeline
inputs:
  text: {type: string}
jobs:
  echo:
    type: command
    code: .
    command: python aml_args.py ${{outputs.out}} ${{inputs.text}} x${{inputs.text}}y
    inputs:
      text: ${{parent.inputs.text}}
    outputs:
      out: {type: uri_folder}
  env:
    type: command
    code: .
    command: python env_dump.py ${{outputs.out}}
    outputs:
      out: {type: uri_folder}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "aml").mkdir(parents=True)
    (root / "dbx_args.py").write_text(DBX_ARGS_PY)
    (root / "dbx_env.py").write_text(DBX_ENV_PY)
    (root / "aml" / "pipeline.yml").write_text(AML_PIPELINE)
    (root / "aml" / "aml_args.py").write_text(ARGS_PY)
    (root / "aml" / "env_dump.py").write_text(ENV_DUMP_PY)
    return root


@pytest.fixture
def security_settings(azurite_settings: Settings, tmp_path: Path, project: Path) -> Settings:
    suffix = unique_suffix()
    host_port, scoring_port = free_ports(2)
    return azurite_settings.with_overrides(
        root=project,
        home=tmp_path / "home",
        flows_file=project / "flows.yaml",
        queue_name=f"sec-{suffix}",
        runs_table=f"secruns{suffix}",
        host_port=host_port,
        scoring_port=scoring_port,
        devops_username=DEVOPS_USER,
        devops_password=DEVOPS_PASSWORD,
        batch_max_workers=2,
    )


class SecureHost:
    """A running LocalHost plus the ways hostile input reaches it."""

    def __init__(self, host: LocalHost, apps: str) -> None:
        self.host = host
        self.apps = apps  # container/prefix of the uploaded task scripts
        assert host.services is not None
        self.services = host.services
        self.blobs = host.services.blobs

    def drop(self, container: str, name: str, data: bytes = b"store,day\n1,2\n") -> str:
        """Upload a blob and deliver its BlobCreated event; the run id it started."""
        info = self.blobs.upload(container, name, data)
        event = blob_created_event(info, account_name(self.host.settings))
        eg = f"{self.host.url}/runtime/webhooks/EventGrid?functionName=blob_created"
        status, doc = post(eg, [event], {"aeg-event-type": "Notification"})
        assert status == 202, doc
        (run,) = [r["run_id"] for r in doc["runs"] if r.get("run_id")]
        return str(run)

    def start(self, flow: str, params: dict[str, Any]) -> str:
        status, doc = post(f"{self.host.url}/api/flows/{flow}/runs", {"params": params})
        assert status == 202, doc
        return str(doc["run_id"])

    def push(self, branch_ref: str) -> str:
        push = json.loads((REPO_ROOT / "tests/events/devops_git_push.json").read_text())
        push["id"] = f"sec-{unique_suffix()}"
        push["resource"]["refUpdates"][0]["name"] = branch_ref
        auth = {"Authorization": basic_auth(DEVOPS_USER, DEVOPS_PASSWORD)}
        status, doc = post(f"{self.host.url}/api/hooks/azure-devops", push, auth)
        assert status in (200, 202), doc
        (run,) = [r["run_id"] for r in doc["runs"] if r.get("run_id")]
        return str(run)

    def wait(self, run_id: str) -> Run:
        return self.host.wait_for_run(run_id, timeout=180, poll=0.2)

    def batch_output(self, run: Run, step: str, name: str) -> Any:
        url = next(u for u in run.step(step).outputs["outputs"] if u.endswith("/" + name))
        container, blob = self.blobs.parse_url(url)
        return json.loads(self.blobs.download(container, blob))


@pytest.fixture
def secure_host(security_settings: Settings, project: Path) -> Iterator[Callable[[str], SecureHost]]:
    """Write ``flows`` (``{APPS}`` becomes the scripts' container/prefix) and start a host on it."""
    hosts: list[LocalHost] = []
    apps = f"apps/sec-{unique_suffix()}"

    def start(flows: str) -> SecureHost:
        (project / "flows.yaml").write_text(textwrap.dedent(flows).replace("{APPS}", apps), encoding="utf-8")
        host = LocalHost(security_settings, workers=2, watch=False, schedule=False)
        hosts.append(host)
        host.start()
        assert host.services is not None
        container, prefix = apps.split("/", 1)
        host.services.blobs.upload(container, f"{prefix}/args.py", ARGS_PY.encode())
        host.services.blobs.upload(container, f"{prefix}/env_dump.py", ENV_DUMP_PY.encode())
        return SecureHost(host, apps)

    yield start
    for host in hosts:
        host.stop()


CANARY = re.compile(r"^CANARY_[A-Z]+[0-9]+$")  # what a payload creates; inputs merely named after one do not match


@pytest.fixture
def canaries(tmp_path: Path) -> Callable[[], list[Path]]:
    def found() -> list[Path]:
        hits = {p for p in tmp_path.rglob("CANARY_*") if CANARY.match(p.name)}
        for where in {REPO_ROOT, Path.cwd(), Path("/tmp")}:
            hits.update(p for p in where.glob("CANARY_*") if CANARY.match(p.name))
        return sorted(hits)

    return found
