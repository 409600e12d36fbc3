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
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError as PydanticValidationError

from shared.azure_errors import map_azure_error
from shared.engine.model import Message
from shared.errors import ValidationError
from shared.queue.base import Received, WorkQueue
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
    data = json.loads(text)
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
