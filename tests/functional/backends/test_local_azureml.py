"""LocalAzureMLBackend running a real two-job pipeline."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_azureml import LocalAzureMLBackend
from shared.blobs.storage import AzureBlobStore
from shared.settings import Settings
from tests.conftest import unique_suffix
from tests.functional.backends.conftest import wait_done

PIPELINE = """
$schema: https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json
type: pipeline
experiment_name: conveyor
settings: {default_compute: azureml:cpu-cluster}
inputs:
  data: {type: uri_file, path: ./data/train.csv}
  alpha: 0.5
jobs:
  train:
    type: command
    code: ./src
    environment: azureml:AzureML-sklearn-1.5@latest
    command: python train.py --data ${{inputs.data}} --model ${{outputs.model}} $[[--alpha ${{inputs.alpha}}]]
    inputs:
      data: ${{parent.inputs.data}}
      alpha: ${{parent.inputs.alpha}}
    outputs:
      model: {type: uri_folder}
  evaluate:
    type: command
    code: ./src
    command: python evaluate.py --model ${{inputs.model}} --report ${{outputs.report}}
    inputs:
      model: ${{parent.jobs.train.outputs.model}}
    outputs:
      report: {type: uri_folder}
"""

TRAIN = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--alpha", default="none")
a = p.parse_args()
rows = open(a.data).read().splitlines()
with open(os.path.join(a.model, "model.json"), "w") as f:
    json.dump({"rows": len(rows), "alpha": a.alpha}, f)
with open(os.environ["CONVEYOR_TASK_METRICS_FILE"], "a") as m:
    m.write(json.dumps({"name": "rmse", "value": 9.0}) + "\\n")
    m.write(json.dumps({"name": "rows", "value": len(rows)}) + "\\n")
"""

EVALUATE = """
import argparse, json, os, sys
p = argparse.ArgumentParser()
p.add_argument("--model"); p.add_argument("--report")
a = p.parse_args()
model = json.load(open(os.path.join(a.model, "model.json")))
if model["rows"] == 0:
    print("empty model", file=sys.stderr)
    sys.exit(5)
open(os.path.join(a.report, "report.txt"), "w").write("ok")
with open(os.environ["CONVEYOR_TASK_METRICS_FILE"], "a") as m:
    m.write(json.dumps({"name": "rmse", "value": 1.5}) + "\\n")
    m.write(json.dumps({"name": "r2", "value": 0.8}) + "\\n")
"""


def req(params: dict, key: str = "run1-train-1") -> LaunchRequest:
    return LaunchRequest(run_id="run1", flow="f", step="train", kind="azureml", key=key, attempt=1, params=params)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "aml" / "src").mkdir(parents=True)
    (root / "aml" / "data").mkdir()
    (root / "aml" / "data" / "train.csv").write_text("a\nb\nc\n")
    (root / "aml" / "pipeline.yml").write_text(PIPELINE)
    (root / "aml" / "src" / "train.py").write_text(textwrap.dedent(TRAIN))
    (root / "aml" / "src" / "evaluate.py").write_text(textwrap.dedent(EVALUATE))
    return root


def test_two_job_pipeline_with_metrics_and_model(project: Path, tmp_path: Path) -> None:
    be = LocalAzureMLBackend(tmp_path / "home", project, None)
    result = be.launch(req({"pipeline": "aml/pipeline.yml"}))
    assert be.launch(req({"pipeline": "aml/pipeline.yml"})).reattached
    status = wait_done(be, result.remote_id)
    assert status.state == "succeeded", status.error
    assert status.progress == {"done": 2, "total": 2}
    out = status.outputs
    run_dir = tmp_path / "home" / "azureml" / "run1-train-1"
    assert out["pipeline_run"] == "run1-train-1"
    assert out["metrics"] == {"rmse": 1.5, "rows": 3, "r2": 0.8}  # last value wins
    assert out["outputs"] == {
        "train.model": str(run_dir / "train" / "outputs" / "model"),
        "evaluate.report": str(run_dir / "evaluate" / "outputs" / "report"),
    }
    assert out["model_uri"] == out["outputs"]["train.model"]
    assert "inputs" not in out  # no literal params.inputs (alpha is the YAML's own)
    assert (Path(out["model_uri"]) / "model.json").read_text() == '{"rows": 3, "alpha": "0.5"}'
    assert (run_dir / "evaluate" / "outputs" / "report" / "report.txt").read_text() == "ok"
    # `conveyor logs`: each pipeline job's stdout/stderr, in pipeline order
    names = [log.name for log in be.logs(result.remote_id)]
    assert names == ["train/stdout.txt", "train/stderr.txt", "evaluate/stdout.txt", "evaluate/stderr.txt"]
    assert all(log.path is not None and log.path.is_file() for log in be.logs(result.remote_id))


