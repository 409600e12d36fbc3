"""Local Databricks: run the job's Python entry as a subprocess of this host.

``params.python_file`` (relative to the project root, never outside it) runs as
``sys.executable <file> <parameters...>`` with cwd = the project root. A ``dbutils`` builtin
(``shared/backends/dbutils_shim``) gives notebook-style code ``dbutils.notebook.exit`` and
``dbutils.widgets.get``; the exit value becomes the step's ``result`` output.

Run directory ``<home>/databricks/<key>/``: run.json, lock, stdout.txt, stderr.txt,
exit_value.txt, status.json (see LocalRunBackend). A run whose host died is run again.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.base import LaunchRequest
from shared.backends.commandline import LocalRun, LocalRunBackend, child_env, safe_join, tail_text, validation_error
from shared.errors import PermanentError, ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore
    from shared.settings import Settings

SHIM_DIR = Path(__file__).resolve().parent / "dbutils_shim"


class LocalDatabricksBackend(LocalRunBackend):
    kind = "databricks"

    def __init__(self, home: Path, root: Path, storage_connection: str, *, resume: bool = True) -> None:
        super().__init__(home, resume=resume)
        self.root = Path(root).resolve()
        self.storage_connection = storage_connection

    @classmethod
    def from_settings(cls, settings: Settings, blobs: BlobStore | None = None) -> LocalDatabricksBackend:
        return cls(settings.home, settings.root, settings.connection_string)

    def _prepare(self, request: LaunchRequest, rdir: Path) -> dict[str, Any]:
        from shared.flows.model import DatabricksParams

        try:
            params = DatabricksParams.model_validate(request.params)
        except Exception as exc:
            raise validation_error(exc) from exc
        if not params.python_file:
            raise PermanentError(
                f"job_id {params.job_id} names a job in a Databricks workspace, which local mode cannot run: "
                "set params.python_file (a script in the project) for local runs",
                service="databricks",
            )
        script = safe_join(self.root, params.python_file, field="params.python_file")
        if not script.is_file():
            raise ValidationError(
                f"no such file under the project root: {params.python_file!r}", field="params.python_file"
            )
        return {
            "key": request.key,
            "run_id": request.run_id,
            "step": request.step,
            "traceparent": request.traceparent,
            "index": request.index,
            "python_file": str(script),
            "parameters": [str(p) for p in params.parameters],
        }

    def _execute(self, run: LocalRun) -> dict[str, Any]:
        spec = run.spec
        exit_file = run.dir / "exit_value.txt"
        exit_file.unlink(missing_ok=True)  # a re-run after a restart starts clean
        pythonpath = [str(SHIM_DIR), str(self.root)]
        if os.environ.get("PYTHONPATH"):
            pythonpath.append(os.environ["PYTHONPATH"])
        env = child_env(
            {
                "PYTHONPATH": os.pathsep.join(pythonpath),
                "CONVEYOR_DBUTILS_EXIT_FILE": str(exit_file),
                "CONVEYOR_STORAGE_CONNECTION": self.storage_connection,
                "DATABRICKS_RUN_ID": run.key,
                "TRACEPARENT": spec.get("traceparent") or "",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.set_progress(run, done=0, total=1)
        code, why = self.run_process(
            run,
            [sys.executable, spec["python_file"], *spec["parameters"]],
            cwd=self.root,
            env=env,
            stdout=run.dir / "stdout.txt",
            stderr=run.dir / "stderr.txt",
            part="main",
        )
        if why == "cancelled":
            return {"state": "cancelled"}
        if code != 0:
            tail = tail_text(run.dir / "stderr.txt", lines=15)
            name = Path(spec["python_file"]).name
            return {"state": "failed", "error": f"{name} exited with code {code}" + (f":\n{tail}" if tail else "")}
        self.set_progress(run, done=1)
        return {"state": "succeeded", "outputs": {"run_id": run.key, "result": _exit_value(exit_file)}}


def _exit_value(path: Path) -> Any:
    """The dbutils.notebook.exit value: JSON-decoded when it parses, else the string."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
