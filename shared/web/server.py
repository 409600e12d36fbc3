"""Serve an ASGI app with Hypercorn on a socket we bind, from a thread or the main thread.

Hypercorn (not uvicorn, not ``http.server``) because it is the maintained server whose own
settings cover what a server facing untrusted clients needs, each verified through the socket
in tests/security/test_http_socket.py:

- ``keep_alive_timeout``: an idle connection is closed, also one that never finishes its
  request line or headers (uvicorn 0.54 holds such a connection open forever);
- ``read_timeout``: any single read that waits longer ends the connection (a stalled body);
- ``h11_max_incomplete_size``: headers larger than this are answered 431;
- h11 framing: a bad or negative ``Content-Length`` is answered 400, chunked bodies are decoded.

What Hypercorn leaves to the app is done in :mod:`shared.web.asgi`: a deadline for the whole
body (a body trickled a byte at a time), the body size limit, a header count limit.

The socket is bound here, before the server starts, so a busy port is an error at ``start()``
(not a log line in a thread) and port 0 works; Hypercorn takes it over by file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Any

from shared.api.http import MAX_BODY_BYTES

log = logging.getLogger("conveyor.http")


@dataclass(frozen=True)
class HttpLimits:
    """What one client may take of the server. The defaults serve Event Grid and DevOps hooks."""

    max_body_bytes: int = MAX_BODY_BYTES  # Event Grid delivers at most 1 MB
    body_timeout: float = 30.0  # the whole body must have arrived by then (408)
    read_timeout: float = 15.0  # any one read from the socket (headers or body)
    keep_alive_timeout: float = 5.0  # an idle connection, also before its first request
    max_header_bytes: int = 16 * 1024  # request line + headers (431)
    max_headers: int = 100  # header lines (431)
    graceful_timeout: float = 2.0  # on stop, requests in flight get this long


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _config(sock: socket.socket, limits: HttpLimits) -> Any:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns the descriptor from here on
    config.keep_alive_timeout = limits.keep_alive_timeout
    config.read_timeout = limits.read_timeout  # type: ignore[assignment]  # a float works (asyncio.wait_for)
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.h2_max_header_list_size = limits.max_header_bytes
    config.graceful_timeout = limits.graceful_timeout
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = log
    return config


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Connections still open at stop are cancelled after ``graceful_timeout``: not an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _serve(app: Any, config: Any, stop: asyncio.Event) -> None:
    from hypercorn.asyncio import serve

    await serve(app, config, shutdown_trigger=stop.wait, mode="asgi")


def serve_forever(app: Any, sock: socket.socket, limits: HttpLimits, stop: threading.Event) -> None:
    """Serve ``app`` on ``sock`` in this thread until ``stop`` is set (the scoring server's main loop)."""

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_cancellation)
        threading.Thread(target=lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)), daemon=True).start()
        await _serve(app, _config(sock, limits), done)

    asyncio.run(main())


class ServerThread:
    """``app`` served on the listening socket ``sock`` (see :func:`bind`) from a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket, *, limits: HttpLimits | None = None, name: str = "http") -> None:
        self.app = app
        self.host, self.port = sock.getsockname()[:2]
        self.limits = limits or HttpLimits()
        self.name = name
        self._sock: socket.socket | None = sock
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    def start(self) -> ServerThread:
        sock, self._sock = self._sock, None
        if sock is None:
            return self  # started already
        config = _config(sock, self.limits)
        self._thread = threading.Thread(target=self._run, args=(config,), name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)  # the socket already listens: connections queue until then
        return self

    def _run(self, config: Any) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._loop.set_exception_handler(_quiet_cancellation)
            self._stop = asyncio.Event()
            self._ready.set()
            await _serve(self.app, config, self._stop)

        try:
            asyncio.run(main())
        except Exception:
            log.exception("http: the %s server stopped with an error", self.name)
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._sock is not None:  # never started
            self._sock.close()
            self._sock = None
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=timeout)
        self._loop = self._stop = None
