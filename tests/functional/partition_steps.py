"""The many-models flow's register and deploy instances for one partition, launched as the engine
launches them (instance keys ``run-step_index-attempt``, the deploy params taken from the
register outputs as ``${item.*}`` takes them); shared by the local and the Azure ML tests."""

from __future__ import annotations

from typing import Any

from shared.backends.base import JobBackend, LaunchRequest, StepStatus
from tests.functional.backends.conftest import wait_done

MODEL = {"name": "sales-forecaster", "metric": "r2", "direction": "maximize"}


def ship_partition(
    register: JobBackend,
    deploy: JobBackend,
    *,
    run: str,
    index: int,
    store: str,
    model_name: str,
    model_uri: str,
    metrics: dict[str, Any],
    endpoint: str,
    blob_url: str,
) -> StepStatus:
    common: dict[str, Any] = {
        "run_id": run,
        "flow": "many-models",
        "attempt": 1,
        "model": MODEL,
        "trigger": {"kind": "blob", "blob": {"url": blob_url, "etag": "0xE"}},
    }
    params = {"model_name": model_name, "model_uri": model_uri, "partition": store, "metrics": metrics}
    key = f"{run}-register_{index}-1"
    launched = register.launch(
        LaunchRequest(step="register", kind="register", key=key, params=params, index=index, item=store, **common)
    )
    registered = wait_done(register, launched.remote_id)
    assert registered.state == "succeeded", registered.error
    assert registered.outputs["partition"] == store
    item = registered.outputs
    params = {
        "model_name": item["model_name"],
        "version": item["version"],
        "endpoint": endpoint,
        "partition": item["partition"],
        "partition_key": "store",
    }
    key = f"{run}-deploy_{index}-1"
    launched = deploy.launch(
        LaunchRequest(step="deploy", kind="deploy", key=key, params=params, index=index, item=item, **common)
    )
    return wait_done(deploy, launched.remote_id, timeout=120)
