"""Build the Telemetry the settings ask for (``CONVEYOR_TELEMETRY_EXPORTER``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.settings import Settings
    from shared.telemetry.base import Telemetry

EXPORTERS = ("local", "opentelemetry", "opencensus")
_AZURE_EXPORTERS = ("opentelemetry", "opencensus")


def build_telemetry(settings: Settings) -> Telemetry:
    """``local`` writes JSONL under ``<home>/telemetry``; App Insights exporters come with the Azure adapters."""
    exporter = (settings.telemetry_exporter or "local").strip().lower()
    if exporter == "local":
        from shared.telemetry.local import LocalTelemetry

        return LocalTelemetry(settings.home)
    if exporter in _AZURE_EXPORTERS:
        raise ValidationError(
            f"the {exporter!r} Application Insights exporter arrives with the Azure adapters; use 'local' until then",
            field="CONVEYOR_TELEMETRY_EXPORTER",
        )
    raise ValidationError(
        f"unknown exporter {exporter!r}; one of {', '.join(EXPORTERS)}", field="CONVEYOR_TELEMETRY_EXPORTER"
    )
