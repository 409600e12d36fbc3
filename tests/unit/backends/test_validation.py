"""What the local backends refuse at launch, before any process starts, and the dbutils shim."""

from __future__ import annotations

import builtins
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_azureml import LocalAzureMLBackend, aml_argv
from shared.backends.local_batch import LocalBatchBackend
from shared.backends.local_databricks import SHIM_DIR, LocalDatabricksBackend
from shared.errors import PermanentError, ValidationError
from tests.functional.backends.dirblobs import DirBlobStore


def req(kind: str, params: dict, key: str = "run-1-s-1") -> LaunchRequest:
    return LaunchRequest(run_id="run-1", flow="f", step="s", kind=kind, key=key, attempt=1, params=params)


# ---------------------------------------------------------------- batch


@pytest.fixture
def batch(tmp_path: Path) -> LocalBatchBackend:
    return LocalBatchBackend(DirBlobStore(tmp_path / "blobs"), tmp_path / "home", 1)


def test_batch_refuses_unknown_placeholder_before_running(batch: LocalBatchBackend, tmp_path: Path) -> None:
    url = batch.blobs.upload("in", "a.csv", b"x").url
    with pytest.raises(ValidationError) as err:
        batch.launch(req("batch", {"command": "cat {inptu}", "inputs": url}))
    assert err.value.field == "params.command"
    assert not (tmp_path / "home" / "batch").exists()


def test_batch_refuses_unusable_blob_names(batch: LocalBatchBackend) -> None:
    url = batch.blobs.upload("in", "a.csv", b"x").url
    bad = batch.blobs.upload("in", "dir/..", b"x").url
    with pytest.raises(ValidationError) as err:
        batch.launch(req("batch", {"command": "cat {input}", "inputs": [url, bad]}))
    assert err.value.field == "params.inputs[1]"
    with pytest.raises(ValidationError) as err:
        batch.launch(req("batch", {"command": "cat {input}", "inputs": url, "resource_files": ["apps/"]}))
    assert err.value.field == "params.resource_files[0]"


def test_batch_names_a_bad_param(batch: LocalBatchBackend) -> None:
    with pytest.raises(ValidationError) as err:
        batch.launch(req("batch", {"command": "true", "inputs": "in/", "max_task_retries": 99}))
    assert err.value.field == "params.max_task_retries"


# ---------------------------------------------------------------- databricks


def test_databricks_job_id_is_not_runnable_locally(tmp_path: Path) -> None:
    be = LocalDatabricksBackend(tmp_path / "home", tmp_path, "conn")
    with pytest.raises(PermanentError, match="python_file"):
        be.launch(req("databricks", {"job_id": 42}))


@pytest.mark.parametrize("path", ["../outside.py", "/etc/passwd", "a/../../x.py", "missing.py"])
def test_databricks_refuses_files_outside_the_root(tmp_path: Path, path: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside.py").write_text("print('no')")
    be = LocalDatabricksBackend(tmp_path / "home", root, "conn")
    with pytest.raises(ValidationError) as err:
        be.launch(req("databricks", {"python_file": path}))
    assert err.value.field == "params.python_file"
    assert not (tmp_path / "home" / "databricks").exists()


# ---------------------------------------------------------------- azureml


def test_aml_argv_fills_one_word_per_value_and_drops_optional_blocks() -> None:
    argv = aml_argv(
        "python t.py --data ${{inputs.data}} $[[--alpha ${{inputs.alpha}}]] --model=${{outputs.model}}",
        {"data": "/x/a b;$(touch p).csv"},
        {"model": "/o/model"},
    )
    assert argv == ["python", "t.py", "--data", "/x/a b;$(touch p).csv", "--model=/o/model"]
    with pytest.raises(ValidationError, match="no value"):
        aml_argv("echo ${{inputs.missing}}", {}, {})
    with pytest.raises(ValidationError, match="unsupported"):
        aml_argv("echo ${{search_space.x}}", {}, {})
    with pytest.raises(ValidationError, match="inside quotes"):
        aml_argv("echo '${{inputs.data}}'", {"data": "x"}, {})
    with pytest.raises(ValidationError, match="shell syntax"):
        aml_argv("echo ${{inputs.data}} > out.txt", {"data": "x"}, {})


PIPELINE = """
type: pipeline
inputs:
  data: {type: uri_file, path: ./data.csv}
  alpha: 0.5
jobs:
  train:
    type: command
    code: ./src
    command: python train.py --data ${{inputs.d}} --model ${{outputs.model}} --alpha ${{inputs.a}}
    inputs:
      d: ${{parent.jobs.prep.outputs.clean}}
      a: ${{parent.inputs.alpha}}
    outputs:
      model: {type: uri_folder}
  prep:
    code: ./src
    command: python prep.py --data ${{inputs.data}} --out ${{outputs.clean}}
    inputs:
      data: ${{parent.inputs.data}}
    outputs:
      clean: {type: uri_folder}
"""


def aml(tmp_path: Path, text: str) -> LocalAzureMLBackend:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "data.csv").write_text("a\n1\n")
    (tmp_path / "p.yml").write_text(text)
    return LocalAzureMLBackend(tmp_path / "home", tmp_path, None)


