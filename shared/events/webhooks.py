"""Webhook subscribers (``CONVEYOR_EVENTS_WEBHOOKS``): CloudEvents over HTTP, structured mode.

Before the first delivery to a URL the sender asks for permission with the CloudEvents
webhook validation handshake (CloudEvents "HTTP 1.1 Web Hooks for Event Delivery" §4,
abuse protection): ``OPTIONS`` with ``WebHook-Request-Origin: <our host>``; the subscriber
grants it by answering 2xx with ``WebHook-Allowed-Origin`` equal to that origin (or ``*``).
Without the grant nothing is posted (the event stays in the outbox and is retried: the
subscriber may come up later). A grant is remembered for ``GRANT_TTL``, and forgotten when
the subscriber answers 401/403/410.

Each event is one ``POST`` with ``Content-Type: application/cloudevents+json``. 2xx is
delivered; 400/413/415 are refused for good (dropped for this subscriber, logged); 410 Gone
too; everything else (timeouts, refused connections, 404, 408, 429, 5xx, 401/403) is
retried by the outbox with backoff. HTTP goes through azure-core's pipeline (the transport
every adapter uses) with one short attempt per call: the retries that matter must survive a
restart, so they are the outbox's, not an in-memory loop's. A URL's query string (a Logic
App's ``sig=``) is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.errors import ValidationError
from shared.events.base import CloudEventJson, EventSink, Failure

if TYPE_CHECKING:
    from azure.core import PipelineClient

log = logging.getLogger("conveyor.events.webhooks")

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
GRANT_TTL = 3600.0
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
PERMANENT = {400, 410, 413, 415}
FORGET_GRANT = {401, 403, 410}


def check_webhook_url(url: str, field: str = "CONVEYOR_EVENTS_WEBHOOKS") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"must be http(s) URLs, got {redacted(url)!r}", field=field)
    return url


def redacted(url: str) -> str:
    """scheme://host[:port]/path, without the query string (it may carry a signature)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc.rsplit('@', 1)[-1]}{p.path}"


def default_origin(website_hostname: str | None) -> str:
    return website_hostname or socket.gethostname() or "localhost"


class WebhookSink(EventSink):
    def __init__(self, url: str, origin: str, client: PipelineClient[Any, Any] | None = None) -> None:
        self.url = check_webhook_url(url)
        self.origin = origin
        self.name = "webhook-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
        self._client = client or _pipeline(url)
        self._granted_until = 0.0
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"webhook {redacted(self.url)}"

    # -- the handshake ---------------------------------------------------------------------

    def _grant(self) -> str | None:
        """None when delivery is allowed; else why not."""
        with self._lock:
            if time.monotonic() < self._granted_until:
                return None
        from azure.core.rest import HttpRequest

        try:
            resp = self._client.send_request(
                HttpRequest("OPTIONS", self.url, headers={"WebHook-Request-Origin": self.origin}),
                connection_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )
        except Exception as exc:
            return f"validation handshake failed: {_short(exc)}"
        allowed = (resp.headers.get("WebHook-Allowed-Origin") or "").strip()
        if not 200 <= resp.status_code < 300 or allowed not in (self.origin, "*"):
            return (
                f"the subscriber did not grant delivery (OPTIONS answered {resp.status_code}, "
                f"allowed origin {allowed!r})"
            )
        with self._lock:
            self._granted_until = time.monotonic() + GRANT_TTL
        return None

    # -- EventSink -------------------------------------------------------------------------

    def deliver(self, events: list[CloudEventJson]) -> dict[str, Failure]:
        refused = self._grant()
        if refused is not None:
            log.warning("%s: %s", self.describe(), refused)
            return {str(e["id"]): Failure(refused) for e in events}
        failures: dict[str, Failure] = {}
        for event in events:
            failure = self._post(event)
            if failure is not None:
                failures[str(event["id"])] = failure
        return failures

    def _post(self, event: CloudEventJson) -> Failure | None:
        from azure.core.rest import HttpRequest

        body = json.dumps(event, separators=(",", ":"), default=str).encode("utf-8")
        try:
            resp = self._client.send_request(
                HttpRequest("POST", self.url, headers={"Content-Type": CONTENT_TYPE}, content=body),
                connection_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
            )
        except Exception as exc:  # connection refused, timeouts, resets: the outbox retries
            return Failure(f"{self.describe()}: {_short(exc)}")
        status = resp.status_code
        if 200 <= status < 300:
            return None
        if status in FORGET_GRANT:
            with self._lock:
                self._granted_until = 0.0
        text = f"{self.describe()} answered {status}"
        if status in PERMANENT:
            log.error("%s for event %s (%s): dropped for this subscriber", text, event.get("id"), event.get("type"))
            return Failure(text, retryable=False)
        return Failure(text)


def _pipeline(url: str) -> PipelineClient[Any, Any]:
    """One short attempt per request (the outbox retries), the transport options read once."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import HeadersPolicy, RetryPolicy, UserAgentPolicy
    from azure.core.pipeline.transport import RequestsTransport

    from shared.transport import transport_kwargs

    policies = [HeadersPolicy(), UserAgentPolicy(base_user_agent="conveyor-events"), RetryPolicy(retry_total=0)]
    return PipelineClient(base_url=url, policies=policies, transport=RequestsTransport(**transport_kwargs()))


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
