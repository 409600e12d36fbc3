"""AzureMLRegistry and AzureMLOnlineDeployer against a fake of the MLClient surface.

See fake_mlclient.py for why the SDK surface and not HTTP is faked: the fake keeps REAL
azure-ai-ml ``Model``, ``ManagedOnlineEndpoint`` and ``ManagedOnlineDeployment`` entities
(version auto-increment and tag updates as the service does them) and raises REAL azure-core
errors. The shared register/deploy step backends run on top, as in a flow.
"""

from __future__ import annotations

from typing import Any

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy.azureml_v2 import AzureMLOnlineDeployer, served_model
from shared.errors import NotFoundError, PermanentError, ThrottledError, TransientError, ValidationError
from shared.registry.azureml_v2 import ALIAS_TAG, AzureMLRegistry
from shared.registry.base import ModelVersion
from tests.functional.azure.azureml_v2.fake_mlclient import FakeMLClient, http_error
from tests.functional.backends.conftest import wait_done

MODEL = "sales-forecaster"


@pytest.fixture
def client() -> FakeMLClient:
    return FakeMLClient()


def register(reg: AzureMLRegistry, key: str, r2: float, job: str = "job1") -> ModelVersion:
    return reg.register(
        MODEL,
        f"azureml://jobs/{job}/outputs/model",
        {"r2": r2, "rmse": 2.5},
        {"conveyor.run_id": "run1", "source.blob_url": "https://acct.blob.core.windows.net/in/x.csv", "empty": ""},
        key,
    )


# ---------------------------------------------------------------- registry