def test_azureml_orders_jobs_by_dependency(tmp_path: Path) -> None:
    be = aml(tmp_path, PIPELINE)
    spec = be._prepare(req("azureml", {"pipeline": "p.yml"}), tmp_path / "x")
    assert [j["name"] for j in spec["jobs"]] == ["prep", "train"]
    assert spec["inputs"]["data"] == {"kind": "path", "path": str(tmp_path / "data.csv"), "type": "uri_file"}
    assert spec["inputs"]["alpha"] == {"kind": "literal", "value": "0.5"}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda t: t.replace("${{parent.jobs.prep.outputs.clean}}", "${{parent.jobs.train.outputs.model}}"),
            "pipeline.jobs.train.inputs.d",
        ),
        (
            lambda t: t.replace("${{parent.jobs.prep.outputs.clean}}", "${{parent.jobs.prep.outputs.nope}}"),
            "pipeline.jobs.train.inputs.d",
        ),
        (
            lambda t: t.replace("code: ./src\n    command: python train", "code: ../..\n    command: python train"),
            "pipeline.jobs.train.code",
        ),
        (lambda t: t.replace("--alpha ${{inputs.a}}", "--alpha ${{inputs.zz}}"), "pipeline.jobs.train.command"),
        (
            lambda t: t.replace("data: ${{parent.inputs.data}}", "data: ${{parent.inputs.data}} x"),
            "pipeline.jobs.prep.inputs.data",
        ),
    ],
)
def test_azureml_refuses_bad_pipelines(tmp_path: Path, mutate, field: str) -> None:
    be = aml(tmp_path, mutate(PIPELINE))
    with pytest.raises(ValidationError) as err:
        be._prepare(req("azureml", {"pipeline": "p.yml"}), tmp_path / "x")
    assert err.value.field == field


def test_azureml_refuses_a_cycle(tmp_path: Path) -> None:
    text = PIPELINE.replace("data: ${{parent.inputs.data}}", "data: ${{parent.jobs.train.outputs.model}}")
    be = aml(tmp_path, text)
    with pytest.raises(ValidationError, match="cycle"):
        be._prepare(req("azureml", {"pipeline": "p.yml"}), tmp_path / "x")


def test_azureml_refuses_pipeline_outside_root_and_unknown_inputs(tmp_path: Path) -> None:
    be = aml(tmp_path, PIPELINE)
    with pytest.raises(ValidationError) as err:
        be.launch(req("azureml", {"pipeline": "../p.yml"}))
    assert err.value.field == "params.pipeline"
    with pytest.raises(ValidationError) as err:
        be.launch(req("azureml", {"pipeline": "p.yml", "inputs": {"nope": "1"}}))
    assert err.value.field == "params.inputs.nope"
    with pytest.raises(PermanentError, match="published"):
        be.launch(req("azureml", {"published_pipeline_id": "abc"}))


def test_azureml_param_inputs_are_paths_or_literals(tmp_path: Path) -> None:
    be = aml(tmp_path, PIPELINE)
    spec = be._prepare(req("azureml", {"pipeline": "p.yml", "inputs": {"alpha": "0.9", "data": "data.csv"}}), tmp_path)
    assert spec["inputs"]["alpha"] == {"kind": "literal", "value": "0.9"}
    assert spec["inputs"]["data"]["path"] == str(tmp_path / "data.csv")
    with pytest.raises(ValidationError):
        be._prepare(req("azureml", {"pipeline": "p.yml", "inputs": {"data": "/etc/passwd"}}), tmp_path)


# ---------------------------------------------------------------- dbutils shim


def load_shim(monkeypatch: pytest.MonkeyPatch, exit_file: Path, argv: list[str]) -> ModuleType:
    monkeypatch.setenv("CONVEYOR_TASK_DBUTILS_EXIT_FILE", str(exit_file))
    monkeypatch.setattr(sys, "argv", ["job.py", *argv])
    monkeypatch.delattr(builtins, "dbutils", raising=False)
    spec = importlib.util.spec_from_file_location("conveyor_test_shim", SHIM_DIR / "sitecustomize.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shim_widgets_and_exit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    exit_file = tmp_path / "exit.txt"
    load_shim(monkeypatch, exit_file, ["--input", "a b.csv", "--lake=/tmp/l"])
    dbutils = builtins.dbutils  # type: ignore[attr-defined]
    try:
        assert dbutils.widgets.get("input") == "a b.csv"
        assert dbutils.widgets.get("lake") == "/tmp/l"
        with pytest.raises(ValueError, match="--missing"):
            dbutils.widgets.get("missing")
        dbutils.widgets.text("missing", "dflt")
        assert dbutils.widgets.get("missing") == "dflt"
        with pytest.raises(SystemExit) as stop:
            dbutils.notebook.exit({"rows": 3})
        assert stop.value.code == 0
        assert exit_file.read_text() == "{'rows': 3}"
    finally:
        monkeypatch.delattr(builtins, "dbutils", raising=False)
