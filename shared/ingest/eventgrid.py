"""Event Grid deliveries of ``Microsoft.Storage.BlobCreated``: the one strict parser, refusals, handshakes.

Every way a blob event reaches Conveyor goes through this module: ``POST /api/events/blob``,
the local host's ``/runtime/webhooks/EventGrid`` (both via :func:`parse_delivery`) and the
Functions Event Grid trigger (:func:`envelope_of_binding` + :func:`parse_events`).

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

The body is decoded by :func:`shared.safejson.loads` (size, depth, number length, NaN, lone
surrogates). Each envelope is checked strictly here -- required attributes present and
strings, ``specversion`` exactly ``1.0``, CloudEvents extension names lower-case alphanumeric
-- and then read by the SDK's own model, ``azure.eventgrid.EventGridEvent`` (built with its
constructor; the time is parsed by us, RFC 3339) or ``azure.core.messaging.CloudEvent.from_dict``
(lenient on its own: it coerces numbers to text and accepts missing attributes, hence the
checks first). A malformed envelope
raises :class:`shared.errors.ValidationError` naming the field (``[0].eventType``): the HTTP
routes answer 400 and nothing of the delivery is ingested.

The BlobCreated data extractor is ours. Container and name come from ``subject``
(``/blobServices/default/containers/<c>/blobs/<name>``); ``data.url`` must be a blob URL of
the configured storage account (:class:`shared.blobs.account.BlobAccount`) addressing that
container and name. The name is decoded once, here: the name recorded on the run is the one
the URL addresses (a subject the producer percent-encoded too is accepted and decoded), so the
steps act on exactly the recorded name. Names are data -- spaces, unicode, ``;``, ``$()`` are
kept verbatim -- but a name :func:`shared.blobs.account.name_problem` refuses (traversal,
backslash, leading ``/``, control characters, lone surrogates) or a URL of another scheme,
host, port or account makes the event *refused*: it is listed in ``Delivery.ignored`` with
its reason (``refused=True``) and starts nothing, while the other events of the delivery go
on. Events of other types are listed there too (``refused=False``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from shared import safejson
from shared.blobs.account import BlobAccount, NotThisAccount, is_container_name, name_problem
from shared.errors import ValidationError

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
SUBJECT_PREFIX = "/blobServices/default/containers/"
CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
# Subscription id of the topic the local host's watcher puts on the events it emits.
LOCAL_SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
LOCAL_RESOURCE_GROUP = "conveyor-local"
MAX_ID = 256  # event ids are GUID-like; they go into logs, telemetry and the run row
MAX_ETAG = 256
SHOWN = 300  # characters of a subject quoted back in a response, log line or telemetry event

_SURROGATE = re.compile("[\ud800-\udfff]")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_EXTENSION_RE = re.compile(r"^[a-z0-9]*[a-z][a-z0-9]*$")  # the SDK also wants a letter in it
# Event Grid schema attributes (https://learn.microsoft.com/azure/event-grid/event-schema).
_EG_REQUIRED = ("id", "eventType", "eventTime")
_EG_OPTIONAL = ("topic", "dataVersion", "metadataVersion")
# CloudEvents 1.0 context attributes (the rest are extensions).
_CE_REQUIRED = ("id", "source", "type")
_CE_OPTIONAL = ("subject", "time", "datacontenttype", "dataschema")
_CE_RESERVED = frozenset(("specversion", "data", "data_base64", *_CE_REQUIRED, *_CE_OPTIONAL))

Schema = Literal["eventgrid", "cloudevents"]


@dataclass(frozen=True)
class BlobEvent:
    """One ``BlobCreated`` event, validated. ``name`` is decoded; ``etag`` is as delivered (quotes included)."""

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


@dataclass(frozen=True)
class Ignored:
    """An event of a delivery that starts nothing: another event type, or a refused BlobCreated."""

    event_id: str
    event_type: str
    subject: str  # at most SHOWN characters, lone surrogates escaped: safe to log, store and answer
    reason: str
    refused: bool = False

    def as_json(self) -> dict[str, Any]:
        """How a route lists it under ``ignored``."""
        return {
            "id": self.event_id,
            "type": self.event_type,
            "subject": self.subject,
            "reason": self.reason,
            "refused": self.refused,
        }


@dataclass
class Delivery:
    """What one POST carried: a validation handshake, or events (BlobCreated kept, the rest ignored)."""

    kind: Literal["validation", "events"]
    validation_code: str | None = None
    validation_url: str | None = None
    events: list[BlobEvent] = field(default_factory=list)
    ignored: list[Ignored] = field(default_factory=list)
    schema: Schema = "eventgrid"

    def validation_response(self) -> dict[str, str]:
        """The body Event Grid expects back for a ``SubscriptionValidation`` request."""
        if self.validation_code is None:
            raise ValueError("not a validation delivery")
        return {"validationResponse": self.validation_code}

    @property
    def count(self) -> int:
        """Events in the delivery (started or not); 1 for a validation handshake."""
        return 1 if self.kind == "validation" else len(self.events) + len(self.ignored)


class _Refused(Exception):
    """A BlobCreated event Conveyor will not act on; the message is the reason."""


# ---------------------------------------------------------------- attribute checks


def _lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (headers or {}).items()}


def _str(
    obj: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty_ok: bool = False, name: bool = False
) -> str | None:
    """``obj[key]`` as a string: present (when required), a JSON string, non-empty unless ``empty_ok``.

    Lone surrogates cannot be stored or encoded: refused here, except in a string that carries a
    blob name (``name``), which the name rule refuses as an event instead.
    """
    value = obj.get(key)
    if value is None:
        if required:
            raise ValidationError("is required", field=f"{where}{key}")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"must be a string, got {_json_type(value)}", field=f"{where}{key}")
    if not value and not empty_ok:
        raise ValidationError("must not be empty", field=f"{where}{key}")
    if not name and _SURROGATE.search(value):
        raise ValidationError("contains a lone UTF-16 surrogate (\\ud800-\\udfff)", field=f"{where}{key}")
    return value


def _shown(text: str) -> str:
    """At most ``SHOWN`` characters of an outside string, encodable anywhere (lone surrogates escaped)."""
    return text[:SHOWN].encode("utf-8", "backslashreplace").decode("utf-8")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _event_id(obj: Mapping[str, Any], where: str) -> str:
    event_id = _str(obj, "id", where)
    assert event_id is not None
    if len(event_id) > MAX_ID:
        raise ValidationError(f"longer than {MAX_ID} characters", field=f"{where}id")
    return event_id


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


# ---------------------------------------------------------------- envelopes (SDK models on top of our checks)


@dataclass(frozen=True)
class _Envelope:
    """The attributes of either schema that Conveyor reads."""

    event_id: str
    event_type: str
    subject: str | None
    event_time: datetime | None
    data: Any


def _eventgrid_envelope(ev: Mapping[str, Any], where: str) -> _Envelope:
    from azure.eventgrid import EventGridEvent

    _event_id(ev, where)
    for key in _EG_REQUIRED[1:]:
        _str(ev, key, where)
    _str(ev, "subject", where, empty_ok=True, name=True)  # required; "" for a validation event
    for key in _EG_OPTIONAL:
        _str(ev, key, where, required=False, empty_ok=True)
    # The SDK's model, built with its public constructor from attributes checked above and a
    # time we parse ourselves (RFC 3339, as for CloudEvents): ``EventGridEvent.from_dict`` runs
    # msrest's generic deserializer, ~20x the cost of the rest of the parse for each event of a
    # 10,000-event drop. data stays ours: the SDK would copy it value by value, the same JSON.
    when = _rfc3339(ev["eventTime"], f"{where}eventTime")
    model = EventGridEvent(
        subject=ev["subject"],
        event_type=ev["eventType"],
        data=None,
        data_version=ev.get("dataVersion") or "",
        id=ev["id"],
        event_time=when,
        topic=ev.get("topic"),
    )
    return _Envelope(
        event_id=str(model.id),
        event_type=str(model.event_type),
        subject=model.subject,
        event_time=_utc(model.event_time),
        data=ev.get("data"),
    )


def _cloud_envelope(ev: Mapping[str, Any], where: str) -> _Envelope:
    from azure.core.messaging import CloudEvent

    spec = ev.get("specversion")
    if spec != "1.0":
        got = repr(spec)[:20] if isinstance(spec, str) else _json_type(spec)
        raise ValidationError(f"unsupported CloudEvents version {got}; expected '1.0'", field=f"{where}specversion")
    _event_id(ev, where)
    for key in _CE_REQUIRED[1:]:
        _str(ev, key, where)
    for key in _CE_OPTIONAL:
        _str(ev, key, where, required=False, empty_ok=True, name=key == "subject")
    for key in ev:
        if key not in _CE_RESERVED and not _EXTENSION_RE.match(key):
            raise ValidationError(
                f"extension attribute name {key[:40]!r} must be lower-case ASCII letters and digits",
                field=where.rstrip(".") or "body",
            )
    if "data" in ev and "data_base64" in ev:
        raise ValidationError("only one of data and data_base64 may be present", field=f"{where}data_base64")
    when = _rfc3339(ev["time"], f"{where}time") if ev.get("time") else None
    # data_base64 stays ours (its content is never read), and so does the time: azure-core's
    # CloudEvent parser reads one digit of an offset's hours ("+02:00" is taken as UTC).
    try:
        model: CloudEvent[Any] = CloudEvent.from_dict({k: v for k, v in ev.items() if k not in ("data_base64", "time")})
    except (ValueError, TypeError) as exc:  # not expected after the checks above
        raise ValidationError(f"not a CloudEvent: {str(exc)[:200]}", field=where.rstrip(".") or "body") from None
    return _Envelope(
        event_id=model.id,
        event_type=model.type,
        subject=ev.get("subject"),  # checked above; the SDK turns a JSON null into its NULL sentinel
        event_time=when,
        data=_BINARY if "data_base64" in ev else ev.get("data"),
    )


def _rfc3339(value: str, field_name: str) -> datetime:
    """An RFC 3339 timestamp (any number of fraction digits; Event Grid sends 7) -> aware UTC."""
    if not _RFC3339.match(value):
        raise ValidationError(f"not an RFC 3339 time: {value[:60]!r}", field=field_name)
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except ValueError:
        raise ValidationError(f"not an RFC 3339 time: {value[:60]!r}", field=field_name) from None


_BINARY = object()  # a CloudEvent carrying data_base64


def _is_cloudevent(ev: Any) -> bool:
    return isinstance(ev, Mapping) and "specversion" in ev


# ---------------------------------------------------------------- the BlobCreated data extractor


def split_subject(subject: str, field_name: str = "subject") -> tuple[str, str]:
    """``/blobServices/default/containers/<c>/blobs/<name>`` -> (container, name as written)."""
    rest = subject[len(SUBJECT_PREFIX) :] if subject.startswith(SUBJECT_PREFIX) else ""
    container, sep, name = rest.partition("/blobs/")
    if not sep or not container or "/" in container or not name:
        raise ValidationError(
            f"expected '{SUBJECT_PREFIX}<container>/blobs/<name>', got {subject[:SHOWN]!r}", field=field_name
        )
    return container, name


def _blob_url(url: str, account: BlobAccount, container: str, name: str, field_name: str) -> str:
    """The decoded blob name ``data.url`` addresses in ``account``; it must be the subject's blob.

    Not an http(s) URL, or one addressing another blob than the subject: ValidationError.
    Another scheme, host, port or account, user info, a query or a fragment: refused.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise ValidationError(f"not a URL: {exc}", field=field_name) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"must be an http(s) blob URL, got {url[:SHOWN]!r}", field=field_name)
    if parts.username is not None or parts.password is not None:
        raise _Refused("data.url carries user info; it is not a blob URL of the configured storage account")
    if parts.query or parts.fragment:
        raise _Refused("data.url has a query or fragment; it is not a blob URL of the configured storage account")
    try:
        url_container, url_name = account.split(url)
    except NotThisAccount as exc:
        raise _Refused(f"data.url is not a blob URL of the configured storage account ({exc})") from None
    except ValueError:
        url_container, url_name = "", ""
    if url_container != container or url_name not in (name, unquote(name)):
        raise ValidationError(
            f"blob URL {url[:SHOWN]!r} does not address the subject's container {container!r} "
            f"and name {name[:SHOWN]!r}",
            field=field_name,
        )
    return url_name


def _blob_from(envelope: _Envelope, where: str, account: BlobAccount) -> BlobEvent:
    """Our BlobCreated reading of an envelope: ValidationError (malformed) or _Refused."""
    data = envelope.data
    if data is _BINARY:
        raise ValidationError("binary data is not supported for BlobCreated; expected JSON data", field=f"{where}data")
    if not isinstance(data, Mapping):
        raise ValidationError("must be a JSON object with the blob's url, eTag and contentLength", field=f"{where}data")
    dw = f"{where}data."
    url = _str(data, "url", dw)
    etag = _str(data, "eTag", dw)
    assert url is not None and etag is not None
    if len(etag) > MAX_ETAG:
        raise ValidationError(f"longer than {MAX_ETAG} characters", field=f"{dw}eTag")
    size = data.get("contentLength")
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValidationError(
            "is required and must be an integer number of bytes" if size is None else "must be an integer",
            field=f"{dw}contentLength",
        )
    if size < 0:
        raise ValidationError("must not be negative", field=f"{dw}contentLength")
    content_type = _str(data, "contentType", dw, required=False, empty_ok=True)
    api = _str(data, "api", dw, required=False, empty_ok=True)
    if not envelope.subject:
        raise ValidationError("is required for a BlobCreated event", field=f"{where}subject")
    container, subject_name = split_subject(envelope.subject, f"{where}subject")
    if not is_container_name(container):
        raise _Refused("the subject's container is not a storage container name")
    problem = name_problem(subject_name)
    if problem is not None:
        raise _Refused(f"blob name {problem}")
    name = _blob_url(url, account, container, subject_name, f"{dw}url")
    return BlobEvent(
        url=url,
        container=container,
        name=name,
        etag=etag,
        size=size,
        content_type=content_type or None,
        event_id=envelope.event_id,
        event_time=envelope.event_time,
        api=api or None,
    )


