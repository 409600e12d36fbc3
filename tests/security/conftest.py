"""Fixtures of the security suite: a real HTTP host on a free port over the session's Azurite.

``socket_host`` serves ``HostApp`` (the routes of ``conveyor up``) through the same server
class ``conveyor up`` uses, with short timeouts so that a request that would hang is seen to
end within seconds. Nothing consumes its queue, so whatever a request enqueued stays there to
be counted (``nothing_created``).

``idle_host`` is a whole ``LocalHost`` (the end-to-end suite's ``e2e_settings``: its own queue,
runs table, data home, host port) with no queue workers, and ``account_url`` the blob endpoint
of the configured storage account (Azurite's dev account on the session's port).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.host.asgi import HostServer
from shared.host.runtime import LocalHost
from shared.host.server import HostApp
from shared.settings import AZURITE_ACCOUNT, Settings
from shared.web.server import HttpLimits
from shared.wiring import Services
from tests.conftest import unique_suffix
from tests.e2e.conftest import e2e_settings
from tests.security.hostile_project import canaries, project, secure_host, security_settings

__all__ = [
    "account_url",
    "canaries",
    "e2e_settings",
    "idle_host",
    "nothing_created",
    "project",
    "secure_host",
    "security_settings",
    "socket_host",
]

# Short enough that a request the server would hold forever is seen to end within seconds.
TEST_LIMITS = HttpLimits(body_timeout=1.5, read_timeout=3.0, keep_alive_timeout=1.0)
DEVOPS_USER = "sec-hook"
DEVOPS_PASSWORD = "sec-hook-password"

FLOWS = """\
flows:
  nightly:
    triggers:
      - kind: manual
      - kind: blob
        container: landing
        suffix: .csv
      - kind: azure_devops
        events: [git.push]
    steps:
      - name: etl
        kind: databricks
        params:
          python_file: samples/databricks_etl/medallion.py
"""


@dataclass
class SocketHost:
    server: HostServer
    services: Services

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return self.server.url

    def counts(self) -> tuple[int, int]:
        """(runs in the store, messages on the queue)."""
        return len(self.services.store.list_runs(limit=1000)), self.services.queue.depth()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def socket_host(azurite_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SocketHost]:
    home = tmp_path_factory.mktemp("sec-home")
    flows = home / "flows.yaml"
    flows.write_text(FLOWS, encoding="utf-8")
    suffix = unique_suffix()
    settings = azurite_settings.with_overrides(
        home=home,
        flows_file=Path(flows),
        queue_name=f"sec-{suffix}",
        runs_table=f"secruns{suffix}",
        devops_username=DEVOPS_USER,
        devops_password=DEVOPS_PASSWORD,
    )
    services = Services(settings)
    server = HostServer(HostApp(services), host="127.0.0.1", port=0, limits=TEST_LIMITS).start()
    try:
        yield SocketHost(server, services)
    finally:
        server.stop()


@pytest.fixture
def nothing_created(socket_host: SocketHost) -> Iterator[None]:
    """The test must leave the store and the queue as it found them."""
    before = socket_host.counts()
    yield
    assert socket_host.counts() == before, "a refused request created a run or enqueued a message"


# ---------------------------------------------------------------- the local scoring endpoint

SCORING_BODY_TIMEOUT = 1.5
FEATURES = {"store": [1, 2, 3, 4, 5, 6], "promo": [0, 1, 0, 1, 0, 1], "price": [3.0, 2.5, 4.0, 3.5, 2.0, 5.0]}


@dataclass
class ScoringServer:
    port: int
    home: Path
    model_dir: Path

    @property
    def score_path(self) -> str:
        return "/endpoints/sales/score"

    @property
    def routed_score_path(self) -> str:
        return "/endpoints/stores/score"


def save_tiny_model(path: Path) -> Path:
    """A linear model over (store: long, promo: long, price: double), saved as MLflow saves it (skops)."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame(FEATURES)
    target = frame["store"] * 2.0 + frame["promo"] * 10.0 - frame["price"]
    model = LinearRegression().fit(frame, target)
    mlflow.sklearn.save_model(
        model, str(path), serialization_format="skops", signature=infer_signature(frame, model.predict(frame))
    )
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def scoring_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringServer]:
    """The scoring server process ``LocalScoringDeployer`` starts, serving ``tiny_model`` as ``sales``."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from shared.deploy.local_endpoint import stop_server
    from shared.local.azurite import free_port
    from tests.conftest import REPO_ROOT

    home = tmp_path_factory.mktemp("scoring-home")
    (home / "endpoints").mkdir()
    entry = {"model_name": "tiny", "version": "1", "source_uri": str(tiny_model), "deployed_at": "2024-01-01"}
    (home / "endpoints" / "sales.json").write_text(
        json.dumps({"endpoint": "sales", "current": entry, "history": []}), encoding="utf-8"
    )
    slots = {p: {"current": {**entry, "model_name": f"tiny-{p}"}, "history": []} for p in ("1", "2")}
    (home / "endpoints" / "stores.json").write_text(  # a routed endpoint: partitions 1 and 2 by store
        json.dumps({"endpoint": "stores", "partition_key": "store", "partitions": slots}), encoding="utf-8"
    )
    port = free_port()
    log = open(home / "scoring.log", "ab")  # noqa: SIM115 - closed below
    child = subprocess.Popen(
        [
            *(sys.executable, "-m", "shared.deploy.scoring_server", "--home", str(home), "--port", str(port)),
            *("--body-timeout", str(SCORING_BODY_TIMEOUT)),
        ],
        cwd=str(REPO_ROOT),
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/endpoints/sales", timeout=5) as resp:
                    if json.loads(resp.read()).get("loaded"):
                        break
            except OSError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"scoring server did not start: {(home / 'scoring.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield ScoringServer(port, home, tiny_model)
    finally:
        stop_server(home)
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------- a whole local host


@pytest.fixture
def idle_host(e2e_settings: Settings, tmp_path: Path) -> Iterator[LocalHost]:
    flows = tmp_path / "flows.yaml"
    flows.write_text(FLOWS, encoding="utf-8")
    host = LocalHost(e2e_settings.with_overrides(flows_file=flows), workers=0, watch=False, schedule=False).start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def account_url(e2e_settings: Settings) -> str:
    s = e2e_settings
    return f"http://{s.azurite_host}:{s.azurite_blob_port}/{AZURITE_ACCOUNT}"
