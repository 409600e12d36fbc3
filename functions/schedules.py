"""Timer -> fire due flow schedules, then sweep runs left pending or stalled.

One timer ticks every ``CONVEYOR_SCHEDULE_TICK`` (an app setting, NCRONTAB with seconds;
default in local.settings.sample.json: ``0 * * * * *`` = every minute). Flow schedules live in
flows.yaml, not here: each tick fires the schedules due up to now, with run id = hash(flow,
fire time), so a double tick (two instances, a restart) starts nothing twice. The sweeper then
(shared.ingest.sweeper.sweep) re-sends the start of runs left ``pending`` and nudges running
runs whose next message is overdue (``Executor.resume_stalled``): each run's deadline
(``Run.due_at``) past by more than ``CONVEYOR_VISIBILITY_TIMEOUT_SECONDS`` +
``CONVEYOR_STALL_MARGIN_SECONDS``.
"""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("conveyor.functions.schedules")

DEFAULT_TICK = "0 * * * * *"  # documented default of %CONVEYOR_SCHEDULE_TICK%


@bp.function_name("schedule_tick")
@bp.timer_trigger(schedule="%CONVEYOR_SCHEDULE_TICK%", arg_name="timer", run_on_startup=False)
def schedule_tick(timer: func.TimerRequest) -> None:
    from shared.clock import utcnow
    from shared.ingest.service import IngestService
    from shared.ingest.sweeper import sweep
    from shared.wiring import get_services

    now = utcnow()
    if timer.past_due:
        log.warning("schedule tick is past due; firing everything due up to %s", now.isoformat())
    services = get_services()
    first_error: Exception | None = None
    try:
        results = IngestService.from_services(services).fire_schedules(now)
        created = [r for r in results if r.created]
        log.info("schedules: %d due, %d runs created", len(results), len(created))
    except Exception as exc:  # the sweep below must still run; the error is re-raised after it
        log.exception("schedules: firing failed")
        first_error = exc
    try:
        swept = sweep(services, now)
        if swept:
            log.info("sweeper: re-sent %d pending runs", len(swept))
    except Exception as exc:
        log.exception("sweeper: failed")
        first_error = first_error or exc
    if first_error is not None:
        raise first_error
