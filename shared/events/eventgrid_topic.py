"""An Event Grid custom topic (``CONVEYOR_EVENTS_TOPIC_ENDPOINT``) through azure-eventgrid.

``EventGridPublisherClient(endpoint, credential)`` with the app's identity (the role
*EventGrid Data Sender* on the topic; ``shared.azure_identity.get_credential``), publishing
``azure.core.messaging.CloudEvent`` objects built from the outbox's JSON, in batches under
the service's 1 MB request limit. The client is injected in tests (the real one, against a
loopback fake of the publish API). The SDK's own retry policy retries 408/429/5xx and
connection errors within a call (the call runs on the deliverer, never in a run's path);
errors are mapped once here: what the SDK gave up on is retried by the outbox, including
401/403/404 (a role assignment or the topic may still be on its way) until the event
expires; a batch refused with 400/413 is sent one event at a time so only the offending
event is dropped.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.azure_errors import map_azure_error
from shared.errors import BadRequestError, ValidationError
from shared.events.base import CloudEventJson, EventSink, Failure

if TYPE_CHECKING:
    from azure.eventgrid import EventGridPublisherClient

    from shared.settings import Settings

log = logging.getLogger("conveyor.events.eventgrid")

SERVICE = "eventgrid"
MAX_BATCH_BYTES = 900_000  # the publish API takes 1 MB per request


class EventGridTopicSink(EventSink):
    name = "eventgrid"

    def __init__(self, client: EventGridPublisherClient, endpoint: str = "") -> None:
        self._client = client
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: Settings, *, credential: Any = None) -> EventGridTopicSink:
        from azure.eventgrid import EventGridPublisherClient

        from shared.azure_identity import get_credential

        endpoint = settings.events_topic_endpoint or ""
        parts = urlsplit(endpoint)
        if parts.scheme != "https" or not parts.hostname:
            raise ValidationError(
                "must be the topic's https endpoint (https://<topic>.<region>-1.eventgrid.azure.net/api/events)",
                field="CONVEYOR_EVENTS_TOPIC_ENDPOINT",
            )
        client = EventGridPublisherClient(endpoint, credential or get_credential(settings))
        return cls(client, endpoint)

    def describe(self) -> str:
        return f"event grid topic {urlsplit(self.endpoint).hostname or '(injected)'}"

    def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
        failures: dict[str, Failure] = {}
        for batch in _batches(events):
            failures.update(self._send(batch, split=len(batch) > 1))
        return failures

    def _send(self, batch: list[CloudEventJson], *, split: bool) -> dict[str, Failure]:
        from azure.core.messaging import CloudEvent

        try:
            self._client.send([CloudEvent.from_dict(dict(e)) for e in batch])
        except Exception as exc:
            error = map_azure_error(exc, SERVICE)
            if isinstance(error, BadRequestError) and error.status in (400, 413) and split:
                out: dict[str, Failure] = {}
                for event in batch:  # find the event the topic refuses; deliver the rest
                    out.update(self._send([event], split=False))
                return out
            permanent = isinstance(error, BadRequestError) and error.status in (400, 413)
            if permanent:
                log.error("%s refused event %s: %s (dropped)", self.describe(), batch[0].get("id"), error)
            return {str(e["id"]): Failure(f"{self.describe()}: {error}", retryable=not permanent) for e in batch}
        return {}


def _batches(events: list[CloudEventJson]) -> list[list[CloudEventJson]]:
    out: list[list[CloudEventJson]] = []
    batch: list[CloudEventJson] = []
    size = 0
    for event in events:
        n = len(json.dumps(event, default=str)) + 1
        if batch and size + n > MAX_BATCH_BYTES:
            out.append(batch)
            batch, size = [], 0
        batch.append(event)
        size += n
    if batch:
        out.append(batch)
    return out
