"""The ``start_batch`` message: its shape, its validation and the executor's fan-out."""

from __future__ import annotations

import json

import pytest

from shared.engine.executor import parse_message
from shared.engine.model import MAX_START_BATCH, Message, RunStatus, start_batch_id, start_batch_message
from shared.errors import ValidationError
from tests.unit.engine.support import Harness, make_flow, make_run, start


def test_batch_id_is_a_hash_of_the_ids_and_never_a_run_id() -> None:
    a = start_batch_message(["r1", "r2"], flow="demo")
    assert a.kind == "start_batch" and a.run_ids == ["r1", "r2"]
    assert a.message_id == a.run_id == start_batch_id(["r1", "r2"]) == start_batch_message(["r1", "r2"]).message_id
    assert a.run_id.startswith("batch-") and len(a.run_id) == 38
    assert start_batch_message(["r1", "r3"]).message_id != a.message_id
    with pytest.raises(ValueError):
        start_batch_message([])
    with pytest.raises(ValueError):
        start_batch_message([f"r{i}" for i in range(MAX_START_BATCH + 1)])


def test_other_messages_serialise_as_before() -> None:
    doc = json.loads(Message(kind="start", run_id="r1").with_id().model_dump_json())
    assert "run_ids" not in doc
    assert parse_message(json.dumps(doc)).run_ids is None


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"kind": "start_batch", "run_id": "batch-x"}, "run_ids"),
        ({"kind": "start_batch", "run_id": "batch-x", "run_ids": []}, "run_ids"),
        ({"kind": "start_batch", "run_id": "batch-x", "run_ids": ["a", ""]}, "run_ids"),
        (
            {"kind": "start_batch", "run_id": "batch-x", "run_ids": [f"r{i}" for i in range(MAX_START_BATCH + 1)]},
            "run_ids",
        ),
        ({"kind": "start_batch", "run_id": "batch-x", "run_ids": "r1"}, "run_ids"),
        ({"kind": "start", "run_id": "r1", "run_ids": ["r1"]}, "run_ids"),
    ],
)
def test_malformed_batches_are_refused_naming_the_field(doc: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_message(json.dumps(doc))
    assert e.value.field == field


def test_fan_out_sends_one_start_per_distinct_run_and_touches_no_run() -> None:
    h = Harness(make_flow(("a",)))
    runs = [make_run(h.flow, f"run{i}") for i in range(5)]
    for r in runs:
        assert h.store.create_if_absent(r)
    batch = start_batch_message(["run0", "run1", "run0", "run2", "run3", "run4"], flow="demo")
    h.executor.handle_body(batch.model_dump_json())
    sent = [m for m, _ in h.queue.sent]
    assert sent == [start(r).model_copy(update={"traceparent": ""}) for r in runs]
    assert h.store.saves == 0 and all(h.store.get(r.run_id).status is RunStatus.PENDING for r in runs)
    h.drain()
    assert all(h.store.get(r.run_id).status is RunStatus.SUCCEEDED for r in runs)
    assert len(h.backend.launches) == 5


def test_a_batch_naming_unknown_runs_starts_the_known_ones() -> None:
    h = Harness(make_flow(("a",)))
    assert h.store.create_if_absent(make_run(h.flow, "known"))
    h.queue.send(start_batch_message(["gone", "known"], flow="demo"))
    h.drain()
    assert h.store.get("known").status is RunStatus.SUCCEEDED
    assert len(h.backend.launches) == 1
