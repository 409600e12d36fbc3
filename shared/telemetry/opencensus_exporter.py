"""Application Insights through OpenCensus (opencensus-ext-azure 1.1.15), as the user named it.

**opencensus-ext-azure reached end of support on 2024-09-30**: it gets no fixes, not even
security fixes. Use ``CONVEYOR_TELEMETRY_EXPORTER=opentelemetry`` (the default in azure
mode, :mod:`shared.telemetry.opentelemetry_exporter`); this exporter logs a one-time
warning saying so when it is built.

* spans -> ``AzureExporter`` (trace): a span is exported as the ``SpanData`` an
  opencensus ``ContextTracer`` would produce, with ``context`` an opencensus
  ``SpanContext(trace_id=<run trace id>, span_id=<caller span id>, from_header=True)``
  built from the incoming traceparent, ``span_id`` = the span id of ``Span.traceparent``
  and ``parent_span_id`` = the caller's span id. The ``Tracer``/``ContextTracer`` objects
  themselves are not used: they keep the current span in opencensus' process-wide
  execution context, which would mis-parent concurrent or interleaved Conveyor spans.
* events -> ``AzureEventHandler`` (``customEvents``; the log-record flavour of
  ``AzureLogHandler``) with ``custom_dimensions`` and the record's ``traceId``/``spanId``.

Mapping as in :mod:`shared.telemetry.appinsights` (operation id = the run's trace id).
OpenCensus differences, kept as the SDK does them: dependencies are type ``INPROC`` and
always ``success=true`` (a failure is visible as the ``error`` dimension); events'
``ai.operation.parentId`` uses the legacy ``|<trace>.<span>.`` form. Two telemetry
processors fix what opencensus leaves odd: a request is named after its span (opencensus
names requests only from ``http.*`` attributes) and ``ai.cloud.role`` is the service name
(opencensus uses the script name), as with OpenTelemetry. Both SDKs POST to
``{IngestionEndpoint}/v2.1/track`` (plain JSON, not gzip'd). ``flush()`` pushes a
sync marker through each exporter's worker queue and waits for it to be sent (the
opencensus ``Queue.flush`` shortcut returns early while a worker still holds a batch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from shared.telemetry.appinsights import (
    AppInsightsTelemetry,
    FailureLog,
    dimensions,
    error_description,
    exporter_kwargs,
    is_request,
)
from shared.telemetry.base import Span
from shared.telemetry.trace import parse

log = logging.getLogger("conveyor.telemetry")

END_OF_SUPPORT = "2024-09-30"
NAME_PROPERTY = "conveyor.span_name"  # carries the span name to _name_requests, removed before sending
_warned_eos = False
_warn_lock = threading.Lock()


def _name_requests(envelope: Any) -> bool:
    """Telemetry processor: opencensus names requests only from http.* attributes; use the span's name."""
    base = envelope.data.baseData
    name = (base.get("properties") or {}).pop(NAME_PROPERTY, None)
    if name and envelope.data.baseType == "RequestData":
        base.name = name
        envelope.tags["ai.operation.name"] = name
    return True


def _role(service_name: str) -> Any:
    """Telemetry processor: ai.cloud.role = the service name (opencensus defaults to the script name)."""

    def processor(envelope: Any) -> bool:
        envelope.tags["ai.cloud.role"] = service_name
        return True

    return processor


def _warn_end_of_support() -> None:
    global _warned_eos
    with _warn_lock:
        if _warned_eos:
            return
        _warned_eos = True
    log.warning(
        "telemetry: opencensus-ext-azure is past end of support (%s); "
        "set CONVEYOR_TELEMETRY_EXPORTER=opentelemetry (azure-monitor-opentelemetry, supported)",
        END_OF_SUPPORT,
    )


