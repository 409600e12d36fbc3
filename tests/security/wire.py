"""Raw HTTP/1.1 over a real socket: what a client that does not follow the rules sends.

``exchange(port, request_bytes)`` writes the bytes as given (no client library normalises the
method, the framing or the headers) and reads one response. The outcome is a ``Reply``:
``status`` (None when the server closed without answering), ``headers`` (lower-cased names),
``body`` and ``hung`` (True when nothing came back within ``timeout`` seconds: the fault these
tests exist to catch, so they assert it is False rather than waiting forever).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TIMEOUT = 20.0


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hung: bool = False
    raw: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def closed_without_answer(self) -> bool:
        return self.status is None and not self.hung


def _parse(raw: bytes) -> tuple[int | None, dict[str, str], bytes, bool]:
    """(status, headers, body, complete) of the first response in ``raw``."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None, {}, b"", False
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return None, {}, b"", False
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, done = _dechunk(rest)
        return status, headers, body, done
    length = int(headers.get("content-length", "0") or 0)
    return status, headers, rest[:length], len(rest) >= length


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = b""
    while True:
        line, sep, data = data.partition(b"\r\n")
        if not sep:
            return out, False
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            return out, True
        if len(data) < size + 2:
            return out, False
        out, data = out + data[:size], data[size + 2 :]


def exchange(port: int, request: bytes, *, timeout: float = DEFAULT_TIMEOUT, host: str = "127.0.0.1") -> Reply:
    """Send ``request`` as raw bytes and read one response (or the close, or the silence)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_reply(sock, head_only=request.split(b" ", 1)[0].upper() == b"HEAD")


def read_reply(sock: socket.socket, *, head_only: bool = False) -> Reply:
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            status, headers, body, _ = _parse(raw)
            return Reply(status, headers, body, hung=True, raw=raw)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            status, headers, body, _ = _parse(raw)
            return Reply(status, headers, body, raw=raw)
        raw += chunk
        status, headers, body, complete = _parse(raw)
        if status is not None and (complete or head_only):
            return Reply(status, headers, body, raw=raw)


def request(
    method: str,
    path: str,
    port: int,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    host_header: str | None = None,
    content_length: bool = True,
) -> bytes:
    """The bytes of one request; ``Host`` defaults to the bound address, as a client sends it."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header or f'127.0.0.1:{port}'}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if content_length and body and not any(k.lower() == "content-length" for k in headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 7) -> bytes:
    """``body`` in Transfer-Encoding: chunked framing, in pieces of ``size`` bytes."""
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def is_json_error(reply: Reply) -> bool:
    """A JSON body ``{"error": ...}`` that says something (the shape every refusal has)."""
    if not reply.content_type.startswith("application/json"):
        return False
    try:
        doc = reply.json()
    except ValueError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return bool(err.get("message"))
    return bool(err)
