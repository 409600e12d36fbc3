"""(many) ``conveyor demo --many``: one file with many stores -> one model per store -> ONE routed endpoint.

``make test`` runs the demo's own path (run_demo, in process: its Azurite, host, watcher event)
with the many-models flow of flows.yaml on a file of 6 stores, so it stays near a minute on two
cores; the full demo (24 stores, as ``conveyor demo --many`` runs it) is the same code with a
bigger file, run as the real command by the second test when CONVEYOR_E2E_DEMO_MANY=1.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys

import pytest
from rich.console import Console

from shared.demo import run_demo
from shared.local.azurite import port_open
from shared.registry.mlflow_registry import MlflowRegistry
from shared.settings import Settings
from tests.conftest import REPO_ROOT, cli_environment

STORES = 6


def test_demo_many_serves_every_store_through_one_endpoint(own_azurite_settings: Settings) -> None:
    s = own_azurite_settings
    buf = io.StringIO()
    result = run_demo(s, fresh=True, timeout=420, out=Console(file=buf, width=160), many=True, stores=STORES)
    output = buf.getvalue()
    assert result.ok, f"{result.error}\n{output}"
    run = result.run
    assert run is not None and run.status.value == "succeeded" and run.flow == "many-models"
    assert run.trigger.kind == "blob" and run.trigger.blob and run.trigger.blob["container"] == "landing-stores"
    assert [st.state.value for st in run.steps] == ["succeeded"] * 4
    assert {st.name: st.fanout.total for st in run.steps if st.fanout} == {"train": 6, "register": 6, "deploy": 6}

    # one endpoint, one model per store, each row answered by its own store's model
    stores = [str(n) for n in range(1, STORES + 1)]
    assert result.served is not None and sorted(result.served, key=int) == stores
    for store, served in result.served.items():
        assert (served["model"], served["version"]) == (f"sales-forecaster-{store}", "1")
        assert isinstance(served["prediction"], float) and math.isfinite(served["prediction"])
    assert result.scoring_url and result.scoring_url.endswith("/endpoints/sales-forecaster-stores/score")
    assert "one endpoint, one model per store" in output and "6 partitions promoted, 0 rejected" in output
    assert "predictions from 6 partition models through one endpoint" in output
    assert "train 6/6 succeeded (max_parallel 2)" in output  # the graph, with the fan-out

    # lineage on every partition's version: the blob and its eTag, the run, the partition
    registry = MlflowRegistry.from_settings(s)
    blob = run.trigger.blob
    for store in stores:
        mv = registry.champion(f"sales-forecaster-{store}")
        assert mv is not None and mv.tags["conveyor.partition"] == store
        assert mv.tags["conveyor.run_id"] == run.run_id
        assert mv.tags["source.blob_url"] == blob["url"] and mv.tags["source.blob_etag"] == blob["etag"]

    ports = (s.azurite_blob_port, s.azurite_queue_port, s.azurite_table_port, s.host_port, s.scoring_port)
    assert not any(port_open("127.0.0.1", p) for p in ports)


@pytest.mark.skipif(
    os.environ.get("CONVEYOR_E2E_DEMO_MANY") != "1",
    reason="the full 24-store demo takes minutes on two cores: set CONVEYOR_E2E_DEMO_MANY=1 to run it",
)
def test_conveyor_demo_many_command_ends_with_predictions_from_24_partition_models(
    own_azurite_settings: Settings,
) -> None:
    s = own_azurite_settings
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")},
        **cli_environment(s, REPO_ROOT / "flows.yaml"),
        "CONVEYOR_SCORING_PORT": str(s.scoring_port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.cli", "demo", "--many"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "predictions from 24 partition models through one endpoint" in done.stdout