def test_register_creates_a_version_with_lineage_and_is_idempotent_on_key(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    mv = register(reg, "run1-register-1", 0.8)
    assert (mv.name, mv.version) == (MODEL, "1")
    assert mv.source_uri == "azureml://jobs/job1/outputs/model"
    assert mv.metrics == {"r2": 0.8, "rmse": 2.5}
    assert mv.tags["conveyor.key"] == "run1-register-1"
    assert mv.tags["conveyor.run_id"] == "run1"
    assert mv.tags["source.blob_url"] == "https://acct.blob.core.windows.net/in/x.csv"
    assert "empty" not in mv.tags
    sent = [args[0] for op, args in client.rec.calls if op == "models.create_or_update"]
    assert len(sent) == 1
    from azure.ai.ml.entities import Model

    assert isinstance(sent[0], Model) and sent[0].type == "mlflow_model" and sent[0].version is None
    assert sent[0].properties == {"metric.r2": "0.8", "metric.rmse": "2.5"}

    again = register(reg, "run1-register-1", 0.8)
    assert again == mv
    fresh = AzureMLRegistry(client)  # after a restart: found by searching the tags
    assert fresh.find_by_key("run1-register-1") == mv
    assert fresh.find_by_key("run1-register-1", MODEL) == mv
    assert fresh.find_by_key("nope") is None
    assert client.rec.count("models.create_or_update") == 1
    assert register(reg, "run2-register-1", 0.9).version == "2"


def test_register_step_on_the_azure_registry(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    step = RegisterBackend(reg)
    req = LaunchRequest(
        run_id="run7",
        flow="retrain",
        step="register",
        kind="register",
        key="run7-register-1",
        attempt=1,
        params={"model_uri": "azureml://jobs/run7-train-1/outputs/model", "metrics": {"r2": "0.75"}},
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        model={"name": MODEL, "metric": "r2"},
        steps={"train": {"remote_id": "run7-train-1", "outputs": {}}},
    )
    res = step.launch(req)
    wait_done(step, res.remote_id)
    st = RegisterBackend(reg).poll(res.remote_id)  # a restarted host
    assert st.state == "succeeded"
    assert st.outputs["version"] == "1" and st.outputs["metrics"] == {"r2": 0.75}
    mv = reg.get(MODEL, "1")
    assert mv.tags["step.train.remote_id"] == "run7-train-1"
    assert mv.tags["conveyor.traceparent"].startswith("00-0af7")


def test_champion_promote_and_previous_via_version_tags(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    v1 = register(reg, "k1", 0.7)
    v2 = register(reg, "k2", 0.8)
    v3 = register(reg, "k3", 0.9)
    assert reg.champion(MODEL) is None
    reg.promote(MODEL, v1.version)
    assert reg.champion(MODEL) is not None and reg.champion(MODEL).version == "1"  # type: ignore[union-attr]
    assert reg.previous(MODEL) is None
    reg.promote(MODEL, v2.version)
    reg.promote(MODEL, v2.version)  # twice: not its own previous
    assert reg.champion(MODEL).version == "2"  # type: ignore[union-attr]
    assert reg.previous(MODEL).version == "1"  # type: ignore[union-attr]
    reg.promote(MODEL, v3.version)
    assert reg.champion(MODEL).version == "3"  # type: ignore[union-attr]
    assert reg.previous(MODEL).version == "2"  # type: ignore[union-attr]
    tags = {v: client.models.store[(MODEL, v)].tags.get(ALIAS_TAG) for v in ("1", "2", "3")}
    assert tags == {"1": "", "2": "previous", "3": "champion"}
    with pytest.raises(NotFoundError, match="not found"):
        reg.promote(MODEL, "99")
    assert reg.champion(MODEL).version == "3"  # type: ignore[union-attr]


def test_a_half_done_promotion_still_answers_the_newest_champion(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    register(reg, "k1", 0.7)
    register(reg, "k2", 0.8)
    reg.promote(MODEL, "2")
    # crash after step 1 of promoting v1 again (a rollback): both carry the champion tag
    orig = reg._set_tags
    calls: list[Any] = []

    def first_only(name: str, version: str, updates: dict[str, str | None]) -> Any:
        calls.append(version)
        if len(calls) > 1:
            raise TransientError("crash", service="azureml")
        return orig(name, version, updates)

    reg._set_tags = first_only  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        reg.promote(MODEL, "1")
    reg._set_tags = orig  # type: ignore[method-assign]
    assert reg.champion(MODEL).version == "1"  # type: ignore[union-attr]
    reg.promote(MODEL, "2")  # the next promotion tidies up
    assert reg.champion(MODEL).version == "2"  # type: ignore[union-attr]
    assert reg.previous(MODEL).version == "1"  # type: ignore[union-attr]
    assert [m.tags.get(ALIAS_TAG) for m in reg.versions(MODEL)] == ["previous", "champion"]


def test_registry_errors_are_mapped(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    client.rec.fail("models.create_or_update", http_error(429, "(TooManyRequests) slow down", "TooManyRequests"))
    with pytest.raises(ThrottledError, match="slow down"):
        register(reg, "k1", 0.7)
    client.rec.fail(
        "models.create_or_update", http_error(400, "(UserError) Path azureml://jobs/job1/outputs/model is invalid")
    )
    with pytest.raises(PermanentError, match="is invalid"):
        register(reg, "k1", 0.7)
    with pytest.raises(ValidationError) as info:
        reg.register("bad name!", "azureml://x", {}, {}, "k")
    assert info.value.field == "params.model_name"
    assert register(reg, "k1", 0.7).version == "1"


# ---------------------------------------------------------------- deployer


def test_deploy_blue_then_green_switches_traffic_and_rolls_back(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    v1, v2 = register(reg, "k1", 0.7), register(reg, "k2", 0.8)
    dep = AzureMLOnlineDeployer(client, instance_type="Standard_DS2_v2", instance_count=2, wait_timeout=5)
    assert dep.current("sales-forecaster") is None

    d1 = dep.deploy("sales-forecaster", v1)
    assert (d1.model_name, d1.version) == (MODEL, "1")
    assert d1.scoring_url == "https://sales-forecaster.westeurope.inference.ml.azure.com/score"
    ep_sent = [a[0] for op, a in client.rec.calls if op == "online_endpoints.begin_create_or_update"]
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint

    assert isinstance(ep_sent[0], ManagedOnlineEndpoint) and ep_sent[0].auth_mode == "key"
    assert ep_sent[-1].traffic == {"blue": 100}
    dep_sent = [a[0] for op, a in client.rec.calls if op == "online_deployments.begin_create_or_update"]
    assert isinstance(dep_sent[0], ManagedOnlineDeployment)
    assert (dep_sent[0].name, dep_sent[0].model, dep_sent[0].instance_type, dep_sent[0].instance_count) == (
        "blue",
        f"azureml:{MODEL}:1",
        "Standard_DS2_v2",
        2,
    )

    assert dep.deploy("sales-forecaster", v1) == d1  # already serving: no new deployment
    assert client.rec.count("online_deployments.begin_create_or_update") == 1

    d2 = dep.deploy("sales-forecaster", v2)
    assert d2.version == "2"
    assert client.online_endpoints.store["sales-forecaster"].traffic == {"green": 100, "blue": 0}
    assert ("sales-forecaster", "blue") in client.online_deployments.store  # kept for rollback
    assert dep.current("sales-forecaster") == d2

    back = dep.rollback("sales-forecaster")
    assert back is not None and back.version == "1"
    assert client.online_endpoints.store["sales-forecaster"].traffic == {"blue": 100, "green": 0}
    assert dep.current("sales-forecaster") == back

    v3 = register(reg, "k3", 0.9)
    d3 = dep.deploy("sales-forecaster", v3)  # replaces the idle colour (green), never the live one
    assert d3.version == "3"
    assert client.online_endpoints.store["sales-forecaster"].traffic == {"green": 100, "blue": 0}
    assert served_model(client.online_deployments.store[("sales-forecaster", "blue")]) == (MODEL, "1")


def test_slow_deployment_is_retryable_and_a_retry_picks_it_up(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    v1 = register(reg, "k1", 0.7)
    dep = AzureMLOnlineDeployer(client, wait_timeout=0.01)
    client.online_deployments.finish = False
    with pytest.raises(TransientError, match="still in progress"):
        dep.deploy("sales-forecaster", v1)
    with pytest.raises(TransientError, match="still creating"):
        dep.deploy("sales-forecaster", v1)
    assert client.rec.count("online_deployments.begin_create_or_update") == 1
    client.online_deployments.store[("sales-forecaster", "blue")]._provisioning_state = "Succeeded"
    d = dep.deploy("sales-forecaster", v1)
    assert d.version == "1" and client.rec.count("online_deployments.begin_create_or_update") == 1
    assert client.online_endpoints.store["sales-forecaster"].traffic == {"blue": 100}


def test_failed_provisioning_fails_the_deploy_and_bad_names_are_refused(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    v1 = register(reg, "k1", 0.7)
    dep = AzureMLOnlineDeployer(client, wait_timeout=1)
    client.online_deployments.outcome = "Failed"
    with pytest.raises(PermanentError, match="provisioning ended Failed"):
        dep.deploy("sales-forecaster", v1)
    with pytest.raises(ValidationError) as info:
        dep.deploy("sales_forecaster", v1)
    assert info.value.field == "params.endpoint"
    client.rec.fail("online_endpoints.get", http_error(403, "(AuthorizationFailed) no access"))
    with pytest.raises(PermanentError, match="no access"):
        dep.current("sales-forecaster")


def test_deploy_step_gates_promotes_and_records_a_rejection(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    dep = AzureMLOnlineDeployer(client, wait_timeout=1)
    step = DeployBackend(reg, dep)
    spec = {"name": MODEL, "metric": "r2", "direction": "maximize", "min_improvement": 0.01}

    def req(version: str, key: str) -> LaunchRequest:
        return LaunchRequest(
            run_id=key.split("-")[0],
            flow="retrain",
            step="deploy",
            kind="deploy",
            key=key,
            attempt=1,
            params={"version": version, "endpoint": "sales-forecaster"},
            model=spec,
        )

    v1 = register(reg, "k1", 0.80)
    st = wait_done(step, step.launch(req(v1.version, "r1-deploy-1")).remote_id)
    assert st.outputs["decision"] == "promoted" and st.outputs["serving_version"] == "1"
    assert reg.champion(MODEL).version == "1"  # type: ignore[union-attr]

    v2 = register(reg, "k2", 0.805)  # below min_improvement
    res = step.launch(req(v2.version, "r2-deploy-1"))
    wait_done(step, res.remote_id)
    st = DeployBackend(reg, dep).poll(res.remote_id)  # after a restart: read back from the version tags
    assert st.state == "succeeded"
    assert st.outputs["decision"] == "rejected" and st.outputs["gate"]["promote"] is False
    assert st.outputs["serving_version"] == "1"
    tags = reg.get(MODEL, "2").tags
    assert tags["gate.key"] == "r2-deploy-1" and tags["gate.decision"] == "rejected" and "gate.result" in tags
    assert reg.champion(MODEL).version == "1"  # type: ignore[union-attr]
    assert dep.current("sales-forecaster").version == "1"  # type: ignore[union-attr]


def test_listing_model_names_and_versions(client: FakeMLClient) -> None:
    reg = AzureMLRegistry(client)
    assert reg.model_names() == []
    register(reg, "k1", 0.7)
    register(reg, "k2", 0.8)
    reg.register("other-model", "azureml://jobs/j/outputs/model", {"r2": 0.1}, {}, key="k3")
    assert reg.model_names() == sorted([MODEL, "other-model"])
    assert [(v.version, v.metrics["r2"]) for v in reg.versions(MODEL)] == [("1", 0.7), ("2", 0.8)]
    assert reg.versions("never-registered") == []
