"""Turning data into safe local paths, and running the local backends' processes.

Blob names, webhook fields and params are data, never code. This module is where they meet
the file system and processes:

- ``safe_relpath`` / ``safe_join`` turn a name into a path that stays inside a directory
  (no ``..``, no absolute paths, no backslash or NUL tricks);
- commands are argv lists (shared.flows.argv renders them: a value fills one word, no shell)
  and run with the allow-listed environment of shared.backends.task_env (``child_env``);
- the process helpers start commands in their own process group (so a kill reaches every
  child), mark them with an environment variable (so a host can find the processes of a job
  it did not start), and keep small JSON state files atomically.

Orphans are adopted, not re-run. Commands are started by a small helper process (``Spawner``)
in its own session, so it outlives a host killed with its whole process group. While a
command runs the helper holds an ``flock`` on a path of the command's (a batch task's
directory, a run part's ``.started`` file: one that exists anyway, so no lock file is made per
command), and when it exits the helper writes its exit code to the command's record file
(``{"rc": n, ...}``, by rename), then lets go of the lock. A restarted host that finds a
command it did not finish waits for that lock (a live orphan is still running: its slot stays
taken) and reads the record: the command finished, so its result is adopted
(:func:`wait_for_record`). Only a command with no record (killed mid-flight, e.g. with its
helper) runs again, and that is counted as a re-run after host loss.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, RemoteState, StepLog, StepStatus
from shared.backends.task_env import base_env
from shared.errors import NotFoundError, ValidationError

log = logging.getLogger(__name__)

# Environment variable carrying "<backend>/<key>/<part>" on every child we start.
MARKER_ENV = "CONVEYOR_TASK_JOB"

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


# ---------------------------------------------------------------- names -> paths


def safe_relpath(name: str, *, field: str = "name") -> PurePosixPath:
    """``name`` as a relative POSIX path that cannot leave the directory it is joined to.

    Refuses (ValidationError naming ``field``): empty names, NUL, absolute paths (``/x``,
    ``C:x``), backslashes (``..\\x`` is a traversal on Windows and never a real blob folder
    separator here) and any ``..`` segment. ``.`` and empty segments are dropped.
    """
    if not isinstance(name, str) or name == "":
        raise ValidationError("empty name", field=field)
    if "\x00" in name:
        raise ValidationError("name contains a NUL byte", field=field)
    if "\\" in name:
        raise ValidationError(f"name contains a backslash: {name!r}", field=field)
    if name.startswith("/") or _WINDOWS_DRIVE.match(name):
        raise ValidationError(f"absolute path not allowed: {name!r}", field=field)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValidationError(f"'..' not allowed in {name!r}", field=field)
    if not parts:
        raise ValidationError(f"name has no file part: {name!r}", field=field)
    return PurePosixPath(*parts)


def is_within(base: Path, path: Path) -> bool:
    """True when ``path`` (resolved, following symlinks) is ``base`` or inside it."""
    return path.resolve().is_relative_to(base.resolve())


def safe_join(base: Path, name: str, *, field: str = "name") -> Path:
    """``base / name`` after ``safe_relpath``; the resolved result must stay inside ``base``
    (this also catches symlinks inside ``base`` that point elsewhere)."""
    rel = safe_relpath(name, field=field)
    target = base / rel
    if not is_within(base, target):
        raise ValidationError(f"{name!r} resolves outside {base}", field=field)
    return target


def local_file_name(blob_name: str, *, field: str = "name") -> str:
    """The base name of a blob (its last ``/`` segment), checked safe as a file name."""
    return str(safe_relpath(blob_name.rsplit("/", 1)[-1], field=field))


_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,254}$")


def job_dir(home: Path, backend: str, key: str) -> Path:
    """``<home>/<backend>/<key>``; the key must be a plain name (it becomes a directory)."""
    if not isinstance(key, str) or not _KEY.match(key) or ".." in key:
        raise ValidationError(f"not usable as a job id: {key!r}", field="key")
    return home / backend / key


def validation_error(exc: Exception, prefix: str = "params") -> ValidationError:
    """A pydantic ValidationError as ours, naming the first offending field."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0] if errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", exc)).removeprefix("Value error, ")
        return ValidationError(msg, field=f"{prefix}.{loc}" if loc else prefix)
    return ValidationError(str(exc), field=prefix)


