"""WorkQueue on Azure Storage Queues (Azurite locally): the local host's work queue.

Messages are ``Message.model_dump_json()`` text with the SDK's default (no) encoding policy,
for both send and receive. Delays use the initial visibility timeout. Storage queues have
no dead-letter queue, so this adapter keeps one: ``<queue>-poison`` receives
``{"reason", "description", "message", ...}`` JSON for messages whose handler failed
``max_delivery_count`` times (``MaxDeliveryCountExceeded``), messages that do not parse
(``InvalidMessage``) and explicit ``dead_letter`` calls.

Failures, not deliveries, count towards the poison queue. The service's dequeue count also
goes up when a handler's host dies and the message simply becomes visible again, so a few
kills would poison messages that never failed. Instead ``abandon`` (the handler raised)
rewrites the message in place (``update_message``) with ``handler_failures`` + 1 and the
error (``handler_error``) next to the message's own fields, and hides it for a backoff
(``abandon_backoff``); ``receive`` reads the count back. A message that is delivered
``LOST_DELIVERY_FACTOR`` x ``max_delivery_count`` times without ever completing or failing
(its handler kills the host every time) is poisoned too.

``dead_letters`` and ``replay_dead_letters`` read the poison queue by receiving its entries
(a peek shows at most 32), each hidden for the scan (``SCAN_VISIBILITY``) and made visible
again at once unless it was replayed: the original message is sent to the work queue with
its message id, and only then is the poison entry deleted.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from shared import safejson
from shared.azure_errors import map_azure_error
from shared.engine.model import Message
from shared.errors import ConveyorError, ValidationError
from shared.queue.base import DeadLetter, Received, ReplayReport, WorkQueue, parse_dead_body, wanted
from shared.transport import transport_kwargs

if TYPE_CHECKING:
    from azure.storage.queue import QueueClient, QueueMessage

    from shared.settings import Settings

SERVICE = "queue"
POISON_SUFFIX = "-poison"
MAX_DELAY_SECONDS = 7 * 24 * 3600  # the service's visibility timeout limit
MAX_BATCH = 32  # messages per receive call (service limit)
LOST_DELIVERY_FACTOR = 4  # deliveries lost to dead hosts tolerated, as a multiple of max_delivery_count
FAILURES_FIELD = "handler_failures"  # kept in the body next to the message (read back by receive)
ERROR_FIELD = "handler_error"
_MAX_ERROR = 300

SCAN_VISIBILITY = 120  # seconds a poison entry stays hidden while a list/replay scans the queue
MAX_SCAN = 5000  # poison entries one list/replay looks at
_QUEUE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def poison_name(queue_name: str) -> str:
    return queue_name + POISON_SUFFIX


class StorageQueueWorkQueue(WorkQueue):
    def __init__(
        self,
        connection_string: str,
        queue_name: str,
        max_delivery_count: int = 5,
        client: QueueClient | None = None,
        poison_client: QueueClient | None = None,
    ) -> None:
        poison = poison_name(queue_name)
        if not _QUEUE_RE.match(queue_name) or len(poison) > 63:
            raise ValidationError(
                f"queue name {queue_name!r} must be 3-{63 - len(POISON_SUFFIX)} lowercase letters, digits "
                "and single hyphens, starting and ending with a letter or digit",
                field="CONVEYOR_QUEUE_NAME",
            )
        if max_delivery_count < 1:
            raise ValidationError("must be at least 1", field="CONVEYOR_MAX_DELIVERY_COUNT")
        from azure.storage.queue import QueueClient

        if client is None:
            client = QueueClient.from_connection_string(connection_string, queue_name, **transport_kwargs())
        if poison_client is None:
            poison_client = QueueClient.from_connection_string(connection_string, poison, **transport_kwargs())
        self.queue_name = queue_name
        self.poison_queue_name = poison
        self.max_delivery_count = max_delivery_count
        self._client = client
        self._poison = poison_client
        self._ready = False
        self._poison_ready = False
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
    ) -> StorageQueueWorkQueue:
        """Identity-based (``QueueClient(account_url, queue, credential)``) when the settings give a
        queue service URI / account name and no connection string; else the connection string
        (Azurite locally). ``client_kwargs`` go to the SDK clients (retry, transport options)."""
        from azure.storage.queue import QueueClient

        from shared.azure_identity import storage_clients

        make = storage_clients(
            settings, "queue", "queue", QueueClient, credential=credential, client_kwargs=client_kwargs
        )
        name = settings.queue_name
        return cls(
            "",
            name,
            settings.max_delivery_count,
            client=make(queue_name=name),
            poison_client=make(queue_name=poison_name(name)),
        )

    # -- queues are created once, lazily ---------------------------------------------------

    def _create(self, client: QueueClient) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            client.create_queue()
        except ResourceExistsError:
            pass
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def _ensure(self) -> None:
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self._create(self._client)
                    self._ready = True

    def _ensure_poison(self) -> None:
        if not self._poison_ready:
            with self._lock:
                if not self._poison_ready:
                    self._create(self._poison)
                    self._poison_ready = True

    # -- WorkQueue -------------------------------------------------------------------------

    def send(self, message: Message, delay_seconds: float = 0.0) -> None:
        self._ensure()
        body = message.with_id().model_dump_json()
        delay = min(max(0, math.ceil(delay_seconds)), MAX_DELAY_SECONDS) if delay_seconds > 0 else None
        try:
            # time_to_live=-1: a scheduled tick must never expire before it is handled
            self._client.send_message(body, visibility_timeout=delay, time_to_live=-1)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def send_many(self, messages: list[Message]) -> None:
        """Storage queues have no batch send: many messages go out on a few threads."""
        if len(messages) <= 4:
            for m in messages:
                self.send(m)
            return
        self._ensure()
        with ThreadPoolExecutor(max_workers=min(8, len(messages))) as pool:
            list(pool.map(self.send, messages))

    def receive(self, max_messages: int = 16, visibility_timeout: float = 60.0) -> list[Received]:
        self._ensure()
        count = max(1, min(int(max_messages), MAX_BATCH))
        timeout = max(1, min(math.ceil(visibility_timeout), MAX_DELAY_SECONDS))
        try:
            raw = list(
                self._client.receive_messages(messages_per_page=count, visibility_timeout=timeout, max_messages=count)
            )
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        out: list[Received] = []
        for qm in raw:
            handle = (qm.id, qm.pop_receipt or "")
            dequeues = int(qm.dequeue_count or 1)
            try:
                message, failures, last_error = _decode(qm.content)
            except (PydanticValidationError, ValueError, TypeError) as exc:
                self._to_poison(qm.content, handle, "InvalidMessage", _short(exc), dequeues)
                continue
            if failures >= self.max_delivery_count:
                why = f"its handler failed {failures} times (max {self.max_delivery_count}): {last_error}"
                self._to_poison(qm.content, handle, "MaxDeliveryCountExceeded", why, dequeues)
                continue
            if dequeues > self.max_delivery_count * LOST_DELIVERY_FACTOR:
                why = (
                    f"delivered {dequeues} times, never completed and failed {failures} times: "
                    "its handler's host died each time"
                )
                self._to_poison(qm.content, handle, "MaxDeliveryCountExceeded", why, dequeues)
                continue
            out.append(Received(message=message, dequeue_count=dequeues, handle=handle, failures=failures))
        return out

    def abandon(self, received: Received, error: str) -> None:
        """Count the handler's failure on the message itself and hide it for a backoff."""
        failures = received.failures + 1
        doc = json.loads(received.message.with_id().model_dump_json())
        body = json.dumps({**doc, FAILURES_FIELD: failures, ERROR_FIELD: error[:_MAX_ERROR]})
        message_id, pop_receipt = received.handle
        try:
            self._client.update_message(
                message_id, pop_receipt, content=body, visibility_timeout=abandon_backoff(failures)
            )
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def complete(self, received: Received) -> None:
        self._delete(received.handle)

    def dead_letter(self, received: Received, reason: str, description: str) -> None:
        self._to_poison(
            received.message.model_dump(mode="json"), received.handle, reason, description, received.dequeue_count
        )

    # -- extras for the CLI and tests ------------------------------------------------------

    def depth(self) -> int:
        """Approximate number of messages in the work queue (including scheduled ones)."""
        self._ensure()
        try:
            return int(self._client.get_queue_properties().approximate_message_count or 0)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def peek_poison(self, max_messages: int = MAX_BATCH) -> list[dict[str, Any]]:
        """Up to 32 dead-lettered entries, oldest first, without removing them."""
        self._ensure_poison()
        try:
            peeked: list[QueueMessage] = list(self._poison.peek_messages(max_messages=min(max_messages, MAX_BATCH)))
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        out: list[dict[str, Any]] = []
        for qm in peeked:
            try:
                doc = json.loads(qm.content)
            except (TypeError, ValueError):
                doc = {"reason": "Unreadable", "description": "", "message": qm.content}
            out.append(doc if isinstance(doc, dict) else {"reason": "Unreadable", "description": "", "message": doc})
        return out

    # -- dead letters (the poison queue) ---------------------------------------------------

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        taken: list[QueueMessage] = []
        try:
            for batch in self._scan_poison(max(1, min(limit, MAX_SCAN))):
                taken.extend(batch)
        finally:
            self._release(taken)
        return [self._dead_letter_of(qm) for qm in taken]

    def replay_dead_letters(self, ids: Collection[str] | None = None, flow: str | None = None) -> ReplayReport:
        report = ReplayReport()
        ids = None if ids is None else set(ids)
        seen: set[str] = set()
        held: list[QueueMessage] = []
        try:
            for batch in self._scan_poison(MAX_SCAN):
                for qm in batch:  # a whole batch is handled: each entry it hid is replayed or released
                    entry = self._dead_letter_of(qm)
                    if not wanted(entry, ids, flow) or (ids is not None and ids <= seen):
                        held.append(qm)
                        continue
                    seen.update((entry.id, entry.message_id))
                    why = self._replay_one(qm, entry)
                    if why is None:
                        report.replayed.append(entry)
                    else:
                        report.kept.append((entry, why))
                        held.append(qm)
                if ids is not None and ids <= seen:
                    break
        finally:
            self._release(held)
        if ids is not None:
            report.missing = sorted(ids - seen)
        return report

    def _replay_one(self, qm: QueueMessage, entry: DeadLetter) -> str | None:
        """Send the original, then delete the poison entry; the reason it was kept, or None."""
        if entry.message is None:
            return "not a Conveyor message: nothing to replay"
        try:
            self.send(entry.message)  # with_id() keeps the message id it was sent with
        except ConveyorError as exc:
            return f"send failed, kept: {exc}"
        self._delete_poison(qm)
        return None

    def _scan_poison(self, limit: int) -> Iterator[list[QueueMessage]]:
        """Every poison entry once (up to ``limit``), in batches, each hidden while the scan runs."""
        self._ensure_poison()
        count = 0
        while count < limit:
            n = min(MAX_BATCH, limit - count)
            try:
                batch = list(
                    self._poison.receive_messages(
                        messages_per_page=n, max_messages=n, visibility_timeout=SCAN_VISIBILITY
                    )
                )
            except Exception as exc:
                raise map_azure_error(exc, SERVICE) from exc
            if not batch:
                return
            count += len(batch)
            yield batch

    def _dead_letter_of(self, qm: QueueMessage) -> DeadLetter:
        text = qm.content if isinstance(qm.content, str) else str(qm.content)
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {"reason": "Unreadable", "description": "the poison entry is not JSON", "message": text}
        original = doc.get("message")
        body = original if isinstance(original, str) else json.dumps(original, default=str)
        message = parse_dead_body(body)
        when = None
        with contextlib.suppress(TypeError, ValueError):
            when = datetime.fromisoformat(str(doc.get("dead_lettered_at")))
        return DeadLetter(
            id=str(qm.id),
            message_id=message.message_id
            if message is not None and message.message_id
            else str(doc.get("message_id") or ""),
            reason=str(doc.get("reason") or ""),
            description=str(doc.get("description") or ""),
            delivery_count=int(doc.get("dequeue_count") or 0),
            body=body,
            dead_lettered_at=when,
            message=message,
        )

    def _delete_poison(self, qm: QueueMessage) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._poison.delete_message(qm.id, pop_receipt=qm.pop_receipt)
        except ResourceNotFoundError:
            pass
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def _release(self, messages: list[QueueMessage]) -> None:
        """Make entries a scan hid visible again now (best effort: they reappear after the scan anyway)."""
        for qm in messages:
            try:
                self._poison.update_message(qm.id, qm.pop_receipt, visibility_timeout=0)
            except Exception:  # noqa: S112 - visible again after SCAN_VISIBILITY regardless
                continue

    # -- internals -------------------------------------------------------------------------

    def _delete(self, handle: tuple[str, str]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        message_id, pop_receipt = handle
        try:
            self._client.delete_message(message_id, pop_receipt=pop_receipt)
        except ResourceNotFoundError:
            pass  # already gone (completed twice): completing is idempotent
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def _to_poison(
        self, message: Any, handle: tuple[str, str], reason: str, description: str, dequeue_count: int
    ) -> None:
        if isinstance(message, str):
            with contextlib.suppress(ValueError):  # else keep the raw text
                message = json.loads(message)
        if isinstance(message, dict):  # the original message: our failure count stays out of it
            message = {k: v for k, v in message.items() if k not in (FAILURES_FIELD, ERROR_FIELD)}
        entry = {
            "reason": reason,
            "description": description,
            "message": message,
            "queue": self.queue_name,
            "message_id": handle[0],
            "dequeue_count": dequeue_count,
            "dead_lettered_at": datetime.now(UTC).isoformat(),
        }
        self._ensure_poison()
        try:
            self._poison.send_message(json.dumps(entry, default=str), time_to_live=-1)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        self._delete(handle)


def abandon_backoff(failures: int) -> int:
    """Seconds a message stays hidden after its handler's ``failures``-th failure: 1, 2, 4 ... 30."""
    return int(min(30, 2 ** max(0, failures - 1)))


def _decode(content: str | None) -> tuple[Message, int, str]:
    """(the message, its handler failures so far, the last failure's error) from a body."""
    text = content if content is not None else ""
    if FAILURES_FIELD not in text:
        return Message.model_validate_json(text), 0, ""
    try:
        data = safejson.loads(text, field="message")
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(data, dict):
        raise ValueError("a message body must be a JSON object")
    failures = data.pop(FAILURES_FIELD, 0)
    error = data.pop(ERROR_FIELD, "")
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 0:
        raise ValueError(f"{FAILURES_FIELD} must be a count")
    return Message.model_validate(data), failures, str(error)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
