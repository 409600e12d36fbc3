"""One error tree for Conveyor.

Adapters map SDK/HTTP errors into these at their edge so that the engine's retry policy can
decide on ``retryable`` alone. Messages must never contain secrets.
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Base of every error Conveyor raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, service: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.service = service
        self.status = status

    def __str__(self) -> str:
        prefix = f"[{self.service}] " if self.service else ""
        return f"{prefix}{self.message}"


class RetryableError(ConveyorError):
    """Throttling, 5xx, timeouts, lost races: trying again may succeed."""

    retryable = True


class PermanentError(ConveyorError):
    """Bad request, not found, auth: trying again will fail the same way."""

    retryable = False


class ThrottledError(RetryableError):
    """The service asked us to slow down (429 / ServerBusy)."""


class TransientError(RetryableError):
    """5xx, connection resets, timeouts."""


class ConcurrencyError(RetryableError):
    """Optimistic concurrency lost (ETag mismatch): reload and decide again."""


class BadRequestError(PermanentError):
    """The request was malformed or invalid (400)."""


class ValidationError(BadRequestError):
    """Input failed validation. ``field`` names the offending path, e.g. ``data.url``."""

    def __init__(self, message: str, *, field: str | None = None, line: int | None = None):
        super().__init__(message, status=400)
        self.field = field
        self.line = line

    def __str__(self) -> str:
        where = self.field or ""
        if self.line is not None:
            where = f"{where} (line {self.line})" if where else f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


class AuthError(PermanentError):
    """Missing or wrong credentials (401/403)."""


class NotFoundError(PermanentError):
    """The thing asked for does not exist (404)."""


class ConflictError(PermanentError):
    """The thing already exists (409) where that is not expected."""


def classify_http_status(status: int) -> type[ConveyorError]:
    """Map an HTTP status from any service to the error class the engine acts on."""
    if status == 429:
        return ThrottledError
    if status in (408,) or status >= 500:
        return TransientError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    return BadRequestError
