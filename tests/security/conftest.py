"""Fixtures of the security suite: a real HTTP host on a free port over the session's Azurite.

``socket_host`` serves ``HostApp`` (the routes of ``conveyor up``) through the same server
class ``conveyor up`` uses, with short timeouts so that a request that would hang is seen to
end within seconds. Nothing consumes its queue, so whatever a request enqueued stays there to
be counted (``nothing_created``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.host.asgi import HostServer
from shared.host.server import HostApp
from shared.settings import Settings
from shared.web.server import HttpLimits
from shared.wiring import Services
from tests.conftest import unique_suffix

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
