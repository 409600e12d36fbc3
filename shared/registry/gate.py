"""The champion/challenger gate: a pure decision, no I/O.

A candidate is promoted when there is no champion yet, or when it beats the champion on the
flow's metric by more than ``min_improvement`` in the flow's direction. Anything else is a
rejection whose reason names both values, so the run (and the CLI) can say why.

Per partition (many models): with ``partition`` the decision is that partition's alone. The
candidate and the champion must both belong to it (their ``conveyor.partition`` tag, when they
have one), so one partition's model is never compared with, or promoted over, another's; a
rejection leaves that partition's champion serving and touches no other partition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from shared.errors import ValidationError
from shared.registry.base import ModelVersion

PARTITION_TAG = "conveyor.partition"  # the version tag naming the partition a model is for
Decision = Literal["promoted", "rejected"]
Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    decision: Decision
    reason: str
    metric: str
    direction: str
    candidate: float
    champion: float | None
    champion_version: str | None
    partition: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_tags(self) -> dict[str, str]:
        """The decision as registry tags (values are strings)."""
        tags = {
            "decision": self.decision,
            "reason": self.reason,
            "metric": self.metric,
            "direction": self.direction,
            "candidate": repr(self.candidate),
            "champion": "" if self.champion is None else repr(self.champion),
            "champion_version": self.champion_version or "",
        }
        if self.partition is not None:
            tags["partition"] = self.partition
        return tags


def _candidate_metric(model: ModelVersion, metric: str) -> float:
    who = "candidate"
    if metric not in model.metrics:
        raise ValidationError(
            f"{who} {model.name} v{model.version} has no metric {metric!r} (has: {sorted(model.metrics)})",
            field=f"metrics.{metric}",
        )
    value = float(model.metrics[metric])
    if math.isnan(value):
        raise ValidationError(
            f"{who} {model.name} v{model.version} metric {metric!r} is NaN", field=f"metrics.{metric}"
        )
    return value


def _check_partition(candidate: ModelVersion, champion: ModelVersion | None, partition: str) -> None:
    """Both models belong to ``partition`` (a model without the tag is taken to)."""
    for who, model in (("candidate", candidate), ("champion", champion)):
        if model is None:
            continue
        own = model.tags.get(PARTITION_TAG)
        if own and own != partition:
            hint = (
                "; give each partition's models a name of their own (e.g. sales-forecaster-${item.inputs.partition})"
                if who == "champion"
                else ""
            )
            raise ValidationError(
                f"{who} {model.name} v{model.version} is the model of partition {own!r}, not of {partition!r}{hint}",
                field="params.partition",
            )


def decide_gate(
    candidate: ModelVersion,
    champion: ModelVersion | None,
    metric: str,
    direction: str,
    min_improvement: float = 0.0,
    partition: str | None = None,
) -> GateDecision:
    """Promote ``candidate`` iff it is strictly better than ``champion`` by ``min_improvement``.

    Also promoted: the first model (no champion), a candidate when the champion lacks the
    metric, and the champion itself (a no-op that keeps it deployed, e.g. on a retried deploy).
    With ``partition``, both must be that partition's models (see the module docstring).
    """
    if partition is not None:
        _check_partition(candidate, champion, partition)
        decision = decide_gate(candidate, champion, metric, direction, min_improvement)
        return replace(decision, partition=partition, reason=f"partition {partition}: {decision.reason}")
    if direction not in ("maximize", "minimize"):
        raise ValidationError(f"must be 'maximize' or 'minimize', got {direction!r}", field="model.direction")
    if min_improvement < 0 or math.isnan(min_improvement):
        raise ValidationError(f"must be >= 0, got {min_improvement!r}", field="model.min_improvement")
    cand = _candidate_metric(candidate, metric)
    if champion is None:
        return GateDecision(
            promote=True,
            decision="promoted",
            reason=f"first model: no champion yet; {metric}={cand:g}",
            metric=metric,
            direction=direction,
            candidate=cand,
            champion=None,
            champion_version=None,
        )
    if champion.name == candidate.name and champion.version == candidate.version:
        return GateDecision(
            promote=True,  # promoting the champion again is a no-op that keeps it deployed
            decision="promoted",
            reason=f"v{candidate.version} is already the champion ({metric}={cand:g})",
            metric=metric,
            direction=direction,
            candidate=cand,
            champion=cand,
            champion_version=champion.version,
        )
    if metric not in champion.metrics or math.isnan(float(champion.metrics[metric])):
        # A champion that cannot be compared (the flow's metric changed) must not block every
        # later model forever: the candidate, which has the metric, takes over.
        return GateDecision(
            promote=True,
            decision="promoted",
            reason=f"champion v{champion.version} has no {metric!r} to compare; candidate {metric}={cand:g}",
            metric=metric,
            direction=direction,
            candidate=cand,
            champion=None,
            champion_version=champion.version,
        )
    champ = float(champion.metrics[metric])
    improvement = cand - champ if direction == "maximize" else champ - cand
    better = improvement > min_improvement
    word = "higher" if direction == "maximize" else "lower"
    margin = f" by more than {min_improvement:g}" if min_improvement > 0 else ""
    if better:
        reason = (
            f"candidate v{candidate.version} {metric}={cand:g} is {word} than champion "
            f"v{champion.version} {metric}={champ:g}{margin} ({direction})"
        )
    else:
        reason = (
            f"candidate v{candidate.version} {metric}={cand:g} is not {word} than champion "
            f"v{champion.version} {metric}={champ:g}{margin} ({direction}); champion stays"
        )
    return GateDecision(
        promote=better,
        decision="promoted" if better else "rejected",
        reason=reason,
        metric=metric,
        direction=direction,
        candidate=cand,
        champion=champ,
        champion_version=champion.version,
    )
