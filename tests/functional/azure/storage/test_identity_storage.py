"""Identity-based storage: the run store, blob store and storage queue built by ``from_settings``
from service URIs + a token credential, against a loopback HTTPS fake of the Storage REST API.

The fake answers with the service's shapes (OData JSON entities and ``odata.error`` bodies for
Tables, XML ``<Error>`` bodies for Blob, ``x-ms-error-code`` headers); the tests assert the
exact paths, the bearer token, and that 503 ServerBusy is retried by the SDK's retry policy
(made instant through ``client_kwargs``) while 403 fails with the service's own message.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from azure.storage.blob import ExponentialRetry as BlobRetry
from azure.storage.queue import ExponentialRetry as QueueRetry
from werkzeug import Request, Response

from shared.blobs.storage import AzureBlobStore
from shared.engine.model import Run, StepRun, TriggerContext
from shared.errors import AuthError, ThrottledError
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import Settings
from shared.store.table import TableRunStore, partition_for
from shared.store.time_index import ACTIVE, INDEX_VERSION, MARKER_PARTITION, MARKER_ROW, index_key
from tests.functional.azure.storage.conftest import FakeCredential, TlsServer

STORAGE_SCOPE = "https://storage.azure.com/.default"
ETAG_1 = "W/\"datetime'2024-05-01T10%3A00%3A00.1234567Z'\""
DENIED = "This request is not authorized to perform this operation using this permission."
BUSY = "The server is busy."
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def make_run(run_id: str) -> Run:
    return Run(
        run_id=run_id,
        flow="retrain",
        trigger=TriggerContext(kind="manual", params={"k": "v"}),
        steps=[StepRun(name="train", kind="batch")],
        created_at=T0,
        updated_at=T0,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )


def settings_for(url: str, tmp_path: Path, **extra: str) -> Settings:
    env = {
        "CONVEYOR_MODE": "azure",
        "CONVEYOR_ROOT": str(tmp_path),
        "CONVEYOR_STORAGE__blobServiceUri": url,
        "CONVEYOR_STORAGE__queueServiceUri": url,
        "CONVEYOR_STORAGE__tableServiceUri": url,
        **extra,
    }
    return Settings.from_env(env)


def table_kwargs(server: TlsServer) -> dict[str, Any]:
    return {"connection_verify": server.ca_file, "retry_total": 2, "retry_backoff_factor": 0}


def blob_kwargs(server: TlsServer) -> dict[str, Any]:
    retry = BlobRetry(initial_backoff=0, increment_base=0, retry_total=2, random_jitter_range=0)
    return {"connection_verify": server.ca_file, "retry_policy": retry}


def table_error(code: str, text: str) -> str:
    return json.dumps(
        {"odata.error": {"code": code, "message": {"lang": "en-US", "value": f"{text}\nRequestId:1b2c\nTime:x"}}}
    )


def blob_error(code: str, text: str) -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{text}\nRequestId:1b2c\nTime:x</Message></Error>"
    )


def entity_response(server: TlsServer, table: str, entity: dict[str, Any], etag: str) -> Response:
    body = {
        "odata.metadata": f"{server.url}/$metadata#{table}/@Element",
        "odata.etag": etag,
        "Timestamp": "2024-05-01T10:00:00.1234567Z",
        **entity,
    }
    return Response(
        json.dumps(body),
        status=200,
        headers={"ETag": etag, "x-ms-version": "2019-02-02"},
        content_type="application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
    )


def table_exists(server: TlsServer) -> None:
    """``create_table`` on start: the service says the table already exists (409), which is fine."""
    server.server.expect_request("/Tables", method="POST").respond_with_response(
        Response(
            table_error("TableAlreadyExists", "The table specified already exists."),
            status=409,
            headers={"x-ms-error-code": "TableAlreadyExists"},
            content_type="application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
        )
    )


def index_built(server: TlsServer) -> None:
    """The store's first read of an existing table: the time index's marker row is there."""
    marker = {"PartitionKey": MARKER_PARTITION, "RowKey": MARKER_ROW, "version": INDEX_VERSION}
    server.server.expect_request(
        f"/conveyorruns(PartitionKey='{MARKER_PARTITION}',RowKey='{MARKER_ROW}')", method="GET"
    ).respond_with_response(entity_response(server, "conveyorruns", marker, ETAG_1))


def requests_made(server: TlsServer) -> list[Request]:
    return [request for request, _ in server.server.log]


# --------------------------------------------------------------------------- tables


def test_table_insert_and_point_read_carry_the_bearer_token(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    store = TableRunStore.from_settings(settings, credential=credential, client_kwargs=table_kwargs(storage_server))
    run = make_run("run-0001")
    entity = TableRunStore.to_entity(run)
    pk = partition_for(run.run_id)
    ipk, irk = index_key(run.run_id, run.created_at, ACTIVE)
    table_exists(storage_server)
    index_built(storage_server)
    storage_server.server.expect_request(
        f"/conveyorruns(PartitionKey='{ipk}',RowKey='{irk}')", method="PUT"
    ).respond_with_response(Response(status=204, headers={"ETag": ETAG_1}))
    storage_server.server.expect_request("/conveyorruns", method="POST").respond_with_response(
        Response(status=204, headers={"ETag": ETAG_1, "Preference-Applied": "return-no-content"})
    )
    storage_server.server.expect_request(
        f"/conveyorruns(PartitionKey='{pk}',RowKey='run-0001')", method="GET"
    ).respond_with_response(entity_response(storage_server, "conveyorruns", entity, ETAG_1))

    assert store.create_if_absent(run) is True
    assert run.etag == ETAG_1
    loaded = store.get("run-0001")

    assert loaded.model_dump() == run.model_dump()
    assert loaded.etag == ETAG_1
    log = requests_made(storage_server)
    assert [(r.method, unquote(r.path)) for r in log] == [
        ("POST", "/Tables"),
        ("GET", f"/conveyorruns(PartitionKey='{MARKER_PARTITION}',RowKey='{MARKER_ROW}')"),
        ("PUT", f"/conveyorruns(PartitionKey='{ipk}',RowKey='{irk}')"),  # the index row, before the run
        ("POST", "/conveyorruns"),
        ("GET", f"/conveyorruns(PartitionKey='{pk}',RowKey='run-0001')"),
    ]
    assert all(r.headers.get("Authorization") == "Bearer fake" for r in log)
    assert all(r.headers.get("x-ms-version") for r in log)
    assert json.loads(log[2].get_data())["run_id"] == "run-0001"
    inserted = json.loads(log[3].get_data())
    assert inserted["PartitionKey"] == pk and inserted["RowKey"] == "run-0001"
    assert inserted["flow"] == "retrain" and json.loads(inserted["doc"])["traceparent"] == run.traceparent
    assert credential.scopes and all(scopes == (STORAGE_SCOPE,) for scopes in credential.scopes)


def test_table_bulk_create_uses_the_lean_batch_with_the_bearer_token(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    store = TableRunStore.from_settings(settings, credential=credential, client_kwargs=table_kwargs(storage_server))
    ids = [f"bulk-{i}" for i in range(200)]
    first = partition_for(ids[0])
    same = [i for i in ids if partition_for(i) == first][:3]  # one partition: one transaction
    assert len(same) == 3
    table_exists(storage_server)
    index_built(storage_server)
    parts = "".join(
        "--changesetresponse_c1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        "HTTP/1.1 204 No Content\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n"
        f"DataServiceVersion: 3.0;\r\nETag: W/\"datetime'2024-05-01T10%3A00%3A0{n}.0Z'\"\r\n\r\n"
        for n in range(3)
    )
    body = (
        "--batchresponse_b1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_c1\r\n\r\n"
        f"{parts}--changesetresponse_c1--\r\n--batchresponse_b1--\r\n"
    )
    storage_server.server.expect_request("/$batch", method="POST").respond_with_response(
        Response(body, status=202, content_type="multipart/mixed; boundary=batchresponse_b1")
    )
    runs = [make_run(i) for i in same]

    assert store.create_many(runs) == [True, True, True]

    assert [r.etag for r in runs] == [f"W/\"datetime'2024-05-01T10%3A00%3A0{n}.0Z'\"" for n in range(3)]
    batches = [r for r in requests_made(storage_server) if r.path.endswith("/$batch")]
    assert len(batches) == 2  # the three index rows (one day: one transaction), then the three runs
    assert batches[0].get_data().decode().count('"PartitionKey":"~a') == 3
    batch = batches[-1]
    assert batch.headers["Authorization"] == "Bearer fake"
    assert batch.headers["Content-Type"].startswith("multipart/mixed; boundary=batch_")
    sent = batch.get_data().decode()
    assert sent.count(f"POST {storage_server.url}/conveyorruns HTTP/1.1") == 3
    assert all(f'"RowKey":"{i}"' in sent for i in same)


def test_table_403_is_an_auth_error_with_the_service_message(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    store = TableRunStore.from_settings(settings, credential=credential, client_kwargs=table_kwargs(storage_server))
    storage_server.server.expect_request("/Tables", method="POST").respond_with_response(
        Response(
            table_error("AuthorizationPermissionMismatch", DENIED),
            status=403,
            headers={"x-ms-error-code": "AuthorizationPermissionMismatch"},
            content_type="application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
        )
    )

    with pytest.raises(AuthError) as caught:
        store.get("run-0001")

    assert caught.value.retryable is False
    assert caught.value.status == 403
    assert DENIED in str(caught.value)
    assert len(requests_made(storage_server)) == 1  # a 403 is not retried


def test_table_503_is_retried_then_succeeds(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    store = TableRunStore.from_settings(settings, credential=credential, client_kwargs=table_kwargs(storage_server))
    run = make_run("run-0002")
    path = f"/conveyorruns(PartitionKey='{partition_for(run.run_id)}',RowKey='run-0002')"
    table_exists(storage_server)
    index_built(storage_server)
    storage_server.server.expect_oneshot_request(path, method="GET").respond_with_response(
        Response(
            table_error("ServerBusy", BUSY),
            status=503,
            headers={"x-ms-error-code": "ServerBusy"},
            content_type="application/json",
        )
    )
    storage_server.server.expect_request(path, method="GET").respond_with_response(
        entity_response(storage_server, "conveyorruns", TableRunStore.to_entity(run), ETAG_1)
    )

    assert store.get("run-0002").run_id == "run-0002"
    gets = [r for r in requests_made(storage_server) if r.method == "GET" and "run-0002" in r.path]
    assert len(gets) == 2
    assert all(r.headers["Authorization"] == "Bearer fake" for r in gets)


# --------------------------------------------------------------------------- blobs


def test_blob_upload_carries_the_bearer_token_to_the_blob_path(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    blobs = AzureBlobStore.from_settings(settings, credential=credential, client_kwargs=blob_kwargs(storage_server))
    storage_server.server.expect_request("/landing/in 2024/data.csv", method="PUT").respond_with_response(
        Response(
            status=201,
            headers={
                "ETag": '"0x8DC6A1B2C3D4E5F"',
                "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT",
                "Content-MD5": "sQqNsWTgdUEFt6mb5y4/5Q==",
                "x-ms-request-server-encrypted": "true",
                "x-ms-version": "2025-01-05",
            },
        )
    )

    info = blobs.upload("landing", "in 2024/data.csv", b"a,b\n1,2\n")

    (request,) = requests_made(storage_server)
    assert request.headers["Authorization"] == "Bearer fake"
    assert request.headers["x-ms-blob-type"] == "BlockBlob"
    assert request.headers["x-ms-blob-content-type"] == "text/csv"
    assert request.get_data() == b"a,b\n1,2\n"
    assert info.etag == '"0x8DC6A1B2C3D4E5F"'
    assert info.url == f"{storage_server.url}/landing/in%202024/data.csv"
    assert blobs.parse_url(info.url) == ("landing", "in 2024/data.csv")
    assert credential.scopes == [(STORAGE_SCOPE,)]


def test_blob_403_is_an_auth_error_with_the_service_message(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    blobs = AzureBlobStore.from_settings(settings, credential=credential, client_kwargs=blob_kwargs(storage_server))
    storage_server.server.expect_request("/landing/x.csv", method="PUT").respond_with_response(
        Response(
            blob_error("AuthorizationPermissionMismatch", DENIED),
            status=403,
            headers={"x-ms-error-code": "AuthorizationPermissionMismatch"},
            content_type="application/xml",
        )
    )

    with pytest.raises(AuthError) as caught:
        blobs.upload("landing", "x.csv", b"1")

    assert caught.value.retryable is False
    assert DENIED in str(caught.value)
    assert len(requests_made(storage_server)) == 1


def test_blob_503_is_retried_then_succeeds_and_persistent_busy_is_throttled(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    settings = settings_for(storage_server.url, tmp_path)
    blobs = AzureBlobStore.from_settings(settings, credential=credential, client_kwargs=blob_kwargs(storage_server))
    busy = Response(
        blob_error("ServerBusy", BUSY),
        status=503,
        headers={"x-ms-error-code": "ServerBusy"},
        content_type="application/xml",
    )
    storage_server.server.expect_oneshot_request("/landing/ok.csv", method="PUT").respond_with_response(busy)
    storage_server.server.expect_request("/landing/ok.csv", method="PUT").respond_with_response(
        Response(status=201, headers={"ETag": '"0x1"', "Last-Modified": "Wed, 01 May 2024 10:00:00 GMT"})
    )
    storage_server.server.expect_request("/landing/busy.csv", method="PUT").respond_with_response(busy)

    assert blobs.upload("landing", "ok.csv", b"1").etag == '"0x1"'
    with pytest.raises(ThrottledError) as caught:
        blobs.upload("landing", "busy.csv", b"1")

    assert caught.value.retryable is True
    assert BUSY in str(caught.value)
    paths = [unquote(r.path) for r in requests_made(storage_server)]
    assert paths.count("/landing/ok.csv") == 2
    assert paths.count("/landing/busy.csv") == 3  # the first try + retry_total=2


# --------------------------------------------------------------------------- queue


def test_storage_queue_send_carries_the_bearer_token(
    storage_server: TlsServer, credential: FakeCredential, tmp_path: Path
) -> None:
    from shared.engine.model import Message

    settings = settings_for(storage_server.url, tmp_path)
    retry = QueueRetry(initial_backoff=0, increment_base=0, retry_total=2, random_jitter_range=0)
    queue = StorageQueueWorkQueue.from_settings(
        settings,
        credential=credential,
        client_kwargs={"connection_verify": storage_server.ca_file, "retry_policy": retry},
    )
    storage_server.server.expect_request("/conveyor-work", method="PUT").respond_with_response(Response(status=201))
    storage_server.server.expect_request("/conveyor-work/messages", method="POST").respond_with_response(
        Response(
            '<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage>'
            "<MessageId>5974b586-0df3-4e2d-ad0c-18e3892bfca2</MessageId>"
            "<InsertionTime>Wed, 01 May 2024 10:00:00 GMT</InsertionTime>"
            "<ExpirationTime>Fri, 31 Dec 9999 23:59:59 GMT</ExpirationTime>"
            "<PopReceipt>AgAAAAMAAAAAAAAA</PopReceipt>"
            "<TimeNextVisible>Wed, 01 May 2024 10:00:00 GMT</TimeNextVisible>"
            "</QueueMessage></QueueMessagesList>",
            status=201,
            content_type="application/xml",
        )
    )

    queue.send(Message(kind="start", run_id="run-0003", flow="retrain"))

    create, send = requests_made(storage_server)
    assert (create.method, create.path, send.method, send.path) == (
        "PUT",
        "/conveyor-work",
        "POST",
        "/conveyor-work/messages",
    )
    assert create.headers["Authorization"] == send.headers["Authorization"] == "Bearer fake"
    assert send.args.get("messagettl") == "-1"
    assert "&quot;run_id&quot;:&quot;run-0003&quot;" in send.get_data().decode() or '"run_id":"run-0003"' in (
        send.get_data().decode()
    )
