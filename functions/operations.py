"""Operations: dead-letter routes, the daily retention purge, lifecycle-event delivery.

* ``GET deadletters`` / ``POST deadletters/replay`` -> the same ``Api`` handlers the local
  host serves (function key required);
* ``retention`` timer (``CONVEYOR_RETENTION_SCHEDULE``, NCRONTAB, default ``0 0 3 * * *``)
  -> ``shared.ops.retention.apply_retention`` (``CONVEYOR_RETENTION_DAYS``, 0 = off);
* ``lifecycle_events`` timer (``CONVEYOR_SCHEDULE_TICK``) -> delivers the lifecycle events
  left in the outbox (retries with backoff; the first attempt is made right after the run's
  transition, see shared.events).
"""

from __future__ import annotations

import logging

import azure.functions as func

from functions.webhooks import to_request, to_response

bp = func.Blueprint()
log = logging.getLogger("conveyor.functions.operations")


def _call(handler: str, req: func.HttpRequest) -> func.HttpResponse:
    from shared.api.handlers import Api

    return to_response(getattr(Api(), handler)(to_request(req)))


@bp.function_name("dead_letters")
@bp.route(route="deadletters", methods=["GET"], auth_level=func.AuthLevel.FUNCTION)
def dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return _call("dead_letters", req)


@bp.function_name("replay_dead_letters")
@bp.route(route="deadletters/replay", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
def replay_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
    return _call("replay_dead_letters", req)


@bp.function_name("retention")
@bp.timer_trigger(schedule="%CONVEYOR_RETENTION_SCHEDULE%", arg_name="timer", run_on_startup=False)
def retention(timer: func.TimerRequest) -> None:
    from shared.clock import utcnow
    from shared.ops.retention import apply_retention
    from shared.wiring import get_services

    report = apply_retention(get_services(), utcnow())
    if report is None:
        log.info("retention: off (CONVEYOR_RETENTION_DAYS=0)")
    else:
        log.info(
            "retention: deleted %d of %d runs created before %s", report.deleted, report.matched, report.created_before
        )


@bp.function_name("lifecycle_events")
@bp.timer_trigger(schedule="%CONVEYOR_SCHEDULE_TICK%", arg_name="timer", run_on_startup=False)
def lifecycle_events(timer: func.TimerRequest) -> None:
    from shared.wiring import get_services

    events = get_services().events
    if events is None:
        return
    report = events.deliver_due()
    if report.delivered or report.retrying or report.expired:
        log.info(
            "lifecycle events: %d delivered, %d retrying, %d expired", report.delivered, report.retrying, report.expired
        )