def test_failing_job_stops_the_pipeline(project: Path, tmp_path: Path) -> None:
    (project / "aml" / "data" / "train.csv").write_text("")
    be = LocalAzureMLBackend(tmp_path / "home", project, None)
    (project / "aml" / "pipeline.yml").write_text(
        PIPELINE + "  publish:\n    code: ./src\n    command: touch ran\n"
        "    inputs: {r: '${{parent.jobs.evaluate.outputs.report}}'}\n"
    )
    status = wait_done(be, be.launch(req({"pipeline": "aml/pipeline.yml"})).remote_id)
    assert status.state == "failed" and status.retryable is False
    assert "job 'evaluate' exited with code 5" in (status.error or "")
    assert "empty model" in (status.error or "")
    assert "not run: publish" in (status.error or "")
    assert not (project / "aml" / "src" / "ran").exists()
    assert status.progress == {"done": 1, "total": 3}


def test_blob_input_is_downloaded(project: Path, tmp_path: Path, storage_settings: Settings) -> None:
    blobs = AzureBlobStore.from_settings(storage_settings)
    container = f"gold{unique_suffix()}"
    info = blobs.upload(container, "drops/a b;$(touch PWNED).csv", b"x\ny\n")
    be = LocalAzureMLBackend(tmp_path / "home", project, blobs)
    status = wait_done(
        be, be.launch(req({"pipeline": "aml/pipeline.yml", "inputs": {"data": info.url, "alpha": "0.1"}})).remote_id
    )
    assert status.state == "succeeded", status.error
    assert status.outputs["metrics"]["rows"] == 2
    local = tmp_path / "home" / "azureml" / "run1-train-1" / "inputs" / "data" / "a b;$(touch PWNED).csv"
    assert local.read_bytes() == b"x\ny\n"
    assert '"alpha": "0.1"' in (Path(status.outputs["model_uri"]) / "model.json").read_text()
    assert not list(tmp_path.rglob("PWNED"))


def test_instances_are_separate_pipeline_runs_under_their_keys(project: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from shared.engine.model import idempotency_key

    be = LocalAzureMLBackend(tmp_path / "home", project, None)
    keys = [idempotency_key("0123456789abcdef0123456789abcdef", "train", 1, i) for i in (0, 1)]
    for i, key in enumerate(keys):
        r = replace(req({"pipeline": "aml/pipeline.yml"}, key=key), index=i, item={"partition": f"s{i}"})
        assert be.launch(r).remote_id == key and be.launch(r).reattached
    for key in keys:
        status = wait_done(be, key)
        assert status.state == "succeeded" and status.outputs["pipeline_run"] == key
        assert str(tmp_path / "home" / "azureml" / key) in status.outputs["model_uri"]


def test_literal_params_inputs_come_back_as_outputs_inputs(project: Path, tmp_path: Path) -> None:
    """What a step after a for_each over these outputs names each instance by (``${item.inputs.alpha}``)."""
    be = LocalAzureMLBackend(tmp_path / "home", project, None)
    result = be.launch(
        req({"pipeline": "aml/pipeline.yml", "inputs": {"alpha": "0.9 $(x)", "data": "aml/data/train.csv"}})
    )
    status = wait_done(be, result.remote_id)
    assert status.state == "succeeded", status.error
    assert status.outputs["inputs"] == {"alpha": "0.9 $(x)"}  # the data file is not a literal
    assert (Path(status.outputs["model_uri"]) / "model.json").read_text() == '{"rows": 3, "alpha": "0.9 $(x)"}'