# ---------------------------------------------------------------- small state files


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file and rename: readers see old or new, never half.

    No fsync: a crash may lose the newest write, never corrupt the file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def create_json_once(path: Path, data: Any) -> bool:
    """Create ``path`` with ``data`` unless it exists; True when this call created it.

    Atomic across threads and processes: the file appears complete or not at all.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    tmp.write_text(json.dumps(data, separators=(",", ":"), default=str), encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def tail_text(path: Path, lines: int = 20, max_bytes: int = 4000) -> str:
    """The last ``lines`` lines (at most ``max_bytes``) of a text file; '' when missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]).strip()


class JobLock:
    """An exclusive, non-blocking ``flock`` on a file: who holds it runs the job.

    The kernel releases it when the holder dies, so a restarted host can take over a job
    whose host is gone, while a live host (even another object in the same process: flock
    locks belong to the open file) keeps it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> None:
        """Wait for the lock (the GIL is released while waiting)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


# ---------------------------------------------------------------- processes


def child_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a child: the allow-listed part of ``base`` (default os.environ: PATH with
    this interpreter's bin dir first, HOME, TMPDIR, TZ, locale; see shared.backends.task_env),
    plus ``extra``. Never the host's settings or secrets."""
    env = base_env(base)
    if extra:
        env.update(extra)
    return env


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (started with start_new_session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def kill_marked(prefix: str, *, exact: bool = False) -> int:
    """Kill every process whose MARKER_ENV starts with ``prefix`` (is ``prefix`` when
    ``exact``), and its process group.

    This is how a cancel or another backend instance stops children it did not start
    itself: the marker is inherited by grandchildren, so a pid reused by an unrelated
    process is never hit. Returns how many processes were signalled (Linux /proc only).
    """
    needle = f"{MARKER_ENV}={prefix}".encode()
    me = os.getpid()
    hits = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if any(var == needle if exact else var.startswith(needle) for var in environ.split(b"\x00")):
            pid = int(entry)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                pgid = os.getpgid(pid)
                if pgid != os.getpgid(0):
                    os.killpg(pgid, signal.SIGKILL)
                os.kill(pid, signal.SIGKILL)
                hits += 1
    return hits


# A tiny stdlib-only process that starts commands for a worker thread. Spawning from the
# host itself serialises every fork/exec on the GIL (a threaded host runs ~3x fewer short
# tasks per second than a process pool); a helper per worker spawns in parallel, like a pool.
# It runs in its own session, so it outlives a host killed with its process group: it then
# finishes the command it runs, records its exit code and lock (see the module docstring),
# starts nothing more (its parent is gone) and exits at the end of its input.
# It starts commands with os.posix_spawnp: what subprocess.Popen(start_new_session=True,
# stdin=DEVNULL, close_fds=True) does (its own session, stdin/stdout/stderr dup'ed in, the
# signals Python ignores reset, no other fd inherited: Python opens them non-inheritable),
# for half the CPU of the helper (~0.1 ms a command instead of ~0.25 ms measured).
_SPAWNER_SRC = r"""
import fcntl, json, os, signal, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
parent = os.getppid()
base = dict(os.environ)
devnull = os.open(os.devnull, os.O_RDONLY)
host = True
def reply(data):
    global host
    if host:
        try:
            out.write(data)
            out.flush()
        except OSError:
            host = False
for line in inp:
    req = json.loads(line)
    if os.getppid() != parent:
        break
    env = dict(base, **req["env"])
    os.environ["PATH"] = env.get("PATH", "")  # posix_spawnp searches this process's PATH
    lock = None
    fds = []
    try:
        if req.get("mkdir"):
            os.makedirs(req["mkdir"], exist_ok=True)
        if req.get("lock"):
            lock = os.open(req["lock"], os.O_RDONLY)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for name in (req["stdout"], req["stderr"]):
            fds.append(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        os.chdir(req["cwd"])
        pid = os.posix_spawnp(req["argv"][0], req["argv"], env, setsid=True,
                              setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                            (os.POSIX_SPAWN_DUP2, fds[0], 1),
                                            (os.POSIX_SPAWN_DUP2, fds[1], 2)])
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in a word
        if lock is not None:
            os.close(lock)
        reply((json.dumps({"error": type(exc).__name__ + ": " + str(exc)}) + "\n").encode())
        continue
    finally:
        for fd in fds:
            os.close(fd)
    if req.get("cancelled") and os.path.exists(req["cancelled"]):
        try:  # cancelled as it started (a cancel's scan may have missed it)
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if req.get("pid"):
        reply(b'{"pid":%d}\n' % pid)
    rc = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if req.get("record"):
        tmp = req["record"] + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, json.dumps(dict(req.get("tag") or {}, rc=rc)).encode())
        os.close(fd)
        os.replace(tmp, req["record"])
    if lock is not None:
        os.close(lock)
    reply(b'{"rc":%d}\n' % rc)
"""


class SpawnerDied(RuntimeError):
    """The helper process went away while running a command."""


class Spawner:
    """Runs commands through one long-lived helper process (one command at a time).

    ``run`` blocks (without holding the GIL) until the command exits and returns its exit
    code (negative: killed by that signal). ``env`` is added to the helper's environment
    (the allow-listed part of ``base_env``, default os.environ: see ``child_env``). ``mkdir``
    is a directory the helper creates first. ``lock`` and ``record`` make the command
    adoptable (module docstring): the helper holds an flock on ``lock`` (an existing file or
    directory) while it runs and writes ``{**tag, "rc": code}`` to ``record`` when it exits.
    ``on_start(pid)`` is called as soon as the command runs, so callers can kill its process
    group; without it the helper reports only the exit code (one reply, not two: a caller that
    runs many short commands kills by marker, :func:`kill_marked`). The helper kills a command
    it has just started when the file ``cancelled`` exists then: a cancel that writes that file
    before it looks for the processes to kill cannot miss one that was starting.
    """

    def __init__(self, base_env: Mapping[str, str] | None = None) -> None:
        self._base_env = child_env(base=base_env)
        self._proc: subprocess.Popen[bytes] | None = None

    def _helper(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SPAWNER_SRC],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=self._base_env,
                cwd="/",
                start_new_session=True,  # outlives a host killed with its process group
            )
        return self._proc

    def run(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        stdout: str,
        stderr: str,
        mkdir: str | None = None,
        on_start: Callable[[int], None] | None = None,
        lock: str | None = None,
        record: str | None = None,
        tag: Mapping[str, Any] | None = None,
        cancelled: str | None = None,
    ) -> int:
        helper = self._helper()
        assert helper.stdin is not None and helper.stdout is not None
        req = {
            "argv": argv,
            "cwd": cwd,
            "env": dict(env),
            "stdout": stdout,
            "stderr": stderr,
            "mkdir": mkdir,
            "lock": lock,
            "record": record,
            "tag": dict(tag or {}),
            "cancelled": cancelled,
            "pid": on_start is not None,
        }
        try:
            helper.stdin.write(json.dumps(req).encode() + b"\n")
            helper.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            self.close()
            raise SpawnerDied("process helper is gone") from exc
        line = helper.stdout.readline()
        if not line:
            self.close()
            raise SpawnerDied("process helper is gone or died while the command ran")
        msg = json.loads(line)
        if "error" in msg:
            raise OSError(msg["error"])
        if "pid" in msg:
            if on_start is not None:
                on_start(int(msg["pid"]))
            line = helper.stdout.readline()
            if not line:
                self.close()
                raise SpawnerDied("process helper died while the command ran")
            msg = json.loads(line)
        return int(msg["rc"])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_helper(proc)
            if proc.stdout:
                proc.stdout.close()


def stop_helper(proc: subprocess.Popen[bytes]) -> None:
    """End a helper process that reads its work from stdin: close its input (it finishes what
    it runs, then exits), kill it if it has not gone in 5 s."""
    with contextlib.suppress(OSError):
        if proc.stdin:
            proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for_record(lock: Path, record: Path) -> dict[str, Any] | None:
    """The exit record of a command a gone host started: waits while a helper still runs it
    (holds an flock on ``lock``), then returns ``record`` (``{"rc", ...}``), or None when the
    command left none (it never ran, or was killed with its helper)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # no lock, no helper holding it
        return _exit_record(record)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the GIL is released while waiting
        return _exit_record(record)
    finally:
        os.close(fd)


def _exit_record(record: Path) -> dict[str, Any] | None:
    rec = read_json(record)
    return rec if isinstance(rec, dict) and isinstance(rec.get("rc"), int) else None


class Watchdog:
    """One thread that kills process groups whose deadline has passed.

    Cheaper than ``Popen.wait(timeout)`` (which polls with sleeps) or a Timer thread per
    process: waiters block in ``wait()`` and the watchdog kills on time.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._done: set[int] = set()

    def watch(self, deadline: float, kill: Callable[[], None]) -> int:
        """Call ``kill`` at ``deadline`` (time.monotonic) unless ``clear``ed first."""
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, self._seq, kill))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="conveyor-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
            return self._seq

    def clear(self, token: int) -> None:
        with self._cond:
            self._done.add(token)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, token, kill = self._heap[0]
                now = time.monotonic()
                if token in self._done:
                    heapq.heappop(self._heap)
                    self._done.discard(token)
                    continue
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
            kill()


