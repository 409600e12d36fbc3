"""The queue consumer of the local host: what the ``orchestrator`` blueprint's trigger does.

N threads each ``receive`` a few messages, hand each to ``Executor.handle(message,
delivery_count=n)`` -- what the Functions queue trigger does through ``handle_body`` -- and
``complete`` it. An exception ``abandon``s the message: the queue counts
the handler's failure (Storage Queue: on the message; Service Bus counts deliveries) and it
comes back after a backoff; after ``max_delivery_count`` failures the queue adapter poisons it
with the last error. A message whose handler died with its host is not a failure: it comes back
after the visibility timeout, uncounted. A message that cannot be understood (malformed,
invalid) is dead-lettered at once with the reason. Idle threads back off from a short poll to a
second.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.errors import BadRequestError

if TYPE_CHECKING:
    from shared.queue.base import Received, WorkQueue
    from shared.wiring import Services

log = logging.getLogger("conveyor.worker")


class QueueWorkers:
    def __init__(
        self,
        queue: WorkQueue,
        handle: Callable[..., Any],
        *,
        count: int = 2,
        batch: int = 4,
        visibility_timeout: float = 30.0,
        max_delivery_count: int | None = None,
        idle_min: float = 0.1,
        idle_max: float = 1.0,
    ) -> None:
        self.queue = queue
        self.handle = handle
        self.count = max(1, count)
        self.batch = max(1, batch)
        self.visibility_timeout = visibility_timeout
        self.max_delivery_count = max_delivery_count
        self.idle_min = idle_min
        self.idle_max = idle_max
        self.handled = 0
        self.failed = 0
        self.dead_lettered = 0
        self._counts = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def from_services(cls, services: Services, *, count: int = 2, **kw: Any) -> QueueWorkers:
        from shared.engine.executor import Executor

        executor = Executor.from_services(services)
        kw.setdefault("max_delivery_count", services.settings.max_delivery_count)
        kw.setdefault("visibility_timeout", float(services.settings.visibility_timeout_seconds))
        return cls(services.queue, executor.handle, count=count, **kw)

    # ------------------------------------------------------------ one message
    def process(self, received: Received) -> str:
        """Handle one received message; returns what became of it (completed/dead/left)."""
        from shared.engine.model import Message

        msg = received.message
        if not isinstance(msg, Message):
            return self._dead(received, "MalformedMessage", f"not a Conveyor message: {str(msg)[:200]!r}")
        if self.max_delivery_count and received.failures >= self.max_delivery_count:
            return self._dead(
                received, "MaxDeliveryCountExceeded", f"its handler failed {received.failures} times without success"
            )
        try:
            self.handle(msg, delivery_count=received.dequeue_count)
        except BadRequestError as exc:  # includes ValidationError: redelivery cannot fix it
            return self._dead(received, "InvalidMessage", str(exc))
        except Exception as exc:
            with self._counts:
                self.failed += 1
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "worker: %s for run %s failed (delivery %d, failure %d), left for redelivery: %s",
                msg.kind,
                msg.run_id,
                received.dequeue_count,
                received.failures + 1,
                error,
            )
            try:
                self.queue.abandon(received, error)
            except Exception as abandon_exc:  # it comes back after the visibility timeout anyway
                log.warning("worker: abandoning the message failed: %s", abandon_exc)
            return "left"
        self.queue.complete(received)
        with self._counts:
            self.handled += 1
        return "completed"

    def _dead(self, received: Received, reason: str, description: str) -> str:
        log.warning("worker: dead-lettering message (%s): %s", reason, description)
        try:
            self.queue.dead_letter(received, reason, description)
        except Exception:
            log.exception("worker: dead-lettering failed; the message will come back")
            return "left"
        with self._counts:
            self.dead_lettered += 1
        return "dead"

    def process_available(self) -> int:
        """Receive once and handle what came; returns how many messages were received."""
        batch = self.queue.receive(max_messages=self.batch, visibility_timeout=self.visibility_timeout)
        for received in batch:
            if self._stop.is_set():
                break  # not completed: it comes back after the visibility timeout
            self.process(received)
        return len(batch)

    # ------------------------------------------------------------ threads
    def start(self) -> QueueWorkers:
        if self._threads:
            return self
        self._stop.clear()
        for i in range(self.count):
            t = threading.Thread(target=self._loop, name=f"conveyor-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self) -> None:
        idle = self.idle_min
        while not self._stop.is_set():
            try:
                got = self.process_available()
            except Exception as exc:  # storage down for a moment: back off and try again
                log.warning("worker: receive failed: %s: %s", type(exc).__name__, exc)
                got = 0
                idle = self.idle_max
            if got:
                idle = self.idle_min
                continue
            self._stop.wait(idle)
            idle = min(self.idle_max, idle * 2)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []
