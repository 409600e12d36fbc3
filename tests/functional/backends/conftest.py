"""Helpers for the local backend tests: wait for a job, find the processes of a job."""

from __future__ import annotations

import os
import time

from shared.backends.base import JobBackend, StepStatus
from shared.backends.commandline import MARKER_ENV


def wait_done(backend: JobBackend, key: str, timeout: float = 30.0) -> StepStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll(key)
        if status.state != "running":
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} still running after {timeout}s: {status}")
        time.sleep(0.05)


def marked_pids(prefix: str) -> list[int]:
    """Live processes carrying the job marker ``prefix`` (zombies excluded)."""
    needle = f"{MARKER_ENV}={prefix}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and any(v.startswith(needle) for v in env.split(b"\x00")):
            pids.append(int(entry))
    return pids


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
