"""Event Grid ``Microsoft.Storage.BlobCreated`` -> ingest (one run per matching flow, once).

A malformed or unsupported event is logged and dropped (retrying cannot fix it); a retryable
failure (storage throttled, queue unavailable) is raised so Event Grid redelivers the event,
and the deterministic run id makes the redelivery start nothing twice.
"""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("conveyor.functions.blob_events")


@bp.function_name("blob_created")
@bp.event_grid_trigger(arg_name="event")
def blob_created(event: func.EventGridEvent) -> None:
    from shared.errors import ValidationError
    from shared.ingest.eventgrid import blob_event_from_functions
    from shared.ingest.service import IngestService
    from shared.wiring import get_services

    try:
        blob_event = blob_event_from_functions(
            event.id, event.event_type, event.subject, event.get_json(), event.event_time, event.topic
        )
    except ValidationError as exc:
        log.error("event %s (%s) is malformed and was dropped: %s", event.id, event.event_type, exc)
        return
    if blob_event is None:
        log.info("event %s (%s) starts nothing: not a blob creation Conveyor handles", event.id, event.event_type)
        return
    results = IngestService.from_services(get_services()).ingest_blob_events([blob_event])
    for r in results:
        log.info(
            "event %s -> flow=%s run=%s created=%s status=%s %s",
            event.id,
            r.flow,
            r.run_id,
            r.created,
            getattr(r.status, "value", r.status),
            r.reason or "",
        )
    if not results:
        log.info("event %s matched no flow (subject %s)", event.id, event.subject)
