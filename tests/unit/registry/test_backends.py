"""Register and deploy steps over an in-memory registry and deployer (no MLflow, no server)."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.backends.background import LOST_AFTER_SECONDS, stamped, unstamped
from shared.backends.base import JobBackend, LaunchRequest, StepStatus
from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy.base import Deployer, Deployment
from shared.deploy.local_endpoint import LocalScoringDeployer
from shared.errors import NotFoundError, ValidationError
from shared.registry.base import ModelRegistry, ModelVersion

MODEL = {"name": "sales-forecaster", "metric": "r2", "direction": "maximize", "min_improvement": 0.0}


class MemoryRegistry(ModelRegistry):
    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], ModelVersion] = {}
        self.aliases: dict[tuple[str, str], str] = {}
        self.registers = 0
        self._n = itertools.count(1)

    def register(self, name: str, model_uri: str, metrics: dict[str, float], tags: dict[str, str], key: str):
        found = self.find_by_key(key, name)
        if found:
            return found
        self.registers += 1
        v = str(next(self._n))
        mv = ModelVersion(name, v, f"mem://{name}/{v}", dict(metrics), {**tags, "conveyor.key": key})
        self.versions[(name, v)] = mv
        return mv

    def find_by_key(self, key: str, name: str | None = None) -> ModelVersion | None:
        for (n, _), mv in sorted(self.versions.items()):
            if mv.tags.get("conveyor.key") == key and (name is None or n == name):
                return mv
        return None

    def get(self, name: str, version: str) -> ModelVersion:
        try:
            return self.versions[(name, version)]
        except KeyError:
            raise NotFoundError(f"{name} v{version}") from None

    def champion(self, name: str) -> ModelVersion | None:
        v = self.aliases.get((name, "champion"))
        return self.versions[(name, v)] if v else None

    def promote(self, name: str, version: str) -> None:
        self.get(name, version)
        old = self.aliases.get((name, "champion"))
        if old == version:
            return
        if old:
            self.aliases[(name, "previous")] = old
        self.aliases[(name, "champion")] = version

    def record_decision(self, name: str, version: str, decision: dict[str, str]) -> None:
        mv = self.get(name, version)
        tags = {**mv.tags, **{f"gate.{k}": str(v) for k, v in decision.items()}}
        self.versions[(name, version)] = replace(mv, tags=tags)


class MemoryDeployer(Deployer):
    def __init__(self) -> None:
        self.served: dict[str, ModelVersion] = {}
        self.deploys: list[tuple[str, str]] = []

    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        self.deploys.append((endpoint, model.version))
        self.served[endpoint] = model
        return self.current(endpoint)  # type: ignore[return-value]

    def current(self, endpoint: str) -> Deployment | None:
        m = self.served.get(endpoint)
        return Deployment(endpoint, m.name, m.version, f"http://x/{endpoint}") if m else None

    def rollback(self, endpoint: str) -> Deployment | None:
        return None


def request(step: str, kind: str, key: str, params: dict[str, Any], **extra: Any) -> LaunchRequest:
    return LaunchRequest(
        run_id=extra.pop("run_id", "run1"),
        flow="retrain",
        step=step,
        kind=kind,
        key=key,
        attempt=1,
        params=params,
        model=extra.pop("model", MODEL),
        **extra,
    )


def settled(backend: JobBackend, remote_id: str) -> StepStatus:
    """The step's status once its background work has finished (launch returns at once)."""
    for _ in range(2000):
        status = backend.poll(remote_id)
        if status.state != "running":
            return status
        time.sleep(0.005)
    raise AssertionError(f"{remote_id} still running")


def register(reg: RegisterBackend, key: str, r2: Any, **extra: Any) -> dict[str, Any]:
    params = {"model_uri": "/m", "metrics": {"r2": r2, "rmse": "1.5"}, "tags": {"team": "a"}}
    result = reg.launch(request("register", "register", key, params, **extra))
    assert unstamped(result.remote_id)[0] == key
    status = settled(reg, result.remote_id)
    assert status.state == "succeeded", status.error
    return status.outputs


def deploy(dep: DeployBackend, key: str, version: str, **params: Any) -> dict[str, Any]:
    result = dep.launch(request("deploy", "deploy", key, {"version": version, **params}))
    status = settled(dep, result.remote_id)
    assert status.state == "succeeded", status.error
    return status.outputs


def test_register_tags_lineage_and_casts_metrics() -> None:
    registry = MemoryRegistry()
    out = register(
        RegisterBackend(registry),
        "run1-register-1",
        "0.8",
        traceparent="00-abc-def-01",
        trigger={"kind": "blob", "blob": {"url": "http://a/landing/x.csv", "etag": "0x1"}, "devops": {"commit": "c0"}},
        steps={"etl": {"outputs": {}, "remote_id": "db-7"}, "train": {"remote_id": "aml-3"}},
    )
    assert out["model_name"] == "sales-forecaster" and out["metrics"] == {"r2": 0.8, "rmse": 1.5}
    tags = registry.get("sales-forecaster", out["version"]).tags
    assert tags["conveyor.run_id"] == "run1" and tags["conveyor.flow"] == "retrain"
    assert tags["conveyor.traceparent"] == "00-abc-def-01"
    assert tags["source.blob_url"] == "http://a/landing/x.csv" and tags["source.blob_etag"] == "0x1"
    assert tags["source.commit"] == "c0"
    assert tags["step.etl.remote_id"] == "db-7" and tags["step.train.remote_id"] == "aml-3"
    assert tags["team"] == "a"


