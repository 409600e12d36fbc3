"""Event Grid deliveries of ``Microsoft.Storage.BlobCreated``: parse, validate, handshake.

Two wire formats reach an HTTP endpoint:

* **Event Grid schema**: a JSON array of events (``eventType``, ``subject``, ``eventTime``,
  ``data``...). The ``aeg-event-type`` header says ``SubscriptionValidation`` (the first
  request of a new subscription, answered with ``{"validationResponse": code}``) or
  ``Notification``.
* **CloudEvents 1.0**: ``application/cloudevents+json`` (one structured event),
  ``application/cloudevents-batch+json`` (an array), or any JSON array of objects carrying
  ``specversion``. Endpoint validation is the CloudEvents webhook "abuse protection"
  handshake: an ``OPTIONS`` request with ``WebHook-Request-Origin``, answered by
  :func:`webhook_validation_response`.

Blob names are data: the container and name come from ``subject``
(``/blobServices/default/containers/<c>/blobs/<name>``) and are cross-checked against the
percent-decoded ``data.url``; spaces, unicode, ``;`` or ``$()`` in a name are kept verbatim.
Events of other types are counted in ``Delivery.ignored``, not failed. Anything malformed
raises :class:`shared.errors.ValidationError` naming the field, e.g. ``[0].data.url``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from shared.errors import ValidationError

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
SUBJECT_PREFIX = "/blobServices/default/containers/"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
# Subscription id of the topic the local host's watcher puts on the events it emits.
LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
LOCAL_RESOURCE_GROUP = "conveyor-local"

Schema = Literal["eventgrid", "cloudevents"]


@dataclass(frozen=True)
class BlobEvent:
    """One ``BlobCreated`` event, validated. ``etag`` is as delivered (quotes included)."""

    url: str
    container: str
    name: str
    etag: str
    size: int
    content_type: str | None
    event_id: str
    event_time: datetime | None
    api: str | None

    def as_trigger(self) -> dict[str, Any]:
        """The ``trigger.blob`` dict of a run (``${trigger.blob.url}`` etc.)."""
        return {
            "url": self.url,
            "container": self.container,
            "name": self.name,
            "etag": self.etag,
            "size": self.size,
            "content_type": self.content_type,
            "event_id": self.event_id,
            "event_time": self.event_time.isoformat() if self.event_time else None,
            "api": self.api,
        }


@dataclass
class Delivery:
    """What one POST carried: a validation handshake, or events (BlobCreated kept, others counted)."""

    kind: Literal["validation", "events"]
    validation_code: str | None = None
    validation_url: str | None = None
    events: list[BlobEvent] = field(default_factory=list)
    ignored: int = 0
    schema: Schema = "eventgrid"

    def validation_response(self) -> dict[str, str]:
        """The body Event Grid expects back for a ``SubscriptionValidation`` request."""
        if self.validation_code is None:
            raise ValueError("not a validation delivery")
        return {"validationResponse": self.validation_code}


# ---------------------------------------------------------------- helpers


def _lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def _decode_json(body: bytes | bytearray | str) -> Any:
    if isinstance(body, bytes | bytearray):
        try:
            text = bytes(body).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"body is not UTF-8: {exc.reason} at byte {exc.start}", field="body") from exc
    else:
        text = body
    if not text.strip():
        raise ValidationError("body is empty; expected JSON events", field="body")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"body is not valid JSON: {exc.msg}", field="body", line=exc.lineno) from exc


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty_ok: bool = False) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise ValidationError("is required", field=f"{where}{key}")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"must be a string, got {type(value).__name__}", field=f"{where}{key}")
    if not value and not empty_ok and required:
        raise ValidationError("must not be empty", field=f"{where}{key}")
    return value


def parse_time(value: str, field_name: str) -> datetime:
    """ISO-8601 with up to 7 fractional digits (Event Grid's format) -> aware UTC."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Event Grid sends 100 ns precision (7 digits); datetime keeps microseconds.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{(digits + '000000')[:6]}{rest}" if digits else f"{head}{rest}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(f"not an ISO-8601 time: {value!r}", field=field_name) from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def split_subject(subject: str, field_name: str = "subject") -> tuple[str, str]:
    """``/blobServices/default/containers/<c>/blobs/<name>`` -> (container, name)."""
    if not subject.startswith(SUBJECT_PREFIX):
        raise ValidationError(
            f"expected '{SUBJECT_PREFIX}<container>/blobs/<name>', got {subject[:200]!r}", field=field_name
        )
    rest = subject[len(SUBJECT_PREFIX) :]
    container, sep, name = rest.partition("/blobs/")
    if not sep or not container or "/" in container or not name:
        raise ValidationError(
            f"expected '{SUBJECT_PREFIX}<container>/blobs/<name>', got {subject[:200]!r}", field=field_name
        )
    return container, name


def _check_url(url: str, container: str, name: str, field_name: str) -> None:
    """``data.url`` must be http(s) and end with ``/<container>/<name>`` once percent-decoded.

    Works for both the Azure host style (``https://acct.blob.core.windows.net/c/n``) and
    Azurite's path style (``http://127.0.0.1:10000/devstoreaccount1/c/n``).
    """
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValidationError(f"not a URL: {exc}", field=field_name) from exc
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"must be an http(s) blob URL, got {url[:200]!r}", field=field_name)
    path = unquote(parts.path)
    want = f"/{container}/{name}"
    if path.endswith(want):
        return
    # Some producers put a percent-encoded name in the subject too.
    if path.endswith(f"/{container}/{unquote(name)}"):
        return
    raise ValidationError(
        f"blob URL {url[:200]!r} does not match the subject's container {container!r} and name {name[:200]!r}",
        field=field_name,
    )


