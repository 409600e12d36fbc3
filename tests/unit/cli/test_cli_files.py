"""`conveyor validate` and `conveyor schema` on temporary files (no storage needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared.cli import app, parse_params, safe_blob_name

runner = CliRunner()

VALID = """\
version: 1
flows:
  nightly:
    triggers:
      - kind: manual
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_job/etl.py
  other:
    triggers:
      - kind: manual
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_job/etl.py
"""

# line 8: a step without its required params; line 13: a bad kind
INVALID = """\
version: 1
flows:
  nightly:
    triggers:
      - kind: manual
    steps:
      - name: etl
        kind: databricks
  broken:
    triggers:
      - kind: manual
    steps:
      - name: a
        kind: teleport
        params: {}
"""


def write(tmp_path: Path, text: str, name: str = "flows.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.fixture(autouse=True)
def project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project root is the test's tmp dir, holding the script the flows above name."""
    monkeypatch.setenv("CONVEYOR_ROOT", str(tmp_path))
    monkeypatch.delenv("CONVEYOR_MODE", raising=False)
    monkeypatch.delenv("CONVEYOR_ADAPTER_DATABRICKS", raising=False)
    script = tmp_path / "samples" / "databricks_job" / "etl.py"
    script.parent.mkdir(parents=True)
    script.write_text("print('etl')\n")
    return tmp_path


def test_validate_reports_project_files_that_do_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID.replace("samples/databricks_job/etl.py", "samples/databricks_job/missing.py", 1) + (
        "  train:\n    triggers: [{kind: manual}]\n    steps:\n"
        "      - {name: t, kind: azureml, params: {pipeline: pipelines/none.yml}}\n"
        "      - {name: u, kind: databricks, params: {python_file: ../outside.py}}\n"
    )
    path = write(tmp_path, text)
    result = runner.invoke(app, ["validate", "--file", str(path)])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    root = tmp_path.resolve()
    assert lines == [
        f"{path}:10: flows.nightly.steps[0].params.python_file: no such file under the project root ({root}): "
        "'samples/databricks_job/missing.py'",
        f"{path}:22: flows.train.steps[0].params.pipeline: no such file under the project root ({root}): "
        "'pipelines/none.yml'",
        f"{path}:23: flows.train.steps[1].params.python_file: '../outside.py' is outside the project root ({root})",
    ]
    # in azure mode a Databricks python_file is a workspace path: only the pipeline YAML is a project file
    monkeypatch.setenv("CONVEYOR_ADAPTER_DATABRICKS", "azure")
    result = runner.invoke(app, ["validate", "--file", str(path)])
    assert [ln.split(": ")[1] for ln in result.output.splitlines() if ln.strip()] == [
        "flows.train.steps[0].params.pipeline"
    ]


def test_validate_valid_file_counts_flows(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    result = runner.invoke(app, ["validate", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "flows.yaml is valid: 2 flows" in result.output


def test_validate_invalid_file_prints_every_issue_with_line(tmp_path: Path) -> None:
    path = write(tmp_path, INVALID)
    result = runner.invoke(app, ["validate", "--file", str(path)])
    assert result.exit_code == 1
    out = result.output
    lines = [ln for ln in out.splitlines() if ln.strip()]
    # one line per issue, each FILE:LINE: path: message
    assert any(f"{path}:7:" in ln and "flows.nightly.steps[0]" in ln for ln in lines), out
    assert any("flows.broken.steps[0]" in ln and "kind" in ln for ln in lines), out
    assert all(ln.startswith(str(path)) for ln in lines), out
    assert "Traceback" not in out


def test_validate_missing_file_is_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "--file", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "file not found" in result.output
    assert "Traceback" not in result.output


def test_validate_defaults_to_conveyor_flows_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, VALID, "custom.yaml")
    monkeypatch.setenv("CONVEYOR_FLOWS_FILE", str(path))
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 0, result.output
    assert "custom.yaml is valid: 2 flows" in result.output


def test_schema_to_stdout_is_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert "flows" in json.dumps(doc.get("properties", {}))
    assert doc.get("$schema")


def test_schema_out_writes_the_same_document(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "flows.schema.json"
    result = runner.invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text(encoding="utf-8"))
    direct = json.loads(runner.invoke(app, ["schema"]).stdout)
    assert written == direct


def test_parse_params_json_values_and_strings() -> None:
    assert parse_params(["a=1", "b=x y", "c=[1,2]", "d=true", "e="]) == {
        "a": 1,
        "b": "x y",
        "c": [1, 2],
        "d": True,
        "e": "",
    }


def test_parse_params_rejects_missing_equals() -> None:
    import pytest

    from shared.errors import ValidationError

    with pytest.raises(ValidationError):
        parse_params(["novalue"])


def test_safe_blob_name_refuses_traversal() -> None:
    import pytest

    from shared.errors import ValidationError

    assert safe_blob_name("2024/01/sales.csv") == "2024/01/sales.csv"
    for bad in ("../x.csv", "/abs.csv", "a/../b", "a\\b", "", "a/./b"):
        with pytest.raises(ValidationError):
            safe_blob_name(bad)


def test_unknown_command_is_usage_error() -> None:
    result = runner.invoke(app, ["frobnicate"])
    assert result.exit_code == 2
