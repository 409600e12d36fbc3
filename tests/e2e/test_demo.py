"""(a) The demo path in-process: Azurite, host, watcher event, the whole run, a prediction."""

from __future__ import annotations

import io
import math

from rich.console import Console

from shared.demo import run_demo
from shared.local.azurite import port_open
from shared.settings import Settings


def test_demo_runs_a_drop_to_a_prediction(own_azurite_settings: Settings) -> None:
    s = own_azurite_settings
    buf = io.StringIO()
    result = run_demo(s, fresh=True, timeout=420, out=Console(file=buf, width=140))
    output = buf.getvalue()
    assert result.ok, f"{result.error}\n{output}"
    run = result.run
    assert run is not None and run.status.value == "succeeded"
    # the run came from the watcher's BlobCreated event, not a manual start
    assert run.trigger.kind == "blob" and run.trigger.blob and run.trigger.blob["container"] == "landing"
    assert [st.state.value for st in run.steps] == ["succeeded"] * len(run.steps)
    # the gate decision is on the run with the metric it compared; the first model is promoted
    assert run.gate, output
    assert run.gate["decision"] == "promoted"
    assert isinstance(run.gate["candidate"], float) and math.isfinite(run.gate["candidate"])
    assert result.model and result.model["version"]
    assert result.prediction and all(isinstance(p, float | int) and math.isfinite(p) for p in result.prediction)
    assert "prediction: [" in output
    # everything the demo started is stopped
    ports = (s.azurite_blob_port, s.azurite_queue_port, s.azurite_table_port, s.host_port, s.scoring_port)
    assert not any(port_open("127.0.0.1", p) for p in ports)
