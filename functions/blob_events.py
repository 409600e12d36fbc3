"""Event Grid ``Microsoft.Storage.BlobCreated`` -> ingest (one run per matching flow, once).

The runtime hands the function one event (``func.EventGridEvent``, or ``func.CloudEvent`` for
a CloudEvents subscription); it goes through the same strict parser as the HTTP routes
(``shared.ingest.eventgrid``). A malformed event is logged and dropped, and a refused one (bad
name, URL outside the storage account) is logged as a warning with a ``trigger.refused``
telemetry event: retrying cannot fix either. A retryable failure (storage throttled, queue
unavailable) is raised so Event Grid redelivers the event, and the deterministic run id makes
the redelivery start nothing twice.
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
    from shared.ingest.eventgrid import envelope_of_binding, parse_events
    from shared.ingest.service import IngestService
    from shared.wiring import get_services

    service = IngestService.from_services(get_services())
    try:
        delivery = parse_events([envelope_of_binding(event)], account=service.blob_account)
    except ValidationError as exc:
        log.error("event %r is malformed and was dropped: %s", event.id, exc)
        return
    outcome = service.ingest_delivery(delivery)
    for r in outcome.results:
        log.info(
            "event %r -> flow=%s run=%s created=%s status=%s %s",
            event.id,
            r.flow,
            r.run_id,
            r.created,
            getattr(r.status, "value", r.status),
            r.reason or "",
        )
    if not outcome.results and not outcome.ignored:
        log.info("event %r matched no flow", event.id)
