"""The loopback HTTPS server for the Event Grid topic fake (azure-core sends bearer tokens over HTTPS only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.azure.https_fake import make_self_signed_cert, running_server, server_context
from tests.functional.azure.storage.conftest import TlsServer


@pytest.fixture(scope="module")
def _topic_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    with running_server(server_context(cert, key)) as server:
        yield TlsServer(server, str(cert))


@pytest.fixture
def topic_server(_topic_tls: TlsServer) -> Iterator[TlsServer]:
    _topic_tls.server.clear()
    yield _topic_tls
    _topic_tls.server.check_assertions()
    _topic_tls.server.clear()
