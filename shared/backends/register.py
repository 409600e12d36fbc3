"""The ``register`` step: record the trained model in the registry with its lineage.

``launch`` checks the params and returns; the registration runs in the background
(shared.backends.background), so a handler never waits for the registry (an MLflow import
and its SQLite, or Azure ML's API). The remote id is the step's idempotency key with its
launch time; the registry is idempotent on the key, and ``poll`` looks the version up again
by key when this process did not register it, so both survive a restart or a redelivered
message. Locally the same work runs in its own process (shared.backends.local_model_steps).

``params.partition`` (many models: one model per store) is tagged ``conveyor.partition`` on
the version, next to the lineage, and is in the outputs, so a deploy step after a for_each over
the register outputs can route each version to its partition (``${item.partition}``).
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import pydantic

from shared.backends.background import BackgroundWork, lost, unstamped
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.deploy.base import check_partition
from shared.errors import ConveyorError, ValidationError
from shared.flows.model import RegisterParams
from shared.registry.base import ModelRegistry, ModelVersion
from shared.registry.gate import PARTITION_TAG

P = TypeVar("P", bound=pydantic.BaseModel)

_TAG_VALUE_MAX = 5000


def parse_params(model: type[P], params: dict[str, Any]) -> P:
    """Validate rendered step params; the first error names its field as ``params.<path>``."""
    try:
        return model.model_validate(params)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationError(first.get("msg", "invalid"), field=f"params.{loc}" if loc else "params") from exc


def model_name_for(request: LaunchRequest, explicit: str | None) -> str:
    name = explicit or (request.model or {}).get("name")
    if not name:
        raise ValidationError(
            "no model name: set params.model_name or the flow's model.name", field="params.model_name"
        )
    return str(name)


def cast_metrics(raw: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in raw.items():
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValidationError(f"metric must be a number, got {v!r}", field=f"params.metrics.{k}") from None
        if math.isnan(value) or math.isinf(value):
            raise ValidationError(f"metric must be finite, got {v!r}", field=f"params.metrics.{k}")
        out[str(k)] = value
    return out


def lineage_tags(request: LaunchRequest) -> dict[str, str]:
    """Where the model came from: run, flow, trace, source blob, commit and the earlier steps' remote ids."""
    tags: dict[str, str] = {
        "conveyor.run_id": request.run_id,
        "conveyor.flow": request.flow,
        "conveyor.step": request.step,
        "conveyor.traceparent": request.traceparent,
    }
    trigger = request.trigger or {}
    if trigger.get("kind"):
        tags["conveyor.trigger"] = str(trigger["kind"])
    blob = trigger.get("blob") or {}
    if isinstance(blob, dict):
        tags["source.blob_url"] = str(blob.get("url") or "")
        tags["source.blob_etag"] = str(blob.get("etag") or "")
    devops = trigger.get("devops") or {}
    if isinstance(devops, dict):
        tags["source.commit"] = str(devops.get("commit") or "")
        if devops.get("repository"):
            tags["source.repository"] = str(devops["repository"])
    for name, step in (request.steps or {}).items():
        remote_id = step.get("remote_id") if isinstance(step, dict) else None
        if remote_id:
            tags[f"step.{name}.remote_id"] = str(remote_id)
    if request.index is not None:  # an instance of a for_each step: which one, and its item
        tags["conveyor.index"] = str(request.index)
        item = request.item if isinstance(request.item, str) else json.dumps(request.item, default=str)
        tags["conveyor.item"] = item
    return {k: v[:_TAG_VALUE_MAX] for k, v in tags.items() if v}


def version_outputs(mv: ModelVersion) -> dict[str, Any]:
    outputs = {"model_name": mv.name, "version": mv.version, "model_uri": mv.source_uri, "metrics": dict(mv.metrics)}
    if mv.tags.get(PARTITION_TAG):
        outputs["partition"] = mv.tags[PARTITION_TAG]
    return outputs


def failed_status(exc: BaseException) -> StepStatus:
    """A failed step for background work that raised ``exc`` (retryable as the error says)."""
    if isinstance(exc, ConveyorError):
        return StepStatus("failed", error=str(exc), retryable=exc.retryable)
    return StepStatus("failed", error=f"{type(exc).__name__}: {exc}")


class RegisterBackend(JobBackend):
    kind = "register"

    def __init__(self, registry: ModelRegistry, work: BackgroundWork | None = None) -> None:
        self.registry = registry
        self._work = work or BackgroundWork(name="conveyor-register")

    def register(self, request: LaunchRequest) -> ModelVersion:
        """Check the params, then find the version registered with ``request.key`` or register it."""
        params = parse_params(RegisterParams, request.params)
        name = model_name_for(request, params.model_name)
        metrics = cast_metrics(params.metrics)
        tags = {**{str(k): str(v) for k, v in params.tags.items()}, **lineage_tags(request)}
        if params.partition is not None:
            tags[PARTITION_TAG] = check_partition(params.partition)
        before = self.registry.find_by_key(request.key, name)
        return before or self.registry.register(name, params.model_uri, metrics, tags, request.key)

    @staticmethod
    def check(request: LaunchRequest) -> None:
        """Bad params fail the launch at once (ValidationError naming the field)."""
        params = parse_params(RegisterParams, request.params)
        model_name_for(request, params.model_name)
        cast_metrics(params.metrics)
        if params.partition is not None:
            check_partition(params.partition)

    def launch(self, request: LaunchRequest) -> LaunchResult:
        self.check(request)
        remote_id, again = self._work.start(request.key, request.key, lambda: self.register(request))
        return LaunchResult(remote_id=remote_id, reattached=again)

    def poll(self, remote_id: str) -> StepStatus:
        key, launched_at = unstamped(remote_id)
        future = self._work.get(key)
        if future is not None:
            if not future.done():
                return StepStatus("running")
            exc = future.exception()
            if exc is not None:
                return failed_status(exc)
            return StepStatus("succeeded", outputs=version_outputs(future.result()))
        mv = self.registry.find_by_key(key)  # registered by another process (a restart, another instance)
        if mv is not None:
            return StepStatus("succeeded", outputs=version_outputs(mv))
        if not lost(launched_at):
            return StepStatus("running")
        if launched_at is None:
            return StepStatus("failed", error=f"no model version was registered with key {key}")
        return StepStatus(
            "failed", error=f"no model version was registered with key {key}: lost with its host", retryable=True
        )

    def cancel(self, remote_id: str) -> None:
        """A registration is a few calls: nothing to stop."""
