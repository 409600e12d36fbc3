"""Start and stop Azurite (blob, queue, table emulator) from ``node_modules``.

Used by ``conveyor up``/``demo`` (through :func:`ensure_azurite`) and by the test session
fixture (an :class:`Azurite` on free ports with a temporary data directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from shared.errors import ConveyorError, TransientError
from shared.settings import Settings

_REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class AzuriteError(ConveyorError):
    """Azurite could not be found or did not come up."""


class Azurite:
    """One Azurite process serving blob, queue and table on the given ports."""

    def __init__(
        self,
        location: Path,
        host: str = "127.0.0.1",
        blob_port: int = 10000,
        queue_port: int = 10001,
        table_port: int = 10002,
        root: Path | None = None,
        in_memory: bool = False,
    ) -> None:
        self.location = Path(location)
        self.host = host
        self.blob_port = blob_port
        self.queue_port = queue_port
        self.table_port = table_port
        self.root = Path(root) if root is not None else _REPO_ROOT
        self.in_memory = in_memory  # no persistence: faster (no periodic DB dumps), data lost on stop
        self.log_path = self.location / "azurite.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.blob_port, self.queue_port, self.table_port)

    @property
    def binary(self) -> Path:
        return self.root / "node_modules" / ".bin" / "azurite"

    def command(self) -> list[str]:
        h = self.host
        return [
            str(self.binary),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableProductStyleUrl",
            "--disableTelemetry",
            # Azurite refuses --location together with --inMemoryPersistence
            *(["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.location)]),
            "--blobHost",
            h,
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            h,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            h,
            "--tablePort",
            str(self.table_port),
        ]

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> Azurite:
        """Spawn Azurite and wait until blob, queue and table accept connections."""
        if self.is_running():
            return self
        if not self.binary.exists():
            raise AzuriteError(
                f"Azurite not found at {self.binary}: run `make install` (npm ci) first", service="azurite"
            )
        busy = [p for p in self.ports if port_open(self.host, p)]
        if busy:
            raise AzuriteError(f"ports already in use on {self.host}: {busy}", service="azurite")
        self.location.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            self.command(),
            cwd=str(self.location),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() ends node and its children
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._close_log()
                self._proc = None
                raise AzuriteError(f"Azurite exited with code {code}; see {self.log_path}", service="azurite")
            if all(port_open(self.host, p) for p in self.ports):
                return self
            time.sleep(0.1)
        self.stop()
        raise TransientError(
            f"Azurite did not listen on {self.host}:{self.ports} within {timeout}s; see {self.log_path}",
            service="azurite",
        )

    def stop(self, timeout: float = 10) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def ensure_azurite(settings: Settings, timeout: float = 60) -> Azurite | None:
    """Start Azurite on the settings' ports unless one already listens there.

    Returns the started :class:`Azurite` (the caller stops it), or None when all three
    ports already accept connections (someone else's Azurite is reused).
    """
    host = settings.azurite_host
    ports = (settings.azurite_blob_port, settings.azurite_queue_port, settings.azurite_table_port)
    listening = [port_open(host, p) for p in ports]
    if all(listening):
        return None
    if any(listening):
        busy = [p for p, up in zip(ports, listening, strict=True) if up]
        raise AzuriteError(
            f"some storage ports are in use on {host} ({busy}) but not all of {list(ports)}: "
            "stop that process or set CONVEYOR_AZURITE_*_PORT",
            service="azurite",
        )
    root = settings.root if (settings.root / "node_modules" / ".bin" / "azurite").exists() else _REPO_ROOT
    azurite = Azurite(
        settings.home / "azurite",
        host=host,
        blob_port=settings.azurite_blob_port,
        queue_port=settings.azurite_queue_port,
        table_port=settings.azurite_table_port,
        root=root,
    )
    return azurite.start(timeout=timeout)


@contextlib.contextmanager
def azurite_on_free_ports(home: Path, root: Path, *, in_memory: bool = True) -> Iterator[Settings]:
    """ONE Azurite on three free loopback ports, and Settings pointing at it.

    For tests and benchmarks: nothing is read from the process environment, data lives
    under ``home`` (or in memory), and Azurite is stopped on exit.
    """
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    blob_port, queue_port, table_port = sorted(ports)
    azurite = Azurite(
        home / "azurite",
        blob_port=blob_port,
        queue_port=queue_port,
        table_port=table_port,
        root=root,
        in_memory=in_memory,
    )
    azurite.start(timeout=60)
    try:
        yield Settings(
            mode="local",
            root=root,
            home=home,
            flows_file=root / "flows.yaml",
            storage_connection=None,
            azurite_host=azurite.host,
            azurite_blob_port=blob_port,
            azurite_queue_port=queue_port,
            azurite_table_port=table_port,
            batch_max_workers=2,
            env={},
        )
    finally:
        azurite.stop()
