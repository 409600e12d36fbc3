"""LocalDatabricksBackend running real Python scripts."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from shared.backends.base import LaunchRequest
from shared.backends.local_databricks import LocalDatabricksBackend
from shared.errors import ValidationError
from tests.functional.backends.conftest import marked_pids, wait_done, wait_for


def req(params: dict, key: str = "run1-etl-1") -> LaunchRequest:
    return LaunchRequest(run_id="run1", flow="f", step="etl", kind="databricks", key=key, attempt=1, params=params)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "jobs").mkdir(parents=True)
    return root


def script(root: Path, name: str, body: str) -> str:
    (root / "jobs" / name).write_text(textwrap.dedent(body))
    return f"jobs/{name}"


def test_exit_value_becomes_the_result(root: Path, tmp_path: Path) -> None:
    path = script(
        root,
        "etl.py",
        """
        import json, os, sys
        rows = int(dbutils.widgets.get("rows"))
        print("working on", dbutils.widgets.get("input"))
        dbutils.notebook.exit(json.dumps({"gold": "lake/gold", "rows": rows, "run": os.environ["DATABRICKS_RUN_ID"],
                                          "sas": os.environ["CONVEYOR_TASK_STORAGE_SAS"]}))
        print("not reached")
        """,
    )
    be = LocalDatabricksBackend(tmp_path / "home", root, "UseDevelopmentStorage=true")
    launched = be.launch(req({"python_file": path, "parameters": ["--rows", "12", "--input", "a b;$(x).csv"]}))
    assert launched.remote_id == "run1-etl-1"
    assert be.launch(req({"python_file": path})).reattached
    status = wait_done(be, "run1-etl-1")
    assert status.state == "succeeded", status.error
    sas = status.outputs["result"].pop("sas")
    assert status.outputs == {"run_id": "run1-etl-1", "result": {"gold": "lake/gold", "rows": 12, "run": "run1-etl-1"}}
    # the task reads blobs with a read/list SAS, never the host's connection string or key
    assert "sig=" in sas and "sp=rl" in sas and "AccountKey" not in sas and "UseDevelopmentStorage" not in sas
    stdout = (tmp_path / "home" / "databricks" / "run1-etl-1" / "stdout.txt").read_text()
    assert "working on a b;$(x).csv" in stdout and "not reached" not in stdout


def test_plain_string_result_and_no_exit_value(root: Path, tmp_path: Path) -> None:
    be = LocalDatabricksBackend(tmp_path / "home", root, "c")
    be.launch(req({"python_file": script(root, "s.py", "dbutils.notebook.exit('done: ok')\n")}))
    assert wait_done(be, "run1-etl-1").outputs["result"] == "done: ok"
    be.launch(req({"python_file": script(root, "n.py", "print(1)\n")}, key="run1-etl-2"))
    assert wait_done(be, "run1-etl-2").outputs == {"run_id": "run1-etl-2", "result": None}


def test_failing_script_fails_with_exit_code_and_stderr(root: Path, tmp_path: Path) -> None:
    path = script(root, "bad.py", "import sys\nprint('the input is missing', file=sys.stderr)\nsys.exit(4)\n")
    be = LocalDatabricksBackend(tmp_path / "home", root, "c")
    status = wait_done(be, be.launch(req({"python_file": path})).remote_id)
    assert status.state == "failed" and status.retryable is False
    assert "exited with code 4" in (status.error or "")
    assert "the input is missing" in (status.error or "")
    # `conveyor logs`: the run's real stdout/stderr files under the data home
    logs = {log.name: log for log in be.logs("run1-etl-1")}
    assert sorted(logs) == ["stderr.txt", "stdout.txt"]
    assert logs["stderr.txt"].path == tmp_path / "home" / "databricks" / "run1-etl-1" / "stderr.txt"
    assert "the input is missing" in logs["stderr.txt"].path.read_text()
    # a missing widget is an error the script reports, not a silent empty value
    path = script(root, "w.py", "dbutils.widgets.get('nope')\n")
    status = wait_done(be, be.launch(req({"python_file": path}, key="run1-etl-2")).remote_id)
    assert status.state == "failed" and "--nope" in (status.error or "")


def test_dbfs_parameters_live_under_the_data_home(root: Path, tmp_path: Path) -> None:
    # Issue 9: the ETL's lake landed in <cwd>/.conveyor/lake. A dbfs:/ URI is the data home's dbfs/.
    body = (
        "import json, sys, pathlib\n"
        "lake = pathlib.Path(sys.argv[2]); lake.mkdir(parents=True); (lake / 'gold').write_text('g')\n"
        "dbutils.notebook.exit(json.dumps({'gold': str(lake / 'gold'), 'other': sys.argv[4]}))\n"
    )
    be = LocalDatabricksBackend(tmp_path / "home", root, "c")
    path = script(root, "lake.py", body)
    params = {"python_file": path, "parameters": ["--lake", "dbfs:/conveyor/lake/r1", "--x", "dbfs"]}
    status = wait_done(be, be.launch(req(params)).remote_id)
    assert status.state == "succeeded", status.error
    gold = (tmp_path / "home").resolve() / "dbfs" / "conveyor" / "lake" / "r1" / "gold"
    assert status.outputs["result"] == {"gold": str(gold), "other": "dbfs"}
    assert gold.read_text() == "g" and not (root / "conveyor").exists()
    for bad in ("dbfs:/../escape", "dbfs:/a/../../b"):
        with pytest.raises(ValidationError) as err:
            be.launch(req({"python_file": path, "parameters": ["--lake", bad]}, key="run1-etl-9"))
        assert err.value.field == "params.parameters[1]"


def test_traversal_is_refused(root: Path, tmp_path: Path) -> None:
    (tmp_path / "evil.py").write_text("open('PWNED', 'w')\n")
    be = LocalDatabricksBackend(tmp_path / "home", root, "c")
    with pytest.raises(ValidationError) as err:
        be.launch(req({"python_file": "../evil.py"}))
    assert err.value.field == "params.python_file"
    assert not list(tmp_path.rglob("PWNED"))


def test_cancel_kills_and_a_new_instance_reruns_an_orphaned_run(root: Path, tmp_path: Path) -> None:
    path = script(root, "slow.py", "import time\ntime.sleep(60)\n")
    be = LocalDatabricksBackend(tmp_path / "home", root, "c")
    key = be.launch(req({"python_file": path})).remote_id
    wait_for(lambda: marked_pids(f"databricks/{key}/"), what="the script to start")
    be.cancel(key)
    wait_for(lambda: not marked_pids(f"databricks/{key}/"), what="the script to be killed")
    assert wait_done(be, key).state == "cancelled"

    quick = script(root, "quick.py", "import time\ntime.sleep(0.5)\ndbutils.notebook.exit(7)\n")
    first = LocalDatabricksBackend(tmp_path / "home", root, "c")
    first.launch(req({"python_file": quick}, key="run1-etl-2"))
    del first
    time.sleep(0.1)
    second = LocalDatabricksBackend(tmp_path / "home", root, "c")
    status = wait_done(second, "run1-etl-2")
    assert status.state == "succeeded" and status.outputs["result"] == 7


def test_instances_run_as_separate_jobs_under_their_keys(root: Path, tmp_path: Path) -> None:
    from shared.engine.model import idempotency_key

    path = script(root, "part.py", 'dbutils.notebook.exit(dbutils.widgets.get("part"))\n')
    be = LocalDatabricksBackend(tmp_path / "home", root, "UseDevelopmentStorage=true")
    keys = [idempotency_key("0123456789abcdef0123456789abcdef", "etl", 1, i) for i in (0, 1)]
    for i, key in enumerate(keys):
        r = LaunchRequest(
            run_id="r", flow="f", step="etl", kind="databricks", key=key, attempt=1,
            params={"python_file": path, "parameters": ["--part", f"p{i}"]}, index=i,
        )  # fmt: skip
        assert be.launch(r).remote_id == key and be.launch(r).reattached
    assert [wait_done(be, k).outputs["result"] for k in keys] == ["p0", "p1"]