class WorkerPool:
    """At most ``max_workers`` callables at once, FIFO, on daemon threads started lazily.

    Daemon threads so that a host that exits does not wait for jobs: their state is on
    disk and a restarted host resumes them.
    """

    def __init__(self, max_workers: int, name: str = "conveyor-worker") -> None:
        if max_workers < 1:
            raise ValidationError("must be at least 1", field="max_workers")
        self.max_workers = max_workers
        self._name = name
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit_all(self, fns: Iterable[Callable[[], None]]) -> None:
        n = 0
        for fn in fns:
            self._queue.put(fn)
            n += 1
        with self._lock:
            while len(self._threads) < min(self.max_workers, len(self._threads) + n):
                t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception:  # a task callable records its own failure; never lose the worker
                log.exception("unhandled error in %s", self._name)


# ---------------------------------------------------------------- one-run-at-a-time backends


class LocalRun:
    """A launched run of a LocalRunBackend, as held by the instance that runs it."""

    def __init__(self, key: str, dir: Path, spec: dict[str, Any], lock: JobLock) -> None:
        self.key = key
        self.dir = dir
        self.spec = spec
        self.lock = lock
        self.cancel_event = threading.Event()
        self.pid: int | None = None  # the process group of the command running now
        self.final: dict[str, Any] | None = None
        self.progress: dict[str, Any] = {"done": 0, "total": 1}
        self.spawner: Spawner | None = None

    def cancelled(self) -> bool:
        if not self.cancel_event.is_set() and (self.dir / "cancelled").exists():
            self.cancel_event.set()
        return self.cancel_event.is_set()


