"""The socket side of ``conveyor up``: ``HostApp`` served as an ASGI app by Hypercorn.

``host_app(app, host, port)`` is the ASGI app: ``/api/...``, ``/admin/...`` and
``/runtime/...`` go to :meth:`shared.host.server.HostApp.handle` (the same routes and handlers
the Functions app serves) through :class:`shared.web.asgi.Bridge`, and so do the web console's
pages (``/``, ``/runs/...``, ``/models``, ``/dead-letters``, ``/static/...``, form posts
allowed); every request first passes the host's :class:`shared.api.guard.RequestPolicy` (Host =
the bound address, same-origin only, ``application/json`` for state-changing requests). More
routes -- a web console's pages and static files -- are added with ``extra_routes`` and get
their own policy with ``extra_policies`` (a path prefix and a policy, e.g. form media types and
a CSP header).

:class:`HostServer` binds the port, builds that app for the bound address and serves it from a
daemon thread (:class:`shared.web.server.ServerThread`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.api.guard import RequestPolicy
from shared.host.server import HostApp
from shared.web.asgi import ASGIApp, Bridge, json_app
from shared.web.server import HttpLimits, ServerThread, bind

HOST_PREFIXES = ("/api", "/admin", "/runtime")


def host_app(
    app: HostApp,
    host: str,
    port: int,
    *,
    limits: HttpLimits | None = None,
    extra_routes: Sequence[Any] = (),
    extra_policies: Sequence[tuple[str, RequestPolicy]] = (),
) -> ASGIApp:
    from starlette.routing import Mount

    from shared.api.guard import FORM_MEDIA_TYPES
    from shared.console.paths import CONSOLE_PREFIXES

    limits = limits or HttpLimits()
    handler = Bridge(app.handle, limits)
    routes = [Mount(prefix, app=handler) for prefix in HOST_PREFIXES]
    policy = RequestPolicy.for_address(
        host, port, max_headers=limits.max_headers, max_header_bytes=limits.max_header_bytes
    )
    # The web console's pages (HostApp.handle hands them to shared.console): same Host and
    # Origin rules, but its cancel/rerun/replay forms post form bodies (checked again there:
    # same origin + page token). Everything else HostApp answers itself (a JSON 404).
    console = policy.with_media_types(*FORM_MEDIA_TYPES)
    console_policies = [(prefix.rstrip("/"), console) for prefix in CONSOLE_PREFIXES]
    return json_app(
        [*routes, *extra_routes, Mount("", app=handler)], [("/", policy), *console_policies, *extra_policies]
    )


class HostServer:
    """``HostApp`` on ``host:port`` (0: a free port), served from a daemon thread."""

    def __init__(
        self,
        app: HostApp,
        *,
        host: str = "127.0.0.1",
        port: int = 7071,
        limits: HttpLimits | None = None,
        extra_routes: Sequence[Any] = (),
        extra_policies: Sequence[tuple[str, RequestPolicy]] = (),
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits or HttpLimits()
        self.extra_routes = tuple(extra_routes)  # e.g. a console's pages (see host_app)
        self.extra_policies = tuple(extra_policies)
        self._server: ServerThread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> HostServer:
        if self._server is not None:
            return self
        try:
            sock = bind(self.host, self.port)
        except OSError as exc:
            from shared.errors import PermanentError

            raise PermanentError(
                f"cannot listen on {self.host}:{self.port} ({exc.strerror or exc}); "
                "is another `conveyor up` running? set CONVEYOR_HOST_PORT to use another port",
                service="host",
            ) from exc
        self.port = sock.getsockname()[1]
        asgi = host_app(
            self.app,
            self.host,
            self.port,
            limits=self.limits,
            extra_routes=self.extra_routes,
            extra_policies=self.extra_policies,
        )
        self._server = ServerThread(asgi, sock, limits=self.limits, name="conveyor-http").start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