def test_register_is_idempotent_and_polls_after_restart() -> None:
    registry = MemoryRegistry()
    first = register(RegisterBackend(registry), "k1", 0.5)
    again = register(RegisterBackend(registry), "k1", 0.5)  # a new backend: as after a restart
    assert first == again and registry.registers == 1
    assert RegisterBackend(registry).poll("k1").outputs["version"] == first["version"]
    assert RegisterBackend(registry).poll("unknown").state == "failed"


def test_register_launch_returns_before_the_registry_is_done() -> None:
    import threading

    gate = threading.Event()

    class Slow(MemoryRegistry):
        def register(self, *args: Any, **kwargs: Any) -> ModelVersion:
            gate.wait(5)
            return super().register(*args, **kwargs)

    registry = Slow()
    reg = RegisterBackend(registry)
    result = reg.launch(request("register", "register", "k1", {"model_uri": "/m", "metrics": {"r2": 1}}))
    assert reg.poll(result.remote_id).state == "running" and registry.registers == 0
    again = reg.launch(request("register", "register", "k1", {"model_uri": "/m", "metrics": {"r2": 1}}))
    assert again.reattached and again.remote_id == result.remote_id  # a redelivered launch: the same work
    gate.set()
    assert settled(reg, result.remote_id).state == "succeeded" and registry.registers == 1


def test_work_found_nowhere_is_running_then_lost_with_its_host() -> None:
    other = RegisterBackend(MemoryRegistry())  # another process: it knows nothing of the work
    assert other.poll(stamped("k9")).state == "running"  # may still be going on another instance
    old = other.poll(stamped("k9", time.time() - LOST_AFTER_SECONDS - 1))
    assert old.state == "failed" and old.retryable and "lost with its host" in (old.error or "")


def test_register_rejects_non_numeric_metric_naming_it() -> None:
    with pytest.raises(ValidationError) as err:
        register(RegisterBackend(MemoryRegistry()), "k1", "high")
    assert err.value.field == "params.metrics.r2"


def test_register_needs_a_model_name() -> None:
    reg = RegisterBackend(MemoryRegistry())
    with pytest.raises(ValidationError) as err:
        reg.launch(request("register", "register", "k", {"model_uri": "/m"}, model=None))
    assert err.value.field == "params.model_name"
    with pytest.raises(ValidationError) as err:
        reg.launch(request("register", "register", "k", {"metrics": {}}))
    assert err.value.field == "params.model_uri"


def test_gate_first_promoted_worse_rejected_better_promoted() -> None:
    registry, deployer = MemoryRegistry(), MemoryDeployer()
    reg, dep = RegisterBackend(registry), DeployBackend(registry, deployer)
    v1 = register(reg, "r1", 0.8)["version"]
    out1 = deploy(dep, "d1", v1)
    assert out1["gate"]["decision"] == "promoted" and out1["endpoint"] == "retrain"
    assert out1["scoring_url"] == "http://x/retrain"

    v2 = register(reg, "r2", 0.7)["version"]
    out2 = deploy(dep, "d2", v2)
    assert out2["decision"] == "rejected" and out2["gate"]["champion"] == 0.8 and out2["gate"]["candidate"] == 0.7
    assert out2["serving_version"] == v1  # the current deployment stays
    tags = registry.get("sales-forecaster", v2).tags
    assert tags["gate.decision"] == "rejected" and "0.7" in tags["gate.reason"] and "0.8" in tags["gate.reason"]
    assert float(tags["gate.candidate"]) == 0.7 and float(tags["gate.champion"]) == 0.8

    v3 = register(reg, "r3", 0.9)["version"]
    out3 = deploy(dep, "d3", v3)
    assert out3["decision"] == "promoted" and out3["gate"]["champion_version"] == v1
    assert registry.champion("sales-forecaster").version == v3  # type: ignore[union-attr]
    assert registry.aliases[("sales-forecaster", "previous")] == v1
    assert deployer.deploys == [("retrain", v1), ("retrain", v3)]


def test_redelivered_deploy_replays_the_stored_decision() -> None:
    registry, deployer = MemoryRegistry(), MemoryDeployer()
    reg, dep = RegisterBackend(registry), DeployBackend(registry, deployer)
    v1 = register(reg, "r1", 0.8)["version"]
    first = deploy(dep, "d1", v1)
    # Same key on a fresh backend (restart), and a retried attempt with a new key:
    assert deploy(DeployBackend(registry, deployer), "d1", v1) == first
    retry = deploy(DeployBackend(registry, deployer), "d1-attempt2", v1)
    assert retry["decision"] == "promoted"
    assert registry.champion("sales-forecaster").version == v1  # type: ignore[union-attr]
    assert "previous" not in {a for (_, a) in registry.aliases}


