"""flows.yaml: the model (pydantic), loading with line numbers, templating, schedules."""