def _blob_from(
    *,
    event_id: str,
    subject: str | None,
    data: Any,
    event_time: datetime | None,
    where: str,
    subject_field: str,
) -> BlobEvent:
    if not isinstance(data, Mapping):
        raise ValidationError("must be a JSON object with the blob's url, eTag and contentLength", field=f"{where}data")
    dw = f"{where}data."
    url = _str(data, "url", dw)
    etag = _str(data, "eTag", dw)
    assert url is not None and etag is not None
    size = data.get("contentLength")
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValidationError(
            "is required and must be an integer number of bytes" if size is None else "must be an integer",
            field=f"{dw}contentLength",
        )
    if size < 0:
        raise ValidationError("must not be negative", field=f"{dw}contentLength")
    content_type = _str(data, "contentType", dw, required=False)
    api = _str(data, "api", dw, required=False)
    if subject is None or subject == "":
        raise ValidationError("is required for a BlobCreated event", field=subject_field)
    container, name = split_subject(subject, subject_field)
    _check_url(url, container, name, f"{dw}url")
    return BlobEvent(
        url=url,
        container=container,
        name=name,
        etag=etag,
        size=size,
        content_type=content_type,
        event_id=event_id,
        event_time=event_time,
        api=api,
    )


def _opt_time(obj: Mapping[str, Any], key: str, where: str) -> datetime | None:
    raw = obj.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ValidationError("must be an ISO-8601 string", field=f"{where}{key}")
    return parse_time(raw, f"{where}{key}")


# ---------------------------------------------------------------- one event, either schema


@dataclass
class _Parsed:
    kind: Literal["blob", "validation", "other"]
    blob: BlobEvent | None = None
    code: str | None = None
    url: str | None = None


def _parse_eventgrid_event(ev: Any, where: str) -> _Parsed:
    if not isinstance(ev, Mapping):
        raise ValidationError("each event must be a JSON object", field=where.rstrip(".") or "body")
    event_type = _str(ev, "eventType", where)
    if event_type == SUBSCRIPTION_VALIDATION:
        data = ev.get("data")
        if not isinstance(data, Mapping):
            raise ValidationError("must be a JSON object with validationCode", field=f"{where}data")
        code = _str(data, "validationCode", f"{where}data.")
        vurl = _str(data, "validationUrl", f"{where}data.", required=False)
        return _Parsed("validation", code=code, url=vurl)
    if event_type != BLOB_CREATED:
        return _Parsed("other")
    event_id = _str(ev, "id", where)
    assert event_id is not None
    blob = _blob_from(
        event_id=event_id,
        subject=_str(ev, "subject", where),
        data=ev.get("data"),
        event_time=_opt_time(ev, "eventTime", where),
        where=where,
        subject_field=f"{where}subject",
    )
    return _Parsed("blob", blob=blob)


