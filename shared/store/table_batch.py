"""Entity group transactions of creates, sent as one plain-string body through public azure-core.

Why our own body: ``TableClient.submit_transaction`` builds and parses each transaction with the
``email`` package, ~0.5 ms of CPU per entity, and ingest writes two entities per run (the run and
its time-index row); ``bench/bench_ingest.py`` measures ingest at 0.55x of a public
``submit_transaction`` floor that way and at 1.25-1.50x with this module. What is ours is only the
multipart text (one f-string per entity) and two regexes over the reply; the request goes
through an ``azure.core.PipelineClient`` with public policies: retries as the SDK client's
(``shared.transport``: the same backoff, a POST retried on 500/503/504), the transport options
(and injected faults) of ``shared.transport``, and auth from the TableClient's public
``credential``:

* a token credential (the app's identity): ``BearerTokenCredentialPolicy`` for storage;
* an ``AzureSasCredential``: ``AzureSasCredentialPolicy``;
* an ``AzureNamedKeyCredential`` (Azurite, account keys): an account SAS for adding entities,
  made with the public ``generate_account_sas`` and renewed before it expires.

A client this module cannot speak for (a test double, a SAS in the URL, Cosmos) gets ``None``
from :meth:`CreateTransactions.for_client`, and the store uses ``submit_transaction``.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from typing import Any

STORAGE_SCOPE = "https://storage.azure.com/.default"
_TRANSPORT_OPTIONS = ("use_env_settings", "connection_verify", "connection_timeout", "read_timeout")
SAS_LIFETIME = timedelta(hours=2)
SAS_RENEW_BEFORE = timedelta(minutes=30)
_STATUS_LINE = re.compile(r"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG_LINE = re.compile(r"^ETag:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class TransactionReply:
    """What the service answered: the HTTP status of the whole POST, and per operation (in order)
    its status and ETag. ``text`` is the reply (for error messages)."""

    status: int
    statuses: list[int]
    etags: list[str | None]
    text: str
    response: Any


class _AccountSas:
    """An account SAS allowing entity adds, from a named key; renewed before it expires."""

    def __init__(self, named_key: Any) -> None:
        from azure.core.credentials import AzureSasCredential

        self._named_key = named_key
        self._lock = threading.Lock()
        self._expires = datetime.now(UTC)
        self.credential = AzureSasCredential(self._make())

    def _make(self) -> str:
        from azure.data.tables import AccountSasPermissions, ResourceTypes, generate_account_sas

        self._expires = datetime.now(UTC) + SAS_LIFETIME
        return str(
            generate_account_sas(
                self._named_key,
                resource_types=ResourceTypes(object=True),
                permission=AccountSasPermissions(add=True),
                expiry=self._expires,
                start=datetime.now(UTC) - timedelta(minutes=15),  # clock skew
            )
        )

    def fresh(self) -> None:
        if datetime.now(UTC) < self._expires - SAS_RENEW_BEFORE:
            return
        with self._lock:
            if datetime.now(UTC) >= self._expires - SAS_RENEW_BEFORE:
                self.credential.update(self._make())


class CreateTransactions:
    """POSTs transactions of creates for one table (see the module docstring)."""

    def __init__(self, pipeline: Any, account_url: str, table: str, api_version: str, sas: _AccountSas | None) -> None:
        self._pipeline = pipeline
        self._account_url = account_url
        self._table = table
        self._api_version = api_version
        self._sas = sas

    @classmethod
    def for_client(cls, client: Any, options: Mapping[str, Any]) -> CreateTransactions | None:
        """For a ``TableClient`` (its public ``url``, ``table_name``, ``api_version`` and
        ``credential``), with the SDK client options of ``shared.transport`` (``options``)."""
        from azure.core import PipelineClient
        from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
        from azure.core.pipeline.policies import (
            AzureSasCredentialPolicy,
            BearerTokenCredentialPolicy,
            RetryPolicy,
        )
        from azure.core.pipeline.transport import RequestsTransport
        from azure.data.tables import TableClient

        if not isinstance(client, TableClient):
            return None
        url = str(client.url).rstrip("/")
        if "?" in url or not url.startswith(("http://", "https://")) or ".cosmos." in url:
            return None
        credential = client.credential
        sas: _AccountSas | None = None
        if isinstance(credential, AzureNamedKeyCredential):
            sas = _AccountSas(credential)
            auth: Any = AzureSasCredentialPolicy(sas.credential)
        elif isinstance(credential, AzureSasCredential):
            auth = AzureSasCredentialPolicy(credential)
        elif hasattr(credential, "get_token"):
            auth = BearerTokenCredentialPolicy(credential, STORAGE_SCOPE)
        else:
            return None
        opts = dict(options)
        retry = RetryPolicy(
            retry_total=opts.pop("retry_total", 3),
            retry_backoff_factor=opts.pop("retry_backoff_factor", 0.5),
            retry_backoff_max=opts.pop("retry_backoff_max", 8),
        )
        transport = opts.pop("transport", None)
        if transport is None:
            transport = RequestsTransport(**{k: opts[k] for k in _TRANSPORT_OPTIONS if k in opts})
        pipeline: Any = PipelineClient(base_url=url, policies=[retry, auth], transport=transport)
        return cls(pipeline, url, str(client.table_name), str(client.api_version), sas)

    def body(self, entities: list[dict[str, Any]]) -> tuple[str, bytes]:
        """(the batch boundary, the multipart/mixed body of one changeset of creates)."""
        batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
        target = f"POST {self._account_url}/{self._table} HTTP/1.1\r\n"
        parts = [f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n"]
        for i, entity in enumerate(entities):
            body = json.dumps(entity, separators=(",", ":"))  # ensure_ascii: length == bytes
            parts.append(
                f"--{changeset}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"Content-ID: {i}\r\n\r\n{target}Content-Type: application/json\r\n"
                "Accept: application/json;odata=minimalmetadata\r\nPrefer: return-no-content\r\n"
                f"DataServiceVersion: 3.0\r\nContent-Length: {len(body)}\r\n\r\n{body}\r\n"
            )
        parts.append(f"--{changeset}--\r\n\r\n--{batch}--\r\n")
        return batch, "".join(parts).encode("ascii")

    def submit(self, entities: list[dict[str, Any]]) -> TransactionReply:
        """POST one transaction; lower-level errors propagate (the store maps them)."""
        from azure.core.rest import HttpRequest

        if self._sas is not None:
            self._sas.fresh()
        boundary, content = self.body(entities)
        now = formatdate(time.time(), usegmt=True)
        request = HttpRequest(
            "POST",
            f"{self._account_url}/$batch",
            headers={
                "x-ms-version": self._api_version,
                "x-ms-date": now,
                "Date": now,
                "DataServiceVersion": "3.0",
                "MaxDataServiceVersion": "3.0;NetFx",
                "Content-Type": f"multipart/mixed; boundary={boundary}",
                "Accept": "application/json",
            },
            content=content,
        )
        response = self._pipeline.send_request(request, stream=True)
        text = response.read().decode("utf-8", "replace")
        statuses = [int(m) for m in _STATUS_LINE.findall(text)]
        etags: list[str | None] = []
        for chunk in _STATUS_LINE.split(text)[2::2]:
            m = _ETAG_LINE.search(chunk)
            etags.append(m.group(1).strip() if m else None)
        return TransactionReply(response.status_code, statuses, etags, text, response)
