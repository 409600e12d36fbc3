"""A loopback HTTPS fake of an Event Grid custom topic's publish API (CloudEvents 1.0 schema).

What ``EventGridPublisherClient.send`` talks to: ``POST <endpoint>?api-version=2018-01-01``
with ``Content-Type: application/cloudevents-batch+json; charset=utf-8``, a bearer token for
the scope ``https://eventgrid.azure.net/.default``, and a JSON array of CloudEvents. Like the
service it answers 200 with an empty body, 401 without a token, 400 with the service's error
shape for a malformed event (each needs ``specversion`` 1.0, ``id``, ``source``, ``type``),
413 for a request over 1 MB; scripted answers (``fail_next``: 503, 429...) come first.
The received events are kept for the assertions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from werkzeug import Request, Response

API_VERSION = "2018-01-01"
MAX_REQUEST_BYTES = 1_048_576


def _error(status: int, code: str, message: str) -> Response:
    body = {"error": {"code": code, "message": message}}
    return Response(json.dumps(body), status=status, content_type="application/json")


@dataclass
class FakeTopic:
    received: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    fail_next: list[int] = field(default_factory=list)  # statuses for the next requests (after auth)
    unauthorised_next: int = 0  # the next requests are 401 (a role assignment not yet effective)
    refuse_ids: set[str] = field(default_factory=set)  # events the topic refuses as malformed (400)

    def handle(self, request: Request) -> Response:
        self.requests += 1
        if request.args.get("api-version") != API_VERSION:
            return _error(400, "BadRequest", "The api-version query parameter is missing or unsupported.")
        if self.unauthorised_next:
            self.unauthorised_next -= 1
            return _error(401, "Unauthorized", "The principal does not have the EventGrid Data Sender role.")
        if request.headers.get("Authorization") != "Bearer fake":
            return _error(401, "Unauthorized", "The request authorization key is not authorized.")
        if not request.headers.get("Content-Type", "").startswith("application/cloudevents-batch+json"):
            return _error(400, "BadRequest", "Content-Type must be application/cloudevents-batch+json.")
        if self.fail_next:
            status = self.fail_next.pop(0)
            return _error(status, "ServiceUnavailable" if status >= 500 else "TooManyRequests", "try again later")
        raw = request.get_data()
        if len(raw) > MAX_REQUEST_BYTES:
            return _error(413, "RequestEntityTooLarge", "The maximum size for a request is 1 MB.")
        events = json.loads(raw)
        if not isinstance(events, list) or not events:
            return _error(400, "BadRequest", "The request body must be a non-empty JSON array.")
        for e in events:
            missing = [k for k in ("id", "source", "type") if not e.get(k)]
            if e.get("specversion") != "1.0" or missing or e.get("id") in self.refuse_ids:
                return _error(400, "BadRequest", f"Invalid CloudEvent {e.get('id')!r}: missing {missing}.")
        self.received.extend(events)
        return Response(b"", status=200)
