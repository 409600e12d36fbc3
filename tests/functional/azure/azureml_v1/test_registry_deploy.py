"""AzureMLv1Registry and AzureMLWebServiceDeployer on a fake of the azureml-core SDK surface.

azureml-core's ``Workspace`` discovers the model management and run history services through ARM
and the workspace discovery URL, which is impractical to fake over HTTP; the adapters take the SDK
classes (``Model``, ``Run``, ``Webservice``, ``AciWebservice``, ``AksWebservice``, ``AksCompute``)
injected, and these tests hand in the in-memory fake from ``fake_sdk.py`` (real azureml-core
exception types). The register and deploy steps (RegisterBackend, DeployBackend with its gate) are
driven end to end on top of them, as the engine would.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from azureml.exceptions import WebserviceException

from shared.backends.base import LaunchRequest
from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy.azureml_v1 import AzureMLWebServiceDeployer
from shared.errors import NotFoundError, PermanentError, TransientError, ValidationError
from shared.registry.azureml_v1 import AzureMLv1Registry
from tests.functional.azure.azureml_v1.fake_sdk import FakeAzureML
from tests.functional.backends.conftest import wait_done


@pytest.fixture
def azure() -> FakeAzureML:
    return FakeAzureML()


@pytest.fixture
def registry(azure: FakeAzureML) -> AzureMLv1Registry:
    return AzureMLv1Registry(azure.workspace, sdk=azure.sdk)


@pytest.fixture
def deployer(azure: FakeAzureML) -> AzureMLWebServiceDeployer:
    return AzureMLWebServiceDeployer(azure.workspace, "aci", sdk=azure.sdk, wait_timeout=30)


def trained_run(azure: FakeAzureML) -> str:
    run = azure.create_pipeline_run("retrain", steps=1)
    run.children[0].files = ["outputs/model/MLmodel", "outputs/model/model.pkl"]
    return f"azureml://jobs/{run.children[0].id}/outputs/artifacts/paths/outputs/model/"


# ---------------------------------------------------------------- registry


def test_register_from_a_run_artifact_uri_uses_run_register_model(registry, azure):
    uri = trained_run(azure)
    lineage = {"conveyor.run_id": "run1", "conveyor.flow": "retrain", "model_framework": "ScikitLearn"}
    mv = registry.register("churn", uri, {"auc": 0.91}, lineage, key="run1-register-1")

    assert (mv.name, mv.version, mv.source_uri) == ("churn", "1", "azureml:churn:1")
    assert mv.metrics == {"auc": 0.91}
    assert mv.tags["conveyor.key"] == "run1-register-1"
    assert mv.tags["conveyor.run_id"] == "run1" and mv.tags["conveyor.source_model_uri"] == uri
    (step,) = [r for r in azure.runs.values() if r.registered]
    call = step.registered[0]
    assert call["model_name"] == "churn" and call["model_path"] == "outputs/model"
    assert call["properties"] == {"metric.auc": "0.91"}
    assert call["model_framework"] == "ScikitLearn" and "model_framework" not in call["tags"]


def test_register_is_idempotent_on_the_key(registry, azure):
    uri = trained_run(azure)
    first = registry.register("churn", uri, {"auc": 0.9}, {}, key="k1")
    again = registry.register("churn", uri, {"auc": 0.9}, {}, key="k1")
    other = registry.register("churn", uri, {"auc": 0.9}, {}, key="k2")
    assert again.version == first.version == "1" and other.version == "2"
    assert len(azure.models) == 2
    assert registry.find_by_key("k1") == first
    assert registry.find_by_key("nope") is None
    assert ("Model.list", ("churn", [["conveyor.key", "k1"]])) in azure.calls


def test_a_registration_race_resolves_to_the_lowest_version(registry, azure):
    azure.add_model("churn", tags={"conveyor.key": "k"})
    azure.add_model("churn", tags={"conveyor.key": "k"})
    assert registry.find_by_key("k", "churn").version == "1"


def test_register_from_a_local_folder_uploads_it(registry, azure, tmp_path: Path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.pkl").write_bytes(b"x")
    mv = registry.register("churn", model_dir.as_uri(), {}, {}, key="k")
    assert mv.version == "1"
    (call,) = [c for c in azure.calls if c[0] == "Model.register"]
    assert call[1][0] == str(model_dir) and call[1][1] == "churn"


def test_register_refuses_other_schemes_and_missing_paths(registry, tmp_path: Path):
    with pytest.raises(ValidationError) as info:
        registry.register("churn", "s3://bucket/model", {}, {}, key="k")
    assert info.value.field == "params.model_uri"
    with pytest.raises(NotFoundError):
        registry.register("churn", str(tmp_path / "missing"), {}, {}, key="k")
    with pytest.raises(ValidationError):
        registry.register("bad name!", str(tmp_path), {}, {}, key="k")


def test_register_from_a_run_without_the_model_files_fails_with_the_sdk_message(registry, azure):
    run = azure.create_pipeline_run("retrain", steps=1)
    with pytest.raises(NotFoundError, match="Could not locate the provided model_path outputs/model"):
        registry.register("churn", f"azureml://jobs/{run.id}/outputs/artifacts/paths/outputs/model/", {}, {}, "k")


def test_champion_and_previous_move_with_promotions(registry, azure):
    uri = trained_run(azure)
    for key in ("k1", "k2", "k3"):
        registry.register("churn", uri, {"auc": 0.9}, {}, key=key)
    assert registry.champion("churn") is None

    registry.promote("churn", "1")
    assert registry.champion("churn").version == "1" and registry.previous("churn") is None
    registry.promote("churn", "2")
    assert registry.champion("churn").version == "2" and registry.previous("churn").version == "1"
    registry.promote("churn", "3")
    assert registry.champion("churn").version == "3" and registry.previous("churn").version == "2"
    v1 = azure.models[("churn", 1)]
    assert "conveyor.champion" not in v1.tags and "conveyor.previous" not in v1.tags

    updates = sum(m.tag_updates for m in azure.models.values())
    registry.promote("churn", "3")  # already champion: nothing moves
    assert sum(m.tag_updates for m in azure.models.values()) == updates
    with pytest.raises(NotFoundError):
        registry.promote("churn", "42")


def test_two_champions_after_a_crash_resolve_to_the_latest_promotion(registry, azure):
    azure.add_model("churn", tags={"conveyor.champion": "true", "conveyor.promoted_at": "100.0"})
    azure.add_model("churn", tags={"conveyor.champion": "true", "conveyor.promoted_at": "200.0"})
    assert registry.champion("churn").version == "2"


def test_record_decision_tags_the_version_and_get_reads_it(registry, azure):
    registry.register("churn", trained_run(azure), {"auc": 0.9}, {}, key="k")
    registry.record_decision("churn", "1", {"decision": "promoted", "gate.metric": "auc"})
    mv = registry.get("churn", "1")
    assert mv.tags["gate.decision"] == "promoted" and mv.tags["gate.metric"] == "auc"
    with pytest.raises(NotFoundError, match="not found"):
        registry.get("churn", "7")


# ---------------------------------------------------------------- web service deployer


def test_first_deploy_creates_an_aci_service_and_waits(deployer, registry, azure):
    registry.register("churn", trained_run(azure), {}, {}, key="k")
    dep = deployer.deploy("churn-svc", registry.get("churn", "1"))

    assert (dep.endpoint, dep.model_name, dep.version) == ("churn-svc", "churn", "1")
    assert dep.scoring_url == "http://churn-svc.westeurope.azurecontainer.io/score"
    (call,) = [c for c in azure.calls if c[0] == "Model.deploy"]
    name, models, kwargs = call[1]
    assert name == "churn-svc" and models == [("churn", 1)] and kwargs["overwrite"] is True
    assert kwargs["deployment_config"]["type"] == "ACI"
    assert kwargs["deployment_config"]["tags"]["conveyor.model"] == "churn:1"
    assert "deployment_target" not in kwargs and "inference_config" not in kwargs
    service = azure.services["churn-svc"]
    assert service.wait_calls == [30] and service.state == "Healthy"
    assert deployer.current("churn-svc") == dep


def test_deploy_swaps_in_place_is_idempotent_and_rolls_back(deployer, registry, azure):
    uri = trained_run(azure)
    for key in ("k1", "k2"):
        registry.register("churn", uri, {}, {}, key=key)
    deployer.deploy("churn-svc", registry.get("churn", "1"))
    service = azure.services["churn-svc"]

    dep = deployer.deploy("churn-svc", registry.get("churn", "2"))
    assert dep.version == "2"
    assert service.updates[-1]["models"] == [("churn", 2)]
    assert json.loads(service.tags["conveyor.history"]) == ["churn:1"]
    assert deployer.history("churn-svc") == ["churn:1"]

    deployer.deploy("churn-svc", registry.get("churn", "2"))  # already served: no update
    assert len(service.updates) == 1

    back = deployer.rollback("churn-svc")
    assert back is not None and back.version == "1"
    assert service.updates[-1]["models"] == [("churn", 1)]
    assert deployer.current("churn-svc").version == "1"
    assert deployer.rollback("churn-svc") is None  # nothing older


def test_aks_target_deploys_on_the_named_cluster(registry, azure):
    deployer = AzureMLWebServiceDeployer(azure.workspace, "aks", "aks-prod", sdk=azure.sdk, wait_timeout=5)
    registry.register("churn", trained_run(azure), {}, {}, key="k")
    deployer.deploy("churn-aks", registry.get("churn", "1"))
    (call,) = [c for c in azure.calls if c[0] == "Model.deploy"]
    kwargs = call[1][2]
    assert kwargs["deployment_config"]["type"] == "AKS"
    assert kwargs["deployment_target"] == azure.sdk.AksCompute(azure.workspace, "aks-prod")


def test_deployer_settings_are_validated(azure):
    with pytest.raises(ValidationError) as info:
        AzureMLWebServiceDeployer(azure.workspace, "aks", None, sdk=azure.sdk)
    assert info.value.field == "CONVEYOR_AZUREML_AKS_CLUSTER"
    with pytest.raises(ValidationError) as info:
        AzureMLWebServiceDeployer(azure.workspace, "online-endpoint", sdk=azure.sdk)
    assert info.value.field == "CONVEYOR_AZUREML_DEPLOYMENT_TARGET"


def test_failed_and_timed_out_deployments_keep_the_service_message(deployer, registry, azure):
    uri = trained_run(azure)
    for key in ("k1", "k2", "k3"):
        registry.register("churn", uri, {}, {}, key=key)
    deployer.deploy("churn-svc", registry.get("churn", "1"))
    service = azure.services["churn-svc"]

    service.fail_next_wait = WebserviceException(
        "Service deployment polling reached non-successful terminal state, current service state: Failed\n"
        "Error: Container crashed: ModuleNotFoundError: No module named 'sklearn'"
    )
    with pytest.raises(PermanentError, match="non-successful terminal state"):
        deployer.deploy("churn-svc", registry.get("churn", "2"))

    service.fail_next_wait = WebserviceException("Operation timed out after 30 seconds")
    with pytest.raises(TransientError, match="did not finish deploying within 30s"):
        deployer.deploy("churn-svc", registry.get("churn", "3"))


def test_current_of_a_missing_service_is_none_and_names_are_checked(deployer, registry, azure):
    assert deployer.current("nothing-here") is None
    assert deployer.rollback("nothing-here") is None
    registry.register("churn", trained_run(azure), {}, {}, key="k")
    with pytest.raises(ValidationError) as info:
        deployer.deploy("Bad_Name", registry.get("churn", "1"))
    assert info.value.field == "params.endpoint"


# ---------------------------------------------------------------- the register and deploy steps


def step_request(step: str, key: str, params: dict, model: dict) -> LaunchRequest:
    return LaunchRequest(
        run_id=key.split("-")[0],
        flow="retrain",
        step=step,
        kind=step,
        key=key,
        attempt=1,
        params=params,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        trigger={"kind": "blob", "blob": {"url": "https://acct.blob.core.windows.net/in/d.csv", "etag": "0x1"}},
        steps={"train": {"remote_id": "pipeline-run-0001", "outputs": {}}},
        model=model,
    )


def test_register_and_gated_deploy_steps_run_on_the_v1_adapters(registry, deployer, azure):
    model = {"name": "churn", "metric": "auc", "direction": "maximize", "min_improvement": 0.0}
    register = RegisterBackend(registry)
    deploy = DeployBackend(registry, deployer)
    uri = trained_run(azure)

    served = []
    for run, auc in (("r1", 0.80), ("r2", 0.85), ("r3", 0.70)):
        reg = register.launch(
            step_request("register", f"{run}-register-1", {"model_uri": uri, "metrics": {"auc": auc}}, model)
        )
        out = wait_done(register, reg.remote_id).outputs
        assert out["model_uri"] == f"azureml:churn:{out['version']}"
        dep = deploy.launch(
            step_request("deploy", f"{run}-deploy-1", {"version": out["version"], "endpoint": "churn-svc"}, model)
        )
        result = wait_done(deploy, dep.remote_id).outputs
        served.append((result["decision"], result["serving_version"]))

    assert served == [("promoted", "1"), ("promoted", "2"), ("rejected", "2")]
    assert registry.champion("churn").version == "2" and registry.previous("churn").version == "1"
    v3 = registry.get("churn", "3")
    assert v3.tags["gate.decision"] == "rejected" and v3.tags["source.blob_etag"] == "0x1"
    assert v3.tags["step.train.remote_id"] == "pipeline-run-0001"
    # a redelivered register launch reattaches; nothing new is registered
    again = register.launch(
        step_request("register", "r1-register-1", {"model_uri": uri, "metrics": {"auc": 0.8}}, model)
    )
    assert again.reattached and len(azure.models) == 3


def test_listing_model_names_and_versions(registry, azure):
    assert registry.model_names() == []
    azure.add_model("churn", properties={"metric.auc": "0.8"})
    azure.add_model("churn", properties={"metric.auc": "0.9"})
    azure.add_model("fraud")
    assert registry.model_names() == ["churn", "fraud"]
    assert [(v.version, v.metrics.get("auc")) for v in registry.versions("churn")] == [("1", 0.8), ("2", 0.9)]
