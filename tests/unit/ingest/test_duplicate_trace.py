"""A duplicate trigger is recorded in the trace of the run it duplicates (one operation per run)."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from shared.telemetry.trace import parse, traceparent_for
from tests.unit.ingest.helpers import event_bytes, flows, service

NOTIFY = {"aeg-event-type": "Notification"}


def test_every_delivery_of_one_event_is_in_the_runs_trace() -> None:
    svc, store, _queue, tel = service(flows(sales=[{"kind": "blob", "container": "landing", "suffix": ".csv"}]))
    body = event_bytes("blob_created_eventgrid.json")
    results = [svc.ingest_eventgrid(body, NOTIFY).results[0] for _ in range(3)]
    assert [r.status for r in results] == ["created", "duplicate", "duplicate"]
    run = store.get(results[0].run_id)
    ids = parse(run.traceparent)
    assert ids is not None and ids[0] == run.run_id
    received = [e for e in tel.events if e[0] == "trigger.received"]
    assert len(received) == 3
    assert {parse(e[1])[0] for e in received} == {run.run_id}  # type: ignore[index]


@given(st.uuids())
def test_traceparent_for_a_run_id_is_valid_and_in_its_trace(value: uuid.UUID) -> None:
    run_id = value.hex
    tp = traceparent_for(run_id)
    ids = parse(tp)
    assert ids is not None and ids[0] == run_id
    assert parse(traceparent_for(run_id)) != ids  # a new span each time


def test_traceparent_for_an_id_that_is_no_trace_id_is_a_random_trace() -> None:
    for odd in ("", "0" * 32, "ABCDEF0123456789" * 2, "run-1", "a" * 31):
        ids = parse(traceparent_for(odd))
        assert ids is not None and ids[0] != odd
