"""The local Batch node agent: one process per worker slot that runs whole tasks.

Like the agent on an Azure Batch node, a node takes a task (its directory, input blob and
argv), stages its files, runs its command, records its exit code, uploads its outputs and
answers with the task's tasks.log line. The host (shared.backends.local_batch) only hands
out tasks and keeps tasks.log, so the per-task work runs in as many processes as there are
workers, not on the host's GIL (what a threaded host lost against a process pool).

A node builds its own blob store from the store's :meth:`BlobStore.recipe` (sent once, as a
pickle over its private stdin: settings, fault injection and all) and starts commands with
``posix_spawnp`` in their own session, with the allow-listed environment it was given
(shared.backends.task_env) plus the task's values: never the host's settings or secrets.

Orphans are adopted, not re-run (see shared.backends.commandline). A node runs in its own
session, so it outlives a host killed with its process group: it finishes the task it has,
takes no more (its parent is gone) and exits. While a command runs the node holds an flock
on the task's directory; when the command exits it writes ``exit.json`` (by rename) and
lets go. A restarted host's node that finds the directory waits for that lock, then adopts
the exit code and uploads the outputs; only a task whose command left no exit code (killed
mid-flight) runs again, counted as a re-run after host loss.

Protocol (JSON lines): the host sends ``{"blobs": <base64 pickle>, "env": {...}}`` first,
``{"job": {...}}`` once per job and node, then ``{"tasks": [[id, container, blob, local,
argv], ...], "key": job}`` per batch of tasks (one to a few: see local_batch); the node runs
them in order and answers each batch with ``{"r": [record, ...]}`` (None: cancelled).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.backends.commandline import MARKER_ENV, Watchdog, kill_marked, stop_helper, tail_text, wait_for_record
from shared.errors import RetryableError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from shared.blobs.base import BlobStore

log = logging.getLogger(__name__)

# A task whose downloads or uploads fail with a retryable error (storage busy past the SDK's own
# retries) is staged again, this many times in all; a command it already ran is adopted, not rerun.
STAGING_TRIES = 4
_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding the ``shared`` package
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from shared.backends.batch_node import main; main()"


_Waiting = collections.deque[Future[list[dict[str, Any] | None]]]  # who waits on a node, in order


class NodeDied(RuntimeError):
    """The node process went away while it ran a task."""


def record(task_id: str, state: str, code: int | None, attempt: int, rerun: int, **extra: Any) -> dict[str, Any]:
    """A tasks.log line: t(ask), s(tate), x (exit code), a(ttempts), h (1: re-run after host
    loss), ad (1: adopted from a gone host), o(utputs) / e(rror)."""
    rec: dict[str, Any] = {"t": task_id, "s": state, "x": code, "a": attempt}
    if rerun:
        rec["h"] = rerun
    rec.update(extra)
    return rec


def failed(task_id: str, exc: BaseException) -> dict[str, Any]:
    return record(task_id, "failed", None, 0, 0, e=f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- the host's end


def hello(blobs: BlobStore, base_env: Mapping[str, str]) -> str:
    """A node's first line: how to build ``blobs`` (its recipe, pickled) and the allow-listed
    environment its tasks start from. ValidationError when the store has no recipe."""
    recipe = blobs.recipe()
    if recipe is None:
        raise ValidationError(
            "the local batch backend needs a blob store its node processes can build "
            "(BlobStore.recipe): one made from settings or a connection string",
            field="blobs",
        )
    return json.dumps({"blobs": base64.b64encode(pickle.dumps(recipe)).decode(), "env": dict(base_env)})


class NodeClient:
    """The host's handle on one node process, shared by the worker threads that send it tasks.

    A node runs one task at a time, in the order sent; ``outstanding`` counts the messages
    (a task or a few) sent and not yet answered. The backend sends a node its next message
    while it runs one only when no node is idle (``LocalBatchBackend._pick_node``), so the
    next task is already in the node's pipe when a command ends: the host's turn-around is
    off the node's path.
    Replies are read by one thread per node process, in order; a node that dies fails every
    task still waiting on it with :class:`NodeDied` (and the next one starts a new node).
    """

    def __init__(self, hello: str, base_env: Mapping[str, str]) -> None:
        self._hello = hello  # the node's first line: see :func:`hello`
        self._env = dict(base_env)
        self._lock = threading.RLock()  # the process, what it was told, who waits on it
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs: set[str] = set()
        self._waiting: _Waiting = collections.deque()
        self.outstanding = 0  # tasks sent or about to be (the backend counts them in when it picks)

    def _node(self) -> subprocess.Popen[bytes]:
        """The node process, started when there is none (under ``_lock``)."""
        if self._proc is None:
            self._jobs.clear()
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self._env,
                cwd="/",
                start_new_session=True,  # outlives a host killed with its process group
            )
            waiting = self._waiting = collections.deque()
            threading.Thread(target=self._read, args=(proc, waiting), name="conveyor-batch-node", daemon=True).start()
            self._send(proc, self._hello)
        return self._proc

    def _send(self, proc: subprocess.Popen[bytes], line: str) -> None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            self._gone(proc)
            raise NodeDied("batch node is gone") from exc

    def _read(self, proc: subprocess.Popen[bytes], waiting: _Waiting) -> None:
        """The node's answers, in the order its tasks were sent, to those who wait for them."""
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                with self._lock:
                    future = waiting.popleft()
                future.set_result(json.loads(line)["r"])
        except (OSError, ValueError, KeyError, IndexError):  # a garbled answer: the node is no use
            log.exception("batch node %s answered what it should not", proc.pid)
            proc.kill()
        self._gone(proc)
        with self._lock:
            pending = list(waiting)
            waiting.clear()
        for future in pending:
            future.set_exception(NodeDied("batch node died while it ran a task"))

    def _gone(self, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if self._proc is proc:
                self._proc = None

    def run(self, key: str, job: Mapping[str, Any], tasks: list[list[Any]]) -> list[dict[str, Any] | None]:
        """Run some tasks of job ``key`` (its context ``job``), one after the other; their
        tasks.log records (None: cancelled). The caller has counted the call in ``outstanding``;
        it is counted out here."""
        try:
            future: Future[list[dict[str, Any] | None]] = Future()
            with self._lock:
                proc = self._node()
                if key not in self._jobs:
                    self._send(proc, json.dumps({"job": dict(job, key=key)}))
                    self._jobs.add(key)
                self._waiting.append(future)
                self._send(proc, json.dumps({"tasks": tasks, "key": key}))
            return future.result()
        finally:
            with self._lock:
                self.outstanding -= 1

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            stop_helper(proc)


# ---------------------------------------------------------------- the node's end


class Node:
    """Runs tasks to their final state (the node process's whole job)."""

    def __init__(self, blobs: BlobStore, base_env: Mapping[str, str]) -> None:
        self.blobs = blobs
        self.base_env = dict(base_env)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.watchdog = Watchdog()
        self._devnull = os.open(os.devnull, os.O_RDONLY)

    def run(self, job: dict[str, Any], task: list[Any]) -> dict[str, Any] | None:
        """The task's record (staged again on a retryable storage error); None when cancelled."""
        task_id = task[0]
        for staging in range(1, STAGING_TRIES + 1):
            try:
                return self.execute(job, task)
            except RetryableError as exc:  # storage busy beyond the SDK's retries: stage the task again
                if staging == STAGING_TRIES:
                    return failed(task_id, exc)
                time.sleep(min(4.0, float(2 ** (staging - 1))))
            except Exception as exc:  # a broken download or upload fails the task, never the node
                return failed(task_id, exc)
        return None  # not reached

    def execute(self, job: dict[str, Any], task: list[Any]) -> dict[str, Any] | None:
        """One task to its final state; None when cancelled (nothing is recorded).

        The hot path of 1,000-task jobs: plain string paths, no fsync, no blob call when
        there is nothing to upload."""
        if os.path.exists(job["marker"]):  # cancelled while it waited in the node's pipe
            return None
        tdir = os.path.join(job["tasks_dir"], task[0])
        first, rerun = 1, 0
        try:
            os.mkdir(tdir)
        except FileExistsError:  # started by a host that is gone: adopt what its command did
            adopted = self.adopt(job, task, os.path.join(tdir, "exit.json"), job.get("max_wall_clock_seconds"))
            if adopted is None or "s" in adopted:
                return adopted  # cancelled, or the command's own result
            first, rerun = int(adopted["next"]), int(adopted["h"])
        # Held from here to the end, staging included: a node outlives its host, so one that
        # is still staging must look busy to the restarted host's node, not killed mid-flight.
        lock = os.open(tdir, os.O_RDONLY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._run(job, task, first, rerun)
        finally:
            os.close(lock)

    def _run(self, job: dict[str, Any], task: list[Any], first: int, rerun: int) -> dict[str, Any] | None:
        """``execute`` from staging on (``first`` = 1) or from attempt ``first``, holding the lock."""
        task_id, container, blob, local, argv = task
        cancelled = job["marker"]
        tdir = os.path.join(job["tasks_dir"], task_id)
        wd = os.path.join(tdir, "wd")
        out = os.path.join(wd, "output")
        stdout, stderr = os.path.join(tdir, "stdout.txt"), os.path.join(tdir, "stderr.txt")
        exit_record = os.path.join(tdir, "exit.json")
        wall = job.get("max_wall_clock_seconds")
        tries = int(job.get("max_task_retries") or 0) + 1
        if first == 1:
            os.mkdir(wd)
            # Local names were checked at launch to be one plain segment (no '/', not '..'),
            # and wd was created just now, so joining cannot leave wd.
            for res_container, res_name, res_local in job["resources"]:
                self.blobs.download_to(res_container, res_name, os.path.join(wd, res_local))
            if argv is None:
                error = "launched by an older Conveyor (no argv): rerun the step"
                return record(task_id, "failed", None, 0, 0, e=error)
            self.blobs.download_to(container, blob, os.path.join(wd, local))
        env = dict(self.base_env)
        env.update(job["env"])
        env["AZ_BATCH_TASK_ID"] = task_id
        env["AZ_BATCH_TASK_WORKING_DIR"] = wd
        env["CONVEYOR_TASK_OUTPUT_DIR"] = out
        marker = env[MARKER_ENV] = f"batch/{job['key']}/{task_id}"
        deadline = time.monotonic() + wall if wall else None
        code: int | None = None
        for attempt in range(first, tries + 1):
            if attempt > first and os.path.exists(cancelled):  # the first attempt: looked at above
                return None
            if attempt > 1:
                shutil.rmtree(out, ignore_errors=True)
            timed_out = threading.Event()
            token = None
            if deadline is not None:  # killed by marker, like a cancel from elsewhere
                token = self.watchdog.watch(deadline, _expirer(marker, timed_out))
            code = self.spawn(argv, wd, env, stdout, stderr, out, exit_record, attempt, cancelled)
            if token is not None:
                self.watchdog.clear(token)
            if code != 0 and os.path.exists(cancelled):  # killed by a cancel: not a failure
                return None
            if timed_out.is_set():
                return record(task_id, "failed", code, attempt, rerun, e=f"exceeded max wall clock ({wall}s)")
            if code == 0:
                return record(task_id, "succeeded", 0, attempt, rerun, o=self.upload(job, task_id, out))
        return record(task_id, "failed", code, tries, rerun, e=tail_text(Path(stderr), lines=5, max_bytes=600))

    def spawn(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        stdout: str,
        stderr: str,
        out: str,
        exit_record: str,
        attempt: int,
        cancelled: str,
    ) -> int:
        """Run ``argv`` in its own session and wait, then write ``{"attempt", "rc"}`` to
        ``exit_record`` (the caller holds the task directory's lock). A command started while
        the job's ``cancelled`` marker exists is killed at once (a cancel's /proc scan may have
        missed it). What ``subprocess.Popen(start_new_session=True, stdin=DEVNULL)`` does, for
        half its CPU: stdin/stdout/stderr dup'ed in, the signals Python ignores reset, no other
        fd inherited (Python opens them non-inheritable)."""
        with contextlib.suppress(FileExistsError):  # its parent (wd) is there: staged or adopted
            os.mkdir(out)
        fds: list[int] = []
        try:
            for name in (stdout, stderr):
                fds.append(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            os.chdir(cwd)
            path = env.get("PATH", "")
            if os.environ.get("PATH") != path:
                os.environ["PATH"] = path  # posix_spawnp searches this process's PATH
            pid = os.posix_spawnp(
                argv[0],
                argv,
                env,
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                    (os.POSIX_SPAWN_DUP2, fds[0], 1),
                    (os.POSIX_SPAWN_DUP2, fds[1], 2),
                ],
            )
        except (OSError, ValueError) as exc:  # not found, not executable; ValueError: a NUL in a word
            raise OSError(f"{type(exc).__name__}: {exc}") from exc  # fails the task with this reason
        finally:
            for fd in fds:
                os.close(fd)
        if os.path.exists(cancelled):  # cancelled as it started (a cancel's scan may have missed it)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        tmp = exit_record + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b'{"attempt": %d, "rc": %d}' % (attempt, rc))
        os.close(fd)
        os.replace(tmp, exit_record)
        return rc

    def adopt(self, job: dict[str, Any], task: list[Any], exit_record: str, wall: Any) -> dict[str, Any] | None:
        """A task a gone host started: its final record when its command finished (waiting
        while it still runs), None when cancelled, else ``{"next": attempt, "h": 0|1}`` -- where
        to go on: a failed attempt with retries left, or (``h``) a re-run after host loss."""
        task_id = task[0]
        tdir = os.path.join(job["tasks_dir"], task_id)
        out = os.path.join(tdir, "wd", "output")
        marker = f"batch/{job['key']}/{task_id}"
        expired = threading.Event()
        token = None
        if wall:  # an orphan gets the wall clock again from now: at most twice its limit in all
            token = self.watchdog.watch(time.monotonic() + wall, _expirer(marker, expired))
        rec = wait_for_record(Path(tdir), Path(exit_record))
        if token is not None:
            self.watchdog.clear(token)
        if rec is not None:
            code, attempt = int(rec["rc"]), int(rec.get("attempt") or 1)
            tries = int(job.get("max_task_retries") or 0) + 1
            if code != 0 and os.path.exists(job["marker"]):
                return None
            if expired.is_set():
                return record(task_id, "failed", code, attempt, 0, e=f"exceeded max wall clock ({wall}s)", ad=1)
            if code == 0:
                return record(task_id, "succeeded", 0, attempt, 0, o=self.upload(job, task_id, out), ad=1)
            if attempt >= tries:
                stderr = Path(tdir, "stderr.txt")
                return record(task_id, "failed", code, attempt, 0, e=tail_text(stderr, lines=5, max_bytes=600), ad=1)
            return {"next": attempt + 1, "h": 0}
        ran = os.path.exists(os.path.join(tdir, "stdout.txt"))  # its command had started
        kill_marked(marker, exact=True)  # a leftover whose node died with the host
        shutil.rmtree(tdir)
        os.mkdir(tdir)
        return {"next": 1, "h": 1 if ran else 0}

    def upload(self, job: dict[str, Any], task_id: str, out: str) -> list[str]:
        """Every file the command wrote under ``out`` (symlinks not followed), as blob URLs."""
        urls: list[str] = []
        base = f"{job['run_id']}/{job['step']}/{task_id}/"
        stack = [out]
        while stack:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        rel = entry.path[len(out) + 1 :]  # scandir's path is out + "/" + the name
                        info = self.blobs.upload_file(job["output_container"], base + rel, entry.path)
                        urls.append(info.url)
        return sorted(urls)


def _expirer(marker: str, flag: threading.Event) -> Any:
    def expire() -> None:
        flag.set()
        kill_marked(marker, exact=True)

    return expire


def main() -> None:
    """The node process: builds its blob store, then runs tasks until its input ends or its
    host is gone (it then finishes the task it has and takes no more)."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    parent = os.getppid()
    hello = json.loads(inp.readline())
    factory, args, kwargs = pickle.loads(base64.b64decode(hello["blobs"]))  # noqa: S301 - our host, our pipe
    node = Node(factory(*args, **kwargs), hello["env"])
    host = True
    for line in inp:
        if os.getppid() != parent:
            break
        req = json.loads(line)
        if "job" in req:
            node.jobs[req["job"]["key"]] = req["job"]
            continue
        job = node.jobs[req["key"]]
        result = []
        for task in req["tasks"]:
            if os.getppid() != parent:
                break  # the host is gone: no new task (a restarted one runs what is left)
            try:
                result.append(node.run(job, task))
            except Exception as exc:  # never leave the host waiting for an answer
                result.append(failed(task[0], exc))
        if host:
            try:
                out.write((json.dumps({"r": result}, separators=(",", ":")) + "\n").encode())
                out.flush()
            except OSError:
                host = False  # gone: finish nothing more than the task we had
