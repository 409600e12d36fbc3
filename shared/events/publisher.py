"""``LifecycleEvents``: record lifecycle events in the outbox, deliver them to every sink.

The guarantee (docs/architecture.md, "Lifecycle events"): **at least once, per sink**, for
every transition whose run was saved, with the same CloudEvent ``id`` on every copy.

* Recording is the executor's ``Emit`` hook (:meth:`on_emit`), right after the run was
  saved: the events (:mod:`shared.events.lifecycle`) go into the durable outbox with the
  sinks configured now. Nothing is sent in the run's path, and nothing raises into it.
* A crash between the save and the recording loses nothing: the queue redelivers the message
  that made the decision, and the executor hands the run, as loaded, to :meth:`reconcile`,
  which re-derives the events of the run's last saved transition and adds those that are
  neither in the outbox nor delivered (tombstones).
* An outbox that cannot be written at that moment: the events wait in memory and are written
  by the next delivery pass (lost only if this process also dies before storage is back).
* Delivery (:meth:`deliver_due`): due entries are leased (one deliverer at a time), handed to
  each sink that still needs them, then finished, or retried with exponential backoff
  (1 s doubling to 5 min) for ``MAX_AGE`` (24 h), after which they are kept as expired. A
  sink's permanent refusal (400/410/413...) drops the event for that sink only.

Who delivers: a background thread of this object, woken by each recording (so a local or
Functions host delivers within moments, without waiting in the run's path), and the
periodic passes (the ``lifecycle_events`` timer in Azure, the local host's scheduler) that
pick up whatever a stopped process left.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.clock import utcnow
from shared.events import lifecycle
from shared.events.base import CloudEventJson, EventSink, Failure, Outbox, OutboxEntry

if TYPE_CHECKING:
    from shared.engine.model import Run
    from shared.settings import Settings

log = logging.getLogger("conveyor.events")

LEASE = timedelta(seconds=60)
MAX_AGE = timedelta(hours=24)
MAX_BACKOFF = 300.0
BATCH = 100
IDLE_EXIT_SECONDS = 120.0  # the background deliverer stops when idle this long (restarted on demand)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF, 2.0 ** max(0, attempts - 1)))


@dataclass
class DeliveryReport:
    delivered: int = 0  # entries every sink took
    retrying: int = 0
    expired: int = 0
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # (event id, sink, why)


class LifecycleEvents:
    def __init__(
        self,
        outbox: Outbox,
        sinks: list[EventSink],
        *,
        clock: Callable[[], datetime] = utcnow,
        background: bool = True,
    ) -> None:
        self.outbox = outbox
        self.sinks = {s.name: s for s in sinks}
        self.clock = clock
        self.background = background
        self._unsaved: list[CloudEventJson] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deliver_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> LifecycleEvents | None:
        """The sinks the settings name (None when there are none): the Event Grid topic
        (``CONVEYOR_EVENTS_TOPIC_ENDPOINT``), each webhook (``CONVEYOR_EVENTS_WEBHOOKS``) and,
        in local mode, the event log under the data home."""
        from shared.errors import ValidationError
        from shared.events.outbox_table import TableOutbox

        sinks: list[EventSink] = []
        # A misconfigured sink is logged and left out: publishing must never stop the runs.
        if settings.events_topic_endpoint:
            from shared.events.eventgrid_topic import EventGridTopicSink

            try:
                sinks.append(EventGridTopicSink.from_settings(settings))
            except ValidationError as exc:
                log.error("lifecycle events: no Event Grid topic: %s", exc)
        if settings.events_webhooks:
            from shared.events.webhooks import WebhookSink, default_origin

            origin = default_origin(settings.website_hostname)
            for url in settings.events_webhooks:
                try:
                    sinks.append(WebhookSink(url, origin))
                except ValidationError as exc:
                    log.error("lifecycle events: webhook left out: %s", exc)
        if settings.mode == "local":
            from shared.events.log import EventLogSink

            sinks.append(EventLogSink(settings.home))
        if not sinks:
            return None
        return cls(TableOutbox.from_settings(settings), sinks, **kwargs)

    # -- recording (the engine's side: never raises, never waits on a subscriber) -----------

    def on_emit(self, run: Run, name: str, attributes: dict[str, Any]) -> None:
        try:
            events = lifecycle.from_emit(run, name, attributes)
        except Exception:
            log.exception("lifecycle events for %s of run %s not derived", name, run.run_id)
            return
        if events:
            self._record(events, skip_delivered=False)

    def reconcile(self, run: Run) -> None:
        """The events of ``run``'s last saved transition, unless kept or delivered already."""
        try:
            events = lifecycle.last_transition(run)
        except Exception:
            log.exception("lifecycle events of run %s not re-derived", run.run_id)
            return
        if events:
            self._record(events, skip_delivered=True)

    def _record(self, events: list[CloudEventJson], *, skip_delivered: bool) -> None:
        try:
            self.outbox.add(events, list(self.sinks), self.clock(), skip_delivered=skip_delivered)
        except Exception as exc:
            log.warning("outbox unavailable (%s): %d lifecycle events held in memory", exc, len(events))
            with self._lock:
                self._unsaved.extend(events)
        try:
            self._kick()
        except Exception:  # e.g. no thread can be started: the periodic passes deliver them
            log.warning("lifecycle event deliverer not started", exc_info=True)

    def _flush_unsaved(self) -> None:
        with self._lock:
            held, self._unsaved = self._unsaved, []
        if not held:
            return
        try:
            self.outbox.add(held, list(self.sinks), self.clock(), skip_delivered=True)
        except Exception:
            with self._lock:
                self._unsaved[:0] = held
            raise

    # -- delivering ------------------------------------------------------------------------

    def deliver_due(self, limit: int = BATCH) -> DeliveryReport:
        """One pass: lease the due entries, deliver them to the sinks they still need."""
        with self._deliver_lock:
            self._flush_unsaved()
            now = self.clock()
            report = DeliveryReport()
            claimed = [c for e in self.outbox.due(now, limit) if (c := self.outbox.claim(e, now + LEASE)) is not None]
            if not claimed:
                return report
            failures: dict[str, dict[str, Failure]] = {}
            for name, sink in self.sinks.items():
                wanted = [e.event for e in claimed if name in e.pending]
                if not wanted:
                    continue
                try:
                    failures[name] = sink.deliver(wanted)
                except Exception as exc:  # a sink must not raise; if it does, everything retries
                    log.exception("%s raised while delivering", sink.describe())
                    failures[name] = {str(e["id"]): Failure(f"{sink.describe()}: {exc}") for e in wanted}
            for entry in claimed:
                self._settle(entry, failures, report)
            return report

    def _settle(self, entry: OutboxEntry, failures: dict[str, dict[str, Failure]], report: DeliveryReport) -> None:
        remaining: list[str] = []
        errors: list[str] = []
        for name in entry.pending:
            if name not in self.sinks:
                report.dropped.append((entry.id, name, "no longer configured"))
                continue
            failure = failures.get(name, {}).get(entry.id)
            if failure is None:
                continue
            if not failure.retryable:
                report.dropped.append((entry.id, name, failure.error))
                continue
            remaining.append(name)
            errors.append(failure.error)
        now = self.clock()
        if not remaining:
            self.outbox.done(entry)
            report.delivered += 1
        elif now - entry.first_at >= MAX_AGE:
            log.error("lifecycle event %s (%s) expired undelivered: %s", entry.id, entry.event.get("type"), errors[0])
            self.outbox.expire(entry, "; ".join(errors))
            report.expired += 1
        else:
            self.outbox.retry(entry, remaining, now + backoff(entry.attempts + 1), "; ".join(errors))
            report.retrying += 1

    # -- the background deliverer ----------------------------------------------------------

    def _kick(self) -> None:
        if not self.background:
            return
        self._wake.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="conveyor-events", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        idle = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                report = self.deliver_due()
            except Exception:
                log.warning("lifecycle event delivery pass failed; trying again", exc_info=True)
                report = DeliveryReport(retrying=1)
            busy = report.delivered or report.retrying or report.expired
            wait = 1.0 if report.retrying else 5.0
            if self._wake.wait(wait) or busy:
                idle = 0.0
                continue
            idle += wait
            if idle >= IDLE_EXIT_SECONDS:
                with self._lock:
                    if not self._wake.is_set():
                        self._thread = None
                        return

    def close(self, timeout: float = 10.0) -> None:
        """Stop the background deliverer (what it has not delivered stays in the outbox)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None