# ---------------------------------------------------------------- one event, either schema


@dataclass
class _Parsed:
    kind: Literal["blob", "validation", "ignored"]
    blob: BlobEvent | None = None
    ignored: Ignored | None = None
    code: str | None = None
    url: str | None = None


def _parse_event(ev: Any, where: str, account: BlobAccount, *, cloud: bool) -> _Parsed:
    if not isinstance(ev, Mapping):
        raise ValidationError("each event must be a JSON object", field=where.rstrip(".") or "body")
    envelope = _cloud_envelope(ev, where) if cloud else _eventgrid_envelope(ev, where)
    if envelope.event_type == SUBSCRIPTION_VALIDATION:  # CloudEvents delivery never sends it; tolerated
        data = envelope.data
        if not isinstance(data, Mapping):
            raise ValidationError("must be a JSON object with validationCode", field=f"{where}data")
        return _Parsed(
            "validation",
            code=_str(data, "validationCode", f"{where}data."),
            url=_str(data, "validationUrl", f"{where}data.", required=False),
        )
    subject = _shown(envelope.subject or "")
    if envelope.event_type != BLOB_CREATED:
        reason = f"event type {envelope.event_type[:100]!r} starts nothing"
        return _Parsed("ignored", ignored=Ignored(envelope.event_id, envelope.event_type, subject, reason))
    try:
        return _Parsed("blob", blob=_blob_from(envelope, where, account))
    except _Refused as refusal:
        return _Parsed(
            "ignored", ignored=Ignored(envelope.event_id, envelope.event_type, subject, str(refusal), refused=True)
        )


