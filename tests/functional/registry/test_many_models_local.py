"""Many models locally: per-partition models behind ONE routed endpoint, gated per partition.

The sample scripts really run (make_sales -> medallion with ``--partition-by store`` -> one
train.py ``--partition --report`` per store, in this process); the register and deploy steps
(RegisterBackend, DeployBackend with its gate) run on a real MLflow registry (SQLite) and the
real scoring server process LocalScoringDeployer starts. Run 1 promotes every store; run 2
trains from another file, and each store's decision must follow its own metrics (with these
seeds store 1's candidate is worse, 2's and 3's better): the rejected store keeps serving its
run-1 model while the promoted ones swap, without a restart.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import pytest

from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy.local_endpoint import LocalScoringDeployer
from shared.errors import ConflictError
from shared.local.azurite import free_port
from shared.registry.mlflow_registry import MlflowRegistry
from tests.conftest import REPO_ROOT
from tests.functional.partition_steps import ship_partition
from tests.functional.registry.test_train_register_deploy import SRC, home, http, run_script

__all__ = ["home"]  # the fixture: a data home whose scoring server is stopped after the test

pytestmark = pytest.mark.functional

SAMPLES = REPO_ROOT / "samples"
ENDPOINT = "stores"
FEATURES = ["store", "day", "day_of_week", "temperature", "promo", "price"]
STORES = ("1", "2", "3")


def train_stores(work: Path, noise: float, seed: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One sales file with three stores -> gold partitioned by store -> one model per store."""
    make_sales = runpy.run_path(str(SAMPLES / "data" / "make_sales.py"))["make_sales"]
    csv = make_sales(work / "stores.csv", rows=3 * 80, seed=seed, stores=3, noise=noise)
    result = runpy.run_path(str(SAMPLES / "databricks_etl" / "medallion.py"))["run"](str(csv), work / "lake", "store")
    assert result["partition_key"] == "store"
    assert [p["partition"] for p in result["partitions"]] == list(STORES)
    assert (Path(result["gold"]) / "store=2").is_dir()  # a Delta table partitioned by store
    trained = {}
    for store in STORES:
        out = work / f"store-{store}"
        monkeypatch.setenv("CONVEYOR_TASK_METRICS_FILE", str(out / "metrics.jsonl"))
        out.mkdir(parents=True)
        args = ["--gold", result["gold"], "--partition", store, "--trees", "10"]
        run_script(
            SRC / "train.py", [*args, "--model", str(out / "model"), "--report", str(out / "report")], monkeypatch
        )
        lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        trained[store] = (out / "model", {d["name"]: d["value"] for d in map(json.loads, lines)})
    return {"gold": result["gold"], "models": trained}


class Steps:
    """The many-models flow's register and deploy instances, as the engine launches them."""

    def __init__(self, home: Path) -> None:
        self.registry = MlflowRegistry(
            f"sqlite:///{(home / 'mlflow' / 'mlflow.db').as_posix()}", home / "mlflow" / "artifacts"
        )
        self.deployer = LocalScoringDeployer(home, "127.0.0.1", free_port())
        self.register = RegisterBackend(self.registry)
        self.deploy = DeployBackend(self.registry, self.deployer)

    def ship(self, run: str, index: int, model_dir: Path, metrics: dict[str, float], store: str, name: str) -> Any:
        return ship_partition(
            self.register,
            self.deploy,
            run=run,
            index=index,
            store=store,
            model_name=name,
            model_uri=str(model_dir),
            metrics=metrics,
            endpoint=ENDPOINT,
            blob_url=f"http://127.0.0.1/acct/landing-stores/{run}.csv",
        )


