"""Local Azure Batch: one task per input, the same commands, run by a pool of node processes.

A task runs its command as an argv list, without a shell: at launch the command template
(shared.flows.argv) is filled once per task with the run's ``${...}`` scope and the task's
``{placeholders}``, in one pass, and the argv is kept in job.json. Its environment is the
allow-list of shared.backends.task_env: the step's ``env:`` and the task's own values
(``AZ_BATCH_*`` as Batch sets them, ``CONVEYOR_TASK_OUTPUT_DIR``), never the host's.

Layout of a job (``<home>/batch/<key>/``)::

    job.json            the job as launched (written once; its creation decides idempotency)
    lock                flock held by the backend instance running the job
    tasks.log           one JSON line per finished task (append-only, no fsync)
    cancelled           present once the job was cancelled
    status.json         final state, written once when the last task has finished
    tasks/<task_id>/    stdout.txt, stderr.txt, wd/ (resource files, input, output/), exit.json;
                        the task's node holds an flock on this directory while the command
                        runs, then writes exit.json (see batch_node)

Tasks are run by at most ``max_workers`` node processes (shared.backends.batch_node), each of
which stages, runs and uploads a whole task, like the agent on a Batch node; worker threads
hand each node a batch of tasks (``_batches``), an idle node first (``_pick_node``). This
module keeps the jobs: launch, tasks.log, the final status, poll, cancel.

A backend instance runs a job only while it holds the job's lock. Another instance on the
same home (a restarted host) that polls a job whose lock is free takes it over and goes
through the tasks missing from tasks.log: a task never started runs; a task the dead host
started is adopted -- the new host waits while its command still runs, then takes its exit
code and uploads its outputs -- and only a task whose command left no exit code (killed
mid-flight with its node) runs again, counted (``reruns``) as a re-run after host loss.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepLog, StepStatus
from shared.backends.batch_node import NodeClient, failed
from shared.backends.batch_node import hello as node_hello
from shared.backends.commandline import (
    JobLock,
    WorkerPool,
    atomic_write_json,
    child_env,
    create_json_once,
    job_dir,
    kill_marked,
    local_file_name,
    read_json,
    validation_error,
)
from shared.backends.resource_files import resolve as resolve_resources
from shared.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobStore
    from shared.settings import Settings

MAX_OUTPUT_URLS = 1000  # outputs are small values on the run; the prefix finds the rest
_FAILED_DETAIL = 5  # failed tasks described in full in the error
CANCEL_CHECK_SECONDS = 0.2  # how stale a "not cancelled by another process" answer may be
# Tasks a node gets in one message while many are left, like a process pool's chunks: one
# round trip (and one wake-up of the host) per few short tasks instead of per task.
BATCH_TASKS = 4


@dataclass(frozen=True)
class _Task:
    id: str
    index: int
    container: str
    blob: str
    url: str
    local: str
    argv: list[str] | None  # None: a job launched before commands were argv lists


@dataclass
class _Job:
    key: str
    dir: Path
    spec: dict[str, Any]
    tasks: list[_Task]
    lock: JobLock
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    mutex: threading.Lock = field(default_factory=threading.Lock)
    remaining: int = 0
    reruns: int = 0  # results re-run after host loss (kept here so that a poll is O(1))
    log_fd: int = -1
    final: dict[str, Any] | None = None
    context: dict[str, Any] = field(default_factory=dict)  # what a node needs of the job (batch_node)

    tasks_dir: str = ""
    marker: str = ""
    marker_checked: float = -CANCEL_CHECK_SECONDS  # time.monotonic() of the last look at the marker

    def __post_init__(self) -> None:
        self.tasks_dir = str(self.dir / "tasks")
        self.marker = str(self.dir / "cancelled")

    def cancelled(self, fresh: bool = False) -> bool:
        """Cancelled here (the event) or by another process (the marker file it writes).

        The file is looked at once per ``CANCEL_CHECK_SECONDS`` at most (not three times per
        task), unless ``fresh``: a process that cancels a job also kills its commands, so a
        command that failed, and the final summary, look afresh."""
        if self.cancel_event.is_set():
            return True
        now = time.monotonic()
        if not fresh and now - self.marker_checked < CANCEL_CHECK_SECONDS:
            return False
        self.marker_checked = now
        if os.path.exists(self.marker):
            self.cancel_event.set()
            return True
        return False


class LocalBatchBackend(JobBackend):
    """Batch-style jobs run by a pool of at most ``max_workers`` concurrent processes."""

    kind = "batch"

    def __init__(
        self, blobs: BlobStore, home: Path, max_workers: int, *, resume: bool = True, root: Path | None = None
    ) -> None:
        self.blobs = blobs
        self.home = Path(home)
        self.root = root  # the project: ./path resource files are staged from it
        self.max_workers = max_workers
        self.resume = resume  # take over jobs whose host is gone (off for read-only users)
        self._node_env = child_env()
        self._node_hello = node_hello(blobs, self._node_env)  # refuses a store without a recipe
        # Two threads per node: one waits on the task its node runs, one on the next task,
        # sent while no node is idle (see _pick_node); at most max_workers commands run at once.
        self._pool = WorkerPool(2 * max_workers, name="conveyor-batch")
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._nodes: list[NodeClient] = []

    def close(self) -> None:
        """Stop the node processes (idle ones exit at once). Jobs keep their state on disk."""
        with self._lock:
            nodes, self._nodes = self._nodes, []
        for node in nodes:
            node.close()

    @classmethod
    def from_settings(cls, settings: Settings, blobs: BlobStore) -> LocalBatchBackend:
        return cls(blobs, settings.home, settings.batch_max_workers, root=settings.root)

    # ------------------------------------------------------------ logs

    def logs(self, remote_id: str) -> list[StepLog]:
        """Each task's ``stdout.txt`` and ``stderr.txt`` under the job directory, task by task."""
        jdir = job_dir(self.home, "batch", remote_id)
        if not (jdir / "job.json").exists():
            raise NotFoundError(f"no local batch job {remote_id!r}", service="batch")
        tasks = jdir / "tasks"
        found = []
        for tdir in sorted(tasks.iterdir()) if tasks.is_dir() else []:
            for name in ("stdout.txt", "stderr.txt"):
                if (tdir / name).is_file():
                    found.append(StepLog(f"{tdir.name}/{name}", path=tdir / name))
        return found or [StepLog("tasks", note="no task has started yet")]

    # ------------------------------------------------------------ launch

    def launch(self, request: LaunchRequest) -> LaunchResult:
        from shared.flows.model import BatchParams

        jdir = job_dir(self.home, "batch", request.key)
        if (jdir / "job.json").exists():
            self._ensure_running(request.key, takeover=self.resume)
            return LaunchResult(remote_id=request.key, url=jdir.as_uri(), reattached=True)
        from shared.flows.argv import parse_command

        try:
            params = BatchParams.model_validate(request.params)
        except Exception as exc:
            raise validation_error(exc) from exc
        command = parse_command(params.command)
        resources = [
            [r.container, r.name, r.local] for r in resolve_resources(params.resource_files, self.blobs, self.root)
        ]
        tasks, error = self._expand_inputs(params.inputs)
        for index, task in enumerate(tasks):  # [task_id, container, blob, url, local] + its argv
            task.append(command.argv(request.scope, _task_values(jdir, index, task)))
        spec = {
            "key": request.key,
            "run_id": request.run_id,
            "flow": request.flow,
            "step": request.step,
            "attempt": request.attempt,
            "traceparent": request.traceparent,
            "index": request.index,
            "command": params.command,
            "env": dict(request.env),
            "output_container": params.output_container,
            "max_task_retries": params.max_task_retries,
            "max_wall_clock_seconds": params.max_wall_clock_seconds,
            "resources": resources,
            "tasks": tasks,
            "error": error,
            "created": time.time(),
        }
        jdir.mkdir(parents=True, exist_ok=True)
        created = create_json_once(jdir / "job.json", spec)
        self._ensure_running(request.key, takeover=created or self.resume)
        return LaunchResult(remote_id=request.key, url=jdir.as_uri(), reattached=not created)

    def _expand_inputs(self, inputs: str | list[str]) -> tuple[list[list[Any]], str | None]:
        """[[task_id, container, blob, url, local name]] for the inputs, or an error."""
        items = [inputs] if isinstance(inputs, str) else list(inputs)
        found: list[tuple[str, str, str, str]] = []  # container, blob, url, field
        for i, item in enumerate(items):
            fld = "params.inputs" if isinstance(inputs, str) else f"params.inputs[{i}]"
            item = item.strip()
            if "://" in item:
                container, name = self.blobs.parse_url(item)
                found.append((container, name, item, fld))
                continue
            container, _, prefix = item.partition("/")
            if not container:
                raise ValidationError(f"not a blob URL nor container/prefix: {item!r}", field=fld)
            for info in self.blobs.list_blobs(container, prefix):
                if not info.name.endswith("/"):
                    found.append((info.container, info.name, info.url, fld))
        if not found:
            return [], f"no inputs: {inputs!r} gave no blobs, so there is no task to run"
        width = max(5, len(str(len(found) - 1)))
        tasks = []
        for index, (container, name, url, fld) in enumerate(found):
            tasks.append([f"task-{index:0{width}d}", container, name, url, local_file_name(name, field=fld)])
        return tasks, None

    # ------------------------------------------------------------ running

    def _ensure_running(self, key: str, *, takeover: bool = True) -> _Job | None:
        """The job if this instance runs (or ran) it; with ``takeover``, starts running it
        when nobody holds its lock (new, or its host is gone)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job
            jdir = job_dir(self.home, "batch", key)
            spec = _spec(jdir, key)
            if not takeover or (jdir / "status.json").exists():
                return None
            lock = JobLock(jdir / "lock")
            if not lock.try_acquire():
                return None  # another live instance runs it
            if (jdir / "status.json").exists():  # finished between our checks
                lock.release()
                return None
            tasks = [
                _Task(t[0], i, t[1], t[2], t[3], t[4], argv=t[5] if len(t) > 5 else None)
                for i, t in enumerate(spec["tasks"])
            ]
            job = _Job(key=key, dir=jdir, spec=spec, tasks=tasks, lock=lock)
            self._jobs[key] = job
        job.results = _read_log(jdir / "tasks.log")
        job.reruns = _counts(job.results)["reruns"]
        todo = [t for t in tasks if t.id not in job.results]
        job.remaining = len(todo)
        if spec.get("error") or job.cancelled(fresh=True) or not todo:
            self._finish(job)
            return job
        (jdir / "tasks").mkdir(exist_ok=True)
        job.log_fd = os.open(jdir / "tasks.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        job.context = {
            "tasks_dir": job.tasks_dir,
            "marker": job.marker,
            "run_id": spec["run_id"],
            "step": spec["step"],
            "output_container": spec["output_container"],
            "resources": spec["resources"],
            "max_task_retries": spec.get("max_task_retries"),
            "max_wall_clock_seconds": spec.get("max_wall_clock_seconds"),
            "env": {**(spec.get("env") or {}), "AZ_BATCH_JOB_ID": key, "TRACEPARENT": spec.get("traceparent") or ""},
        }
        self._pool.submit_all(_bind(self._run_tasks, job, batch) for batch in _batches(todo, self.max_workers))
        return job

    def _run_tasks(self, job: _Job, tasks: list[_Task]) -> None:
        """Hand a few tasks to a node (batch_node) and record what it answers."""
        records: list[dict[str, Any] | None] = [None] * len(tasks)
        if not job.cancelled():
            work = [[t.id, t.container, t.blob, t.local, t.argv] for t in tasks]
            try:
                records = self._pick_node().run(job.key, job.context, work)
            except Exception as exc:  # a node that died fails its tasks with the reason, never the pool
                records = [failed(t.id, exc) for t in tasks]
        done = [r for r in records if r is not None]
        if done:
            os.write(job.log_fd, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in done).encode())
        with job.mutex:
            for rec in done:
                job.results[rec["t"]] = rec
                job.reruns += int(rec.get("h", 0))
            job.remaining -= len(tasks)
            last = job.remaining == 0
        if last:
            self._finish(job)

    def _pick_node(self) -> NodeClient:
        """The node with the fewest tasks (an idle one first; a new one while there are fewer
        than ``max_workers``), counted in: so a task waits behind another only when every
        node is busy, never while one is idle."""
        with self._lock:
            node = min(self._nodes, key=lambda n: n.outstanding, default=None)
            if node is None or (node.outstanding and len(self._nodes) < self.max_workers):
                node = NodeClient(self._node_hello, self._node_env)
                self._nodes.append(node)
            node.outstanding += 1
            return node

    def _finish(self, job: _Job) -> None:
        with job.mutex:
            if job.final is not None:
                return
            job.final = self._summary(job)
        atomic_write_json(job.dir / "status.json", job.final)
        if job.log_fd >= 0:
            os.close(job.log_fd)
            job.log_fd = -1
        job.lock.release()

    def _summary(self, job: _Job) -> dict[str, Any]:
        spec = job.spec
        if spec.get("error"):
            return {"state": "failed", "error": spec["error"]}
        counts = _counts(job.results)
        if job.cancelled(fresh=True):
            return {"state": "cancelled", "done": len(job.results), **counts}
        failed = [job.results[t.id] for t in job.tasks if job.results.get(t.id, {}).get("s") != "succeeded"]
        if failed:
            parts = []
            for rec in failed[:_FAILED_DETAIL]:
                exit_part = f"exit code {rec.get('x')}" if rec.get("x") is not None else "no exit code"
                err = (rec.get("e") or "").strip()
                parts.append(f"{rec['t']} ({exit_part}, {rec.get('a')} attempt(s))" + (f": {err}" if err else ""))
            more = [rec["t"] for rec in failed[_FAILED_DETAIL:]]
            if more:
                parts.append("also failed: " + ", ".join(more))
            msg = f"{len(failed)} of {len(job.tasks)} tasks failed: " + "\n".join(parts)
            return {"state": "failed", "error": msg, **counts}
        urls: list[str] = []
        for t in job.tasks:
            urls.extend(job.results[t.id].get("o") or [])
        prefix = self.blobs.url(spec["output_container"], f"{spec['run_id']}/{spec['step']}/")
        outputs: dict[str, Any] = {
            "job_id": job.key,
            "tasks": len(job.tasks),
            "output_prefix": prefix,
            "outputs": urls[:MAX_OUTPUT_URLS],
        }
        if len(urls) > MAX_OUTPUT_URLS:
            outputs["outputs_truncated"] = True
            outputs["outputs_count"] = len(urls)
        return {"state": "succeeded", "outputs": outputs, **counts}

    # ------------------------------------------------------------ poll / cancel

    def poll(self, remote_id: str) -> StepStatus:
        jdir = job_dir(self.home, "batch", remote_id)
        job = self._jobs.get(remote_id) or self._ensure_running(remote_id, takeover=self.resume)
        spec = job.spec if job is not None else _spec(jdir, remote_id)
        total = len(spec["tasks"])
        final = job.final if job is not None else read_json(jdir / "status.json")
        if final is not None:
            reruns = int(final.get("reruns", 0))
            if final["state"] == "succeeded":
                progress = {"done": total, "total": total}
                return StepStatus("succeeded", outputs=final["outputs"], progress=progress, reruns=reruns)
            progress = {"done": int(final.get("done", total)), "total": total}
            if final["state"] == "cancelled":
                return StepStatus("cancelled", progress=progress, reruns=reruns)
            return StepStatus("failed", error=final["error"], progress=progress, retryable=False, reruns=reruns)
        # running: by this instance (counts in memory) or another live one (count its log)
        if job is not None:
            done, reruns = len(job.results), job.reruns
        else:
            results = _read_log(jdir / "tasks.log")
            done, reruns = len(results), _counts(results)["reruns"]
        progress = {"done": done, "total": total}
        if (jdir / "cancelled").exists():
            return StepStatus("cancelled", progress=progress, reruns=reruns)
        return StepStatus("running", progress=progress, reruns=reruns)

    def cancel(self, remote_id: str) -> None:
        jdir = job_dir(self.home, "batch", remote_id)
        if not (jdir / "job.json").exists():
            raise NotFoundError(f"no local batch job {remote_id!r}", service="batch")
        if (jdir / "status.json").exists():
            return
        atomic_write_json(jdir / "cancelled", {"at": time.time()})
        job = self._jobs.get(remote_id)
        if job is not None:
            job.cancel_event.set()
        # Its commands, and those of a gone host this one adopted; a command starting just now
        # is killed by its node, which finds the marker written above (batch_node.Node.spawn).
        kill_marked(f"batch/{remote_id}/")
        if job is None:
            self._ensure_running(remote_id, takeover=self.resume)  # finalises a job whose host is gone


def _task_values(jdir: Path, index: int, task: list[Any]) -> dict[str, str]:
    """The ``{placeholder}`` values of a task ``[task_id, container, blob, url, local]`` (paths
    as ``_execute`` lays the task out: ``tasks/<task_id>/wd/``)."""
    task_id, _container, blob, url, local = task[:5]
    wd = os.path.join(jdir, "tasks", task_id, "wd")
    return {
        "input": os.path.join(wd, local),
        "input_name": local,
        "input_blob": blob,
        "input_url": url,
        "output_dir": os.path.join(wd, "output"),
        "task_index": str(index),
        "task_id": task_id,
    }


def _batches(tasks: list[_Task], workers: int, most: int = BATCH_TASKS) -> list[list[_Task]]:
    """The tasks in the batches a node gets at once: up to ``most`` while many are left, one by
    one for the last ``most`` x ``workers`` (so the end of a job spreads over every node)."""
    cut = max(0, len(tasks) - most * workers) // most * most
    head, tail = tasks[:cut], tasks[cut:]
    return [head[i : i + most] for i in range(0, len(head), most)] + [[t] for t in tail]


def _spec(jdir: Path, key: str) -> dict[str, Any]:
    spec = read_json(jdir / "job.json")
    if not isinstance(spec, dict):
        raise NotFoundError(f"no local batch job {key!r}", service="batch")
    return spec


def _read_log(path: Path) -> dict[str, dict[str, Any]]:
    """Finished tasks from tasks.log; a torn last line (crash mid-write) is ignored."""
    results: dict[str, dict[str, Any]] = {}
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return results
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "t" in rec:
            results[rec["t"]] = rec
    return results


def _counts(results: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Tasks re-run after host loss and tasks adopted from a gone host, from tasks.log lines."""
    values = list(results.values())
    return {"reruns": sum(int(r.get("h", 0)) for r in values), "adopted": sum(int(r.get("ad", 0)) for r in values)}


def _bind(fn: Any, *args: Any) -> Any:
    return lambda: fn(*args)
