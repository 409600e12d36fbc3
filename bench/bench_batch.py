"""The local batch backend running N short tasks against a bare multiprocessing pool.

Both sides do the same work per task, with the same number of workers:

1. make ``tasks/<id>/wd/output``;
2. fetch the task's input "blob" into ``wd`` (the backend always downloads each task's input);
3. run ``echo {task_index} > {output_dir}/o.txt`` through ``/bin/sh -c`` (stdout/stderr to files);
4. "upload" what the command wrote to ``output_dir`` (the backend uploads every output file).

Blobs are kept off the network on purpose: the backend's blob store is :class:`DirBlobStore`,
whose blobs are plain files under a directory, and the pool copies the same files itself, so
a download/upload is a file copy on either side. The figure is then the backend's own overhead
(job spec, argv per task, JSON task log, the spawner helper and its exit record, status file,
polling) over a bare ``multiprocessing.Pool`` calling ``subprocess.run``; Azurite would add
the same HTTP cost to both sides and dilute it. The files live in /dev/shm when there is one
(:func:`_scratch` says why), each round's until the end (``one_size`` says why).

Goal: backend time <= 1.15 x bare pool time (median of the interleaved rounds' ratios), with
1 worker and with 2 workers (both sides the same count), median of 5 rounds.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.common import interleaved, report
from shared.backends.base import LaunchRequest
from shared.blobs.base import BlobInfo, BlobStore, Recipe, StrPath
from shared.errors import ValidationError

# argv (tasks run without a shell); the redirect needs one, so both sides run the same sh -c
COMMAND = ["sh", "-c", 'echo "$1" > "$2/o.txt"', "sh", "{task_index}", "{output_dir}"]
GOAL = 1.15
SCHEME = "dirblob://"


class DirBlobStore(BlobStore):
    """Blobs as files under ``root/<container>/<name>`` (a benchmark double: no network).

    Plain string paths and one copy per transfer, like the bare pool's own copies: the
    double should cost what a file copy costs, so that the figure is the backend's."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root = str(root)

    def _path(self, container: str, name: str) -> str:
        if ".." in name.split("/") or name.startswith("/"):
            raise ValidationError(f"bad blob name {name!r}", field="name")
        return os.path.join(self._root, container, name)

    def _info(self, container: str, name: str, path: str) -> BlobInfo:
        st = os.stat(path)
        return BlobInfo(
            container=container,
            name=name,
            url=self.url(container, name),
            etag=f'"{st.st_mtime_ns:x}"',
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo:
        path = self._path(container, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return self._info(container, name, path)

    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo:
        target = self._path(container, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        return self._info(container, name, target)

    def download(self, container: str, name: str) -> bytes:
        with open(self._path(container, name), "rb") as f:
            return f.read()

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        shutil.copyfile(self._path(container, name), path)

    def info(self, container: str, name: str) -> BlobInfo | None:
        path = self._path(container, name)
        return self._info(container, name, path) if os.path.isfile(path) else None

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        base = self.root / container
        found = []
        for path in sorted(base.rglob("*")):
            name = path.relative_to(base).as_posix()
            if path.is_file() and name.startswith(prefix):
                found.append(self._info(container, name, str(path)))
        return found

    def recipe(self) -> Recipe:
        return (type(self), (self.root,), {})

    def url(self, container: str, name: str) -> str:
        return f"{SCHEME}{container}/{name}"

    def parse_url(self, url: str) -> tuple[str, str]:
        if not url.startswith(SCHEME):
            raise ValidationError(f"not a {SCHEME} URL: {url!r}", field="url")
        container, _, name = url[len(SCHEME) :].partition("/")
        return container, name


# ---------------------------------------------------------------- the bare pool side


def _bare_task(args: tuple[str, str, str, int, str]) -> int:
    """One task, done the plain way: the same directories, copies and sh -c command."""
    blob_root, work, input_name, index, out_prefix = args
    task_id = f"task-{index:05d}"
    tdir = os.path.join(work, task_id)
    wd = os.path.join(tdir, "wd")
    out = os.path.join(wd, "output")
    os.makedirs(out)
    input_path = os.path.join(wd, input_name)
    shutil.copyfile(os.path.join(blob_root, "inputs", input_name), input_path)
    argv = [w.format(task_index=index, output_dir=out) for w in COMMAND]
    with open(os.path.join(tdir, "stdout.txt"), "wb") as so, open(os.path.join(tdir, "stderr.txt"), "wb") as se:
        code = subprocess.run(argv, cwd=wd, stdout=so, stderr=se, check=False).returncode
    if code == 0:
        for entry in os.scandir(out):
            target = os.path.join(blob_root, "outputs", out_prefix, task_id, entry.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(entry.path, target)
    return code


def one_size(root: Path, tasks: int, rounds: int, workers: int) -> bool:
    """Both sides at ``workers`` workers, in ``root`` (a fresh directory)."""
    from shared.backends.local_batch import LocalBatchBackend

    blob_root = root / "blobs"
    (blob_root / "inputs").mkdir(parents=True)
    names = [f"in-{i:05d}.csv" for i in range(tasks)]
    for i, name in enumerate(names):
        (blob_root / "inputs" / name).write_text(f"id,value\n{i},{i * 0.5}\n")
    blobs = DirBlobStore(blob_root)
    urls = [blobs.url("inputs", name) for name in names]
    backend = LocalBatchBackend(blobs, root / "home", max_workers=workers)
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(workers)
    failures: list[str] = []
    times: dict[str, list[float]] = {"backend": [], "pool": []}

    # Every round keeps its files (its own job key / directory, its own output prefix) until
    # the end of the benchmark. Deleting them between rounds made every round slower than
    # the one before (3 s -> 13 s): this ext4 has no journal, and then its inode allocator
    # skips, one by one, every inode freed in the last 60-300 s (ialloc.c recently_deleted),
    # so creating the next round's ~20,000 files scanned past all the ones just deleted.
    # A host does not delete thousands of files just before each job, so neither do we.

    def run_backend(count: int = tasks) -> float:
        key = f"bench-{uuid.uuid4().hex[:12]}"
        request = LaunchRequest(
            run_id=key,
            flow="bench",
            step="batch",
            kind="batch",
            key=key,
            attempt=1,
            params={"command": COMMAND, "inputs": urls[:count], "output_container": "outputs"},
        )
        start = time.perf_counter()
        backend.launch(request)
        # Poll every 10 ms (the engine polls every few seconds): often enough to add at most
        # ~10 ms to a multi-second job, rarely enough not to compete with the workers for the GIL.
        while (status := backend.poll(key)).state == "running":
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        if status.state != "succeeded" or status.outputs.get("tasks") != count:
            failures.append(f"backend job {key}: {status.state} {status.error or ''}"[:300])
        times["backend"].append(elapsed)
        return elapsed

    def run_pool(count: int = tasks) -> float:
        key = f"bare-{uuid.uuid4().hex[:12]}"
        work = root / "bare" / key
        work.mkdir(parents=True)
        args = [(str(blob_root), str(work), name, i, key) for i, name in enumerate(names[:count])]
        start = time.perf_counter()
        # Small chunks: tasks go to whichever worker is free, as in the backend's FIFO pool
        # (the default chunk of n/8 tasks lets one descheduled worker stall the tail).
        codes = pool.map(_bare_task, args, chunksize=4)
        elapsed = time.perf_counter() - start
        if any(codes):
            failures.append(f"bare pool {key}: {sum(1 for c in codes if c)} tasks failed")
        times["pool"].append(elapsed)
        return elapsed

    try:
        run_backend(50)  # warm-up: spawner helpers, pool workers
        run_pool(50)
        times["backend"].clear()
        times["pool"].clear()
        t_backend, t_pool = interleaved(run_backend, run_pool, rounds)
    finally:
        pool.close()
        pool.join()
        backend.close()

    # The figure: the median of the per-round ratios (each backend round next to its pool
    # round), which is robust to the machine's load drifting between rounds.
    pairs = list(zip(times["backend"], times["pool"], strict=True))
    ratio = statistics.median(a / b for a, b in pairs) if pairs else float("inf")
    ok = ratio <= GOAL and not failures
    for f in failures:
        print(f"  batch: {f}")
    rounds_text = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs)
    print(f"  batch: rounds backend/pool seconds: {rounds_text}; command {COMMAND!r}, blobs as local files")
    report(
        "batch backend",
        f"{tasks} tasks x{workers}: backend {t_backend:.2f}s vs bare pool {t_pool:.2f}s, ratio {ratio:.2f}x",
        f"<={GOAL}x",
        ok,
    )
    return ok


def _scratch() -> str | None:
    """Where the benchmark's files go: /dev/shm (tmpfs) when there is one, else the temp dir.

    On this machine's disk (ext4 without a journal) creating a file costs what other
    processes deleted in the last minutes (the allocator skips recently freed inodes, see
    one_size): a colleague's test cleanup made rounds 2-4x slower at random. Both sides then
    measure the disk's history, not the backend; in memory they measure the same work."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main(tasks: int = 1000, rounds: int = 5, workers: tuple[int, ...] = (1, 2)) -> bool:
    """Each worker count in turn (its own pool, backend and directory); met only when every one
    is. All the files are deleted once, at the end (see one_size on deleting between rounds)."""
    with tempfile.TemporaryDirectory(prefix="conveyor-bench-batch-", dir=_scratch()) as tmp:
        print(f"  batch: files in {tmp}")
        results = []
        for w in workers:
            root = Path(tmp, f"x{w}")
            root.mkdir()
            results.append(one_size(root, tasks, rounds, w))
    # Write the freed inodes back: the allocator then skips them for 60 s instead of 300 s,
    # so a benchmark run right after this one is not slowed down by this one's cleanup.
    os.sync()
    return all(results)


if __name__ == "__main__":
    from bench.bench_batch import main as bench_main  # DirBlobStore pickles as bench.bench_batch's, not __main__'s

    bench_main()
