"""Map azure-core SDK errors into Conveyor's error tree at the adapter edge.

One function for the storage adapters (queue, table, blob) and any other azure-core based
adapter: the engine only looks at ``retryable`` and the error class. ``first_rule`` is the
table-driven "SDK exception type -> Conveyor error" step the Databricks and Service Bus
adapters use before falling back to their own special cases.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import UnionType

from shared.errors import (
    AuthError,
    ConcurrencyError,
    ConflictError,
    ConveyorError,
    NotFoundError,
    ThrottledError,
    TransientError,
    classify_http_status,
)

_MAX_DETAIL = 300

# (SDK exception type(s), the Conveyor error to raise instead, its HTTP status or None)
ErrorRule = tuple[type[BaseException] | UnionType, type[ConveyorError], int | None]


def first_rule(exc: BaseException, rules: Iterable[ErrorRule], message: str, service: str) -> ConveyorError | None:
    """The error of the first rule ``exc`` is an instance of, with ``message``; None when no rule matches."""
    for types, error, status in rules:
        if isinstance(exc, types):
            return error(message, service=service, status=status)
    return None


def _detail(exc: BaseException) -> str:
    """First line of the SDK message, short; SDK messages carry no account keys."""
    text = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:_MAX_DETAIL]


def error_code(exc: BaseException) -> str | None:
    """The service's error code (``x-ms-error-code``), e.g. ``EntityAlreadyExists``."""
    code = getattr(exc, "error_code", None)
    if code:
        # the storage SDKs give a str-Enum (StorageErrorCode.SERVER_BUSY): its value is the code
        return str(getattr(code, "value", code))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("x-ms-error-code")
        if value:
            return str(value)
    return None


def map_azure_error(exc: BaseException, service: str) -> ConveyorError:
    """The Conveyor error for an azure-core exception (or any exception) from ``service``.

    Timeouts and connection failures → TransientError; 429/503 ServerBusy → ThrottledError;
    412 → ConcurrencyError; 401/403 → AuthError; 404 → NotFoundError; 409 → ConflictError;
    other 5xx → TransientError; other 4xx → BadRequestError.
    """
    if isinstance(exc, ConveyorError):
        return exc
    from azure.core import exceptions as az

    detail = _detail(exc)
    code = error_code(exc)
    if isinstance(exc, az.ClientAuthenticationError):
        status = getattr(exc, "status_code", None)
        return AuthError(f"authentication failed: {detail}", service=service, status=status)
    if isinstance(exc, az.ServiceRequestError | az.ServiceResponseError | az.IncompleteReadError):
        return TransientError(f"{type(exc).__name__}: {detail}", service=service)
    if isinstance(exc, az.HttpResponseError):
        status = exc.status_code
        label = f"{status} {code}: {detail}" if code else f"{status}: {detail}"
        if status is None:
            return TransientError(label, service=service)
        if status == 412 or isinstance(exc, az.ResourceModifiedError):
            return ConcurrencyError(label, service=service, status=status)
        if status == 429 or (status == 503 and code == "ServerBusy"):
            return ThrottledError(label, service=service, status=status)
        if status == 409:
            return ConflictError(label, service=service, status=status)
        if status == 404:
            return NotFoundError(label, service=service, status=status)
        cls = classify_http_status(status)
        return cls(label, service=service, status=status)
    if isinstance(exc, TimeoutError | ConnectionError):
        return TransientError(f"{type(exc).__name__}: {detail}", service=service)
    if isinstance(exc, az.AzureError):
        return TransientError(f"{type(exc).__name__}: {detail}", service=service)
    return ConveyorError(f"{type(exc).__name__}: {detail}", service=service)