def _collect(items: Iterable[Any], account: BlobAccount, *, cloud: bool | None, schema: Schema) -> Delivery:
    """Parse every item (``cloud`` None: each by its own shape); a validation event wins."""
    events: list[BlobEvent] = []
    ignored: list[Ignored] = []
    validation: _Parsed | None = None
    count = 0
    for i, ev in enumerate(items):
        count += 1
        parsed = _parse_event(ev, f"[{i}].", account, cloud=_is_cloudevent(ev) if cloud is None else cloud)
        if parsed.kind == "validation":
            validation = validation or parsed
        elif parsed.blob is not None:
            events.append(parsed.blob)
        elif parsed.ignored is not None:
            ignored.append(parsed.ignored)
    if count == 0:
        raise ValidationError("expected at least one event", field="body")
    if validation is not None:
        return Delivery(
            kind="validation", validation_code=validation.code, validation_url=validation.url, schema=schema
        )
    return Delivery(kind="events", events=events, ignored=ignored, schema=schema)


# ---------------------------------------------------------------- public API


def parse_events(items: Iterable[Any], *, account: BlobAccount) -> Delivery:
    """Already-decoded event objects (either schema, each by its shape) -> a Delivery.

    This is the Functions trigger's path (one event per invocation, see
    :func:`envelope_of_binding`); a validation event, which the runtime answers itself,
    makes a ``validation`` Delivery that starts nothing.
    """
    items = list(items)
    schema: Schema = "cloudevents" if items and all(_is_cloudevent(e) for e in items) else "eventgrid"
    return _collect(items, account, cloud=None, schema=schema)


