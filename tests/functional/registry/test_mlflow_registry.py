"""MlflowRegistry on a real SQLite store in a temp home."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

from shared.errors import NotFoundError, ValidationError
from shared.registry.mlflow_registry import MlflowRegistry
from shared.settings import Settings

pytestmark = pytest.mark.functional


def fake_model(path: Path, marker: str) -> Path:
    """An MLflow model directory as far as the registry cares: MLmodel plus a payload."""
    path.mkdir(parents=True)
    (path / "MLmodel").write_text("flavors: {}\n", encoding="utf-8")
    (path / "weights.txt").write_text(marker, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> MlflowRegistry:
    home = tmp_path_factory.mktemp("home")
    return MlflowRegistry.from_settings(Settings(home=home, env={}))


def test_from_settings_uses_sqlite_under_home(tmp_path: Path) -> None:
    reg = MlflowRegistry.from_settings(Settings(home=tmp_path, env={}))
    assert reg.tracking_uri == f"sqlite:///{(tmp_path / 'mlflow' / 'mlflow.db').as_posix()}"
    assert reg.artifact_root == tmp_path / "mlflow" / "artifacts"
    other = MlflowRegistry.from_settings(Settings(home=tmp_path, mlflow_tracking_uri="sqlite:///x.db", env={}))
    assert other.tracking_uri == "sqlite:///x.db"


def test_register_is_idempotent_stores_the_model_and_tags_lineage(registry: MlflowRegistry, tmp_path: Path) -> None:
    model = fake_model(tmp_path / "m", "one")
    lineage = {"conveyor.run_id": "run-1", "source.blob_url": "http://h/landing/a.csv", "source.blob_etag": "0x1"}
    first = registry.register("idem", str(model), {"r2": 0.5}, lineage, key="run-1-register-1")
    again = registry.register("idem", model.as_uri(), {"r2": 0.5}, lineage, key="run-1-register-1")
    assert again == first
    assert [v.version for v in registry.versions("idem")] == [first.version]
    assert first.metrics == {"r2": 0.5}
    assert first.tags["conveyor.key"] == "run-1-register-1"
    assert first.tags["source.blob_etag"] == "0x1" and first.tags["conveyor.run_id"] == "run-1"
    assert registry.find_by_key("run-1-register-1") == first
    # The registry keeps its own copy: changing the original does not change the version.
    stored = Path(urlparse(first.source_uri).path)
    assert stored.is_relative_to(registry.artifact_root)
    (model / "weights.txt").write_text("changed", encoding="utf-8")
    assert (stored / "weights.txt").read_text(encoding="utf-8") == "one"
    # The run in conveyor-registry carries the lineage and the metrics too.
    run = registry.client.get_run(registry.client.get_model_version("idem", first.version).run_id)
    assert run.data.tags["source.blob_url"] == "http://h/landing/a.csv" and run.data.metrics["r2"] == 0.5


def test_champion_promote_previous_and_decisions(registry: MlflowRegistry, tmp_path: Path) -> None:
    assert registry.champion("champ") is None
    v1 = registry.register("champ", str(fake_model(tmp_path / "a", "a")), {"r2": 0.7}, {}, key="k-a")
    v2 = registry.register("champ", str(fake_model(tmp_path / "b", "b")), {"r2": 0.8}, {}, key="k-b")
    assert v1.version != v2.version
    registry.promote("champ", v1.version)
    assert registry.champion("champ").version == v1.version  # type: ignore[union-attr]
    registry.promote("champ", v1.version)  # twice: no 'previous' pointing at itself
    assert registry.previous("champ") is None
    registry.promote("champ", v2.version)
    assert registry.champion("champ").version == v2.version  # type: ignore[union-attr]
    assert registry.previous("champ").version == v1.version  # type: ignore[union-attr]
    registry.record_decision("champ", v1.version, {"decision": "rejected", "reason": "0.7 < 0.8", "gate.key": "d"})
    tags = registry.get("champ", v1.version).tags
    assert tags["gate.decision"] == "rejected" and tags["gate.reason"] == "0.7 < 0.8" and tags["gate.key"] == "d"


def test_errors_are_mapped(registry: MlflowRegistry, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        registry.get("nobody", "1")
    with pytest.raises(NotFoundError):
        registry.promote("nobody", "1")
    not_a_model = tmp_path / "plain"
    not_a_model.mkdir()
    with pytest.raises(ValidationError) as err:
        registry.register("x", str(not_a_model), {}, {}, key="k-x")
    assert err.value.field == "params.model_uri"
    with pytest.raises(ValidationError):
        registry.register("x", "s3://bucket/model", {}, {}, key="k-y")
    with pytest.raises(ValidationError):
        registry.register("bad/name", str(not_a_model), {}, {}, key="k-z")


def test_instances_of_a_register_step_are_versions_found_by_their_own_keys(
    registry: MlflowRegistry, tmp_path: Path
) -> None:
    from shared.backends.base import LaunchRequest
    from shared.backends.register import RegisterBackend
    from shared.engine.model import idempotency_key
    from tests.functional.backends.conftest import wait_done

    backend = RegisterBackend(registry)
    versions = []
    for i, store in enumerate(["s01", "s02"]):
        model = fake_model(tmp_path / store, store)
        key = idempotency_key("0123456789abcdef0123456789abcdef", "register", 1, i)
        request = LaunchRequest(
            run_id="0123456789abcdef0123456789abcdef", flow="many", step="register", kind="register", key=key,
            attempt=1, params={"model_name": f"sales-{store}", "model_uri": str(model), "metrics": {"r2": 0.7}},
            index=i, item={"partition": store},
        )  # fmt: skip
        first = wait_done(backend, backend.launch(request).remote_id)
        again = RegisterBackend(registry)  # a new host finds it by key: no second version
        assert wait_done(again, again.launch(request).remote_id).outputs["version"] == first.outputs["version"]
        assert len(registry.versions(f"sales-{store}")) == 1
        found = registry.find_by_key(key)
        assert found is not None and found.name == f"sales-{store}"
        assert found.tags["conveyor.index"] == str(i) and '"partition": "' + store in found.tags["conveyor.item"]
        versions.append(found)
    assert versions[0].source_uri != versions[1].source_uri


def test_listing_versions_names_champion_and_previous(tmp_path: Path) -> None:
    reg = MlflowRegistry.from_settings(Settings(home=tmp_path / "home", env={}))
    assert reg.model_names() == [] and reg.versions("listed") == []
    made = [
        reg.register("listed", str(fake_model(tmp_path / f"m{i}", str(i))), {"r2": 0.5 + i / 10}, {}, key=f"k-{i}")
        for i in range(3)
    ]
    reg.register("other", str(fake_model(tmp_path / "o", "o")), {"r2": 0.1}, {}, key="k-o")
    assert reg.model_names() == ["listed", "other"]
    listed = reg.versions("listed")
    assert [v.version for v in listed] == [m.version for m in made] == ["1", "2", "3"]
    assert [v.metrics["r2"] for v in listed] == [0.5, 0.6, 0.7]
    assert reg.previous("listed") is None
    reg.promote("listed", "1")
    reg.promote("listed", "3")
    assert reg.champion("listed").version == "3" and reg.previous("listed").version == "1"
