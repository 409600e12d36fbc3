"""A loopback HTTPS fake of the Storage REST endpoints, and a fake token credential.

HTTPS because azure-core refuses to send a bearer token over plain HTTP: the fake server
uses a throw-away self-signed certificate for 127.0.0.1 that the SDK clients trust through
``connection_verify``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from azure.core.credentials import AccessToken
from pytest_httpserver import HTTPServer

from tests.functional.azure.https_fake import make_self_signed_cert, running_server, server_context


@dataclass
class FakeCredential:
    """A TokenCredential that hands out the token ``fake`` and records the scopes asked for."""

    token: str = "fake"
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class TlsServer:
    server: HTTPServer
    ca_file: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def _tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("tls"))
    with running_server(server_context(cert, key)) as server:
        yield TlsServer(server, str(cert))


@pytest.fixture
def storage_server(_tls_server: TlsServer) -> Iterator[TlsServer]:
    """The module's HTTPS fake with no handlers and an empty log; unmatched requests fail the test."""
    _tls_server.server.clear()
    yield _tls_server
    _tls_server.server.check_assertions()
    _tls_server.server.clear()


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()
