"""Cold start: importing function_app (what the worker indexes) loads no heavy SDK.

Each case runs in a fresh interpreter so sys.modules shows only what the import pulled in.
The import time is printed (``pytest -s`` shows it) as the measured figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "azure.batch",
    "databricks.sdk",
    "azureml",
    "azure.ai.ml",
    "mlflow",
    "sklearn",
    "pandas",
    # telemetry exporters: built on first use of Services.telemetry, never at import
    "opencensus",
    "azure.monitor",
    "opentelemetry.sdk",
)

PROBE = f"""
import json, sys, time
t0 = time.perf_counter()
import function_app
imported = time.perf_counter() - t0
t1 = time.perf_counter()
functions = function_app.app.get_functions()   # what the worker does to index the app
indexed = time.perf_counter() - t1
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r}))
print(json.dumps({{"import_s": imported, "index_s": indexed, "functions": len(functions), "heavy": heavy,
                  "shared": sorted(m for m in sys.modules if m == "shared" or m.startswith("shared."))}}))
"""


@pytest.mark.parametrize("mode", ["local", "azure"])
def test_function_app_import_loads_no_heavy_sdk(mode: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_MODE": mode, "CONVEYOR_HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"})
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\ncold start ({mode}): import function_app {report['import_s'] * 1000:.0f} ms, "
        f"index {report['functions']} functions {report['index_s'] * 1000:.0f} ms"
    )
    assert report["heavy"] == [], f"heavy SDKs imported at cold start: {report['heavy']}"
    # 11 HTTP routes (openapi.json, instances, dead letters), the console, blob, timer, queue, retention, events
    assert report["functions"] == 17
    # The blueprints load shared/ lazily, inside the function bodies.
    assert report["shared"] == [], report["shared"]


INGEST_PROBE = f"""
import json, sys, time
import azure.functions as func
import function_app
from functions import webhooks
from shared.flows.model import FlowsFile
from shared.settings import Settings
from shared.wiring import Services, set_services
from tests.fakes import MemoryQueue, MemoryRunStore
from tests.unit.api.helpers import FLOWS

home = sys.argv[1]
queue = MemoryQueue()
set_services(Services(Settings(home=home, root=home), store=MemoryRunStore(), queue=queue,
                      flows=FlowsFile.model_validate(FLOWS)))
t0 = time.perf_counter()
fn = webhooks.start_run.build().get_user_function()
resp = fn(func.HttpRequest("POST", "http://h/api/flows/train/runs", route_params={{"flow": "train"}}, body=b"{{}}",
                           headers={{"Content-Type": "application/json"}}))
first = time.perf_counter() - t0
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r}))
print(json.dumps({{"status": resp.status_code, "sent": len(queue.sent), "first_call_s": first, "heavy": heavy}}))
"""


def test_first_manual_run_loads_no_heavy_sdk(tmp_path: Path) -> None:
    """Ingesting (HTTP -> run created -> start sent) needs none of the step SDKs either."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({"CONVEYOR_MODE": "local", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)})
    proc = subprocess.run(
        [sys.executable, "-c", INGEST_PROBE, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nfirst manual run through start_run: {report['first_call_s'] * 1000:.0f} ms")
    assert (report["status"], report["sent"]) == (202, 1)
    assert report["heavy"] == [], f"heavy SDKs imported by ingest: {report['heavy']}"