def parse_delivery(
    body: bytes | bytearray | str, headers: Mapping[str, str] | None = None, *, account: BlobAccount
) -> Delivery:
    """Parse one webhook POST from Event Grid (either schema). See the module docstring."""
    h = _lower_headers(headers)
    content_type = h.get("content-type", "").split(";")[0].strip().lower()
    aeg_type = h.get("aeg-event-type", "").strip()
    doc = safejson.loads(body, field="body")

    cloud: bool | None = True  # None: each event by its own shape
    if content_type == CLOUDEVENTS_BATCH:
        if not isinstance(doc, list):
            raise ValidationError("a CloudEvents batch must be a JSON array", field="body")
        items = doc
    elif content_type == CLOUDEVENTS_JSON:
        if not isinstance(doc, Mapping):
            raise ValidationError("a structured CloudEvent must be a JSON object", field="body")
        items = [doc]
    elif isinstance(doc, list | Mapping):
        # One event not wrapped in an array is accepted for either schema.
        items = doc if isinstance(doc, list) else [doc]
        if not (items and all(_is_cloudevent(e) for e in items)):
            cloud = None
    else:
        raise ValidationError("expected a JSON array of events or a CloudEvent object", field="body")
    delivery = _collect(items, account, cloud=cloud, schema="cloudevents" if cloud else "eventgrid")
    if delivery.kind != "validation" and aeg_type.lower() == "subscriptionvalidation":
        raise ValidationError(
            f"header says SubscriptionValidation but no {SUBSCRIPTION_VALIDATION} event is in the body",
            field="[0].eventType",
        )
    return delivery


def envelope_of_binding(event: Any) -> dict[str, Any]:
    """The JSON object a Functions Event Grid binding was decoded from, for :func:`parse_events`.

    ``event`` is the ``func.EventGridEvent`` (Event Grid schema) or ``func.CloudEvent``
    (CloudEvents 1.0) the runtime hands the trigger; attributes it lacks are left out, so the
    parser names them as missing.
    """

    def when(value: Any) -> Any:
        if not isinstance(value, datetime):
            return value
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()

    if hasattr(event, "specversion"):
        raw: dict[str, Any] = dict(getattr(event, "extension_attrs", None) or {})
        raw.update(
            specversion=event.specversion,
            id=event.id,
            source=event.source,
            type=event.type,
            subject=event.subject,
            time=when(event.time),
            datacontenttype=event.datacontenttype,
            dataschema=event.dataschema,
            data=event.get_json(),
        )
    else:
        raw = {
            "id": event.id,
            "topic": event.topic,
            "subject": event.subject,
            "eventType": event.event_type,
            "eventTime": when(event.event_time),
            "data": event.get_json(),
            "dataVersion": event.data_version,
        }
    return {k: v for k, v in raw.items() if v is not None}


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
