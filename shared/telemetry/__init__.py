"""One telemetry facade; a local JSONL sink and Application Insights exporters behind it."""
