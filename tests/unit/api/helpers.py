"""Builders shared by the API and Functions unit tests: Services over the in-memory fakes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from shared.engine.model import Message
from shared.flows.model import FlowsFile
from shared.settings import Settings
from shared.telemetry.local import LocalTelemetry
from shared.wiring import Services
from tests.fakes import MemoryInstanceStore, MemoryQueue, MemoryRunStore
from tests.functional.backends.dirblobs import DirBlobStore

EVENTS = Path(__file__).resolve().parents[2] / "events"

DEVOPS_USER = "hook-user"
DEVOPS_PASSWORD = "hook-password-for-tests"

STEP = {"name": "work", "kind": "batch", "params": {"command": "echo {input}", "inputs": "${trigger.blob.url}"}}
NIGHTLY = {"command": "echo {input}", "inputs": "x/y"}  # a schedule has no trigger.blob
FLOWS = {
    "flows": {
        "train": {
            "triggers": [
                {"kind": "manual"},
                {"kind": "blob", "container": "landing", "prefix": "sales/"},
                {"kind": "azure_devops", "events": ["git.push"]},
            ],
            "steps": [STEP, {"name": "score", "kind": "batch", "params": {"command": "true", "inputs": "x/y"}}],
        },
        "nightly": {"triggers": [{"kind": "schedule", "cron": "0 0 2 * * *"}], "steps": [{**STEP, "params": NIGHTLY}]},
    }
}


class World:
    """A Services over in-memory store/queue and a fixed flows file, plus handles to inspect them."""

    def __init__(self, home: Path, **settings: Any) -> None:
        base: dict[str, Any] = {
            "home": home,
            "root": home,
            "devops_username": DEVOPS_USER,
            "devops_password": DEVOPS_PASSWORD,
        }
        base.update(settings)
        self.settings = Settings(**base)
        self.store = MemoryRunStore()
        self.queue = MemoryQueue()
        self.flows = FlowsFile.model_validate(FLOWS)
        self.telemetry = LocalTelemetry(home)
        self.blobs = DirBlobStore(home / "blobs")  # schedule first-sight records
        self.instances = MemoryInstanceStore()
        self.services = Services(
            self.settings,
            store=self.store,
            queue=self.queue,
            flows=self.flows,
            telemetry=self.telemetry,
            blobs=self.blobs,
            instances=self.instances,
        )

    def sent(self, kind: str | None = None) -> list[Message]:
        return [m for m, _ in self.queue.sent if kind is None or m.kind == kind]


def event_bytes(name: str) -> bytes:
    return (EVENTS / name).read_bytes()


def load_event(name: str) -> Any:
    return json.loads(event_bytes(name))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
