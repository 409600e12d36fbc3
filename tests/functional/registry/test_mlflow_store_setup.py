"""Fresh processes opening one new MLflow SQLite store at the same moment (local register steps
of runs started together, each in its own process) all get a working store: the schema is set up
by one of them at a time, not migrated twice ("duplicate column name")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OPEN = """
import sys
from pathlib import Path
from shared.registry.mlflow_registry import MlflowRegistry
registry = MlflowRegistry("sqlite:///" + sys.argv[1] + "/mlflow.db", Path(sys.argv[1]) / "artifacts")
print(len(registry.versions("nothing-yet")))
"""


def test_processes_opening_a_new_store_together_all_succeed(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == "0"
