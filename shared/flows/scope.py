"""What ``${...}`` references can name, and the check that they name something.

A run's template scope (shared.engine.executor.template_scope) is ``trigger`` (what
``TriggerContext.template_scope()`` holds for the trigger that started the run), ``steps``
(the earlier steps' outputs), ``run`` and ``flow``. The fields each trigger kind sets come
from the ingest code (``BlobEvent.as_trigger``, the schedule firing, ``DevOpsEvent.as_trigger``;
tests/unit/flows/test_scope.py holds these lists to it), and the outputs each step kind
produces from its backends (local and Azure: the union, so a flow validates in both modes).

:func:`reference_problems` reports references that no trigger of the flow sets, fields a
trigger kind does not have, and outputs a step kind does not produce. Whether a referenced
step exists and comes earlier is ``step_problems``' business (shared.flows.model); roots other
than these four are left to it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["STEP_OUTPUTS", "TRIGGER_FIELDS", "reference_problems"]

# trigger.<scope key>.<field>, per trigger kind
TRIGGER_FIELDS: dict[str, tuple[str, ...]] = {
    "blob": (
        "url",
        "container",
        "name",
        "etag",
        "size",
        "content_type",
        "event_id",
        "event_time",
        "api",
        "settle_seconds",
    ),
    "schedule": ("fire_time", "timezone", "cron", "caught_up"),
    "azure_devops": (
        "event_type",
        "event_id",
        "repository",
        "branch",
        "commit",
        "build_id",
        "build_number",
        "result",
        "release",
        "environment",
    ),
}
MANIFEST_FIELDS = ("folder", "folder_url", "manifest")  # trigger.blob.* of a blob trigger with a manifest
TRIGGER_KEYS = {"blob": "blob", "schedule": "schedule", "devops": "azure_devops"}  # scope key -> trigger kind
TRIGGER_COMMON = ("kind", "source", "params")

# steps.<name>.outputs.<key>, per step kind (below result/metrics/outputs/gate: what the job produced)
STEP_OUTPUTS: dict[str, tuple[str, ...]] = {
    "batch": ("job_id", "tasks", "output_prefix", "outputs", "outputs_truncated", "outputs_count"),
    "databricks": ("run_id", "result", "run_page_url"),
    "azureml": ("pipeline_run", "metrics", "outputs", "model_uri", "studio_url", "portal_url", "inputs"),
    "register": ("model_name", "version", "model_uri", "metrics", "partition"),
    "deploy": (
        "gate",
        "decision",
        "model_name",
        "version",
        "endpoint",
        "scoring_url",
        "serving_version",
        "partition",
    ),
}
STEP_FIELDS = ("outputs", "remote_id", "state")
RUN_FIELDS = ("id", "flow", "reruns")
FLOW_FIELDS = ("name", "model")


def reference_problems(steps: Sequence[Any], triggers: Sequence[Any]) -> list[str]:
    """One ``steps[i].<field>: message`` per reference that cannot name anything in this flow.

    ``steps`` and ``triggers`` are plain dicts (raw YAML or model dumps); entries that are not
    dicts, and references that do not parse, are left to the field validation.
    """
    from shared.flows.template import TemplateError, references_by_field

    kinds = {t["kind"] for t in triggers if isinstance(t, Mapping) and isinstance(t.get("kind"), str)}
    manifest = any(isinstance(t, Mapping) and t.get("kind") == "blob" and t.get("manifest") for t in triggers)
    step_kinds = {
        s["name"]: s.get("kind") if isinstance(s.get("kind"), str) else None
        for s in steps
        if isinstance(s, Mapping) and isinstance(s.get("name"), str)
    }
    problems: list[str] = []
    earlier: set[str] = set()
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            continue
        visible = {name: kind for name, kind in step_kinds.items() if name in earlier}
        if isinstance(step.get("name"), str):
            earlier.add(step["name"])
        by_field: dict[str, set[str]] = {}
        for key in ("params", "env"):
            value = step.get(key)
            if isinstance(value, (Mapping, list)):
                try:
                    by_field.update(references_by_field(value, f"steps[{i}].{key}"))
                except TemplateError:
                    continue
        for field, refs in sorted(by_field.items()):
            for ref in sorted(refs):
                message = _check(ref.split("."), kinds, manifest, visible)
                if message:
                    problems.append(f"{field}: ${{{ref}}}: {message}")
    return problems


def _check(parts: list[str], kinds: set[str], manifest: bool, step_kinds: Mapping[str, str | None]) -> str | None:
    root = parts[0]
    if root == "trigger" and len(parts) > 1:
        return _trigger(parts, kinds, manifest)
    if root == "steps" and len(parts) > 2 and parts[1] in step_kinds:
        field = parts[2]
        if field not in STEP_FIELDS:
            return f"a step has no field {field!r} (known: {', '.join(STEP_FIELDS)})"
        kind = step_kinds[parts[1]] or ""
        known = STEP_OUTPUTS.get(kind)
        if field == "outputs" and len(parts) > 3 and known and parts[3] not in known:
            article = "an" if kind[0] in "aeiou" else "a"
            return f"{article} {kind} step has no output {parts[3]!r} (its outputs: {', '.join(known)})"
        return None
    if root == "run" and len(parts) > 1 and parts[1] not in RUN_FIELDS:
        return f"the run has no field {parts[1]!r} (known: {', '.join(RUN_FIELDS)})"
    if root == "flow" and len(parts) > 1 and parts[1] not in FLOW_FIELDS:
        return f"the flow has no field {parts[1]!r} (known: {', '.join(FLOW_FIELDS)})"
    return None


def _trigger(parts: list[str], kinds: set[str], manifest: bool) -> str | None:
    field = parts[1]
    have = ", ".join(sorted(kinds)) or "none"
    if field == "params":
        if len(parts) > 2 and "manual" not in kinds:
            return f"only a manual trigger sets trigger.params, and this flow has none (its triggers: {have})"
        return None
    if field in TRIGGER_COMMON:
        return None
    kind = TRIGGER_KEYS.get(field)
    if kind is None:
        known = ", ".join([*TRIGGER_COMMON, *TRIGGER_KEYS])
        return f"a trigger has no field {field!r} (known: {known})"
    if kind not in kinds:
        return f"only {kind} triggers set trigger.{field}, and this flow has none (its triggers: {have})"
    if len(parts) > 2:
        name = parts[2]
        known_fields = TRIGGER_FIELDS[kind] + (MANIFEST_FIELDS if kind == "blob" and manifest else ())
        if name not in known_fields:
            if kind == "blob" and name in MANIFEST_FIELDS:
                return f"trigger.blob.{name} is set only for blob triggers with a manifest"
            return f"trigger.{field} has no field {name!r} (known: {', '.join(known_fields)})"
    return None