class OpenCensusAppInsights(AppInsightsTelemetry):
    """Telemetry facade -> Application Insights via opencensus-ext-azure (past end of support).

    ``trace_exporter`` / ``event_handler`` take already-built ``AzureExporter`` /
    ``AzureEventHandler``; otherwise they are built from ``connection_string``,
    ``credential`` (Entra ID ingestion; None = the key in the connection string) and
    ``exporter_options`` (passed through: ``enable_local_storage``, ``storage_path``,
    ``timeout``, ``export_interval``, ``grace_period``...).
    """

    exporter = "opencensus"

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        credential: Any = None,
        service_name: str = "conveyor",
        exporter_options: Mapping[str, Any] | None = None,
        trace_exporter: Any = None,
        event_handler: Any = None,
        flush_timeout: float = 10.0,
    ) -> None:
        _warn_end_of_support()
        from opencensus.trace.span import SpanKind

        self._kinds = (SpanKind.SERVER, SpanKind.UNSPECIFIED)
        self._failures = FailureLog(log, self.exporter)
        self._flush_timeout = flush_timeout
        self._lock = threading.Lock()
        self._open: dict[int, str] = {}  # id(span) -> start time (opencensus ISO string)
        if trace_exporter is None or event_handler is None:
            options = exporter_kwargs(connection_string, credential, exporter_options)
            if trace_exporter is None:
                from opencensus.ext.azure.trace_exporter import AzureExporter

                trace_exporter = AzureExporter(**options)
                trace_exporter.add_telemetry_processor(_name_requests)
                trace_exporter.add_telemetry_processor(_role(service_name))
            if event_handler is None:
                from opencensus.ext.azure.log_exporter import AzureEventHandler

                event_handler = AzureEventHandler(**options)
                event_handler.add_telemetry_processor(_role(service_name))
        self.trace_exporter = trace_exporter
        self.event_handler = event_handler

    # ------------------------------------------------------------ Telemetry
    def _start(self, span: Span) -> None:
        try:
            from opencensus.common.utils import to_iso_str

            with self._lock:
                self._open[id(span)] = to_iso_str()
        except Exception as exc:
            self._failures.report("span start", exc)

    def _end(self, span: Span) -> None:
        try:
            from opencensus.common.utils import to_iso_str
            from opencensus.trace.span_context import SpanContext
            from opencensus.trace.span_data import SpanData
            from opencensus.trace.status import Status

            end = to_iso_str()
            with self._lock:
                start = self._open.pop(id(span), None)
            if start is None:
                return
            own = parse(span.traceparent)
            if own is None:  # base.span always gives a valid one; nothing to correlate otherwise
                return
            parent = parse(span.parent)
            parent_span_id = parent[1] if parent and parent[0] == own[0] else None
            status = (
                Status(2, error_description(span))  # 2 = UNKNOWN (google.rpc.Code)
                if span.status == "error"
                else Status(0)
            )
            data = SpanData(
                name=span.name,
                context=SpanContext(trace_id=own[0], span_id=parent_span_id, from_header=True),
                span_id=own[1],
                parent_span_id=parent_span_id,
                attributes={**dimensions(span.run_id, span.attributes), NAME_PROPERTY: span.name},
                start_time=start,
                end_time=end,
                child_span_count=0,
                stack_trace=None,
                annotations=[],
                message_events=[],
                links=[],
                status=status,
                same_process_as_parent_span=None,
                span_kind=self._kinds[0] if is_request(span.name) else self._kinds[1],
            )
            self.trace_exporter.export([data])
        except Exception as exc:
            self._failures.report("span end", exc)

    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        try:
            record = logging.LogRecord("conveyor", logging.INFO, __file__, 0, name, None, None)
            record.custom_dimensions = dimensions(run_id, attributes)
            ids = parse(traceparent)
            if ids is not None:
                record.traceId, record.spanId = ids
            self.event_handler.handle(record)
        except Exception as exc:
            self._failures.report("event", exc)

    def flush(self) -> None:
        for what, owner in (("trace flush", self.trace_exporter), ("event flush", self.event_handler)):
            try:
                self._sync(owner)
            except Exception as exc:
                self._failures.report(what, exc)

    def _sync(self, owner: Any) -> None:
        """Put a sync marker behind everything queued and wait until the worker has sent it all."""
        from opencensus.common.schedule import QueueEvent

        queue = getattr(owner, "_queue", None)
        worker = getattr(owner, "_worker", None)
        if queue is None or worker is None or not worker.is_alive():
            return
        marker = QueueEvent("conveyor-flush")
        queue.put(marker, block=True, timeout=self._flush_timeout)
        if not marker.wait(self._flush_timeout):
            log.warning("telemetry (%s): flush timed out after %.1fs", self.exporter, self._flush_timeout)

    def close(self) -> None:
        """Flush, then stop the worker threads (idempotent)."""
        self.flush()
        try:
            worker = getattr(self.trace_exporter, "_worker", None)
            if worker is not None:
                worker.stop(self._flush_timeout)
            self.event_handler.close(self._flush_timeout)
        except Exception as exc:
            self._failures.report("close", exc)
