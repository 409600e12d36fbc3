"""Fixtures for the end-to-end tests: a local host on free ports over the session's Azurite.

``e2e_settings``: the session Azurite with this test's own queue, runs table, data home,
host port and scoring port, DevOps basic-auth credentials, a fast watcher.
``all_triggers_flows``: the repository's flows.yaml with the ``retrain`` flow also startable
by hand, by an Azure DevOps push to main and by an hourly schedule (its steps unchanged).
``own_azurite_settings``: free ports where nothing listens yet (the demo starts and stops its
own Azurite there), with a temp home.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.local.azurite import free_port
from shared.settings import Settings
from tests.conftest import REPO_ROOT, unique_suffix

DEVOPS_USER = "conveyor-hook"
DEVOPS_PASSWORD = "e2e-hook-password"


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@pytest.fixture
def e2e_settings(azurite_settings: Settings, tmp_path: Path) -> Settings:
    suffix = unique_suffix()
    host_port, scoring_port = free_ports(2)
    return azurite_settings.with_overrides(
        home=tmp_path / "home",
        queue_name=f"e2e-{suffix}",
        runs_table=f"e2eruns{suffix}",
        host_port=host_port,
        scoring_port=scoring_port,
        watch_interval_seconds=0.5,
        devops_username=DEVOPS_USER,
        devops_password=DEVOPS_PASSWORD,
        batch_max_workers=2,
    )


@pytest.fixture
def own_azurite_settings(tmp_path: Path) -> Settings:
    blob, queue, table, host_port, scoring_port = free_ports(5)
    return Settings(
        mode="local",
        root=REPO_ROOT,
        home=tmp_path / "demo",
        flows_file=REPO_ROOT / "flows.yaml",
        azurite_blob_port=blob,
        azurite_queue_port=queue,
        azurite_table_port=table,
        host_port=host_port,
        scoring_port=scoring_port,
        watch_interval_seconds=0.5,
        batch_max_workers=2,
        env={},
    )


@pytest.fixture
def all_triggers_flows(tmp_path: Path) -> Callable[[str], Path]:
    """A flows file: the repo's ``retrain`` (blob trigger) plus ``retrain-any``, the same steps
    startable by hand, by an Azure DevOps push to main and by an hourly schedule.

    ``retrain`` reads ``${trigger.blob.url}``, which only a blob trigger has, so in
    ``retrain-any`` that reference is replaced by the URL of a CSV the test uploads.
    """

    def make(data_url: str) -> Path:
        doc = yaml.safe_load((REPO_ROOT / "flows.yaml").read_text(encoding="utf-8"))
        retrain = doc["flows"]["retrain"]
        steps_text = json.dumps(retrain["steps"]).replace("${trigger.blob.url}", data_url)
        any_flow = {
            **retrain,
            "triggers": [
                {"kind": "manual"},
                {"kind": "azure_devops", "events": ["git.push"], "branch": "main"},
                {"kind": "schedule", "cron": "0 0 * * * *"},
            ],
            "steps": json.loads(steps_text),
        }
        retrain["triggers"] = [t for t in retrain["triggers"] if t.get("kind") == "blob"]
        doc["flows"] = {"retrain": retrain, "retrain-any": any_flow}
        path = tmp_path / "flows.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    return make


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def post(url: str, body: bytes | Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
