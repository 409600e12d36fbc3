"""Step log tails from the local backends' own files (the console's default ``logs`` source).

Where the local backends write (``shared.backends``): Batch ``<home>/batch/<key>/tasks/<task>/``,
Databricks ``<home>/databricks/<key>/``, Azure ML ``<home>/azureml/<key>/<pipeline job>/``, each
with ``stderr.txt`` and ``stdout.txt``. The key is the step's current remote id (its
idempotency key). Register and deploy steps run in-process and write no files. This is the
one function to swap for ``conveyor logs``' reader when that lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.backends.commandline import job_dir, tail_text
from shared.console.base import LogTail
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.engine.model import StepRun

LOG_KINDS = ("batch", "databricks", "azureml")
STREAMS = ("stderr", "stdout")
TAIL_LINES = 40
TAIL_BYTES = 8000
MAX_PARTS = 8  # Batch tasks / pipeline jobs shown per step (failed ones first)


def local_step_logs(home: Path, step: StepRun, lines: int = TAIL_LINES) -> list[LogTail]:
    """stderr then stdout of each part of the step's current attempt; [] when there is nothing."""
    key = step.remote_id or step.key
    if step.kind not in LOG_KINDS or not key:
        return []
    try:
        base = job_dir(Path(home), step.kind, key)
    except ValidationError:
        return []  # not a key the local backends make (a remote id from elsewhere)
    if step.kind == "databricks":
        parts = [("main", base)]
    elif step.kind == "batch":
        parts = [(f"task {d.name}", d) for d in _dirs(base / "tasks")]
    else:
        parts = [(d.name, d) for d in _dirs(base) if (d / "stderr.txt").exists() or (d / "stdout.txt").exists()]
    # parts whose stderr has something first: that is where a failure speaks
    parts.sort(key=lambda p: 0 if _size(p[1] / "stderr.txt") else 1)
    out: list[LogTail] = []
    for label, folder in parts[:MAX_PARTS]:
        for stream in STREAMS:
            path = folder / f"{stream}.txt"
            text = tail_text(path, lines=lines, max_bytes=TAIL_BYTES)
            if text:
                out.append(LogTail(label=label, stream=stream, path=str(path), text=text))
    return out


def _dirs(folder: Path) -> list[Path]:
    try:
        return sorted((d for d in folder.iterdir() if d.is_dir()), key=lambda d: (len(d.name), d.name))
    except OSError:
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
