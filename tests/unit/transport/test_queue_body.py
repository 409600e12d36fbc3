"""A Storage Queue body that carries the handler-failure count is parsed as strictly as any
untrusted JSON: hostile bodies are malformed messages (dead-lettered), never a crash."""

from __future__ import annotations

import pytest

from shared.queue.storage_queue import FAILURES_FIELD, _decode


def test_a_counted_body_reads_back_its_message_and_failures() -> None:
    body = f'{{"kind": "start", "run_id": "r1", "flow": "f", "{FAILURES_FIELD}": 2, "handler_error": "boom"}}'
    message, failures, error = _decode(body)
    assert (message.run_id, failures, error) == ("r1", 2, "boom")


@pytest.mark.parametrize(
    "body",
    [
        f'{{"{FAILURES_FIELD}": 1, "x": ' + "[" * 10_000 + "]" * 10_000 + "}",  # deep nesting
        f'{{"{FAILURES_FIELD}": {"9" * 5000}}}',  # a 5,000-digit count
        f'{{"{FAILURES_FIELD}": NaN}}',
        f'{{"{FAILURES_FIELD}": -1, "kind": "start", "run_id": "r", "flow": "f"}}',
        f'["{FAILURES_FIELD}"]',
    ],
)
def test_hostile_counted_bodies_are_malformed_not_a_crash(body: str) -> None:
    with pytest.raises(ValueError):
        _decode(body)
