"""Many models on Azure ML: one managed online deployment serving every partition's champion.

What is faked, and why: the MLClient surface (fake_mlclient.py) -- a managed online endpoint
cannot be stood up on loopback (workspace discovery, image builds, the inference server's
container), so ``online_endpoints``, ``online_deployments`` and ``models`` (with
``models.download`` copying a registered version's local folder) are in-memory stand-ins built
from REAL azure-ai-ml entities (``ManagedOnlineDeployment`` with its ``CodeConfiguration`` and
``Environment``, ``Model``) that raise REAL azure-core errors. What is real: the deployer, the
registry adapter and the shared register/deploy steps with their gate, and the scoring script
shipped as the deployment's code (shared/deploy/scoring/azureml_score.py), run in this process
with the environment variables the deployer put on the fake deployment, loading real MLflow
models (scikit-learn, skops) that it downloads through the fake.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.backends.deploy import DeployBackend
from shared.backends.register import RegisterBackend
from shared.deploy import azureml_v2
from shared.deploy.azureml_v2 import MANY, AzureMLOnlineDeployer
from shared.deploy.scoring import azureml_score
from shared.errors import ConflictError, PermanentError, ValidationError
from shared.registry.azureml_v2 import AzureMLRegistry
from shared.registry.base import ModelVersion
from tests.functional.azure.azureml_v2.fake_mlclient import FakeMLClient
from tests.functional.partition_steps import ship_partition

pytestmark = pytest.mark.functional

ENDPOINT = "sales-stores"
COLUMNS = ["store", "promo", "price"]


def partition_model(path: Path, offset: float) -> Path:
    """A real MLflow model (skops) that predicts ``offset + 10 * promo - price``: its answers say which one ran."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame({"store": [1.0, 1.0, 1.0, 1.0], "promo": [0.0, 1.0, 0.0, 1.0], "price": [1.0, 2.0, 3.0, 4.0]})
    target = offset + 10.0 * frame["promo"] - frame["price"]
    model = LinearRegression().fit(frame, target)
    mlflow.sklearn.save_model(
        model, str(path), serialization_format="skops", signature=infer_signature(frame, model.predict(frame))
    )
    return path


@pytest.fixture
def client() -> FakeMLClient:
    return FakeMLClient()


@pytest.fixture
def steps(client: FakeMLClient) -> tuple[RegisterBackend, DeployBackend, AzureMLRegistry, AzureMLOnlineDeployer]:
    registry = AzureMLRegistry(client)
    deployer = AzureMLOnlineDeployer(client, wait_timeout=5)
    return RegisterBackend(registry), DeployBackend(registry, deployer), registry, deployer


def ship(
    steps: tuple[RegisterBackend, DeployBackend, AzureMLRegistry, AzureMLOnlineDeployer],
    model_dir: Path,
    store: str,
    r2: float,
    run: str,
) -> dict[str, Any]:
    """The many-models flow's register and deploy instances for one store."""
    reg, dep, _, _ = steps
    status = ship_partition(
        reg,
        dep,
        run=run,
        index=int(store),
        store=store,
        model_name=f"sales-forecaster-{store}",
        model_uri=str(model_dir),
        metrics={"r2": r2},
        endpoint=ENDPOINT,
        blob_url="https://acct.blob.core.windows.net/landing-stores/s.csv",
    )
    assert status.state == "succeeded", status.error
    return status.outputs


