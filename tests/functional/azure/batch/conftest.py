"""Fixtures: the fake Batch service on HTTPS loopback, a fake credential, an in-memory blob store."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from pytest_httpserver import HTTPServer

from shared.backends.azure_batch import AzureBatchBackend
from shared.blobs.base import BlobInfo, BlobStore, StrPath
from shared.errors import NotFoundError, ValidationError
from tests.functional.azure.batch.fake_batch import TOKEN, FakeBatchService
from tests.functional.azure.https_fake import make_self_signed_cert, running_server, server_context

ACCOUNT_BLOB = "https://acct.blob.core.windows.net"
POOL = "pool-default"
IDENTITY = (
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/conveyor-pool"
)


class FakeCredential:
    """azure.core TokenCredential: a fixed token, records the scopes asked for."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.scopes.append(scopes)
        return AccessToken(TOKEN, int(time.time()) + 3600)


class MemoryBlobs(BlobStore):
    """The BlobStore surface the Batch backend uses (list, url, parse_url), in memory."""

    account_url = ACCOUNT_BLOB

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}

    def add(self, container: str, name: str, data: bytes = b"x") -> None:
        self.blobs[(container, name)] = data

    def _info(self, container: str, name: str) -> BlobInfo:
        data = self.blobs[(container, name)]
        return BlobInfo(container, name, self.url(container, name), '"0x1"', len(data), datetime.now(UTC))

    def upload(self, container: str, name: str, data: bytes, overwrite: bool = True) -> BlobInfo:
        self.add(container, name, data)
        return self._info(container, name)

    def upload_file(self, container: str, name: str, path: StrPath) -> BlobInfo:
        return self.upload(container, name, Path(path).read_bytes())

    def download(self, container: str, name: str) -> bytes:
        try:
            return self.blobs[(container, name)]
        except KeyError:
            raise NotFoundError(f"no blob {container}/{name}") from None

    def download_to(self, container: str, name: str, path: StrPath) -> None:
        Path(path).write_bytes(self.download(container, name))

    def info(self, container: str, name: str) -> BlobInfo | None:
        return self._info(container, name) if (container, name) in self.blobs else None

    def list_blobs(self, container: str, prefix: str = "") -> list[BlobInfo]:
        return [self._info(c, n) for (c, n) in sorted(self.blobs) if c == container and n.startswith(prefix)]

    def url(self, container: str, name: str) -> str:
        return f"{ACCOUNT_BLOB}/{container}/{quote(name, safe='/~')}"

    def parse_url(self, url: str) -> tuple[str, str]:
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" != ACCOUNT_BLOB:
            raise ValidationError(f"not a blob URL of this storage account ({ACCOUNT_BLOB})", field="url")
        container, _, name = parts.path.lstrip("/").partition("/")
        if not name:
            raise ValidationError("no blob name in URL", field="url")
        return container, unquote(name)


@pytest.fixture(scope="session")
def batch_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    cert, key = make_self_signed_cert(tmp_path_factory.mktemp("batch-tls"))
    return cert, server_context(cert, key)


@pytest.fixture(scope="session")
def batch_server(batch_tls: tuple[Path, ssl.SSLContext]) -> Iterator[HTTPServer]:
    with running_server(batch_tls[1], threaded=True) as server:
        yield server


@pytest.fixture
def fake(batch_server: HTTPServer) -> Iterator[FakeBatchService]:
    import re

    batch_server.clear()
    service = FakeBatchService(batch_server.url_for("/").rstrip("/"))
    batch_server.expect_request(re.compile(".*")).respond_with_handler(service.handle)
    yield service
    batch_server.clear()


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def blobs() -> MemoryBlobs:
    return MemoryBlobs()


FAST_RETRIES: dict[str, Any] = {"retry_total": 3, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


@pytest.fixture
def make_client(fake: FakeBatchService, batch_tls: tuple[Path, ssl.SSLContext], credential: FakeCredential) -> Any:
    def make(**options: Any) -> Any:
        from azure.batch import BatchClient

        opts = {**FAST_RETRIES, "connection_verify": str(batch_tls[0]), **options}
        return BatchClient(endpoint=fake.base_url, credential=credential, **opts)

    return make


@pytest.fixture
def backend(make_client: Any, blobs: MemoryBlobs, fake: FakeBatchService) -> AzureBatchBackend:
    return AzureBatchBackend(
        make_client(),
        blobs,
        pool_id=POOL,
        resource_identity=IDENTITY,
        account_url=fake.base_url,
        terminate_polling_interval=0,
    )