def _parse_cloudevent(ev: Any, where: str) -> _Parsed:
    if not isinstance(ev, Mapping):
        raise ValidationError("each event must be a JSON object", field=where.rstrip(".") or "body")
    spec = _str(ev, "specversion", where)
    if spec != "1.0":
        raise ValidationError(f"unsupported CloudEvents version {spec!r}; expected '1.0'", field=f"{where}specversion")
    event_type = _str(ev, "type", where)
    event_id = _str(ev, "id", where)
    _str(ev, "source", where)
    assert event_id is not None
    if event_type == SUBSCRIPTION_VALIDATION:  # not used by CloudEvents delivery, tolerated
        data = ev.get("data")
        if not isinstance(data, Mapping):
            raise ValidationError("must be a JSON object with validationCode", field=f"{where}data")
        return _Parsed(
            "validation",
            code=_str(data, "validationCode", f"{where}data."),
            url=_str(data, "validationUrl", f"{where}data.", required=False),
        )
    if event_type != BLOB_CREATED:
        return _Parsed("other")
    data = ev.get("data")
    if data is None and "data_base64" in ev:
        raise ValidationError("binary data is not supported for BlobCreated; expected JSON data", field=f"{where}data")
    blob = _blob_from(
        event_id=event_id,
        subject=_str(ev, "subject", where),
        data=data,
        event_time=_opt_time(ev, "time", where),
        where=where,
        subject_field=f"{where}subject",
    )
    return _Parsed("blob", blob=blob)


def _is_cloudevent(ev: Any) -> bool:
    return isinstance(ev, Mapping) and "specversion" in ev


# ---------------------------------------------------------------- public API


def parse_events(items: Iterable[Any]) -> tuple[list[BlobEvent], int]:
    """Already-decoded event objects (either schema) -> (BlobCreated events, ignored count).

    Validation events are not expected here (they are answered before) and count as ignored.
    """
    events: list[BlobEvent] = []
    ignored = 0
    for i, ev in enumerate(items):
        where = f"[{i}]."
        parsed = _parse_cloudevent(ev, where) if _is_cloudevent(ev) else _parse_eventgrid_event(ev, where)
        if parsed.kind == "blob" and parsed.blob is not None:
            events.append(parsed.blob)
        else:
            ignored += 1
    return events, ignored


def parse_delivery(body: bytes | bytearray | str, headers: Mapping[str, str] | None = None) -> Delivery:
    """Parse one webhook POST from Event Grid (either schema). See the module docstring."""
    h = _lower_headers(headers)
    content_type = h.get("content-type", "").split(";")[0].strip().lower()
    aeg_type = h.get("aeg-event-type", "").strip()
    doc = _decode_json(body)

    items: list[Any]
    schema: Schema
    if content_type == CLOUDEVENTS_BATCH:
        if not isinstance(doc, list):
            raise ValidationError("a CloudEvents batch must be a JSON array", field="body")
        items, schema = doc, "cloudevents"
    elif content_type == CLOUDEVENTS_JSON:
        if not isinstance(doc, Mapping):
            raise ValidationError("a structured CloudEvent must be a JSON object", field="body")
        items, schema = [doc], "cloudevents"
    elif isinstance(doc, list):
        items = doc
        schema = "cloudevents" if doc and all(_is_cloudevent(e) for e in doc) else "eventgrid"
    elif isinstance(doc, Mapping):
        # One event not wrapped in an array: accepted for either schema.
        items = [doc]
        schema = "cloudevents" if _is_cloudevent(doc) else "eventgrid"
    else:
        raise ValidationError("expected a JSON array of events or a CloudEvent object", field="body")

    parse_one = _parse_cloudevent if schema == "cloudevents" else None
    events: list[BlobEvent] = []
    ignored = 0
    validation: _Parsed | None = None
    for i, ev in enumerate(items):
        where = f"[{i}]."
        if parse_one is not None:
            parsed = parse_one(ev, where)
        else:
            parsed = _parse_cloudevent(ev, where) if _is_cloudevent(ev) else _parse_eventgrid_event(ev, where)
        if parsed.kind == "validation":
            validation = validation or parsed
        elif parsed.kind == "blob" and parsed.blob is not None:
            events.append(parsed.blob)
        else:
            ignored += 1

    if validation is not None:
        return Delivery(
            kind="validation", validation_code=validation.code, validation_url=validation.url, schema=schema
        )
    if aeg_type.lower() == "subscriptionvalidation":
        raise ValidationError(
            f"header says SubscriptionValidation but no {SUBSCRIPTION_VALIDATION} event is in the body",
            field="[0].eventType",
        )
    return Delivery(kind="events", events=events, ignored=ignored, schema=schema)


