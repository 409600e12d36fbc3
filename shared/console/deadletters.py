"""Dead-lettered work messages for the console (the default ``dead_letters`` source), read-only.

The local work queue (``shared.queue.storage_queue``) keeps ``<queue>-poison`` entries of
``{"reason", "description", "message", "message_id", "dequeue_count", "dead_lettered_at"}``;
``peek_poison`` reads the oldest 32 without taking them. A queue adapter without such a
read (Service Bus until ``dlq list`` lands) answers a clear PermanentError, which the page shows.
"""

from __future__ import annotations

import json
from typing import Any

from shared.console.base import DeadLetter
from shared.errors import PermanentError


def queue_dead_letters(queue: Any) -> list[DeadLetter]:
    peek = getattr(queue, "peek_poison", None)
    if not callable(peek):
        raise PermanentError(
            f"{type(queue).__name__} has no dead-letter listing yet (see `conveyor dlq list`)", service="queue"
        )
    return [dead_letter_of(entry) for entry in peek()]


def dead_letter_of(entry: dict[str, Any]) -> DeadLetter:
    """One poison-queue entry as a DeadLetter; whatever is missing or odd stays visible as text."""
    message = entry.get("message")
    doc = message if isinstance(message, dict) else {}
    count = entry.get("dequeue_count")
    return DeadLetter(
        message_id=str(entry.get("message_id") or doc.get("message_id") or ""),
        reason=str(entry.get("reason") or ""),
        description=str(entry.get("description") or ""),
        run_id=str(doc["run_id"]) if doc.get("run_id") else None,
        kind=str(doc["kind"]) if doc.get("kind") else None,
        dead_lettered_at=str(entry["dead_lettered_at"]) if entry.get("dead_lettered_at") else None,
        delivery_count=count if isinstance(count, int) else None,
        body=message if isinstance(message, str) else json.dumps(message, indent=2, default=str, sort_keys=True),
    )
