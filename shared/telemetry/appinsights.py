"""What the two Application Insights exporters share (no SDK imported here).

Mapping of Conveyor telemetry onto Application Insights, identical for both exporters:

* every record's ``ai.operation.id`` (``operation_Id``) is the run's W3C trace id, so a
  blob event, each step's launch and polls, the registration and the deployment form one
  end-to-end transaction;
* a span becomes a **request** (``requests`` table) when its name starts with one of
  ``REQUEST_PREFIXES`` (the entry of a unit of work: ``trigger...``, ``run...``), else an
  in-process **dependency** (``dependencies``, type ``InProc``) — ``step.launch``,
  ``step.poll``; its id is the span id of ``Span.traceparent`` and its
  ``ai.operation.parentId`` is the span id of the caller's traceparent;
* an ``event`` becomes a **custom event** (``customEvents``) whose ``operation_ParentId``
  is the emitting span;
* attributes become custom dimensions (``customDimensions``): ``run_id`` always (when the
  record belongs to a run), ``flow``/``step`` where the caller set them, then the rest;
  credential-like keys and values are removed exactly as the local sink does
  (:func:`shared.telemetry.local.scrub`); values are strings (JSON for lists/maps).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from shared.errors import ValidationError
from shared.telemetry.base import Span, Telemetry
from shared.telemetry.local import scrub

if TYPE_CHECKING:
    from shared.settings import Settings

CONNECTION_SETTING = "APPLICATIONINSIGHTS_CONNECTION_STRING"
AUTHENTICATION_SETTING = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"
REQUEST_PREFIXES = ("trigger", "run")
MAX_VALUE = 8192  # App Insights keeps at most 8 KiB per property value
MAX_STATUS = 1024  # characters of a failed span's ``error`` attribute kept as its status description


def parse_connection_string(connection_string: str | None) -> dict[str, str]:
    """``{lowercased key: value}`` of an App Insights connection string, or a ValidationError naming the setting.

    The message never repeats the string itself.
    """
    if not connection_string or not connection_string.strip():
        raise ValidationError("is required for the Application Insights exporters", field=CONNECTION_SETTING)
    parts: dict[str, str] = {}
    for chunk in connection_string.split(";"):
        if not chunk.strip():
            continue
        key, sep, value = chunk.partition("=")
        if not sep or not key.strip():
            raise ValidationError("is not a 'Key=Value;...' connection string", field=CONNECTION_SETTING)
        parts[key.strip().lower()] = value.strip()
    if not parts.get("instrumentationkey"):
        raise ValidationError("has no InstrumentationKey", field=CONNECTION_SETTING)
    return parts


def aad_client_id(authentication_string: str | None) -> tuple[bool, str | None]:
    """(use Entra ID, user-assigned client id) from ``Authorization=AAD[;ClientId=<guid>]``."""
    if not authentication_string or not authentication_string.strip():
        return False, None
    parts: dict[str, str] = {}
    for chunk in authentication_string.split(";"):
        key, sep, value = chunk.partition("=")
        if chunk.strip() and not sep:
            raise ValidationError("is not a 'Key=Value;...' string", field=AUTHENTICATION_SETTING)
        if sep:
            parts[key.strip().lower()] = value.strip()
    if parts.get("authorization", "").upper() != "AAD":
        raise ValidationError("only 'Authorization=AAD' is supported", field=AUTHENTICATION_SETTING)
    return True, parts.get("clientid") or None


def is_request(name: str) -> bool:
    low = name.lower()
    return any(low == p or low.startswith(p + ".") or low.startswith(p + "_") for p in REQUEST_PREFIXES)


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
    return text[:MAX_VALUE]


def dimensions(run_id: str | None, attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """Custom dimensions: run_id, flow, step first, then the other scrubbed attributes, as strings."""
    clean = scrub(dict(attributes or {}))
    out: dict[str, str] = {}
    if run_id:
        out["run_id"] = run_id
    for key in ("run_id", "flow", "step"):
        if key not in out and clean.get(key) is not None:
            out[key] = _text(clean[key])
    for key, value in clean.items():
        if value is not None and key not in out and key:
            out[str(key)[:150]] = _text(value)
    return out


class FailureLog:
    """Telemetry never raises into the engine: failures are logged, loudly once, then quietly."""

    def __init__(self, logger: logging.Logger, exporter: str) -> None:
        self._log = logger
        self._exporter = exporter
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    def report(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first = what not in self._warned
            self._warned.add(what)
        level = logging.WARNING if first else logging.DEBUG
        self._log.log(level, "telemetry (%s): %s failed: %s: %s", self._exporter, what, type(exc).__name__, exc)


def error_description(span: Span) -> str:
    """A failed span's status description: its ``error`` attribute, cut to MAX_STATUS characters."""
    return str(span.attributes.get("error", ""))[:MAX_STATUS]


def exporter_kwargs(connection_string: str | None, credential: Any, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for either SDK's exporters: the validated connection string, the credential, then ``extra``."""
    parse_connection_string(connection_string)
    options: dict[str, Any] = {"connection_string": connection_string, "credential": credential}
    options.update(extra or {})
    return options


class AppInsightsTelemetry(Telemetry):
    """What both exporters' facades share: built from settings with the connection string and Entra ID credential."""

    exporter = "appinsights"

    if TYPE_CHECKING:  # each exporter defines its own constructor, with this first argument

        def __init__(self, connection_string: str | None = None, **kwargs: Any) -> None: ...

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Self:
        """``cls(APPLICATIONINSIGHTS_CONNECTION_STRING, **kwargs)``; ``credential`` defaults to the Entra ID
        credential that APPLICATIONINSIGHTS_AUTHENTICATION_STRING names (none: the connection string's key)."""
        connection_string = settings.appinsights_connection_string
        parse_connection_string(connection_string)
        if "credential" not in kwargs:
            aad, client_id = aad_client_id(settings.appinsights_authentication_string)
            if aad:
                from shared.azure_identity import get_credential

                kwargs["credential"] = get_credential(settings, client_id)
        return cls(connection_string, **kwargs)
