"""Local Databricks: run the job's Python entry as a subprocess of this host.

``params.python_file`` (relative to the project root, never outside it) runs as
``sys.executable <file> <parameters...>`` with cwd = the project root: argv, no shell, each
parameter exactly one argument. Its environment is the allow-list of shared.backends.task_env
(the step's ``env:``, ``CONVEYOR_TASK_*``, ``DATABRICKS_RUN_ID``): to read blobs it gets
``CONVEYOR_TASK_STORAGE_SAS``, a read/list SAS, as a cluster reads through its identity,
never the host's connection string. A ``dbutils`` builtin
(``shared/backends/dbutils_shim``) gives notebook-style code ``dbutils.notebook.exit`` and
``dbutils.widgets.get``; the exit value becomes the step's ``result`` output.

DBFS: a parameter that is a ``dbfs:/`` URI (``dbfs:/conveyor/lake/<run>``) reaches the script
as the local directory ``<home>/dbfs/conveyor/lake/<run>``, the way a Databricks cluster
makes DBFS reachable to file APIs under ``/dbfs``: what a job writes there stays under the
data home (never ``..`` out of it), and the paths it reports are local ones the next local
step can read. In azure mode the same ``dbfs:/`` URI goes to the workspace unchanged.

Run directory ``<home>/databricks/<key>/``: run.json, lock, stdout.txt, stderr.txt,
exit_value.txt, status.json (see LocalRunBackend). A script a dead host started is not run
again: the restarted host waits for it and adopts its exit code and exit value.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.base import LaunchRequest
from shared.backends.commandline import LocalRun, LocalRunBackend, safe_join, tail_text, validation_error
from shared.backends.task_env import storage_sas, task_env
from shared.errors import PermanentError, ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore
    from shared.settings import Settings

SHIM_DIR = Path(__file__).resolve().parent / "dbutils_shim"
DBFS = "dbfs:/"


class LocalDatabricksBackend(LocalRunBackend):
    kind = "databricks"

    def __init__(self, home: Path, root: Path, storage_connection: str, *, resume: bool = True) -> None:
        super().__init__(home, resume=resume)
        self.root = Path(root).resolve()
        self.dbfs_root = self.home.resolve() / "dbfs"
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
            "parameters": [self.dbfs_path(str(p), f"params.parameters[{i}]") for i, p in enumerate(params.parameters)],
            "env": dict(request.env),
        }

    def dbfs_path(self, value: str, field: str) -> str:
        """A ``dbfs:/...`` parameter as its directory under ``<home>/dbfs``; anything else as is."""
        if not value.startswith(DBFS):
            return value
        rest = value[len(DBFS) :].strip("/")
        if not rest:
            return str(self.dbfs_root)
        return str(safe_join(self.dbfs_root, rest, field=field))

    def _execute(self, run: LocalRun) -> dict[str, Any]:
        spec = run.spec
        exit_file = run.dir / "exit_value.txt"
        own = {
            "PYTHONPATH": os.pathsep.join([str(SHIM_DIR), str(self.root)]),
            "CONVEYOR_TASK_DBUTILS_EXIT_FILE": str(exit_file),
            "DATABRICKS_RUN_ID": run.key,
            "TRACEPARENT": spec.get("traceparent") or "",
            "PYTHONUNBUFFERED": "1",
        }
        sas = storage_sas(self.storage_connection) if self.storage_connection else None
        if sas:
            own["CONVEYOR_TASK_STORAGE_SAS"] = sas
        env = task_env(own, spec.get("env"))
        self.set_progress(run, done=0, total=1)
        code, why = self.run_process(
            run,
            [sys.executable, spec["python_file"], *spec["parameters"]],
            cwd=self.root,
            env=env,
            stdout=run.dir / "stdout.txt",
            stderr=run.dir / "stderr.txt",
            part="main",
            prepare=lambda: exit_file.unlink(missing_ok=True),  # a re-run after host loss starts clean
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
