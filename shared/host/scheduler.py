"""Timer triggers for the local host: fire due schedules and sweep stuck pending runs.

In Azure the ``schedules`` blueprint's timer calls ``IngestService.fire_schedules(now)`` and
the sweeper; locally this thread does the same every few seconds. Both are idempotent (a
schedule's run id is a hash of flow + fire time), so firing twice starts nothing new.
The daily retention purge (``CONVEYOR_RETENTION_SCHEDULE``, the ``retention`` timer in
Azure) runs here too, first at the schedule's next fire after the host started, and so does
a delivery pass over the lifecycle-event outbox with each sweep (the ``lifecycle_events``
timer in Azure).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.clock import Clock, utcnow

if TYPE_CHECKING:
    from shared.wiring import Services

log = logging.getLogger("conveyor.scheduler")


class Scheduler:
    def __init__(
        self,
        services: Services,
        *,
        interval: float = 2.0,
        sweep_every: float | None = None,
        ingest: Any = None,
        clock: Clock = utcnow,
    ) -> None:
        self.services = services
        self.interval = interval
        # the stall sweep's interval (default CONVEYOR_SWEEP_INTERVAL_SECONDS); each run's own deadline decides
        self.sweep_every = sweep_every if sweep_every is not None else services.settings.sweep_interval_seconds
        self._ingest = ingest
        self.clock = clock
        self._last_sweep: float | None = None
        self._retention_fire: datetime | None = None  # the last retention fire handled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def ingest(self) -> Any:
        if self._ingest is None:
            from shared.ingest.service import IngestService

            self._ingest = IngestService.from_services(self.services)
        return self._ingest

    def fire(self, now: datetime | None = None) -> Any:
        """Fire every schedule due at ``now``; returns what the ingest service returns."""
        return self.ingest.fire_schedules(now or self.clock())

    def sweep(self, now: datetime | None = None) -> Any:
        """The stall sweep (shared.ingest.sweeper): re-send the start of pending runs and nudge
        running ones whose next message is overdue."""
        from shared.ingest.sweeper import sweep

        return sweep(self.services, now or self.clock())

    def deliver_events(self) -> Any:
        """A delivery pass over the lifecycle-event outbox (what a stopped host left, retries)."""
        events = self.services.events
        return events.deliver_due() if events is not None else None

    def retention(self, now: datetime) -> Any:
        """Purge at each fire of ``CONVEYOR_RETENTION_SCHEDULE`` (not for a fire before the start)."""
        from shared.flows.cron import Cron
        from shared.ops.retention import apply_retention

        due = Cron.parse(self.services.settings.retention_schedule).last_at_or_before(now, "UTC")
        if self._retention_fire is None or due is None or due <= self._retention_fire:
            self._retention_fire = self._retention_fire or due or now
            return None
        self._retention_fire = due
        return apply_retention(self.services, now)

    def tick(self, now: datetime | None = None) -> None:
        now = now or self.clock()
        try:
            self.fire(now)
        except Exception:
            log.exception("scheduler: firing schedules failed")
        try:
            self.retention(now)
        except Exception:
            log.exception("scheduler: the retention purge failed")
        mono = now.timestamp()
        if self._last_sweep is None or mono - self._last_sweep >= self.sweep_every:
            self._last_sweep = mono
            try:
                self.sweep(now)
            except Exception:
                log.exception("scheduler: sweeping pending runs failed")
            try:
                self.deliver_events()
            except Exception:
                log.exception("scheduler: delivering lifecycle events failed")

    def start(self) -> Scheduler:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="conveyor-scheduler", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