def test_partition_models_behind_one_routed_endpoint(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = train_stores(tmp_path / "run1", noise=1.0, seed=5, monkeypatch=monkeypatch)
    steps = Steps(home)
    for i, store in enumerate(STORES):
        model_dir, metrics = first["models"][store]
        status = steps.ship("run1", i, model_dir, metrics, store, f"sales-forecaster-{store}")
        assert status.state == "succeeded" and status.outputs["decision"] == "promoted"
        assert status.outputs["partition"] == store and status.outputs["serving_version"] == "1"
    mv = steps.registry.get("sales-forecaster-2", "1")  # lineage: blob + eTag, run, partition
    assert mv.tags["conveyor.partition"] == "2" and mv.tags["conveyor.run_id"] == "run1"
    assert mv.tags["source.blob_etag"] == "0xE" and mv.tags["source.blob_url"].endswith("run1.csv")

    url = steps.deployer.scoring_url(ENDPOINT)
    from deltalake import DeltaTable

    gold = DeltaTable(first["gold"]).to_pandas()
    rows = gold.sort_values(["store", "day"]).drop_duplicates("store", keep="last")[FEATURES].to_dict("records")
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows][::-1]  # stores 3, 2, 1
    body = {"dataframe_split": {"columns": FEATURES, "data": [[r[c] for c in FEATURES] for r in rows]}}
    status, answer = http(url, body)
    assert status == 200, answer
    assert answer["partitions"] == ["3", "2", "1"]
    assert {p: m["model"] for p, m in answer["models"].items()} == {s: f"sales-forecaster-{s}" for s in STORES}
    # each row was answered by its own store's model: the same as asking that store alone
    for row, prediction in zip(rows, answer["predictions"], strict=True):
        alone = http(
            url,
            {"instances": [{k: v for k, v in row.items() if k != "store"}], "params": {"partition": str(row["store"])}},
        )
        assert alone[0] == 200 and alone[1]["predictions"] == pytest.approx([prediction])
    assert len(set(answer["predictions"])) == 3  # three different models

    # run 2, from another file: each store's gate follows its own metrics
    second = train_stores(tmp_path / "run2", noise=0.3, seed=6, monkeypatch=monkeypatch)
    decisions = {}
    for i, store in enumerate(STORES):
        model_dir, metrics = second["models"][store]
        status = steps.ship("run2", i, model_dir, metrics, store, f"sales-forecaster-{store}")
        decisions[store] = status.outputs["decision"]
        better = metrics["r2"] > first["models"][store][1]["r2"]
        assert decisions[store] == ("promoted" if better else "rejected"), (store, metrics, first["models"][store][1])
        assert status.outputs["serving_version"] == ("2" if better else "1")
    assert set(decisions.values()) == {"promoted", "rejected"}, decisions  # both kinds, side by side
    served = {p: d.version for p, d in steps.deployer.partitions(ENDPOINT).items()}
    assert served == {s: "2" if decisions[s] == "promoted" else "1" for s in STORES}
    status, answer = http(url, body)
    assert status == 200
    assert {p: m["version"] for p, m in answer["models"].items()} == served  # swapped without a restart


def test_routing_refusals_name_the_partition_and_the_field(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained = train_stores(tmp_path / "run", noise=1.0, seed=5, monkeypatch=monkeypatch)
    steps = Steps(home)
    for i, store in enumerate(STORES[:2]):
        model_dir, metrics = trained["models"][store]
        steps.ship("run1", i, model_dir, metrics, store, f"sales-forecaster-{store}")
    url = steps.deployer.scoring_url(ENDPOINT)
    row = {"store": 1, "day": 40, "day_of_week": 5, "temperature": 14.5, "promo": 1, "price": 3.2}

    status, doc = http(
        url, {"dataframe_split": {"columns": FEATURES, "data": [list(row.values()), [3, *list(row.values())[1:]]]}}
    )
    assert status == 404 and doc["error"]["code"] == "unknown_partition"
    assert "'3'" in doc["error"]["message"] and doc["error"]["field"] == "dataframe_split.data[1][0]"
    assert "serves 2" in doc["error"]["message"]
    status, doc = http(url, {"rows": [row], "params": {"partition": "9"}})
    assert status == 404 and doc["error"]["field"] == "params.partition"
    status, doc = http(url, {"rows": [{k: v for k, v in row.items() if k != "store"}]})
    assert status == 400 and doc["error"]["field"] == "rows[0].store" and "params.partition" in doc["error"]["message"]
    status, doc = http(url, {"rows": [{**row, "store": True}]})
    assert status == 400 and doc["error"]["field"] == "rows[0].store"
    status, doc = http(url, {"rows": [{**row, "store": 1.5}]})
    assert status == 400 and doc["error"]["field"] == "rows[0].store"
    status, doc = http(url, {"rows": [row], "params": {"partition": "2"}})
    assert status == 400 and "params.partition is '2'" in doc["error"]["message"]
    status, doc = http(url, {"inputs": {"store": ["1", 2.0], **{k: [v, v] for k, v in row.items() if k != "store"}}})
    assert status == 200 and doc["partitions"] == ["1", "2"]  # "1", 1 and 1.0 name one partition

    # one model name for two partitions would let them gate against each other: refused
    model_dir, metrics = trained["models"]["3"]
    # (found by the gate, after launch returned: the step fails for good, naming the field)
    refused = steps.ship("run2", 2, model_dir, metrics, "3", "sales-forecaster-1")
    assert refused.state == "failed" and not refused.retryable
    assert refused.error and "params.partition" in refused.error and "partition '1', not of '3'" in refused.error
    # an endpoint is single-model or routed, never both
    with pytest.raises(ConflictError, match="routes partition models"):
        steps.deployer.deploy(ENDPOINT, steps.registry.get("sales-forecaster-1", "1"))
