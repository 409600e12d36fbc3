"""The scoring server refuses models whose loading would run code it did not vet."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.deploy.scoring_server import RequestError, ScoringState, check_model_is_safe


def model_dir(tmp_path: Path, mlmodel: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "MLmodel").write_text(mlmodel, encoding="utf-8")
    (d / "model.pkl").write_bytes(b"not loaded")
    return d


SKLEARN_PICKLE = """
flavors:
  python_function: {loader_module: mlflow.sklearn, model_path: model.pkl}
  sklearn: {pickled_model: model.pkl, serialization_format: cloudpickle}
"""


def test_pickle_models_are_refused_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = model_dir(tmp_path, SKLEARN_PICKLE)
    monkeypatch.delenv("CONVEYOR_SCORING_ALLOW_PICKLE", raising=False)
    with pytest.raises(RequestError, match="cloudpickle"):
        check_model_is_safe(d)
    monkeypatch.setenv("CONVEYOR_SCORING_ALLOW_PICKLE", "true")
    check_model_is_safe(d)


def test_foreign_loader_modules_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_SCORING_ALLOW_PICKLE", raising=False)
    d = model_dir(tmp_path, "flavors:\n  python_function: {loader_module: evil_loader, code: code}\n")
    with pytest.raises(RequestError, match="evil_loader"):
        check_model_is_safe(d)


def test_model_file_outside_the_model_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_SCORING_ALLOW_PICKLE", "true")
    d = model_dir(tmp_path, SKLEARN_PICKLE.replace("pickled_model: model.pkl", "pickled_model: ../evil.pkl"))
    with pytest.raises(RequestError, match="not inside"):
        check_model_is_safe(d)


def test_score_validates_the_body_before_loading(tmp_path: Path) -> None:
    state = ScoringState(tmp_path)
    with pytest.raises(RequestError) as err:
        state.score("ep", {"data": []})
    assert err.value.status == 400 and err.value.field == "data"  # names the unknown key
    with pytest.raises(RequestError) as err:
        state.score("ep", [1, 2])
    assert err.value.field == "rows[0]"
    with pytest.raises(RequestError) as err:
        state.score("ep", [{"a": 1}])  # no endpoint file
    assert err.value.status == 404
    with pytest.raises(RequestError) as err:
        state.endpoint_file("../../etc/passwd")
    assert err.value.status == 404