def blob_event_from_functions(
    event_id: str,
    event_type: str,
    subject: str,
    data: Any,
    event_time: datetime | str | None,
    topic: str | None = None,
) -> BlobEvent | None:
    """From the Functions Event Grid trigger's ``func.EventGridEvent`` fields.

    Returns None for event types other than BlobCreated (the caller counts them as ignored).
    """
    if event_type != BLOB_CREATED:
        return None
    if not event_id:
        raise ValidationError("is required", field="id")
    when: datetime | None
    if isinstance(event_time, str):
        when = parse_time(event_time, "eventTime") if event_time else None
    elif isinstance(event_time, datetime):
        when = event_time if event_time.tzinfo else event_time.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
    else:
        when = None
    return _blob_from(event_id=event_id, subject=subject, data=data, event_time=when, where="", subject_field="subject")


def webhook_validation_response(
    headers: Mapping[str, str] | None, allowed_origins: Iterable[str] | None = None
) -> dict[str, str] | None:
    """CloudEvents webhook abuse protection (HTTP OPTIONS): the response headers granting delivery.

    The request carries ``WebHook-Request-Origin`` (Event Grid sends ``eventgrid.azure.net``);
    consent is ``WebHook-Allowed-Origin`` echoing it, plus ``WebHook-Allowed-Rate`` and
    ``Allow``. Returns None when the header is missing or not acceptable (the caller then
    answers 400 and no consent is given). ``allowed_origins`` restricts which origins are
    accepted (case-insensitive); None accepts any well-formed origin.
    """
    h = _lower_headers(headers)
    origin = h.get("webhook-request-origin", "").strip()
    if not origin or len(origin) > 253 or any(c in origin for c in "\r\n\t ,;\"'<>"):
        return None
    if allowed_origins is not None and origin.lower() not in {o.lower() for o in allowed_origins}:
        return None
    return {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*", "Allow": "POST, OPTIONS"}


def _event_time(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}0Z"


def blob_created_event(info: Any, account: str) -> dict[str, Any]:
    """A real Event Grid schema ``Microsoft.Storage.BlobCreated`` event for a blob.

    ``info`` is a :class:`shared.blobs.base.BlobInfo`. The local host's blob watcher emits
    these so that the same parsing and ingest path serves Azure and local runs.
    """
    last = info.last_modified or datetime.now(UTC)
    micros = int(last.timestamp() * 1_000_000) if isinstance(last, datetime) else 0
    request_id = str(uuid.uuid4())
    return {
        "topic": (
            f"/subscriptions/{LOCAL_SUBSCRIPTION}/resourceGroups/{LOCAL_RESOURCE_GROUP}"
            f"/providers/Microsoft.Storage/storageAccounts/{account}"
        ),
        "subject": f"{SUBJECT_PREFIX}{info.container}/blobs/{info.name}",
        "eventType": BLOB_CREATED,
        "eventTime": _event_time(last) if isinstance(last, datetime) else _event_time(datetime.now(UTC)),
        "id": str(uuid.uuid4()),
        "data": {
            "api": "PutBlob",
            "clientRequestId": str(uuid.uuid4()),
            "requestId": request_id,
            "eTag": info.etag,
            "contentType": info.content_type or "application/octet-stream",
            "contentLength": int(info.size),
            "blobType": "BlockBlob",
            "url": info.url,
            "sequencer": f"{micros:032X}",
            "storageDiagnostics": {"batchId": str(uuid.uuid4())},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }
