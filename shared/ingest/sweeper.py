"""Re-send ``start`` for runs left ``pending`` (a crash between create and send).

Ingest creates the run, then sends ``start``. If the process dies in between, the run sits in
``pending`` with nothing on the queue. The sweeper, run periodically (timer in Azure, the
local host's scheduler thread), re-sends ``start`` with ``message_id = run id`` for pending
runs older than a threshold. That is safe: Service Bus duplicate detection collapses a resend
of a start still in flight, and the engine ignores ``start`` for runs already past pending.

A blob run delayed by ``settle_seconds`` is not stuck while it settles: its age is counted
from ``created_at + trigger.blob.settle_seconds``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.engine.model import Message, Run, RunStatus

if TYPE_CHECKING:
    from shared.queue.base import WorkQueue
    from shared.store.base import RunStore
    from shared.telemetry.base import Telemetry
    from shared.wiring import Services

log = logging.getLogger("conveyor.ingest.sweeper")


def planned_start(run: Run) -> datetime:
    """When a pending run's start is due: ``created_at``, plus a blob trigger's ``settle_seconds``."""
    settle = 0.0
    if run.trigger.blob:
        try:
            settle = float(run.trigger.blob.get("settle_seconds") or 0)
        except (TypeError, ValueError):
            settle = 0.0
    return run.created_at + timedelta(seconds=max(0.0, settle))


def sweep_pending(
    store: RunStore,
    queue: WorkQueue,
    now: datetime,
    older_than_seconds: float,
    *,
    limit: int = 500,
    telemetry: Telemetry | None = None,
) -> list[str]:
    """Re-send ``start`` for pending runs whose planned start is older than ``older_than_seconds``.

    Returns the run ids it re-sent. A failed send is logged and left for the next sweep.
    """
    cutoff = now - timedelta(seconds=older_than_seconds)
    resent: list[str] = []
    for run in store.list_runs(statuses=[RunStatus.PENDING], limit=limit):
        if run.status is not RunStatus.PENDING or planned_start(run) > cutoff:
            continue
        msg = Message(kind="start", run_id=run.run_id, flow=run.flow, traceparent=run.traceparent).with_id()
        try:
            queue.send(msg)
        except Exception as exc:
            log.warning("sweeper: start for pending run %s not re-sent: %s", run.run_id, exc)
            continue
        resent.append(run.run_id)
        log.info("sweeper: re-sent start for run %s (pending since %s)", run.run_id, run.created_at.isoformat())
        if telemetry is not None:
            try:
                telemetry.event(
                    "run.start_resent",
                    traceparent=run.traceparent,
                    run_id=run.run_id,
                    attributes={"flow": run.flow, "created_at": run.created_at.isoformat()},
                )
            except Exception:
                log.exception("telemetry event run.start_resent failed")
    return resent


def sweep(services: Services, now: datetime, resume_stalled_seconds: float | None = 900.0) -> list[str]:
    """The periodic housekeeping both hosts run (Functions timer and the local scheduler).

    Re-sends the start of runs left pending (:func:`sweep_pending`), then nudges running runs
    whose next message was lost for good (``Executor.resume_stalled``). Returns the re-sent ids.
    """
    s = services
    resent = sweep_pending(s.store, s.queue, now, older_than_seconds=s.settings.sweeper_pending_seconds)
    if resume_stalled_seconds is not None:
        from shared.engine.executor import Executor

        Executor.from_services(s).resume_stalled(older_than_seconds=resume_stalled_seconds)
    return resent
