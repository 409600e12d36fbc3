"""The recovery settings refuse values that would stop or spin the stall sweep, naming the variable."""

from __future__ import annotations

import pytest

from shared.errors import ValidationError
from shared.settings import Settings


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "soon"])
def test_the_sweep_interval_must_be_a_positive_number(raw: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings.from_env({"CONVEYOR_SWEEP_INTERVAL_SECONDS": raw})
    assert err.value.field == "CONVEYOR_SWEEP_INTERVAL_SECONDS"


def test_recovery_defaults() -> None:
    s = Settings.from_env({})
    assert (s.visibility_timeout_seconds, s.stall_margin_seconds, s.sweep_interval_seconds) == (30, 5, 10.0)
    assert Settings.from_env({"CONVEYOR_SWEEP_INTERVAL_SECONDS": "0.5"}).sweep_interval_seconds == 0.5
