"""This area end to end: sample data -> medallion -> train/evaluate -> register -> gate -> scoring.

Three models from three data files of decreasing noise order: the first is promoted, a worse
one is rejected (both metrics recorded, the endpoint keeps serving the first), a better one is
promoted and the running scoring server swaps to it without a restart.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy.local_endpoint import LocalScoringDeployer, stop_server
from shared.local.azurite import free_port
from shared.registry.mlflow_registry import MlflowRegistry
from tests.conftest import REPO_ROOT
from tests.functional.backends.conftest import wait_done

pytestmark = pytest.mark.functional

SAMPLES = REPO_ROOT / "samples"
SRC = SAMPLES / "aml_pipeline" / "src"
MODEL = {"name": "sales-forecaster", "metric": "r2", "direction": "maximize", "min_improvement": 0.0}


def run_script(path: Path, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a sample script in this process (its imports are already warm) as ``python path args``."""
    with monkeypatch.context() as m:
        m.setattr(sys, "argv", [str(path), *args])
        m.syspath_prepend(str(path.parent))
        m.chdir(path.parent)
        with pytest.raises(SystemExit) as done:
            runpy.run_path(str(path), run_name="__main__")
    assert done.value.code == 0


def train_one(work: Path, noise: float, seed: int, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict[str, float]]:
    make_sales = runpy.run_path(str(SAMPLES / "data" / "make_sales.py"))["make_sales"]
    csv = make_sales(work / "sales.csv", rows=240, seed=seed, noise=noise)
    medallion = runpy.run_path(str(SAMPLES / "databricks_etl" / "medallion.py"))
    result = medallion["run"](str(csv), work / "lake")
    assert result["rows"]["silver"] < result["rows"]["bronze"]  # duplicates, blanks, outlier dropped
    gold = result["gold"]
    run_script(SRC / "train.py", ["--gold", gold, "--model", str(work / "model"), "--trees", "30"], monkeypatch)
    metrics_file = work / "metrics.jsonl"
    monkeypatch.setenv("CONVEYOR_TASK_METRICS_FILE", str(metrics_file))
    run_script(
        SRC / "evaluate.py",
        ["--gold", gold, "--model", str(work / "model"), "--report", str(work / "report")],
        monkeypatch,
    )
    lines = [json.loads(line) for line in metrics_file.read_text(encoding="utf-8").splitlines()]
    return work / "model", {d["name"]: d["value"] for d in lines}


