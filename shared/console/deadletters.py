"""Dead-lettered work messages for the console: the queue port's ``dead_letters`` and replay.

Both queues list them (``WorkQueue.dead_letters``: the local poison queue, the Service Bus
dead-letter sub-queue) and replay them (``replay_dead_letters``: the original re-sent with its
message id, removed only after the send) — the same calls ``conveyor dlq`` makes. The page
shows each with its reason, description, delivery count and run; Replay is one message id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.console.base import DeadLetter
from shared.errors import ConflictError, NotFoundError

LISTED = 200  # dead letters shown on the page (oldest first, as the queue lists them)


def dead_letter_of(entry: Any) -> DeadLetter:
    """A queue's ``DeadLetter`` as the page shows it; whatever is odd stays visible as text."""
    return DeadLetter(
        message_id=str(entry.message_id or entry.id),
        reason=str(entry.reason or ""),
        description=str(entry.description or ""),
        run_id=entry.run_id,
        kind=entry.kind,
        dead_lettered_at=entry.dead_lettered_at.isoformat() if entry.dead_lettered_at else None,
        delivery_count=entry.delivery_count,
        body=str(entry.body),
    )


def queue_dead_letters(queue: Any, limit: int = LISTED) -> list[DeadLetter]:
    return [dead_letter_of(d) for d in queue.dead_letters(limit=limit)]


def queue_replay(queue: Any) -> Callable[[str], Any]:
    """Replay one dead letter by its message id; NotFoundError / ConflictError (kept, with why) otherwise."""

    def replay(message_id: str) -> Any:
        report = queue.replay_dead_letters([message_id])
        if report.missing:
            raise NotFoundError(f"no dead letter {message_id[:80]!r} (replayed already?)")
        if report.kept:
            _, why = report.kept[0]
            raise ConflictError(f"dead letter {message_id[:80]!r} was kept: {why}")
        return report

    return replay
