"""Who may call: the checks made on a request before any handler reads it, framework-neutral.

A :class:`RequestPolicy` answers one question -- ``policy.refusal(method, headers)`` -- with
``None`` (go on) or the JSON error response to send instead:

- **Host** (every method): only the addresses the server is bound to. A DNS-rebinding page
  reaches ``127.0.0.1`` under its own name (``Host: evil.example``) and is refused (400).
- **Origin** (state-changing methods): a browser names the page that sent the request; only
  the server's own origins are accepted (403). Clients that are not browsers send none.
- **Content-Type** (state-changing methods): one of ``policy.media_types`` (415). A page can
  make a browser POST ``text/plain``, form or multipart bodies cross-site without asking;
  ``application/json`` it cannot (it needs a CORS preflight, which nothing here grants).
- **header count** (431), past the server's own limit on their size.

The local host applies a policy to every request (shared.web.asgi.Guard); the API handlers
apply the content-type rule themselves too (:func:`media_type_refusal`), so the Functions app,
whose Host and Origin checks are Azure's front end and the function key, answers the same.
A web console served by the same host gets its own policy (form media types, the same Host and
Origin rules) for its paths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from shared.api.http import HttpResponse, error_response

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# An entry starting with "+" is a structured-syntax suffix (RFC 6839): "+json" takes
# application/cloudevents+json and application/cloudevents-batch+json (Event Grid CloudEvents).
JSON_MEDIA_TYPES = ("application/json", "+json")
FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def media_type(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def accepts(media_types: Iterable[str], content_type: str | None) -> bool:
    mt = media_type(content_type)
    if not mt or "/" not in mt:
        return False
    return any(mt.endswith(t) if t.startswith("+") else mt == t for t in media_types)


def _get(headers: Mapping[str, str], name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name:
            return v
    return None


def media_type_refusal(
    method: str, headers: Mapping[str, str], media_types: Iterable[str] = JSON_MEDIA_TYPES
) -> HttpResponse | None:
    """415 for a state-changing request whose Content-Type is not one of ``media_types``."""
    if method.upper() not in STATE_CHANGING:
        return None
    content_type = _get(headers, "content-type")
    allowed = tuple(media_types)
    if accepts(allowed, content_type):
        return None
    names = ", ".join(f"application/*{t}" if t.startswith("+") else t for t in allowed)
    given = media_type(content_type) or "none"
    return error_response(
        415, "unsupported_media_type", f"Content-Type must be {names} (got {given[:80]})", "Content-Type"
    )


@dataclass(frozen=True)
class RequestPolicy:
    """The Host, Origin, content-type and header-count rules for a set of paths."""

    hosts: frozenset[str]  # lowercase "host:port" values a request may name
    origins: frozenset[str]  # lowercase "scheme://host:port" values a browser may send
    media_types: tuple[str, ...] = JSON_MEDIA_TYPES
    max_headers: int = MAX_HEADERS
    max_header_bytes: int = MAX_HEADER_BYTES
    response_headers: tuple[tuple[str, str], ...] = field(default=(("X-Content-Type-Options", "nosniff"),))

    @classmethod
    def for_address(cls, host: str, port: int, **kwargs: object) -> RequestPolicy:
        """The policy of a server bound to ``host:port``: its own name and the loopback names."""
        names = {host.lower(), *LOOPBACK_NAMES} if host in ("127.0.0.1", "::1", "localhost") else {host.lower()}
        hosts = frozenset(f"{n}:{port}" for n in names)
        origins = frozenset(f"http://{h}" for h in hosts)
        return cls(hosts=hosts, origins=origins, **kwargs)  # type: ignore[arg-type]

    def with_media_types(self, *media_types: str) -> RequestPolicy:
        return replace(self, media_types=tuple(media_types))

    def refusal(
        self, method: str, headers: Mapping[str, str], header_lines: list[tuple[str, str]] | None = None
    ) -> HttpResponse | None:
        """The refusal for this request, or None. ``header_lines``: the headers as received, repeats kept."""
        lines = list(headers.items()) if header_lines is None else header_lines
        if len(lines) > self.max_headers:
            return error_response(431, "headers_too_large", f"more than {self.max_headers} header lines", "headers")
        if sum(len(k) + len(v) + 4 for k, v in lines) > self.max_header_bytes:
            return error_response(
                431, "headers_too_large", f"headers larger than {self.max_header_bytes} bytes", "headers"
            )
        host = (_get(headers, "host") or "").strip().lower()
        if host not in self.hosts:
            return error_response(400, "bad_host", f"Host must be one of {', '.join(sorted(self.hosts))}", "Host")
        if method.upper() not in STATE_CHANGING:
            return None
        origin = _get(headers, "origin")
        if origin is not None and origin.strip().lower() not in self.origins:
            return error_response(
                403, "forbidden_origin", "cross-site requests are refused; call from this host's own pages", "Origin"
            )
        return media_type_refusal(method, headers, self.media_types)
