"""ASGI pieces every app of the local stack is built from: guard, body reader, bridge, JSON errors.

- :class:`Guard` wraps an app and applies a :class:`shared.api.guard.RequestPolicy` (chosen by
  path prefix) to every request before the app sees it, and adds the policy's response headers.
- :func:`read_body` reads a request body (``Content-Length`` or chunked, as the server decoded
  it) within ``HttpLimits``: over the size limit -> 413, not complete by the deadline -> 408.
  Hypercorn's ``read_timeout`` bounds each read; this bounds the whole body (a trickle).
- :class:`Bridge` turns a framework-neutral handler ``(method, raw_path, headers, body) ->
  (status, body, headers)`` into an ASGI app; it runs in a worker thread (handlers block on
  storage calls), and an exception it lets out becomes a bare JSON 500 (logged, never echoed).
- :func:`json_app` is a Starlette app with these and JSON answers for every router error
  (404, 405 with ``Allow``, 500), so routes can be added -- JSON ones or, later, HTML pages with
  their own policy -- without any path answering Starlette's plain-text defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import anyio

from shared.api.guard import RequestPolicy
from shared.api.http import HttpResponse, error_response
from shared.web.server import HttpLimits

log = logging.getLogger("conveyor.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# (status, body, headers): what a framework-neutral handler returns (shared.host.server.Reply)
Reply = tuple[int, bytes, dict[str, str]]
SyncHandler = Callable[[str, str, Mapping[str, str], bytes], Reply]


class BodyRefused(Exception):
    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


class ClientGone(Exception):
    """The client closed the connection before its body arrived: nobody to answer."""


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers as one mapping (names lower-cased, repeated ones joined by ", ")."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers") or []:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def send_response(send: Send, resp: HttpResponse, *, head: bool = False) -> None:
    body = bytes(resp.body or b"")
    headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in resp.headers.items()]
    headers = [h for h in headers if h[0] != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode("ascii")))
    await send({"type": "http.response.start", "status": int(resp.status), "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def internal_error() -> HttpResponse:
    return error_response(500, "internal_error", "internal error")


async def read_body(scope: Scope, receive: Receive, limits: HttpLimits) -> bytes:
    """The whole request body within ``limits``; BodyRefused (413/408) or ClientGone otherwise."""
    too_large = BodyRefused(
        error_response(413, "too_large", f"request body larger than {limits.max_body_bytes} bytes", "body")
    )
    declared = request_headers(scope).get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_body_bytes:
        raise too_large  # refused before reading a byte of it
    chunks: list[bytes] = []
    total = 0
    try:
        with anyio.fail_after(limits.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                piece = bytes(message.get("body") or b"")
                total += len(piece)
                if total > limits.max_body_bytes:
                    raise too_large
                chunks.append(piece)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyRefused(
            error_response(
                408, "request_timeout", f"the request body did not arrive within {limits.body_timeout:g}s", "body"
            )
        ) from None


class Bridge:
    """An ASGI app that reads the body and hands the request to a blocking ``handler``.

    A class (not a closure) so that Starlette's ``Route`` takes it as an ASGI app.
    """

    def __init__(self, handler: SyncHandler, limits: HttpLimits) -> None:
        self.handler = handler
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = str(scope["method"]).upper()
        head = method == "HEAD"
        try:
            body = await read_body(scope, receive, self.limits)
        except BodyRefused as refused:
            await send_response(send, refused.response, head=head)
            return
        except ClientGone:
            return
        raw_path = bytes(scope.get("raw_path") or str(scope["path"]).encode("utf-8")).decode("latin-1")
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        target = f"{raw_path}?{query}" if query else raw_path
        headers = request_headers(scope)
        try:
            status, out, out_headers = await anyio.to_thread.run_sync(self.handler, method, target, headers, body)
            resp = HttpResponse(status=status, body=out, headers=dict(out_headers))
        except Exception:
            log.exception("http: handler failed for %s %s", method, raw_path[:200])
            resp = internal_error()
        await send_response(send, resp, head=head)


class Guard:
    """Apply the first policy whose path prefix matches (longest first) before ``app`` runs."""

    def __init__(self, app: ASGIApp, policies: Sequence[tuple[str, RequestPolicy]]) -> None:
        self.app = app
        self.policies = sorted(policies, key=lambda p: len(p[0]), reverse=True)

    def policy_for(self, path: str) -> RequestPolicy | None:
        for prefix, policy in self.policies:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return policy
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.policy_for(str(scope.get("path") or "/"))
        if policy is None:  # a path no policy covers is not served at all
            await send_response(send, error_response(404, "not_found", "no route for this path"))
            return
        method = str(scope["method"]).upper()
        lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers") or []]
        refusal = policy.refusal(method, request_headers(scope), header_lines=lines)
        if refusal is not None:
            await send_response(send, refusal, head=method == "HEAD")
            return
        extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in policy.response_headers]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and extra:
                present = {name for name, _ in message.get("headers") or []}
                message["headers"] = [*(message.get("headers") or []), *(h for h in extra if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def json_app(routes: Sequence[Any], policies: Sequence[tuple[str, RequestPolicy]]) -> ASGIApp:
    """A Starlette router behind :class:`Guard`, every router error answered in JSON."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response

    def as_starlette(resp: HttpResponse) -> Response:
        return Response(content=resp.body, status_code=resp.status, headers=dict(resp.headers))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        path = request.url.path[:200]
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            return as_starlette(
                error_response(
                    405, "method_not_allowed", f"{request.method} not allowed on {path}", headers={"Allow": allow}
                )
            )
        if exc.status_code == 404:
            return as_starlette(error_response(404, "not_found", f"no route for {path}"))
        return as_starlette(error_response(exc.status_code, "error", str(exc.detail)[:200]))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("http: unhandled %s on %s", type(exc).__name__, request.url.path[:200], exc_info=exc)
        return as_starlette(internal_error())

    app = Starlette(routes=list(routes), exception_handlers={HTTPException: http_error, Exception: server_error})
    app.router.redirect_slashes = False
    return Guard(app, policies)
