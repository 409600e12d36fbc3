"""The ``deploy`` step: gate the candidate against the champion, then promote and serve it, or not.

A version is gated once. The decision (and the step's outputs) is stored on the candidate
version as ``gate.*`` tags *before* any alias moves or the endpoint changes, so a redelivered
launch, a retried attempt or a restarted host replays the stored decision instead of deciding
again (which, after a promotion, would compare the candidate with itself). Replaying a
promotion is idempotent (promote and deploy are no-ops when already done) and is skipped
when another version has been promoted since, so a late replay never demotes a newer champion.

A rejection is a successful step: the current deployment stays, and the decision with both
metrics is on the version, in the step outputs and therefore on the run.

``launch`` checks the params and returns; the gate and the deployment (minutes for a managed
online endpoint) run in the background (shared.backends.background); ``poll`` reports, and
after a restart reads the decision back from the version. Locally the same work runs in its
own process (shared.backends.local_model_steps).

Many models: with ``params.partition`` (and ``params.partition_key``) the candidate is gated
against its own partition's champion (``decide_gate(..., partition=)``) and, when promoted,
served as that partition of the routed endpoint (``Deployer.deploy_partition``); a rejected
candidate leaves its partition's champion serving, and no other partition is touched. The
partition is stored with the decision, so replays and polls after a restart look at it again.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from shared.backends.background import BackgroundWork, lost, unstamped
from shared.backends.base import JobBackend, LaunchRequest, LaunchResult, StepStatus
from shared.backends.register import failed_status, model_name_for, parse_params
from shared.deploy.base import Deployer, Deployment, check_partition, check_partition_key
from shared.deploy.local_endpoint import check_endpoint_name
from shared.errors import NotFoundError, ValidationError
from shared.flows.model import DeployParams
from shared.registry.base import ModelRegistry, ModelVersion
from shared.registry.gate import GateDecision, decide_gate

RESULT_TAG = "gate.result"
KEY_TAG = "gate.key"


@dataclass(frozen=True)
class Target:
    """Where a deploy step serves: an endpoint, or one partition of a routed endpoint."""

    endpoint: str
    partition: str | None = None
    partition_key: str | None = None


def _remote_id(name: str, version: str, key: str) -> str:
    return f"{name}/{version}/{key}"


def _split_remote_id(remote_id: str) -> tuple[str, str, str]:
    parts = remote_id.split("/", 2)
    if len(parts) != 3:
        raise NotFoundError(f"not a deploy remote id: {remote_id!r}")
    return parts[0], parts[1], parts[2]


class DeployBackend(JobBackend):
    kind = "deploy"
    # Gate + promote is a read-modify-write on the champion: one at a time per process.
    _gate_lock = threading.Lock()

    def __init__(self, registry: ModelRegistry, deployer: Deployer, work: BackgroundWork | None = None) -> None:
        self.registry = registry
        self.deployer = deployer
        self._work = work or BackgroundWork(name="conveyor-deploy")

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _gate_spec(request: LaunchRequest) -> tuple[str, str, float]:
        spec = request.model or {}
        metric = spec.get("metric")
        if not metric:
            raise ValidationError("the flow's model needs a metric for the gate", field="model.metric")
        direction = str(spec.get("direction") or "maximize")
        try:
            min_improvement = float(spec.get("min_improvement") or 0.0)
        except (TypeError, ValueError):
            raise ValidationError("must be a number", field="model.min_improvement") from None
        return str(metric), direction, min_improvement

    def _serving(self, target: Target) -> Deployment | None:
        try:
            if target.partition is not None:
                return self.deployer.current_partition(target.endpoint, target.partition)
            return self.deployer.current(target.endpoint)
        except NotFoundError:
            return None

    @staticmethod
    def _outputs(
        gate: dict[str, Any], candidate: ModelVersion, target: Target, deployment: Deployment | None
    ) -> dict[str, Any]:
        outputs = {
            "gate": {**gate, "version": candidate.version},
            "decision": gate["decision"],
            "model_name": candidate.name,
            "version": candidate.version,
            "endpoint": target.endpoint,
            "scoring_url": deployment.scoring_url if deployment else None,
            "serving_version": deployment.version if deployment else None,
        }
        if target.partition is not None:
            outputs["partition"] = target.partition
        return outputs

    def _apply_promotion(self, candidate: ModelVersion, target: Target) -> Deployment:
        self.registry.promote(candidate.name, candidate.version)
        if target.partition is not None:
            assert target.partition_key is not None
            return self.deployer.deploy_partition(target.endpoint, target.partition, candidate, target.partition_key)
        return self.deployer.deploy(target.endpoint, candidate)

    @staticmethod
    def _target(params: DeployParams, request: LaunchRequest) -> Target:
        endpoint = check_endpoint_name(params.endpoint or request.flow)
        if params.partition is None:
            if params.partition_key is not None:
                raise ValidationError("partition_key needs params.partition", field="params.partition_key")
            return Target(endpoint)
        partition = check_partition(params.partition)
        if params.partition_key is None:
            raise ValidationError(
                "a partition model needs the column that routes to it (e.g. partition_key: store)",
                field="params.partition_key",
            )
        return Target(endpoint, partition, check_partition_key(params.partition_key))

    @staticmethod
    def _stored_target(doc: dict[str, Any], fallback: Target) -> Target:
        endpoint = str(doc.get("endpoint") or fallback.endpoint)
        if doc.get("partition"):
            key = doc.get("partition_key") or fallback.partition_key
            return Target(endpoint, str(doc["partition"]), str(key) if key else None)
        return Target(endpoint, fallback.partition, fallback.partition_key)

    # ------------------------------------------------------------ port

    def check(self, request: LaunchRequest) -> tuple[str, str, Target, tuple[str, str, float]]:
        """(model name, version, target, gate spec) from the params; ValidationError naming the field."""
        params = parse_params(DeployParams, request.params)
        name = model_name_for(request, params.model_name)
        version = str(params.version).strip()
        if not version or "${" in version:
            raise ValidationError(f"no model version to deploy (got {version!r})", field="params.version")
        return name, version, self._target(params, request), self._gate_spec(request)

    def gate_and_deploy(self, request: LaunchRequest) -> dict[str, Any]:
        """The step's work, synchronously: gate the candidate (or replay its stored decision),
        then promote and deploy it when the gate says so. Returns the step's outputs."""
        name, version, target, (metric, direction, min_improvement) = self.check(request)
        with self._gate_lock:
            candidate = self.registry.get(name, version)
            stored = candidate.tags.get(RESULT_TAG)
            if stored:
                return self._replay(json.loads(stored), candidate, target)
            return self._decide(request, candidate, target, metric, direction, min_improvement)

    def launch(self, request: LaunchRequest) -> LaunchResult:
        name, version, _target, _gate = self.check(request)  # bad params fail the launch at once
        remote_id, again = self._work.start(
            request.key, _remote_id(name, version, request.key), lambda: self.gate_and_deploy(request)
        )
        return LaunchResult(remote_id=remote_id, reattached=again)

    def _decide(
        self,
        request: LaunchRequest,
        candidate: ModelVersion,
        target: Target,
        metric: str,
        direction: str,
        min_improvement: float,
    ) -> dict[str, Any]:
        champion = self.registry.champion(candidate.name)
        decision: GateDecision = decide_gate(
            candidate, champion, metric, direction, min_improvement, partition=target.partition
        )
        gate = decision.as_dict()
        # Record first: whatever happens next, a replay finds this decision.
        where = {"endpoint": target.endpoint}
        if target.partition is not None:
            where.update(partition=target.partition, partition_key=str(target.partition_key))
        record = {
            **decision.as_tags(),
            "key": request.key,
            "run_id": request.run_id,
            "endpoint": target.endpoint,
            "result": json.dumps({"gate": gate, **where}),
        }
        self.registry.record_decision(candidate.name, candidate.version, record)
        deployment = self._apply_promotion(candidate, target) if decision.promote else self._serving(target)
        return self._outputs(gate, candidate, target, deployment)

    def _replay(self, stored: dict[str, Any], candidate: ModelVersion, target: Target) -> dict[str, Any]:
        gate = dict(stored.get("gate") or {})
        target = self._stored_target(stored, target)
        deployment: Deployment | None
        if gate.get("promote"):
            champion = self.registry.champion(candidate.name)
            expected = {candidate.version, gate.get("champion_version")}
            if champion is None or champion.version in expected:
                deployment = self._apply_promotion(candidate, target)
            else:  # promoted since by a newer run: leave it; say so
                gate["superseded_by"] = champion.version
                deployment = self._serving(target)
        else:
            deployment = self._serving(target)
        return self._outputs(gate, candidate, target, deployment)

    def poll(self, remote_id: str) -> StepStatus:
        base, launched_at = unstamped(remote_id)
        name, version, key = _split_remote_id(base)
        future = self._work.get(key)
        if future is not None:
            if not future.done():
                return StepStatus("running")
            exc = future.exception()
            return failed_status(exc) if exc is not None else StepStatus("succeeded", outputs=future.result())
        # gated by another process (a restart, another instance): the decision lives on the version
        try:
            candidate = self.registry.get(name, version)
        except NotFoundError as exc:
            return StepStatus("failed", error=str(exc))
        stored = candidate.tags.get(RESULT_TAG)
        if not stored:
            if not lost(launched_at):
                return StepStatus("running")
            lost_note = ": lost with its host" if launched_at is not None else ""
            return StepStatus(
                "failed", error=f"no gate decision recorded on {name} v{version}{lost_note}", retryable=bool(lost_note)
            )
        doc = json.loads(stored)
        target = self._stored_target(doc, Target(""))
        deployment = self._serving(target) if target.endpoint else None
        return StepStatus(
            "succeeded", outputs=self._outputs(dict(doc.get("gate") or {}), candidate, target, deployment)
        )

    def cancel(self, remote_id: str) -> None:
        """The gate and the deployment are a few calls that leave a consistent record: nothing to stop."""
