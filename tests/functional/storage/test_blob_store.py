"""AzureBlobStore against a real Azurite: awkward names, URLs, info, listing, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.blobs.storage import AzureBlobStore
from shared.errors import ConflictError, NotFoundError, ValidationError
from shared.settings import Settings
from tests.conftest import unique_suffix

AWKWARD = [
    "plain.csv",
    "dir/sub dir/with space.csv",
    "ünïcødé/日本語 データ.parquet",
    "semi;colon.txt",
    "dollar$(rm -rf x).json",
    "percent%20literal & plus+hash#q?.bin",
]


@pytest.fixture
def blobs(storage_settings: Settings) -> AzureBlobStore:
    return AzureBlobStore.from_settings(storage_settings)


@pytest.fixture
def container() -> str:
    return f"drops-{unique_suffix()}"


@pytest.mark.parametrize("name", AWKWARD)
def test_upload_download_url_round_trip(blobs: AzureBlobStore, container: str, name: str) -> None:
    data = f"payload of {name}".encode()
    info = blobs.upload(container, name, data)  # the container is created on first upload
    assert (info.container, info.name, info.size) == (container, name, len(data))
    assert info.etag
    assert blobs.download(container, name) == data
    url = blobs.url(container, name)
    assert info.url == url
    assert " " not in url and ";" not in url and "$" not in url and "(" not in url and "#" not in url
    assert url.isascii()
    assert blobs.parse_url(url) == (container, name)
    got = blobs.info(container, name)
    assert got is not None
    assert (got.name, got.size, got.etag) == (name, len(data), info.etag)


def test_content_type_is_guessed(blobs: AzureBlobStore, container: str) -> None:
    assert blobs.upload(container, "a.csv", b"x,y\n").content_type == "text/csv"
    info = blobs.info(container, "a.csv")
    assert info is not None and info.content_type == "text/csv"
    assert blobs.upload(container, "noext", b"?").content_type == "application/octet-stream"


def test_info_of_missing_blob_or_container_is_none(blobs: AzureBlobStore, container: str) -> None:
    assert blobs.info(container, "missing.csv") is None
    blobs.upload(container, "present.csv", b"1")
    assert blobs.info(container, "missing.csv") is None


def test_download_of_missing_blob_is_not_found(blobs: AzureBlobStore, container: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        blobs.download(container, "missing.csv")
    with pytest.raises(NotFoundError):
        blobs.download_to(container, "missing.csv", tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_no_overwrite_conflicts(blobs: AzureBlobStore, container: str) -> None:
    blobs.upload(container, "once.csv", b"1")
    with pytest.raises(ConflictError):
        blobs.upload(container, "once.csv", b"2", overwrite=False)
    assert blobs.download(container, "once.csv") == b"1"
    blobs.upload(container, "once.csv", b"3")
    assert blobs.download(container, "once.csv") == b"3"


def test_upload_file_and_download_to_creates_parents(blobs: AzureBlobStore, container: str, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    info = blobs.upload_file(container, "in/big file.bin", src)
    assert info.size == 256_000
    dest = tmp_path / "a" / "b" / "out.bin"
    blobs.download_to(container, "in/big file.bin", dest)
    assert dest.read_bytes() == src.read_bytes()


def test_list_blobs_with_prefix_returns_decoded_names(blobs: AzureBlobStore, container: str) -> None:
    for name in AWKWARD:
        blobs.upload(container, name, b"1")
    assert sorted(b.name for b in blobs.list_blobs(container)) == sorted(AWKWARD)
    assert [b.name for b in blobs.list_blobs(container, prefix="dir/")] == ["dir/sub dir/with space.csv"]
    listed = blobs.list_blobs(container, prefix="ünïcødé/")[0]
    assert blobs.parse_url(listed.url) == (container, "ünïcødé/日本語 データ.parquet")
    assert blobs.list_blobs(f"empty-{unique_suffix()}") == []


def test_parse_url_accepts_this_account_only(blobs: AzureBlobStore, storage_settings: Settings) -> None:
    port = storage_settings.azurite_blob_port
    base = f"http://127.0.0.1:{port}/devstoreaccount1"
    assert blobs.parse_url(f"{base}/drops/a%20b.csv") == ("drops", "a b.csv")
    assert blobs.parse_url(f"http://localhost:{port}/devstoreaccount1/drops/x/y.csv?sv=1&sig=z") == ("drops", "x/y.csv")
    bad = [
        "",
        "not a url",
        "ftp://127.0.0.1/devstoreaccount1/drops/a.csv",
        f"http://127.0.0.1:{port + 1}/devstoreaccount1/drops/a.csv",
        f"http://127.0.0.1:{port}/otheraccount/drops/a.csv",
        "https://acct.blob.core.windows.net/drops/a.csv",
        f"{base}/drops",
        f"{base}/drops/",
        f"{base}/Bad_Container/a.csv",
        f"http://127.0.0.1:{port}:99/devstoreaccount1/drops/a.csv",
    ]
    for url in bad:
        with pytest.raises(ValidationError) as info:
            blobs.parse_url(url)
        assert info.value.field == "url", url


def test_azure_style_account_urls() -> None:
    conn = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5;EndpointSuffix=core.windows.net"
    store = AzureBlobStore(conn)
    assert store.url("drops", "dir/a b;$().csv") == "https://acct.blob.core.windows.net/drops/dir/a%20b%3B%24%28%29.csv"
    assert store.parse_url("https://acct.blob.core.windows.net/drops/dir/a.csv") == ("drops", "dir/a.csv")
    assert store.parse_url("https://ACCT.blob.core.windows.net/drops/dir/a%3B.csv") == ("drops", "dir/a;.csv")
    with pytest.raises(ValidationError):
        store.parse_url("https://other.blob.core.windows.net/drops/dir/a.csv")
    with pytest.raises(ValidationError):
        store.parse_url("http://acct.blob.core.windows.net:8080/drops/a.csv")


def test_invalid_names_are_validation_errors(blobs: AzureBlobStore) -> None:
    with pytest.raises(ValidationError) as info:
        blobs.upload("UPPER", "a.csv", b"")
    assert info.value.field == "container"
    with pytest.raises(ValidationError) as info:
        blobs.upload("drops", "", b"")
    assert info.value.field == "name"
