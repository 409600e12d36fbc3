"""The champion/challenger gate: every branch, and the rule as a property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import ValidationError
from shared.registry.base import ModelVersion
from shared.registry.gate import GateDecision, decide_gate


def mv(version: str, **metrics: float) -> ModelVersion:
    return ModelVersion(name="m", version=version, source_uri=f"file:///m/{version}", metrics=dict(metrics))


def test_no_champion_promotes_first_model() -> None:
    d = decide_gate(mv("1", r2=0.1), None, "r2", "maximize")
    assert d.promote and d.decision == "promoted"
    assert "first model" in d.reason
    assert d.champion is None and d.champion_version is None
    assert d.candidate == 0.1


def test_better_candidate_is_promoted_maximize() -> None:
    d = decide_gate(mv("2", r2=0.9), mv("1", r2=0.8), "r2", "maximize")
    assert d.promote and d.decision == "promoted"
    assert (d.candidate, d.champion, d.champion_version) == (0.9, 0.8, "1")


def test_worse_candidate_is_rejected_with_both_values() -> None:
    d = decide_gate(mv("2", r2=0.71), mv("1", r2=0.83), "r2", "maximize")
    assert not d.promote and d.decision == "rejected"
    assert "0.71" in d.reason and "0.83" in d.reason
    assert "v1" in d.reason and "v2" in d.reason


def test_equal_metric_is_rejected() -> None:
    d = decide_gate(mv("2", r2=0.5), mv("1", r2=0.5), "r2", "maximize")
    assert d.decision == "rejected"


def test_minimize_prefers_lower() -> None:
    assert decide_gate(mv("2", rmse=1.0), mv("1", rmse=2.0), "rmse", "minimize").promote
    d = decide_gate(mv("2", rmse=3.0), mv("1", rmse=2.0), "rmse", "minimize")
    assert not d.promote and "3" in d.reason and "2" in d.reason


def test_min_improvement_must_be_exceeded() -> None:
    champion = mv("1", r2=0.5)
    assert not decide_gate(mv("2", r2=0.55), champion, "r2", "maximize", min_improvement=0.1).promote
    assert decide_gate(mv("3", r2=0.7), champion, "r2", "maximize", min_improvement=0.1).promote


def test_candidate_without_metric_names_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        decide_gate(mv("2", rmse=1.0), mv("1", r2=0.5), "r2", "maximize")
    assert err.value.field == "metrics.r2"


def test_candidate_nan_metric_is_invalid() -> None:
    with pytest.raises(ValidationError):
        decide_gate(mv("2", r2=math.nan), None, "r2", "maximize")


def test_champion_without_metric_does_not_block_forever() -> None:
    d = decide_gate(mv("2", r2=0.1), mv("1", rmse=1.0), "r2", "maximize")
    assert d.promote and d.champion_version == "1" and d.champion is None


def test_candidate_that_is_already_champion_stays_promoted() -> None:
    # e.g. a retried deploy attempt after the promotion went through: it must still deploy it
    d = decide_gate(mv("1", r2=0.9), mv("1", r2=0.9), "r2", "maximize")
    assert d.promote and d.decision == "promoted" and "already the champion" in d.reason


def test_bad_direction_and_negative_margin() -> None:
    with pytest.raises(ValidationError) as err:
        decide_gate(mv("1", r2=1.0), None, "r2", "up")
    assert err.value.field == "model.direction"
    with pytest.raises(ValidationError) as err:
        decide_gate(mv("1", r2=1.0), None, "r2", "maximize", min_improvement=-1)
    assert err.value.field == "model.min_improvement"


def test_decision_serialises() -> None:
    d = decide_gate(mv("2", r2=0.9), mv("1", r2=0.8), "r2", "maximize")
    assert GateDecision(**d.as_dict()) == d
    tags = d.as_tags()
    assert tags["decision"] == "promoted" and float(tags["candidate"]) == 0.9 and float(tags["champion"]) == 0.8


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    cand=finite,
    champ=finite,
    margin=st.floats(min_value=0, max_value=10, allow_nan=False),
    direction=st.sampled_from(["maximize", "minimize"]),
)
def test_promote_iff_strictly_better_by_margin(cand: float, champ: float, margin: float, direction: str) -> None:
    d = decide_gate(mv("2", r2=cand), mv("1", r2=champ), "r2", direction, min_improvement=margin)
    gain = cand - champ if direction == "maximize" else champ - cand
    assert d.promote == (gain > margin)
    assert d.decision == ("promoted" if d.promote else "rejected")
    assert d.candidate == cand and d.champion == champ and d.champion_version == "1"
