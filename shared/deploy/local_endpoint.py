"""Deployer on the local scoring endpoint (shared/deploy/scoring_server.py).

An endpoint is a file ``<home>/endpoints/<endpoint>.json``:
``{"endpoint", "current": {model_name, version, source_uri, deployed_at}, "history": [...]}``
(history: the entries served before, oldest first). ``deploy`` rewrites it atomically and makes
sure the scoring server is up; the server notices the change on its next request and swaps
the model in place. ``stop_server(home)`` stops the server this module started.

A routed endpoint (many models, ``deploy_partition``) holds one such entry per partition and
the column that routes rows to them::

    {"endpoint", "partition_key": "store",
     "partitions": {"7": {"current": {...}, "history": [...]}, "8": {...}, ...}}

Deploying one partition rewrites the file with only that partition changed; the server reloads
only the partitions whose entry changed. An endpoint is single-model or routed, never both.
One file per endpoint keeps every swap atomic; it suits the local scale (hundreds of
partitions: each deploy rewrites the whole file).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.deploy.base import Deployer, Deployment, check_partition, check_partition_key
from shared.errors import ConflictError, TransientError, ValidationError
from shared.registry.base import ModelVersion

if TYPE_CHECKING:
    from shared.settings import Settings

ENDPOINT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PID_FILE = "scoring-server.json"  # written by the server itself (see scoring_server.serve)
_SERVICE = "scoring"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_children: list[subprocess.Popen[bytes]] = []  # kept so finished servers are reaped


def check_endpoint_name(endpoint: str, field: str = "params.endpoint") -> str:
    if not isinstance(endpoint, str) or not ENDPOINT_RE.match(endpoint):
        raise ValidationError(
            f"endpoint names are 1-63 of a-z 0-9 _ - starting with a letter or digit, got {endpoint!r}", field=field
        )
    return endpoint


def _health(host: str, port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=timeout) as resp:
            doc = json.loads(resp.read().decode("utf-8"))
            return doc if isinstance(doc, dict) and doc.get("status") == "ok" else None
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_scoring_server(pid: int) -> bool:
    """True when ``pid`` runs our scoring server (so stop_server never signals a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return _pid_alive(pid)  # no /proc (macOS): trust the pid file the server wrote
    return b"shared.deploy.scoring_server" in cmdline


def stop_server(home: Path, timeout: float = 10.0) -> bool:
    """Stop the scoring server serving ``home``; True when one was running and has stopped."""
    pid_file = Path(home).resolve() / "endpoints" / PID_FILE
    try:
        pid = int(json.loads(pid_file.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not _pid_alive(pid) or not _is_scoring_server(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children:
            child.poll()  # reap our own child so it does not linger as a zombie
        if not _pid_alive(pid) or not _is_scoring_server(pid):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for child in list(_children):
        if child.pid == pid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)
            _children.remove(child)
    pid_file.unlink(missing_ok=True)
    return True


class LocalScoringDeployer(Deployer):
    def __init__(
        self,
        home: Path,
        host: str = "127.0.0.1",
        port: int = 5088,
        *,
        start_server: bool = True,
        start_timeout: float = 60.0,
    ) -> None:
        self.home = Path(home).resolve()
        self.host = host
        self.port = port
        self.start_server = start_server
        self.start_timeout = start_timeout
        self.endpoints_dir = self.home / "endpoints"
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalScoringDeployer:
        return cls(settings.home, "127.0.0.1", settings.scoring_port)

    # ------------------------------------------------------------ files

    def scoring_url(self, endpoint: str) -> str:
        return f"http://{self.host}:{self.port}/endpoints/{endpoint}/score"

    def _file(self, endpoint: str) -> Path:
        return self.endpoints_dir / f"{check_endpoint_name(endpoint)}.json"

    def _read(self, endpoint: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(self._file(endpoint).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return doc if isinstance(doc, dict) else None

    def _write(self, endpoint: str, doc: dict[str, Any]) -> None:
        path = self._file(endpoint)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def _deployment(self, endpoint: str, entry: dict[str, Any], partition: str | None = None) -> Deployment:
        return Deployment(
            endpoint=endpoint,
            model_name=str(entry["model_name"]),
            version=str(entry["version"]),
            scoring_url=self.scoring_url(endpoint),
            partition=partition,
        )

    @staticmethod
    def _entry(model: ModelVersion) -> dict[str, Any]:
        return {
            "model_name": model.name,
            "version": str(model.version),
            "source_uri": model.source_uri,
            "deployed_at": datetime.now(UTC).isoformat(),
        }

    @staticmethod
    def _swap(slot: dict[str, Any], model: ModelVersion) -> bool:
        """Make ``model`` the slot's current entry (the old one to history); False when it already was."""
        current = slot.get("current")
        if (
            isinstance(current, dict)
            and current.get("model_name") == model.name
            and str(current.get("version")) == str(model.version)
        ):
            return False  # deploying what is already served changes nothing (idempotent)
        if isinstance(current, dict):
            slot.setdefault("history", []).append(current)
        slot["current"] = LocalScoringDeployer._entry(model)
        return True

    # ------------------------------------------------------------ port

    def deploy(self, endpoint: str, model: ModelVersion) -> Deployment:
        check_endpoint_name(endpoint)
        with self._lock:
            doc = self._read(endpoint) or {"endpoint": endpoint, "current": None, "history": []}
            if "partitions" in doc:
                raise ConflictError(
                    f"endpoint {endpoint!r} routes partition models (by {doc.get('partition_key')!r}); "
                    "a single model needs an endpoint of its own",
                    service=_SERVICE,
                )
            if self._swap(doc, model):
                self._write(endpoint, doc)
            served = doc["current"]
        if self.start_server:
            self.ensure_server()
        return self._deployment(endpoint, served)

    def current(self, endpoint: str) -> Deployment | None:
        doc = self._read(endpoint)
        if not doc or not isinstance(doc.get("current"), dict):
            return None
        return self._deployment(endpoint, doc["current"])

    def deploy_partition(self, endpoint: str, partition: str, model: ModelVersion, partition_key: str) -> Deployment:
        check_endpoint_name(endpoint)
        check_partition(partition)
        check_partition_key(partition_key)
        with self._lock:
            doc = self._read(endpoint) or {"endpoint": endpoint, "partition_key": partition_key, "partitions": {}}
            if "partitions" not in doc:
                raise ConflictError(
                    f"endpoint {endpoint!r} serves one model; partition models need an endpoint of their own",
                    service=_SERVICE,
                )
            if doc.get("partition_key") != partition_key:
                raise ConflictError(
                    f"endpoint {endpoint!r} routes by {doc.get('partition_key')!r}, not {partition_key!r}",
                    service=_SERVICE,
                )
            slot = doc["partitions"].setdefault(partition, {"current": None, "history": []})
            if self._swap(slot, model):
                self._write(endpoint, doc)
            served = slot["current"]
        if self.start_server:
            self.ensure_server()
        return self._deployment(endpoint, served, partition)

    def current_partition(self, endpoint: str, partition: str) -> Deployment | None:
        slot = ((self._read(endpoint) or {}).get("partitions") or {}).get(partition)
        if not isinstance(slot, dict) or not isinstance(slot.get("current"), dict):
            return None
        return self._deployment(endpoint, slot["current"], partition)

    def partitions(self, endpoint: str) -> dict[str, Deployment]:
        slots = (self._read(endpoint) or {}).get("partitions") or {}
        return {
            str(p): self._deployment(endpoint, slot["current"], str(p))
            for p, slot in slots.items()
            if isinstance(slot, dict) and isinstance(slot.get("current"), dict)
        }

    def rollback(self, endpoint: str) -> Deployment | None:
        with self._lock:
            doc = self._read(endpoint)
            if not doc or not doc.get("history"):
                return None
            previous = doc["history"].pop()
            doc.setdefault("rolled_back", []).append(doc.get("current"))
            doc["current"] = {**previous, "deployed_at": datetime.now(UTC).isoformat()}
            self._write(endpoint, doc)
        return self._deployment(endpoint, doc["current"])

    def history(self, endpoint: str) -> list[dict[str, Any]]:
        doc = self._read(endpoint) or {}
        return list(doc.get("history") or [])

    # ------------------------------------------------------------ server

    def ensure_server(self) -> dict[str, Any]:
        """The running server's /health document; starts the server when none answers."""
        health = _health(self.host, self.port)
        if health is None:
            self._spawn()
            deadline = time.monotonic() + self.start_timeout
            while health is None and time.monotonic() < deadline:
                for child in _children:
                    if child.poll() is not None and child.returncode not in (None, 0):
                        log = self.home / "logs" / "scoring-server.log"
                        raise TransientError(
                            f"scoring server exited with {child.returncode}; see {log}", service=_SERVICE
                        )
                time.sleep(0.2)
                health = _health(self.host, self.port)
            if health is None:
                raise TransientError(
                    f"scoring server did not answer on {self.host}:{self.port} within {self.start_timeout:g}s",
                    service=_SERVICE,
                )
        if Path(str(health.get("home", ""))).resolve() != self.home:
            raise ConflictError(
                f"port {self.port} is served by a scoring server for another home ({health.get('home')}); "
                "set CONVEYOR_SCORING_PORT",
                service=_SERVICE,
            )
        return health

    def _spawn(self) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.endpoints_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(logs / "scoring-server.log", "ab") as log:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shared.deploy.scoring_server",
                    "--home",
                    str(self.home),
                    "--host",
                    self.host,
                    "--port",
                    str(self.port),
                ],
                cwd=str(_REPO_ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: it outlives the process that deployed
            )
        _children.append(child)
