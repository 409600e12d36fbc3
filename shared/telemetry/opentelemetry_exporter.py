"""Application Insights through OpenTelemetry (azure-monitor-opentelemetry-exporter): the default.

``azure-monitor-opentelemetry`` (the distro) is the supported successor of OpenCensus, but
its ``configure_azure_monitor()`` installs *global* providers and auto-instrumentation;
Conveyor instead builds private providers around the distro's exporters, so nothing global
changes and nothing is imported before the first telemetry call:

* a ``TracerProvider`` (sampler ALWAYS_ON) with a ``BatchSpanProcessor`` over
  ``AzureMonitorTraceExporter`` — spans -> ``requests``/``dependencies``;
* a ``LoggerProvider`` with a ``BatchLogRecordProcessor`` over ``AzureMonitorLogExporter``
  — events are log records carrying ``microsoft.custom_event.name``, which the exporter
  sends as ``customEvents`` (EventData), in the trace of the caller's traceparent.

Trace continuity: the parent of each OTel span is a remote ``NonRecordingSpan`` built from
the incoming traceparent, so ``operation_Id`` is the run's trace id; the OTel span id is
*pinned* to the span id of ``Span.traceparent`` (what ``base.span`` hands to children,
queue messages and remote job tags) through a thread-local id generator, so children
started from it parent correctly in App Insights. See ``shared.telemetry.appinsights``
for the mapping; ``flush()`` forces both processors; failures are logged, never raised.
"""

from __future__ import annotations

import logging
import threading
import time
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

CUSTOM_EVENT_ATTRIBUTE = "microsoft.custom_event.name"  # azure-monitor-opentelemetry-exporter's marker


def _pinned_id_generator() -> Any:
    """An IdGenerator returning ids pinned for the next span on this thread, else random ones."""
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class PinnedIdGenerator(IdGenerator):
        def __init__(self) -> None:
            self._local = threading.local()
            self._random = RandomIdGenerator()

        def pin(self, trace_id: int | None, span_id: int | None) -> None:
            self._local.trace_id = trace_id
            self._local.span_id = span_id

        def generate_span_id(self) -> int:
            value = getattr(self._local, "span_id", None)
            self._local.span_id = None
            return value or self._random.generate_span_id()

        def generate_trace_id(self) -> int:
            value = getattr(self._local, "trace_id", None)
            self._local.trace_id = None
            return value or self._random.generate_trace_id()

        def is_trace_id_random(self) -> bool:
            return True  # pinned trace ids come from secrets.token_hex (shared.telemetry.trace)

    return PinnedIdGenerator()


