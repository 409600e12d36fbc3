"""transport_kwargs: the per-request environment lookup is off unless a proxy needs it."""

from __future__ import annotations

import pytest

from shared.transport import STORAGE_RETRY, transport_kwargs


def test_no_proxy_no_bundle_turns_the_lookup_off() -> None:
    assert transport_kwargs({"PATH": "/usr/bin", "NO_PROXY": "localhost"}) == {
        **STORAGE_RETRY,
        "use_env_settings": False,
    }


@pytest.mark.parametrize("key", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_keeps_the_default(key: str) -> None:
    assert transport_kwargs({key: "http://proxy:3128", "REQUESTS_CA_BUNDLE": "/ca.pem"}) == STORAGE_RETRY


def test_a_ca_bundle_is_passed_on_as_requests_would_pick_it() -> None:
    both = {"REQUESTS_CA_BUNDLE": "/requests.pem", "CURL_CA_BUNDLE": "/curl.pem"}
    assert transport_kwargs(both) == {**STORAGE_RETRY, "use_env_settings": False, "connection_verify": "/requests.pem"}
    assert transport_kwargs({"CURL_CA_BUNDLE": "/curl.pem", "REQUESTS_CA_BUNDLE": ""}) == {
        **STORAGE_RETRY,
        "use_env_settings": False,
        "connection_verify": "/curl.pem",
    }


def test_the_adapters_build_their_clients_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.queue.storage_queue import StorageQueueWorkQueue
    from shared.store.table import TableRunStore

    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/some/ca.pem")
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;QueueEndpoint=http://127.0.0.1:9/devstoreaccount1"
    )
    table: object = TableRunStore(conn, "runs")._client._client._client._pipeline._transport  # type: ignore[attr-defined]
    queue: object = StorageQueueWorkQueue(conn, "work")._client._pipeline._transport
    bulk: object = TableRunStore(conn, "runs")._transactions._pipeline._pipeline._transport  # type: ignore[union-attr]
    for transport in (table, queue, bulk):
        assert getattr(transport, "_use_env_settings", None) is False
        assert getattr(transport, "connection_config").verify == "/some/ca.pem"  # noqa: B009
