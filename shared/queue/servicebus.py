"""WorkQueue on Azure Service Bus: the work queue in Azure mode.

Sending (ingest, engine): each ``Message`` becomes one ``ServiceBusMessage`` whose body is
``Message.model_dump_json()`` (the same text the Storage Queue adapter uses), with

* ``message_id`` = ``Message.with_id().message_id``: the run id for ``start``, the tick key
  ``run:step:attempt:tick`` for ``tick`` — the queue has duplicate detection on, so a
  second start of the same run, or the same tick scheduled twice, collapses on the broker;
* ``content_type`` ``application/json``, ``subject`` = the message kind, and
  ``application_properties`` ``traceparent`` / ``run_id`` / ``kind`` (one trace across hops);
* ``scheduled_enqueue_time_utc`` = now + delay for ticks and backoff.

One sender per instance, opened on first use and shared by threads under a lock (SDK
senders are not thread-safe). ``send_many`` packs messages into ``ServiceBusMessageBatch``es
and starts a new batch whenever one is full.

Receiving is for a local consumer only (on Functions the trigger receives): a PEEK_LOCK
receiver, ``complete`` and ``dead_letter(reason, description)``. Service Bus itself
dead-letters messages delivered more than the queue's MaxDeliveryCount (infra: 10); this
adapter also dead-letters bodies that are not a valid ``Message`` (``InvalidMessage``) and
deliveries beyond ``max_delivery_count`` (``MaxDeliveryCountExceeded``), like the Storage
Queue adapter. The lock duration is a property of the queue (infra: PT1M), so
``visibility_timeout`` is not used here.

Delivery count semantics: Service Bus counts *deliveries* (``delivery_count``), and a lock that
expires because the handler's host died counts like an abandon after a failure; the broker
keeps no per-message failure count we could raise instead (the Storage Queue adapter rewrites
its message with one: a Service Bus message cannot be changed in place). So here a host lost
mid-message does count towards MaxDeliveryCount, which is why the template allows 10 deliveries
(and sets ``CONVEYOR_MAX_DELIVERY_COUNT`` to the same), and why a run whose message is
dead-lettered anyway is not stuck: the stalled-run sweep nudges it once its next message is
overdue (``Executor.resume_stalled``). ``Received.failures`` is ``delivery_count - 1`` here,
and ``abandon`` leaves the message to its lock's expiry (the Functions trigger abandons it).

Dead letters: ``dead_letters`` peeks the queue's dead-letter sub-queue (nothing is locked or
moved; reason, description, delivery count, and the run from the body). ``replay_dead_letters``
receives from the sub-queue in PEEK_LOCK, sends a copy of each chosen message to the queue (same
body, message id, subject, content type and application properties), completes the dead-letter
copy only after that send succeeded, and abandons every message it did not replay. A message
first enqueued less than the queue's duplicate-detection window ago (infra:
``duplicateDetectionHistoryTimeWindow``, PT1H; ``duplicate_window``) is kept: the broker would
silently drop a copy with the same message id, and removing the dead letter would lose it.

SDK exceptions are mapped into shared.errors with the service's own message (see
``map_servicebus_error``). ``azure.servicebus`` is imported lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from shared.azure_errors import ErrorRule, first_rule, map_azure_error
from shared.engine.model import Message
from shared.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    ThrottledError,
    TransientError,
    ValidationError,
)
from shared.queue.base import DeadLetter, Received, ReplayReport, WorkQueue, parse_dead_body, wanted

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusClient, ServiceBusMessage, ServiceBusReceiver, ServiceBusSender

    from shared.settings import Settings

SERVICE = "servicebus"
MESSAGE_ID_MAX = 128  # Service Bus limit on MessageId
MAX_RECEIVE = 256
_DEAD_LETTER_TEXT_MAX = 1024
_QUEUE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._\-/]{0,258}[A-Za-z0-9_])?$")
_MAX_DETAIL = 500
DUPLICATE_WINDOW = timedelta(hours=1)  # infra/main.bicep duplicateDetectionHistoryTimeWindow (PT1H)
_PEEK_PAGE = 250
_REPLAY_PAGE = 50
_MAX_REPLAY_SCAN = 5000


def service_bus_message_id(message: Message) -> str:
    """The duplicate-detection id: ``message.with_id().message_id``, hashed if over 128 chars."""
    mid = message.with_id().message_id
    if len(mid) > MESSAGE_ID_MAX:
        mid = hashlib.sha256(mid.encode("utf-8")).hexdigest()
    return mid


def _detail(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc or "").strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:_MAX_DETAIL]


def map_servicebus_error(exc: BaseException) -> ConveyorError:
    """The Conveyor error for an ``azure.servicebus`` exception, keeping the service's message.

    ServerBusy / QuotaExceeded → ThrottledError; OperationTimeout, connection/communication
    errors and lost locks → TransientError; MessageSizeExceeded → BadRequestError;
    authentication/authorization → AuthError; entity or message not found → NotFoundError;
    already settled → ConflictError; other Service Bus errors by the SDK's own ``retryable``
    flag; azure-core errors (e.g. a failing credential) through ``map_azure_error``.
    """
    if isinstance(exc, ConveyorError):
        return exc
    from azure.servicebus import exceptions as sb

    detail = f"{type(exc).__name__}: {_detail(exc)}"
    rules: list[ErrorRule] = [
        (sb.ServiceBusServerBusyError | sb.ServiceBusQuotaExceededError, ThrottledError, None),
        (
            sb.OperationTimeoutError
            | sb.ServiceBusConnectionError
            | sb.ServiceBusCommunicationError
            | sb.MessageLockLostError
            | sb.SessionLockLostError,
            TransientError,
            None,
        ),
        (sb.MessageSizeExceededError, BadRequestError, 413),
        (sb.ServiceBusAuthenticationError, AuthError, 401),
        (sb.ServiceBusAuthorizationError, AuthError, 403),
        (sb.MessagingEntityNotFoundError | sb.MessageNotFoundError, NotFoundError, 404),
        (sb.MessageAlreadySettled | sb.MessagingEntityAlreadyExistsError, ConflictError, 409),
        (sb.MessagingEntityDisabledError, PermanentError, None),
    ]
    mapped = first_rule(exc, rules, detail, SERVICE)
    if mapped is not None:
        return mapped
    if isinstance(exc, sb.ServiceBusError):
        if getattr(exc, "_retryable", False):
            return TransientError(detail, service=SERVICE)
        return PermanentError(detail, service=SERVICE)
    return map_azure_error(exc, SERVICE)


def _namespace(value: str) -> str:
    """``sb://ns.servicebus.windows.net/`` or ``ns.servicebus.windows.net`` → the bare host."""
    host = value.strip()
    for prefix in ("sb://", "amqps://", "https://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix) :]
    return host.strip("/")


class ServiceBusWorkQueue(WorkQueue):
    def __init__(
        self,
        client: ServiceBusClient,
        queue_name: str,
        max_delivery_count: int = 10,
        *,
        receive_wait_seconds: float = 1.0,
        clock: Callable[[], datetime] | None = None,
        duplicate_window: timedelta = DUPLICATE_WINDOW,
    ) -> None:
        if not isinstance(queue_name, str) or not _QUEUE_RE.match(queue_name):
            raise ValidationError(
                f"queue name {queue_name!r} must be 1-260 letters, digits, '.', '-', '_' or '/', "
                "starting with a letter or digit",
                field="CONVEYOR_QUEUE_NAME",
            )
        if max_delivery_count < 1:
            raise ValidationError("must be at least 1", field="CONVEYOR_MAX_DELIVERY_COUNT")
        self.queue_name = queue_name
        self.max_delivery_count = max_delivery_count
        self.receive_wait_seconds = receive_wait_seconds
        self.duplicate_window = duplicate_window
        self._client = client
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sender: ServiceBusSender | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._send_lock = threading.RLock()
        self._receive_lock = threading.RLock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        client: ServiceBusClient | None = None,
        *,
        credential: Any = None,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> ServiceBusWorkQueue:
        """Identity-based (``ServiceBusConnection__fullyQualifiedNamespace`` + the app's
        credential) when the namespace is set, else ``ServiceBusConnection`` as a connection
        string; neither → ValidationError naming the namespace setting. ``client_kwargs``
        go to the ``ServiceBusClient`` (``retry_total``, ``retry_backoff_factor``...)."""
        if client is None:
            client = build_client(settings, credential=credential, client_kwargs=client_kwargs)
        return cls(client, settings.queue_name, settings.max_delivery_count)

    # -- the one sender / receiver ---------------------------------------------------------

    def _get_sender(self) -> ServiceBusSender:
        with self._send_lock:
            if self._sender is None:
                try:
                    self._sender = self._client.get_queue_sender(self.queue_name)
                except Exception as exc:
                    raise map_servicebus_error(exc) from exc
            return self._sender

    def _drop_sender(self) -> None:
        """After a connection-level failure: close the sender so the next send opens a fresh one."""
        with self._send_lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            with contextlib.suppress(Exception):  # closing a broken link may fail too
                sender.close()

    def _get_receiver(self) -> ServiceBusReceiver:
        with self._receive_lock:
            if self._receiver is None:
                from azure.servicebus import ServiceBusReceiveMode

                try:
                    self._receiver = self._client.get_queue_receiver(
                        self.queue_name, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
                    )
                except Exception as exc:
                    raise map_servicebus_error(exc) from exc
            return self._receiver

    def _failed(self, exc: BaseException) -> ConveyorError:
        error = map_servicebus_error(exc)
        from azure.servicebus import exceptions as sb

        if isinstance(exc, sb.ServiceBusConnectionError | sb.ServiceBusCommunicationError):
            self._drop_sender()
        return error

    # -- building messages -----------------------------------------------------------------

    def to_service_bus_message(self, message: Message, delay_seconds: float = 0.0) -> ServiceBusMessage:
        from azure.servicebus import ServiceBusMessage

        message = message.with_id()
        properties: dict[str | bytes, Any] = {"run_id": message.run_id, "kind": message.kind}
        if message.traceparent:
            properties["traceparent"] = message.traceparent
        scheduled = self._clock() + timedelta(seconds=delay_seconds) if delay_seconds > 0 else None
        return ServiceBusMessage(
            body=message.model_dump_json(),
            message_id=service_bus_message_id(message),
            content_type="application/json",
            subject=message.kind,
            application_properties=properties,
            scheduled_enqueue_time_utc=scheduled,
        )

    # -- WorkQueue -------------------------------------------------------------------------

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        sb_message = self.to_service_bus_message(message, delay_seconds)
        with self._send_lock:
            sender = self._get_sender()
            try:
                sender.send_messages(sb_message)
            except Exception as exc:
                raise self._failed(exc) from exc

    def send_many(self, messages: list[Message]) -> None:
        """Batched: as many messages per ``ServiceBusMessageBatch`` as fit, then the next batch."""
        if not messages:
            return
        if len(messages) == 1:
            self.send(messages[0])
            return
        from azure.servicebus.exceptions import MessageSizeExceededError

        sb_messages = [self.to_service_bus_message(m) for m in messages]
        with self._send_lock:
            sender = self._get_sender()
            try:
                batch = sender.create_message_batch()
                for sb_message in sb_messages:
                    try:
                        batch.add_message(sb_message)
                    except MessageSizeExceededError:
                        if len(batch) == 0:
                            raise  # one message larger than a batch may be: permanent
                        sender.send_messages(batch)
                        batch = sender.create_message_batch()
                        batch.add_message(sb_message)
                if len(batch):
                    sender.send_messages(batch)
            except Exception as exc:
                raise self._failed(exc) from exc

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        count = max(1, min(int(max_messages), MAX_RECEIVE))
        with self._receive_lock:
            receiver = self._get_receiver()
            try:
                raw = list(receiver.receive_messages(max_message_count=count, max_wait_time=self.receive_wait_seconds))
            except Exception as exc:
                raise map_servicebus_error(exc) from exc
        out: list[Received] = []
        for sb_message in raw:
            # The SDK exposes the AMQP header's delivery-count: 0 on the first delivery.
            dequeues = int(getattr(sb_message, "delivery_count", None) or 0) + 1
            if dequeues > self.max_delivery_count:
                self._dead_letter(
                    sb_message,
                    "MaxDeliveryCountExceeded",
                    f"delivered {dequeues} times (max {self.max_delivery_count})",
                )
                continue
            try:
                message = Message.model_validate_json(_body_bytes(sb_message))
            except (PydanticValidationError, ValueError, TypeError) as exc:
                self._dead_letter(sb_message, "InvalidMessage", _detail(exc))
                continue
            out.append(Received(message=message, dequeue_count=dequeues, handle=sb_message))
        return out

    def complete(self, received: Received) -> None:
        from azure.servicebus.exceptions import MessageAlreadySettled

        with self._receive_lock:
            receiver = self._get_receiver()
            try:
                receiver.complete_message(received.handle)
            except MessageAlreadySettled:
                pass  # completing twice is harmless
            except Exception as exc:
                raise map_servicebus_error(exc) from exc

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        self._dead_letter(received.handle, reason, description)

    def _dead_letter(self, sb_message: Any, reason: str, description: str) -> None:
        with self._receive_lock:
            receiver = self._get_receiver()
            try:
                receiver.dead_letter_message(
                    sb_message,
                    reason=reason[:_DEAD_LETTER_TEXT_MAX],
                    error_description=description[:_DEAD_LETTER_TEXT_MAX],
                )
            except Exception as exc:
                raise map_servicebus_error(exc) from exc

    # -- dead letters ----------------------------------------------------------------------

    def _dead_letter_receiver(self) -> ServiceBusReceiver:
        from azure.servicebus import ServiceBusReceiveMode, ServiceBusSubQueue

        try:
            return self._client.get_queue_receiver(
                self.queue_name, sub_queue=ServiceBusSubQueue.DEAD_LETTER, receive_mode=ServiceBusReceiveMode.PEEK_LOCK
            )
        except Exception as exc:
            raise map_servicebus_error(exc) from exc

    @staticmethod
    def _dead_letter_of(sb_message: Any) -> DeadLetter:
        body = _body_bytes(sb_message).decode("utf-8", "replace")
        return DeadLetter(
            id=str(sb_message.sequence_number),
            message_id=str(sb_message.message_id or ""),
            reason=str(sb_message.dead_letter_reason or ""),
            description=str(sb_message.dead_letter_error_description or ""),
            delivery_count=int(sb_message.delivery_count or 0),
            body=body,
            enqueued_at=sb_message.enqueued_time_utc,
            message=parse_dead_body(body),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        receiver = self._dead_letter_receiver()
        found: list[DeadLetter] = []
        try:
            next_sequence: int | None = None
            while len(found) < limit:
                kwargs: dict[str, Any] = {"max_message_count": min(_PEEK_PAGE, limit - len(found))}
                if next_sequence is not None:
                    kwargs["sequence_number"] = next_sequence
                page = list(receiver.peek_messages(**kwargs))
                if not page:
                    break
                found.extend(self._dead_letter_of(m) for m in page)
                next_sequence = max(int(m.sequence_number or 0) for m in page) + 1
        except Exception as exc:
            raise map_servicebus_error(exc) from exc
        finally:
            with contextlib.suppress(Exception):
                receiver.close()
        return found

    def replay_dead_letters(self, ids: Collection[str] | None = None, flow: str | None = None) -> ReplayReport:
        report = ReplayReport()
        ids = None if ids is None else set(ids)
        seen: set[str] = set()
        scanned: set[str] = set()
        held: list[Any] = []
        receiver = self._dead_letter_receiver()
        try:
            while len(scanned) < _MAX_REPLAY_SCAN:
                try:
                    page = list(
                        receiver.receive_messages(
                            max_message_count=_REPLAY_PAGE, max_wait_time=self.receive_wait_seconds
                        )
                    )
                except Exception as exc:
                    raise map_servicebus_error(exc) from exc
                if not page:
                    break
                for sb_message in page:
                    entry = self._dead_letter_of(sb_message)
                    scanned.add(entry.id)
                    if not wanted(entry, ids, flow):
                        held.append(sb_message)
                        continue
                    seen.update((entry.id, entry.message_id))
                    why = self._replay_one(receiver, sb_message, entry)
                    if why is None:
                        report.replayed.append(entry)
                    else:
                        report.kept.append((entry, why))
                        held.append(sb_message)
                if ids is not None and ids <= seen:
                    break
        finally:
            for sb_message in held:  # back to the dead-letter queue as they were
                with contextlib.suppress(Exception):
                    receiver.abandon_message(sb_message)
            with contextlib.suppress(Exception):
                receiver.close()
        if ids is not None:
            report.missing = sorted(ids - seen)
        return report

    def _replay_one(self, receiver: Any, sb_message: Any, entry: DeadLetter) -> str | None:
        """Send the copy, then complete the dead letter; the reason it was kept, or None."""
        from azure.servicebus import ServiceBusMessage

        if entry.message is None:
            return "not a Conveyor message: nothing to replay"
        enqueued = entry.enqueued_at
        if enqueued is not None and self._clock() < enqueued + self.duplicate_window:
            until = (enqueued + self.duplicate_window).isoformat()
            return f"inside the queue's duplicate-detection window until {until}: the broker would drop the copy"
        properties = {
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else k): v
            for k, v in (sb_message.application_properties or {}).items()
        }
        copy = ServiceBusMessage(
            body=_body_bytes(sb_message),
            message_id=sb_message.message_id,
            content_type=sb_message.content_type,
            subject=sb_message.subject,
            application_properties=properties,
        )
        with self._send_lock:
            sender = self._get_sender()
            try:
                sender.send_messages(copy)
            except Exception as exc:
                return f"send failed, kept: {self._failed(exc)}"
        try:
            receiver.complete_message(sb_message)
        except Exception as exc:  # sent, not removed: a second replay would send it again (same id)
            return f"sent, but not removed from the dead-letter queue: {map_servicebus_error(exc)}"
        return None

    def close(self) -> None:
        """Close the sender, the receiver and the client (each at most once)."""
        with self._send_lock:
            sender, self._sender = self._sender, None
        with self._receive_lock:
            receiver, self._receiver = self._receiver, None
        for closable in (sender, receiver, self._client):
            if closable is not None:
                with contextlib.suppress(Exception):  # best effort on shutdown
                    closable.close()


def _body_bytes(sb_message: Any) -> bytes:
    body = sb_message.body
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytearray | memoryview):
        return bytes(body)
    return b"".join(bytes(part) for part in body)


def build_client(
    settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
) -> ServiceBusClient:
    """The ServiceBusClient the settings describe (identity first, then connection string)."""
    from azure.servicebus import ServiceBusClient

    conn = settings.azure.service_bus
    kwargs = dict(client_kwargs or {})
    if conn.fully_qualified_namespace:
        if credential is None:
            from shared.azure_identity import get_credential

            credential = get_credential(settings, conn.client_id)
        return ServiceBusClient(_namespace(conn.fully_qualified_namespace), credential, **kwargs)
    if conn.connection_string:
        try:
            return ServiceBusClient.from_connection_string(conn.connection_string, **kwargs)
        except ValueError as exc:  # never echo the connection string: it may hold a key
            raise ValidationError("is not a valid Service Bus connection string", field="ServiceBusConnection") from exc
    raise ValidationError(
        "is required for the Service Bus work queue (identity-based: <namespace>.servicebus.windows.net; "
        "or set ServiceBusConnection to a connection string)",
        field="ServiceBusConnection__fullyQualifiedNamespace",
    )
