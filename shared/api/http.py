"""Framework-neutral HTTP request/response and the one error-to-status mapping.

The Azure Functions blueprints (functions/webhooks.py) and the local host (shared/host) both
turn their framework's request into :class:`HttpRequest`, call the same handler in
:mod:`shared.api.handlers` and turn the :class:`HttpResponse` back. Errors become JSON bodies
``{"error": {"code", "message", "field"}}``; unexpected exceptions become a 500 that says
nothing about the internals (they are logged instead).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    PermanentError,
    RetryableError,
    ThrottledError,
    ValidationError,
)
from shared.safejson import BodyTooLargeError, JsonLimits

log = logging.getLogger("conveyor.api")

JSON_TYPE = "application/json; charset=utf-8"
MAX_BODY_BYTES = 1024 * 1024  # Event Grid batches are ≤ 1 MB; nothing we accept is larger
BODY_LIMITS = JsonLimits(max_bytes=MAX_BODY_BYTES)
RETRY_AFTER_SECONDS = 5
THROTTLED_RETRY_AFTER_SECONDS = 30


_UNPARSED = object()


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive header mapping that keeps the names as given."""

    def __init__(self, source: Mapping[str, str] | None = None) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for k, v in (source or {}).items():
            self._items[str(k).lower()] = (str(k), str(v))

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()][1]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        # Header values may carry credentials (Authorization, secrets): never print them.
        return f"Headers({sorted(self)!r})"


@dataclass
class HttpRequest:
    method: str
    path: str
    route_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=Headers)
    body: bytes = b""
    _parsed: Any = field(default=_UNPARSED, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        if not isinstance(self.headers, Headers):
            self.headers = Headers(self.headers)
        self.route_params = dict(self.route_params or {})
        self.query = dict(self.query or {})
        if self.body is None:
            self.body = b""
        elif isinstance(self.body, str):
            self.body = self.body.encode("utf-8")

    def json(self, *, required: bool = False) -> Any:
        """The body parsed by :func:`shared.safejson.loads`; an empty body is ``None`` unless ``required``.

        Raises ValidationError(field="body") naming the problem (BodyTooLargeError: 413).
        The result is kept, so a handler and a check before it parse the body once.
        """
        if self._parsed is _UNPARSED:
            from shared import safejson

            if not self.body.strip():
                self._parsed = None
            else:
                self._parsed = safejson.loads(self.body, field="body", limits=BODY_LIMITS)
        if self._parsed is None and required:
            raise ValidationError("a JSON body is required", field="body")
        return self._parsed


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def content_type(self) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == "content-type":
                return v
        return None


def json_response(status: int, obj: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    body = json.dumps(obj, default=str, separators=(",", ":")).encode("utf-8")
    out = {"Content-Type": JSON_TYPE}
    out.update(headers or {})
    return HttpResponse(status=status, body=body, headers=out)


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    return json_response(status, {"error": {"code": code, "message": message, "field": field}}, headers)


def map_error(exc: BaseException) -> HttpResponse:
    """The HTTP answer for an exception raised while handling a request."""
    if isinstance(exc, BodyTooLargeError):
        return error_response(413, "too_large", exc.message, exc.field)
    if isinstance(exc, ValidationError):
        return error_response(400, "validation_error", exc.message, exc.field)
    if isinstance(exc, AuthError):
        return error_response(401, "unauthorized", exc.message, headers={"WWW-Authenticate": 'Basic realm="conveyor"'})
    if isinstance(exc, NotFoundError):
        return error_response(404, "not_found", exc.message)
    if isinstance(exc, ConflictError):
        return error_response(409, "conflict", exc.message)
    if isinstance(exc, RetryableError):
        wait = THROTTLED_RETRY_AFTER_SECONDS if isinstance(exc, ThrottledError) else RETRY_AFTER_SECONDS
        log.warning("api: retryable error: %s", exc)
        return error_response(
            503, "unavailable", "temporarily unavailable, try again", headers={"Retry-After": str(wait)}
        )
    if isinstance(exc, BadRequestError | PermanentError):
        field_name = getattr(exc, "field", None)
        return error_response(400, "bad_request", exc.message, field_name)
    if isinstance(exc, ConveyorError):
        log.error("api: unclassified error: %s", exc)
        return error_response(500, "internal_error", "internal error")
    log.error("api: unexpected %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "internal_error", "internal error")
