"""A local host running the ``console-check`` flow, for the console's socket and browser tests.

``console-check`` (blob trigger on the test's own container, and manual): ``fetch`` prints and
succeeds; ``flaky`` writes HTML to stderr and fails (retried once, on any failure) until the
file ``<home>/marker`` exists -- so a test fails a run, reads the stderr tail in the console,
creates the marker and reruns from ``flaky``. Both are tests/e2e/console_step.py, run by the
local Databricks backend.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from shared.api.http import Headers
from shared.engine.model import Run
from shared.host.runtime import LocalHost
from shared.local.azurite import free_port
from shared.settings import Settings
from tests.conftest import unique_suffix

FLOW = "console-check"
STEP_APP = "tests/e2e/console_step.py"


def console_settings(azurite_settings: Settings, tmp_path: Path) -> Settings:
    """The session Azurite with this test's own queue, table, container, home and host port."""
    suffix = unique_suffix()
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    container = f"console-{suffix}"
    flows = {
        "version": 1,
        "flows": {
            FLOW: {
                "triggers": [{"kind": "blob", "container": container, "suffix": ".csv"}, {"kind": "manual"}],
                "steps": [
                    {"name": "fetch", "kind": "databricks", "params": {"python_file": STEP_APP, "parameters": ["ok"]}},
                    {
                        "name": "flaky",
                        "kind": "databricks",
                        "params": {"python_file": STEP_APP, "parameters": ["needs", str(home / "marker")]},
                        "retries": {"count": 1, "backoff_seconds": 1, "on": "any"},
                    },
                ],
            }
        },
    }
    flows_file = tmp_path / "flows.yaml"
    flows_file.write_text(yaml.safe_dump(flows, sort_keys=False), encoding="utf-8")
    return azurite_settings.with_overrides(
        home=home,
        flows_file=flows_file,
        queue_name=f"console-{suffix}",
        runs_table=f"consoleruns{suffix}",
        host_port=free_port(),
        watch_interval_seconds=0.5,
        batch_max_workers=1,
    )


def container_of(settings: Settings) -> str:
    doc = yaml.safe_load(settings.flows_file.read_text(encoding="utf-8"))
    return str(doc["flows"][FLOW]["triggers"][0]["container"])


@contextmanager
def console_host(settings: Settings) -> Iterator[LocalHost]:
    with LocalHost(settings, workers=2, schedule=False) as host:
        yield host


def start_manual(host: LocalHost, params: dict[str, Any]) -> str:
    req = urllib.request.Request(
        f"{host.url}/api/flows/{FLOW}/runs",
        data=json.dumps({"params": params}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["run_id"])


def wait_status(host: LocalHost, run_id: str, *statuses: str, timeout: float = 180.0) -> Run:
    """Poll the store until the run is in one of ``statuses`` (pending/queued/running count as 'active')."""
    assert host.services is not None
    deadline = time.monotonic() + timeout
    while True:
        run = host.services.store.get(run_id)
        if run.status.value in statuses:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run.status.value}, not {statuses} after {timeout}s")
        time.sleep(0.3)


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Mapping[str, str], str]:
    """One request on the real socket; redirects are not followed (a 303 is an answer). The
    headers are looked up case-insensitively (the server sends lowercase names)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=120) as resp:  # /models loads MLflow on first use
            return resp.status, Headers(dict(resp.headers)), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, Headers(dict(exc.headers)), exc.read().decode("utf-8", "replace")


def hidden_fields(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