def scoring_script(client: FakeMLClient, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The shipped scoring script, initialised with the environment the deployer gave the deployment."""
    deployment = client.online_deployments.store[(ENDPOINT, MANY)]
    for name, value in deployment.environment_variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CONVEYOR_MANY_REFRESH_SECONDS", "0")  # look the champion up on every request
    azureml_score.init(client=client)
    return azureml_score


def test_one_deployment_serves_every_partition_and_a_rejected_one_keeps_its_champion(
    client: FakeMLClient, steps: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = {
        store: ship(steps, partition_model(tmp_path / f"m{store}", 100.0 * int(store)), store, 0.8, "run1")
        for store in ("1", "2", "3")
    }
    assert {o["decision"] for o in first.values()} == {"promoted"}
    assert all(o["partition"] == s and o["serving_version"] == "1" for s, o in first.items())

    # ONE deployment for three partitions, created once, carrying the shipped scoring code
    created = [a[0] for op, a in client.rec.calls if op == "online_deployments.begin_create_or_update"]
    assert len(created) == 1 and created[0].name == MANY
    dep = created[0]
    assert Path(dep.code_configuration.code) == azureml_v2.SCORING_CODE
    assert dep.code_configuration.scoring_script == "azureml_score.py"
    assert (azureml_v2.SCORING_CODE / "azureml_score.py").is_file() and (
        azureml_v2.SCORING_CODE / "protocol.py"
    ).is_file()
    assert dep.environment.conda_file  # the environment.yml next to the script, read by the entity
    env = dep.environment_variables
    assert env["CONVEYOR_MANY_MODEL_PREFIX"] == "sales-forecaster-" and env["CONVEYOR_MANY_PARTITION_KEY"] == "store"
    assert env["CONVEYOR_MANY_WORKSPACE"] == client.workspace_name and env["CONVEYOR_MANY_ENDPOINT"] == ENDPOINT
    assert client.online_endpoints.store[ENDPOINT].traffic == {MANY: 100}

    script = scoring_script(client, monkeypatch)
    mixed = {"dataframe_split": {"columns": COLUMNS, "data": [[2, 1, 3.0], [1, 0, 1.0], [3.0, 1, 2.0]]}}
    answer = script.run(json.dumps(mixed))
    assert answer["partitions"] == ["2", "1", "3"]
    assert answer["predictions"] == pytest.approx([207.0, 99.0, 308.0])  # each row by its own store's model
    assert answer["models"]["2"] == {"model": "sales-forecaster-2", "version": "1"}

    # run 2: store 2's candidate is worse (rejected), store 3's better (promoted)
    worse = ship(steps, partition_model(tmp_path / "m2b", 2000.0), "2", 0.5, "run2")
    better = ship(steps, partition_model(tmp_path / "m3b", 3000.0), "3", 0.9, "run2")
    assert worse["decision"] == "rejected" and worse["serving_version"] == "1"
    assert "partition 2" in worse["gate"]["reason"] and worse["gate"]["partition"] == "2"
    assert better["decision"] == "promoted" and better["serving_version"] == "2"
    assert len([1 for op, _ in client.rec.calls if op == "online_deployments.begin_create_or_update"]) == 1
    _, _, _, deployer = steps
    assert deployer.current_partition(ENDPOINT, "2").version == "1"
    assert {p: d.version for p, d in deployer.partitions(ENDPOINT).items()} == {"1": "1", "2": "1", "3": "2"}

    answer = script.run(
        json.dumps({"rows": [{"store": 2, "promo": 1, "price": 3.0}, {"store": 3, "promo": 1, "price": 2.0}]})
    )
    assert answer["predictions"] == pytest.approx([207.0, 3008.0])  # 2 kept its champion, 3 swapped
    assert answer["models"] == {
        "2": {"model": "sales-forecaster-2", "version": "1"},
        "3": {"model": "sales-forecaster-3", "version": "2"},
    }

    # a partition the registry has no champion for: 404 naming it and its cell; no key: 400
    unknown = script.run(json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [[1, 0, 1.0], [99, 0, 1.0]]}}))
    assert unknown["status"] == 404 and unknown["error"]["code"] == "unknown_partition"
    assert (
        f"endpoint {ENDPOINT!r} serves no partition '99'" in unknown["error"]["message"]
        and unknown["error"]["field"] == "dataframe_split.data[1][0]"
    )
    keyless = script.run(json.dumps({"instances": [{"promo": 1, "price": 2.0}]}))
    assert keyless["status"] == 400 and keyless["error"]["field"] == "instances[0].store"
    routed = script.run(json.dumps({"instances": [{"promo": 1, "price": 2.0}], "params": {"partition": "1"}}))
    assert routed["predictions"] == pytest.approx([108.0])
    assert script.run("{not json")["status"] == 400


def test_the_scoring_script_picks_the_champion_the_registry_promoted(client: FakeMLClient, tmp_path: Path) -> None:
    registry = AzureMLRegistry(client)
    for n in range(3):
        registry.register("sales-forecaster-7", str(tmp_path), {"r2": 0.5}, {}, f"k{n}")
    registry.promote("sales-forecaster-7", "1")
    registry.promote("sales-forecaster-7", "3")
    versions = azureml_score.list_versions(client, "sales-forecaster-7")
    assert azureml_score.champion_version(versions) == registry.champion("sales-forecaster-7").version == "3"
    assert azureml_score.list_versions(client, "sales-forecaster-404") == []


def test_partition_models_need_a_name_that_ends_with_their_partition(steps: Any) -> None:
    _, _, _, deployer = steps
    model = ModelVersion("sales-forecaster", "1", "azureml://jobs/j/outputs/model")
    with pytest.raises(ValidationError) as err:
        deployer.deploy_partition(ENDPOINT, "7", model, "store")
    assert err.value.field == "params.model_name" and "<prefix>7" in err.value.message


def test_an_endpoint_is_single_model_or_many_never_both(steps: Any) -> None:
    _, _, _, deployer = steps
    deployer.deploy("single-ep", ModelVersion("sales-forecaster", "1", "azureml://x"))
    with pytest.raises(ConflictError, match="serves one model"):
        deployer.deploy_partition("single-ep", "7", ModelVersion("sales-forecaster-7", "1", "azureml://x"), "store")
    deployer.deploy_partition(ENDPOINT, "7", ModelVersion("sales-forecaster-7", "1", "azureml://x"), "store")
    with pytest.raises(ConflictError, match="partition models"):
        deployer.deploy(ENDPOINT, ModelVersion("sales-forecaster", "1", "azureml://x"))
    with pytest.raises(ConflictError, match="routed by 'store'"):
        deployer.deploy_partition(ENDPOINT, "8", ModelVersion("sales-forecaster-8", "1", "azureml://x"), "meter")


def test_v1_web_services_refuse_partition_models_naming_the_setting() -> None:
    from shared.deploy.azureml_v1 import AzureMLWebServiceDeployer
    from tests.functional.azure.azureml_v1.fake_sdk import FakeAzureML

    azure = FakeAzureML()
    deployer = AzureMLWebServiceDeployer(azure.workspace, "aci", sdk=azure.sdk)
    with pytest.raises(PermanentError) as err:
        deployer.deploy_partition("svc", "7", ModelVersion("sales-forecaster-7", "1", "azureml://x"), "store")
    assert "CONVEYOR_AZUREML_DEPLOYMENT_TARGET" in err.value.message and not err.value.retryable