class LocalRunBackend(JobBackend):
    """Base of local backends whose run is a short sequence of processes (Databricks job,
    Azure ML pipeline, register and deploy steps), driven by one background thread per run.

    Layout ``<home>/<kind>/<key>/``: ``run.json`` (the run as launched; its creation decides
    idempotency), ``lock`` (held by the instance running it), ``progress.json``,
    ``cancelled``, ``status.json`` (final), ``parts/<part>.{started,exit}`` (each process:
    ``started`` is also the lock its helper holds while it runs; see the module docstring).
    A new instance on the same home takes over a run whose lock is free (its host died) and
    calls ``_execute`` again, which resumes from ``progress.json`` where the subclass allows;
    a process of the dead host is waited for and its exit code adopted (:meth:`run_process`),
    never started twice.
    """

    kind = ""

    def __init__(self, home: Path, *, resume: bool = True) -> None:
        self.home = Path(home)
        self.resume = resume
        self._runs: dict[str, LocalRun] = {}
        self._lock = threading.Lock()
        self._watchdog = Watchdog()

    # subclass hooks
    def _prepare(self, request: LaunchRequest, rdir: Path) -> dict[str, Any]:
        """Validate the request and return the JSON spec of the run (raise on bad input)."""
        raise NotImplementedError

    def _execute(self, run: LocalRun) -> dict[str, Any]:
        """Do the work; return the final {"state", "outputs" | "error"}."""
        raise NotImplementedError

    # port
    def logs(self, remote_id: str) -> list[StepLog]:
        """The run's ``stdout.txt``/``stderr.txt``, then each pipeline job's (``<job>/stdout.txt``)."""
        rdir = job_dir(self.home, self.kind, remote_id)
        if not (rdir / "run.json").exists():
            raise NotFoundError(f"no local {self.kind} run {remote_id!r}", service=self.kind)
        order = [
            str(j.get("name")) for j in (read_json(rdir / "run.json") or {}).get("jobs") or [] if isinstance(j, dict)
        ]
        dirs = [rdir, *(rdir / n for n in order if n and "/" not in n and n not in (".", ".."))]
        found = [
            StepLog(str(p.relative_to(rdir)), path=p)
            for d in dirs
            for p in (d / "stdout.txt", d / "stderr.txt")
            if p.is_file()
        ]
        return found or [StepLog(self.kind, note="nothing has been written yet")]

    def launch(self, request: LaunchRequest) -> LaunchResult:
        rdir = job_dir(self.home, self.kind, request.key)
        if (rdir / "run.json").exists():
            self._ensure_running(request.key, takeover=self.resume)
            return LaunchResult(remote_id=request.key, url=rdir.as_uri(), reattached=True)
        spec = self._prepare(request, rdir)
        rdir.mkdir(parents=True, exist_ok=True)
        created = create_json_once(rdir / "run.json", spec)
        self._ensure_running(request.key, takeover=created or self.resume)
        return LaunchResult(remote_id=request.key, url=rdir.as_uri(), reattached=not created)

    def poll(self, remote_id: str) -> StepStatus:
        rdir = job_dir(self.home, self.kind, remote_id)
        run = self._runs.get(remote_id) or self._ensure_running(remote_id, takeover=self.resume)
        final = run.final if run is not None else read_json(rdir / "status.json")
        if final is None:
            progress = run.progress if run is not None else (read_json(rdir / "progress.json") or {})
            prog = {"done": int(progress.get("done", 0)), "total": int(progress.get("total", 1))}
            state: RemoteState = "cancelled" if (rdir / "cancelled").exists() else "running"
            return StepStatus(state, progress=prog, reruns=int(progress.get("reruns", 0)))
        prog = {"done": int(final.get("done", 0)), "total": int(final.get("total", 1))}
        reruns = int(final.get("reruns", 0))
        if final["state"] == "succeeded":
            return StepStatus("succeeded", outputs=final.get("outputs") or {}, progress=prog, reruns=reruns)
        if final["state"] == "cancelled":
            return StepStatus("cancelled", progress=prog, reruns=reruns)
        retryable = bool(final.get("retryable"))
        return StepStatus("failed", error=final.get("error"), progress=prog, retryable=retryable, reruns=reruns)

    def cancel(self, remote_id: str) -> None:
        rdir = job_dir(self.home, self.kind, remote_id)
        if not (rdir / "run.json").exists():
            raise NotFoundError(f"no local {self.kind} run {remote_id!r}", service=self.kind)
        if (rdir / "status.json").exists():
            return
        atomic_write_json(rdir / "cancelled", {"at": time.time()})
        run = self._runs.get(remote_id)
        if run is not None:
            run.cancel_event.set()
            if run.pid is not None:
                kill_group(run.pid)
        kill_marked(f"{self.kind}/{remote_id}/")  # also a process of a gone host this one adopted
        if run is None:
            self._ensure_running(remote_id, takeover=self.resume)  # finalises a run whose host is gone

    # machinery
    def _ensure_running(self, key: str, *, takeover: bool) -> LocalRun | None:
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                return run
            rdir = job_dir(self.home, self.kind, key)
            spec = read_json(rdir / "run.json")
            if not isinstance(spec, dict):
                raise NotFoundError(f"no local {self.kind} run {key!r}", service=self.kind)
            if not takeover or (rdir / "status.json").exists():
                return None
            lock = JobLock(rdir / "lock")
            if not lock.try_acquire():
                return None
            if (rdir / "status.json").exists():
                lock.release()
                return None
            run = LocalRun(key, rdir, spec, lock)
            run.progress = read_json(rdir / "progress.json") or run.progress
            self._runs[key] = run
        threading.Thread(target=self._drive, args=(run,), name=f"conveyor-{self.kind}-{key}", daemon=True).start()
        return run

    def _drive(self, run: LocalRun) -> None:
        final: dict[str, Any]
        try:
            final = {"state": "cancelled"} if run.cancelled() else self._execute(run)
        except Exception as exc:  # a bug or an I/O error fails the run with its reason, never hangs it
            log.exception("local %s run %s failed", self.kind, run.key)
            final = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            if run.spawner is not None:
                run.spawner.close()
                run.spawner = None
        if run.cancelled():
            final = {"state": "cancelled"}
        final.setdefault("done", run.progress.get("done", 0))
        final.setdefault("total", run.progress.get("total", 1))
        final.setdefault("reruns", run.progress.get("reruns", 0))
        atomic_write_json(run.dir / "status.json", final)
        run.final = final
        run.lock.release()

    def set_progress(self, run: LocalRun, **progress: Any) -> None:
        run.progress = {**run.progress, **progress}
        atomic_write_json(run.dir / "progress.json", run.progress)

    def run_process(
        self,
        run: LocalRun,
        argv: list[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        stdout: Path,
        stderr: Path,
        part: str,
        timeout: float | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> tuple[int | None, str]:
        """Run one process of ``run``; (exit code, "" | "cancelled" | "timeout").

        A process a gone host started for this ``part`` is not started again: it is waited
        for and its exit code adopted (then ``prepare`` is not called, so its files stay).
        Only one that left no exit code runs again, counted in the progress as a re-run."""
        if run.cancelled():
            return None, "cancelled"
        parts = run.dir / "parts"
        parts.mkdir(exist_ok=True)
        record, started = parts / f"{part}.exit", parts / f"{part}.started"
        marker = f"{self.kind}/{run.key}/{part}"
        timed_out = threading.Event()

        def expire(kill: Callable[[], Any]) -> None:
            timed_out.set()
            kill()

        if started.exists():  # started by this run before: by a host that is gone (or by us)
            token = None
            if timeout is not None:
                token = self._watchdog.watch(
                    time.monotonic() + timeout, lambda: expire(lambda: kill_marked(marker, exact=True))
                )
            rec = wait_for_record(started, record)
            if token is not None:
                self._watchdog.clear(token)
            if rec is not None:
                log.info(
                    "local %s run %s: adopted %s (exit code %s) of a gone host", self.kind, run.key, part, rec["rc"]
                )
                return self._outcome(run, int(rec["rc"]), timed_out)
            kill_marked(marker, exact=True)  # a leftover whose helper died with the host
            who = (self.kind, run.key, part)
            if stdout.exists():  # the helper opens it as it starts the command: it began
                log.warning("local %s run %s: %s was killed mid-flight with its host; running it again", *who)
                self.set_progress(run, reruns=int(run.progress.get("reruns", 0)) + 1)
            else:  # its host died before the command began: a first run, not a re-run
                log.info("local %s run %s: %s never began (its host died first); starting it", *who)
        record.unlink(missing_ok=True)
        if prepare is not None:
            prepare()
        started.write_text(str(time.time()), encoding="utf-8")
        full_env = dict(env)
        full_env[MARKER_ENV] = marker
        if run.spawner is None:
            run.spawner = Spawner()
        tokens: list[int] = []

        def on_start(pid: int) -> None:
            run.pid = pid
            if timeout is not None:
                tokens.append(self._watchdog.watch(time.monotonic() + timeout, lambda: expire(lambda: kill_group(pid))))
            if run.cancel_event.is_set():
                kill_group(pid)

        code = run.spawner.run(
            argv,
            cwd=str(cwd),
            env=full_env,
            stdout=str(stdout),
            stderr=str(stderr),
            on_start=on_start,
            lock=str(started),
            record=str(record),
        )
        run.pid = None
        for token in tokens:
            self._watchdog.clear(token)
        return self._outcome(run, code, timed_out)

    @staticmethod
    def _outcome(run: LocalRun, code: int, timed_out: threading.Event) -> tuple[int | None, str]:
        if run.cancelled():
            return code, "cancelled"
        return code, "timeout" if timed_out.is_set() else ""
