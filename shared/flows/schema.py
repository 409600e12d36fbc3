"""JSON schema of flows.yaml, for editor completion and validation.

Point an editor at it, e.g. with the YAML language server's modeline at the top of the file::

    # yaml-language-server: $schema=./flows.schema.json

``conveyor`` can write it with ``json.dumps(json_schema(), indent=2)``.
"""

from __future__ import annotations

from typing import Any

from shared.flows.model import FlowsFile

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a flows.yaml file."""
    schema = FlowsFile.model_json_schema(mode="validation")
    out: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": "https://conveyor.local/flows.schema.json",
        "title": "Conveyor flows.yaml",
        "description": (
            "Flows: triggers (blob, schedule, azure_devops, manual) start runs of ordered steps "
            "(batch, databricks, azureml, register, deploy) as a graph (needs, for_each, max_parallel, if, "
            "run_if). Step params may use ${trigger.*}, ${steps.<upstream step>.outputs.*}, ${run.*}, "
            "${flow.*} and, in a for_each step, ${item} and ${index}; commands run as argument lists "
            "without a shell, each slot filling one argument; env: sets a step's process environment."
        ),
    }
    out.update({k: v for k, v in schema.items() if k not in ("title", "description")})
    return out
