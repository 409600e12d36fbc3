"""A loopback HTTPS fake of the Storage REST endpoints, and a fake token credential.

HTTPS because azure-core refuses to send a bearer token over plain HTTP: the fake server
uses a throw-away self-signed certificate for 127.0.0.1 that the SDK clients trust through
``connection_verify``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from pytest_httpserver import HTTPServer


@dataclass
class FakeCredential:
    """A TokenCredential that hands out the token ``fake`` and records the scopes asked for."""

    token: str = "fake"
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class TlsServer:
    server: HTTPServer
    ca_file: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"


@pytest.fixture(scope="module")
def _tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    cert, key = _self_signed(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    try:
        yield TlsServer(server, str(cert))
    finally:
        server.clear()
        if server.is_running():
            server.stop()


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