def _context(traceparent: str) -> Any:
    """An OTel Context whose current span is the (remote) span of ``traceparent``; empty if invalid."""
    from opentelemetry.context import Context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    ids = parse(traceparent)
    if ids is None:
        return Context()  # never the ambient context: Conveyor's trace comes from the traceparent only
    parent = SpanContext(
        trace_id=int(ids[0], 16), span_id=int(ids[1], 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return set_span_in_context(NonRecordingSpan(parent), Context())


class OpenTelemetryAppInsights(AppInsightsTelemetry):
    """Telemetry facade -> Application Insights via OpenTelemetry SDK + Azure Monitor exporters.

    ``span_exporter`` / ``log_exporter`` take already-built exporters (any OTel
    SpanExporter / LogRecordExporter); otherwise the Azure Monitor ones are built from
    ``connection_string``, ``credential`` (Entra ID ingestion; None = the key in the
    connection string) and ``exporter_options`` (passed through: ``disable_offline_storage``,
    ``storage_directory``, ``timeout``, ``retry_total``, ``retry_backoff_factor``...).
    """

    exporter = "opentelemetry"

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        credential: Any = None,
        service_name: str = "conveyor",
        exporter_options: Mapping[str, Any] | None = None,
        span_exporter: Any = None,
        log_exporter: Any = None,
        schedule_delay_millis: int = 5000,
        flush_timeout_millis: int = 10_000,
    ) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._kinds = (SpanKind.SERVER, SpanKind.INTERNAL)
        self._status = (Status, StatusCode)
        self._info = SeverityNumber.INFO
        self._failures = FailureLog(log, self.exporter)
        self._flush_timeout_millis = flush_timeout_millis
        self._lock = threading.Lock()
        self._open: dict[int, Any] = {}

        resource = Resource.create({"service.name": service_name})
        self._ids = _pinned_id_generator()
        # Private providers (never set as the global ones); both flush at interpreter exit.
        self.tracer_provider = TracerProvider(resource=resource, sampler=ALWAYS_ON, id_generator=self._ids)
        self.logger_provider = LoggerProvider(resource=resource)
        if span_exporter is None or log_exporter is None:
            from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter

            options = exporter_kwargs(connection_string, credential, exporter_options)
            if span_exporter is None:
                span_exporter = AzureMonitorTraceExporter(tracer_provider=self.tracer_provider, **options)
            if log_exporter is None:
                log_exporter = AzureMonitorLogExporter(**options)
        self.span_exporter = span_exporter
        self.log_exporter = log_exporter
        self.tracer_provider.add_span_processor(
            BatchSpanProcessor(span_exporter, schedule_delay_millis=schedule_delay_millis)
        )
        self.logger_provider.add_log_record_processor(
            BatchLogRecordProcessor(log_exporter, schedule_delay_millis=schedule_delay_millis)
        )
        self._tracer = self.tracer_provider.get_tracer("conveyor")
        self._logger = self.logger_provider.get_logger("conveyor")

    # ------------------------------------------------------------ Telemetry
    def _start(self, span: Span) -> None:
        try:
            own = parse(span.traceparent)
            self._ids.pin(int(own[0], 16) if own else None, int(own[1], 16) if own else None)
            try:
                otel = self._tracer.start_span(
                    span.name,
                    context=_context(span.parent),
                    kind=self._kinds[0] if is_request(span.name) else self._kinds[1],
                    start_time=time.time_ns(),
                )
            finally:
                self._ids.pin(None, None)
            with self._lock:
                self._open[id(span)] = otel
        except Exception as exc:
            self._failures.report("span start", exc)

    def _end(self, span: Span) -> None:
        try:
            with self._lock:
                otel = self._open.pop(id(span), None)
            if otel is None:
                return
            otel.set_attributes(dimensions(span.run_id, span.attributes))
            status, code = self._status
            if span.status == "error":
                otel.set_status(status(code.ERROR, error_description(span)))
            else:
                otel.set_status(status(code.OK))
            otel.end(end_time=time.time_ns())
        except Exception as exc:
            self._failures.report("span end", exc)

    def event(
        self, name: str, *, traceparent: str, run_id: str | None = None, attributes: dict[str, Any] | None = None
    ) -> None:
        try:
            attrs: dict[str, Any] = dimensions(run_id, attributes)
            attrs[CUSTOM_EVENT_ATTRIBUTE] = name
            self._logger.emit(
                timestamp=time.time_ns(),
                context=_context(traceparent),
                severity_number=self._info,
                severity_text="INFO",
                body=name,
                attributes=attrs,
            )
        except Exception as exc:
            self._failures.report("event", exc)

    def flush(self) -> None:
        for what, provider in (("trace flush", self.tracer_provider), ("log flush", self.logger_provider)):
            try:
                if not provider.force_flush(self._flush_timeout_millis):
                    log.warning("telemetry (%s): %s timed out", self.exporter, what)
            except Exception as exc:
                self._failures.report(what, exc)

    def close(self) -> None:
        """Flush, then stop the export threads (idempotent)."""
        self.flush()
        for what, provider in (("trace shutdown", self.tracer_provider), ("log shutdown", self.logger_provider)):
            try:
                provider.shutdown()
            except Exception as exc:
                self._failures.report(what, exc)
