"""The stall sweep: nudge runs whose next message is overdue (both hosts run it periodically).

Every waiting run knows when its next message is due (``Run.due_at``: the tick it waits on,
the launch in flight; a pending run's start). A message taken by a handler that died comes back
after the queue's visibility timeout, so a run whose deadline lies more than that timeout plus
a margin (``grace``) in the past has lost its message for good (a crash between create and
send, a message dead-lettered, a send that failed): ``shared.engine.decide.overdue``.

* pending runs: their ``start`` is sent again (message id = run id; the engine ignores a start
  for a run already past pending) and the run's deadline moves on (``resent_due``: as long again
  as it has waited in all), so a start stuck behind a backlog is re-sent at growing intervals, not at
  every sweep. A blob run's first deadline is after its ``settle_seconds``.
* running runs: ``Executor.resume_stalled`` hands them a redelivered-style start, which
  re-issues what they wait on (the same launch key, the current ticks); a queued run is started
  once its flow has a free slot again.

Run by the Functions timer (``CONVEYOR_SCHEDULE_TICK``) and the local scheduler
(``CONVEYOR_SWEEP_INTERVAL_SECONDS``); ``grace`` is ``CONVEYOR_VISIBILITY_TIMEOUT_SECONDS`` +
``CONVEYOR_STALL_MARGIN_SECONDS``. A run with no deadline (only a fan-out active: its
instances' deadlines are on their rows) is nudged after ``CONVEYOR_STALL_IDLE_SECONDS``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from shared.engine.decide import overdue, pending_due, planned_start, resent_due
from shared.engine.model import Message, RunStatus
from shared.errors import ConcurrencyError, NotFoundError

if TYPE_CHECKING:
    from shared.queue.base import WorkQueue
    from shared.settings import Settings
    from shared.store.base import RunStore
    from shared.telemetry.base import Telemetry
    from shared.wiring import Services

log = logging.getLogger("conveyor.ingest.sweeper")


def grace_seconds(settings: Settings) -> float:
    """How long past its deadline a run's message may still come back: the visibility timeout + a margin."""
    return float(settings.visibility_timeout_seconds + settings.stall_margin_seconds)


def sweep_pending(
    store: RunStore,
    queue: WorkQueue,
    now: datetime,
    grace_seconds: float,
    *,
    limit: int = 500,
    telemetry: Telemetry | None = None,
) -> list[str]:
    """Re-send ``start`` for pending runs whose start is overdue (module docstring).

    The run's new deadline is saved first (ETag-guarded: a run started meanwhile is left alone),
    then the start sent. Returns the run ids it re-sent; a failed send is logged and left for a
    later sweep."""
    resent: list[str] = []
    for run in store.list_runs(statuses=[RunStatus.PENDING], limit=limit):
        if run.status is not RunStatus.PENDING or not overdue(run, now, grace_seconds, 0.0):
            continue
        due = pending_due(run)
        run.due_at = resent_due(planned_start(run), now)
        try:
            run = store.save(run)
        except (ConcurrencyError, NotFoundError):
            continue  # started (or gone) meanwhile: nothing to re-send
        except Exception as exc:
            log.warning("sweeper: pending run %s not re-sent: %s", run.run_id, exc)
            continue
        msg = Message(kind="start", run_id=run.run_id, flow=run.flow, traceparent=run.traceparent).with_id()
        try:
            queue.send(msg)
        except Exception as exc:
            log.warning("sweeper: start for pending run %s not re-sent: %s", run.run_id, exc)
            continue
        resent.append(run.run_id)
        log.info("sweeper: re-sent start for run %s (due %s, pending since %s)", run.run_id, due, run.created_at)
        if telemetry is not None:
            try:
                telemetry.event(
                    "run.start_resent",
                    traceparent=run.traceparent,
                    run_id=run.run_id,
                    attributes={"flow": run.flow, "created_at": run.created_at.isoformat(), "due": due.isoformat()},
                )
            except Exception:
                log.exception("telemetry event run.start_resent failed")
    return resent


def sweep(services: Services, now: datetime) -> list[str]:
    """The periodic housekeeping both hosts run (Functions timer and the local scheduler).

    Re-sends the start of pending runs that are overdue (:func:`sweep_pending`), then nudges
    running and queued runs whose next message is overdue (``Executor.resume_stalled``).
    Returns the re-sent ids."""
    from shared.engine.executor import Executor

    s = services
    grace = grace_seconds(s.settings)
    resent = sweep_pending(s.store, s.queue, now, grace)
    Executor.from_services(s).resume_stalled(grace, s.settings.stall_idle_seconds, now=now)
    return resent