def test_replay_after_crash_before_promotion_promotes() -> None:
    registry, deployer = MemoryRegistry(), MemoryDeployer()
    reg = RegisterBackend(registry)
    v1 = register(reg, "r1", 0.8)["version"]

    class Crashing(MemoryDeployer):
        def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
            raise RuntimeError("host died")

    crashing = DeployBackend(registry, Crashing())
    crashed = settled(crashing, crashing.launch(request("deploy", "deploy", "d1", {"version": v1})).remote_id)
    assert crashed.state == "failed" and "host died" in (crashed.error or "")
    out = deploy(DeployBackend(registry, deployer), "d1", v1)
    assert out["decision"] == "promoted" and deployer.deploys == [("retrain", v1)]


def test_stale_replay_never_demotes_a_newer_champion() -> None:
    registry, deployer = MemoryRegistry(), MemoryDeployer()
    reg, dep = RegisterBackend(registry), DeployBackend(registry, deployer)
    v1 = register(reg, "r1", 0.8)["version"]
    deploy(dep, "d1", v1)
    v2 = register(reg, "r2", 0.9)["version"]
    deploy(dep, "d2", v2)
    out = deploy(dep, "d1-late", v1)  # a late redelivery of v1's deploy
    assert out["gate"]["superseded_by"] == v2 and out["serving_version"] == v2
    assert registry.champion("sales-forecaster").version == v2  # type: ignore[union-attr]


def test_deploy_validates_params() -> None:
    dep = DeployBackend(MemoryRegistry(), MemoryDeployer())
    with pytest.raises(ValidationError) as err:
        dep.launch(request("deploy", "deploy", "d", {"version": "${steps.register.outputs.version}"}))
    assert err.value.field == "params.version"
    with pytest.raises(ValidationError) as err:
        dep.launch(request("deploy", "deploy", "d", {"version": "1", "endpoint": "../etc"}))
    assert err.value.field == "params.endpoint"
    with pytest.raises(ValidationError) as err:
        dep.launch(request("deploy", "deploy", "d", {"version": "1"}, model={"name": "m"}))
    assert err.value.field == "model.metric"
    missing = settled(dep, dep.launch(request("deploy", "deploy", "d", {"version": "9"})).remote_id)
    assert missing.state == "failed" and not missing.retryable  # the version is looked up in the background


def mv(version: str) -> ModelVersion:
    return ModelVersion("m", version, f"file:///models/{version}")


def test_local_deployer_files_history_and_rollback(tmp_path: Path) -> None:
    d = LocalScoringDeployer(tmp_path, "127.0.0.1", 5999, start_server=False)
    assert d.current("ep") is None and d.rollback("ep") is None
    first = d.deploy("ep", mv("1"))
    assert first.scoring_url == "http://127.0.0.1:5999/endpoints/ep/score" and first.version == "1"
    d.deploy("ep", mv("1"))  # same version again: nothing changes
    assert d.history("ep") == []
    d.deploy("ep", mv("2"))
    assert d.current("ep").version == "2"  # type: ignore[union-attr]
    assert [h["version"] for h in d.history("ep")] == ["1"]
    back = d.rollback("ep")
    assert back is not None and back.version == "1" and d.current("ep").version == "1"  # type: ignore[union-attr]
    assert not list((tmp_path / "endpoints").glob(".*.tmp"))
    with pytest.raises(ValidationError):
        d.deploy("../x", mv("3"))


def test_register_and_deploy_per_instance_take_their_keys_from_the_instance() -> None:
    from shared.engine.model import idempotency_key

    registry, deployer = MemoryRegistry(), MemoryDeployer()
    reg, dep = RegisterBackend(registry), DeployBackend(registry, deployer)
    outs = []
    for i, store in enumerate(["north", "south"]):
        key = idempotency_key("run1", "register", 1, i)
        item = {"partition": store, "model_uri": f"/m/{store}"}
        params = {"model_name": f"sales-{store}", "model_uri": item["model_uri"], "metrics": {"r2": 0.5 + i / 10}}
        req = request("register", "register", key, params, index=i, item=item)
        launched = reg.launch(req)
        assert unstamped(launched.remote_id)[0] == key and reg.launch(req).reattached  # one version per instance
        outs.append(settled(reg, launched.remote_id).outputs)
    assert registry.registers == 2
    tags = registry.get("sales-south", outs[1]["version"]).tags
    assert tags["conveyor.key"] == "run1-register_1-1" and tags["conveyor.index"] == "1"
    assert json.loads(tags["conveyor.item"]) == {"partition": "south", "model_uri": "/m/south"}
    for i, out in enumerate(outs):
        key = idempotency_key("run1", "deploy", 1, i)
        req = request("deploy", "deploy", key, {"model_name": out["model_name"], "version": out["version"]}, index=i)
        got = settled(dep, dep.launch(req).remote_id).outputs
        assert got["decision"] == "promoted" and registry.champion(out["model_name"]).version == out["version"]  # type: ignore[union-attr]
        assert registry.get(out["model_name"], out["version"]).tags["gate.key"] == key
