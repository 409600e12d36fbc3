"""A real CloudEvents webhook subscriber on loopback, for the delivery tests.

An HTTP server (pytest-httpserver, i.e. werkzeug) that implements the receiving side of the
CloudEvents webhook spec: it grants the validation handshake (``OPTIONS`` with
``WebHook-Request-Origin`` answered by ``WebHook-Allowed-Origin``) when told to, and takes
structured-mode ``POST``s, answering with scripted statuses (e.g. 503 twice, then 200).
Everything it received is kept for the assertions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from tests.functional.azure.https_fake import running_server


@dataclass
class Subscriber:
    server: HTTPServer
    grant: bool = True  # answer the handshake
    statuses: list[int] = field(default_factory=list)  # answers to the next POSTs (then 200)
    handshakes: list[dict[str, str]] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)  # every POST, also the refused ones
    accepted: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hooks/conveyor") -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def handle(self, request: Request) -> Response:
        with self.lock:
            if request.method == "OPTIONS":
                self.handshakes.append(dict(request.headers))
                origin = request.headers.get("WebHook-Request-Origin", "")
                if not self.grant or not origin:
                    return Response(status=403)
                return Response(status=200, headers={"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*"})
            event = json.loads(request.get_data())
            self.posts.append(event)
            self.content_types.append(request.headers.get("Content-Type", ""))
            status = self.statuses.pop(0) if self.statuses else 200
            if 200 <= status < 300:
                self.accepted.append(event)
            return Response(status=status)


def running_subscriber() -> Iterator[Subscriber]:
    with running_server(threaded=True) as server:
        sub = Subscriber(server)
        server.expect_request("/hooks/conveyor", method="OPTIONS").respond_with_handler(sub.handle)
        server.expect_request("/hooks/conveyor", method="POST").respond_with_handler(sub.handle)
        yield sub