def http(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    stop_server(home)


def test_register_gate_deploy_and_score(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trained = {
        label: train_one(tmp_path / label, noise, seed, monkeypatch)
        for label, noise, seed in (("first", 1.0, 1), ("worse", 4.0, 2), ("better", 0.3, 3))
    }
    r2 = {label: m["r2"] for label, (_, m) in trained.items()}
    assert r2["worse"] < r2["first"] < r2["better"], r2

    registry = MlflowRegistry(f"sqlite:///{(home / 'mlflow' / 'mlflow.db').as_posix()}", home / "mlflow" / "artifacts")
    port = free_port()
    deployer = LocalScoringDeployer(home, "127.0.0.1", port)
    reg, dep = RegisterBackend(registry), DeployBackend(registry, deployer)
    trigger = {"kind": "blob", "blob": {"url": "http://127.0.0.1/acct/landing/sales.csv", "etag": "0xE"}}

    def ship(label: str, run: str) -> dict[str, Any]:
        model_dir, metrics = trained[label]
        steps = {"etl": {"remote_id": f"etl-{run}"}, "train": {"remote_id": f"aml-{run}"}}
        common = {"run_id": run, "flow": "retrain", "attempt": 1, "trigger": trigger, "steps": steps, "model": MODEL}
        params = {"model_uri": str(model_dir), "metrics": {"r2": metrics["r2"], "rmse": str(metrics["rmse"])}}
        launched = reg.launch(
            LaunchRequest(step="register", kind="register", key=f"{run}-register-1", params=params, **common)
        )
        registered = wait_done(reg, launched.remote_id)
        assert registered.state == "succeeded"
        version = registered.outputs["version"]
        deploy_params = {"version": version, "endpoint": "sales"}
        launched = dep.launch(
            LaunchRequest(step="deploy", kind="deploy", key=f"{run}-deploy-1", params=deploy_params, **common)
        )
        status = wait_done(dep, launched.remote_id)
        assert status.state == "succeeded"
        return status.outputs

    row = {"store": 2, "day": 40, "day_of_week": 5, "temperature": 14.5, "promo": 1, "price": 3.2}

    first = ship("first", "run-a")
    assert first["decision"] == "promoted"
    v1 = first["version"]
    tags = registry.get("sales-forecaster", v1).tags
    assert tags["source.blob_etag"] == "0xE" and tags["step.train.remote_id"] == "aml-run-a"
    url = first["scoring_url"]
    assert url == f"http://127.0.0.1:{port}/endpoints/sales/score"
    status, body = http(url, {"rows": [row, {**row, "promo": 0}]})
    assert status == 200, body
    assert body["model"] == "sales-forecaster" and body["version"] == v1 and len(body["predictions"]) == 2
    assert body["predictions"][0] > body["predictions"][1]  # a promotion sells more in this data
    pid = http(f"http://127.0.0.1:{port}/health")[1]["pid"]

    worse = ship("worse", "run-b")
    assert worse["decision"] == "rejected" and worse["serving_version"] == v1
    assert worse["gate"]["candidate"] == pytest.approx(r2["worse"]) and worse["gate"]["champion"] == pytest.approx(
        r2["first"]
    )
    rejected_tags = registry.get("sales-forecaster", worse["version"]).tags
    assert rejected_tags["gate.decision"] == "rejected"
    assert float(rejected_tags["gate.candidate"]) == pytest.approx(r2["worse"])
    assert float(rejected_tags["gate.champion"]) == pytest.approx(r2["first"])
    assert http(url, [row])[1]["version"] == v1  # a bare list of rows; the champion still serves

    better = ship("better", "run-c")
    assert better["decision"] == "promoted" and better["gate"]["champion_version"] == v1
    status, body = http(url, {"rows": [row]})
    assert status == 200 and body["version"] == better["version"] != v1
    assert http(f"http://127.0.0.1:{port}/health")[1]["pid"] == pid  # swapped without a restart
    assert registry.previous("sales-forecaster").version == v1  # type: ignore[union-attr]

    # Errors name the field; unknown endpoints are 404.
    assert http(url, raw=b"{not json")[0] == 400
    status, body = http(url, {"rows": [{k: v for k, v in row.items() if k != "temperature"}]})
    assert status == 400 and body["error"]["field"] == "rows[0].temperature"
    status, body = http(url, {"rows": [{**row, "price": "cheap"}]})
    assert status == 400 and body["error"]["field"] == "rows[0].price"
    assert http(url, {"data": []})[1]["error"]["field"] == "data"  # not a key of the scoring protocol
    assert http(f"http://127.0.0.1:{port}/endpoints/nope/score", {"rows": [row]})[0] == 404
    described = http(f"http://127.0.0.1:{port}/endpoints/sales")[1]
    assert described["current"]["version"] == better["version"] and described["history"][0]["version"] == v1

    assert stop_server(home)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    assert os.path.exists(home / "logs" / "scoring-server.log")


def test_medallion_writes_a_dbfs_lake_through_the_mount_and_reports_dbfs_uris(tmp_path: Path) -> None:
    """On a cluster ``--lake dbfs:/...`` goes through the /dbfs mount (here a temp directory)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("medallion_dbfs", SAMPLES / "databricks_etl" / "medallion.py")
    assert spec is not None and spec.loader is not None
    medallion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(medallion)
    medallion.DBFS_MOUNT = tmp_path / "dbfs"
    csv = runpy.run_path(str(SAMPLES / "data" / "make_sales.py"))["make_sales"](tmp_path / "s.csv", rows=60, seed=1)
    result = medallion.run(str(csv), "dbfs:/conveyor/lake/r9")
    assert result["gold"] == "dbfs:/conveyor/lake/r9/gold" and result["bronze"] == "dbfs:/conveyor/lake/r9/bronze"
    assert (tmp_path / "dbfs" / "conveyor" / "lake" / "r9" / "gold" / "_delta_log").is_dir()
