"""Which connection ``from_settings`` builds for the run store, blob store and storage queue:
identity (service URI + the app's credential) vs a connection string vs Azurite.

No request is sent: these check the SDK clients the adapters were built with
(``get_credential`` is replaced by a recorder, so DefaultAzureCredential is never built).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import shared.azure_identity
from shared.blobs.storage import AzureBlobStore
from shared.errors import ValidationError
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import AZURITE_ACCOUNT, Settings
from shared.store.table import TableRunStore
from shared.wiring import Services
from tests.functional.azure.storage.conftest import FakeCredential

# A syntactically valid shared-key connection string for an account that does not exist.
CONN = (
    "DefaultEndpointsProtocol=https;AccountName=connacct;"
    "AccountKey=a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5==;"
    "EndpointSuffix=core.windows.net"
)


@pytest.fixture
def issued(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Client ids ``get_credential`` was asked for; it returns a fake credential."""
    calls: list[str | None] = []

    def fake_get_credential(settings: Settings, client_id: str | None = None) -> Any:
        calls.append(client_id)
        return FakeCredential()

    monkeypatch.setattr(shared.azure_identity, "get_credential", fake_get_credential)
    return calls


def build(env: dict[str, str], tmp_path: Path) -> tuple[TableRunStore, AzureBlobStore, StorageQueueWorkQueue]:
    settings = Settings.from_env({"CONVEYOR_ROOT": str(tmp_path), **env})
    return (
        TableRunStore.from_settings(settings),
        AzureBlobStore.from_settings(settings),
        StorageQueueWorkQueue.from_settings(settings),
    )


def test_account_name_in_azure_mode_is_identity_based(issued: list[str | None], tmp_path: Path) -> None:
    env = {
        "CONVEYOR_MODE": "azure",
        "CONVEYOR_STORAGE__accountName": "dataacct",
        "CONVEYOR_STORAGE__clientId": "1111-uami",
    }
    store, blobs, queue = build(env, tmp_path)

    assert store._client.url == "https://dataacct.table.core.windows.net"
    assert blobs.account_url == "https://dataacct.blob.core.windows.net"
    assert queue._client.url == "https://dataacct.queue.core.windows.net/conveyor-work"
    assert queue._poison.url == "https://dataacct.queue.core.windows.net/conveyor-work-poison"
    for client in (store._client, blobs._client, queue._client):
        assert isinstance(client.credential, FakeCredential)
    assert issued == ["1111-uami"] * 3  # table, blob, queue (work + poison share one)
    # blob URLs of an Azure account round-trip; other accounts are refused
    url = blobs.url("landing", "2024/05/in file.csv")
    assert url == "https://dataacct.blob.core.windows.net/landing/2024/05/in%20file.csv"
    assert blobs.parse_url(url) == ("landing", "2024/05/in file.csv")
    with pytest.raises(ValidationError):
        blobs.parse_url("https://otheracct.blob.core.windows.net/landing/x.csv")


def test_explicit_service_uris_win_over_the_account_name(issued: list[str | None], tmp_path: Path) -> None:
    env = {
        "CONVEYOR_STORAGE__accountName": "dataacct",
        "CONVEYOR_STORAGE__tableServiceUri": "https://tables.example.net/",
        "CONVEYOR_STORAGE__blobServiceUri": "https://blobs.example.net",
    }
    store, blobs, queue = build(env, tmp_path)  # local mode: identity settings still apply

    assert store._client.url == "https://tables.example.net"
    assert blobs.account_url == "https://blobs.example.net"
    assert queue._client.url == "https://dataacct.queue.core.windows.net/conveyor-work"
    assert issued == [None] * 3


def test_connection_string_wins_over_identity(issued: list[str | None], tmp_path: Path) -> None:
    env = {"CONVEYOR_MODE": "azure", "CONVEYOR_STORAGE_CONNECTION": CONN, "CONVEYOR_STORAGE__accountName": "dataacct"}
    store, blobs, queue = build(env, tmp_path)

    assert store._client.url == "https://connacct.table.core.windows.net"
    assert blobs.account_url == "https://connacct.blob.core.windows.net"
    assert queue._client.url == "https://connacct.queue.core.windows.net/conveyor-work"
    assert issued == []
    assert not isinstance(store._client.credential, FakeCredential)


def test_local_mode_without_identity_settings_is_azurite(issued: list[str | None], tmp_path: Path) -> None:
    store, blobs, queue = build({"CONVEYOR_AZURITE_TABLE_PORT": "20002"}, tmp_path)

    assert store._client.url == f"http://127.0.0.1:20002/{AZURITE_ACCOUNT}"
    assert blobs.account_url == f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}"
    assert queue._client.url == f"http://127.0.0.1:10001/{AZURITE_ACCOUNT}/conveyor-work"
    assert issued == []


def test_azure_mode_falls_back_to_the_host_storage_connection_string(issued: list[str | None], tmp_path: Path) -> None:
    store, blobs, _ = build({"CONVEYOR_MODE": "azure", "AzureWebJobsStorage": CONN}, tmp_path)

    assert store._client.url == "https://connacct.table.core.windows.net"
    assert blobs.account_url == "https://connacct.blob.core.windows.net"
    assert issued == []


def test_azure_mode_without_storage_settings_names_the_setting(issued: list[str | None], tmp_path: Path) -> None:
    settings = Settings.from_env({"CONVEYOR_ROOT": str(tmp_path), "CONVEYOR_MODE": "azure"})
    for build_one in (TableRunStore.from_settings, AzureBlobStore.from_settings):
        with pytest.raises(ValidationError) as caught:
            build_one(settings)
        assert caught.value.field == "CONVEYOR_STORAGE__accountName"
    # a per-port override back to local keeps Azurite for that port
    local_store = Settings.from_env(
        {"CONVEYOR_ROOT": str(tmp_path), "CONVEYOR_MODE": "azure", "CONVEYOR_ADAPTER_STORE": "local"}
    )
    assert TableRunStore.from_settings(local_store)._client.url.endswith(f"/{AZURITE_ACCOUNT}")
    assert issued == []


def test_wiring_builds_identity_based_store_and_blobs(issued: list[str | None], tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"CONVEYOR_ROOT": str(tmp_path), "CONVEYOR_MODE": "azure", "CONVEYOR_STORAGE__accountName": "dataacct"}
    )
    services = Services(settings)

    assert isinstance(services.store, TableRunStore)
    assert services.store._client.url == "https://dataacct.table.core.windows.net"  # type: ignore[attr-defined]
    assert services.blobs.url("c01", "n") == "https://dataacct.blob.core.windows.net/c01/n"
