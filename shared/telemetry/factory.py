"""Build the Telemetry the settings ask for (``CONVEYOR_TELEMETRY_EXPORTER``).

``local`` writes JSONL under ``<home>/telemetry``; ``opentelemetry`` (azure-monitor-opentelemetry
exporters, supported) and ``opencensus`` (opencensus-ext-azure, past end of support) send to
Application Insights and need ``APPLICATIONINSIGHTS_CONNECTION_STRING``. Unset, the exporter
follows the telemetry adapter (``CONVEYOR_ADAPTER_TELEMETRY``, else ``CONVEYOR_MODE``):
``azure`` -> ``opentelemetry``, ``local`` -> ``local``. Each exporter module is imported
only here, when chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.telemetry.base import Telemetry

EXPORTERS = ("local", "opentelemetry", "opencensus")
DEFAULT_AZURE_EXPORTER = "opentelemetry"


def exporter_name(settings: Settings) -> str:
    """The exporter the settings select (validated)."""
    exporter = (settings.telemetry_exporter or "").strip().lower()
    if not exporter:
        exporter = DEFAULT_AZURE_EXPORTER if settings.adapter("telemetry") == "azure" else "local"
    if exporter not in EXPORTERS:
        raise ValidationError(
            f"unknown exporter {exporter!r}; one of {', '.join(EXPORTERS)}", field="CONVEYOR_TELEMETRY_EXPORTER"
        )
    return exporter


def build_telemetry(settings: Settings) -> Telemetry:
    exporter = exporter_name(settings)
    if exporter == "opentelemetry":
        from shared.telemetry.opentelemetry_exporter import OpenTelemetryAppInsights

        return OpenTelemetryAppInsights.from_settings(settings)
    if exporter == "opencensus":
        from shared.telemetry.opencensus_exporter import OpenCensusAppInsights

        return OpenCensusAppInsights.from_settings(settings)
    from shared.telemetry.local import LocalTelemetry

    return LocalTelemetry(settings.home)
