"""``conveyor dlq``, ``backfill`` and ``purge`` on the session Azurite, as an operator types them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from shared.engine.model import Message, Run, RunStatus, StepRun, TriggerContext
from shared.settings import Settings
from shared.wiring import Services
from tests.functional.ops.conftest import container_name, invoke


def old_run(run_id: str, days: float, status: RunStatus, flow: str = "nightly") -> Run:
    at = datetime.now(UTC) - timedelta(days=days)
    return Run(
        run_id=run_id,
        flow=flow,
        status=status,
        trigger=TriggerContext(kind="manual"),
        steps=[StepRun(name="etl", kind="databricks")],
        created_at=at,
        updated_at=at,
    )


# ---------------------------------------------------------------- purge


def test_purge_dry_run_then_for_real_by_status(services: Services) -> None:
    runs = [
        old_run("ancient-ok", 40, RunStatus.SUCCEEDED),
        old_run("ancient-failed", 41, RunStatus.FAILED),
        old_run("ancient-running", 42, RunStatus.RUNNING),
        old_run("recent-ok", 2, RunStatus.SUCCEEDED),
    ]
    assert all(services.store.create_many(runs))
    telemetry = services.settings.home / "telemetry"
    telemetry.mkdir(parents=True)
    (telemetry / "ancient-ok.jsonl").write_text("{}\n")
    code, out, _ = invoke("purge", "--older-than", "30d", "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    assert dry["matched"] == 2 and dry["deleted"] == 0 and sorted(dry["run_ids"]) == ["ancient-failed", "ancient-ok"]
    code, out, _ = invoke("purge", "--older-than", "30d", "--status", "succeeded")
    assert code == 0 and "deleted 1 runs (succeeded)" in out, out
    assert not (telemetry / "ancient-ok.jsonl").exists()
    left = sorted(r.run_id for r in services.store.list_runs())
    assert left == ["ancient-failed", "ancient-running", "recent-ok"]
    code, _, everything = invoke("purge", "--older-than", "30d", "--status", "running")
    assert code == 2 and "--status" in everything and "not a finished status" in everything
    code, _, everything = invoke("purge", "--older-than", "a month")
    assert code == 2 and "--older-than" in everything


# ---------------------------------------------------------------- backfill


def upload(services: Services, names: list[str], data: bytes = b"day,sales\n1,2\n") -> None:
    for name in names:
        services.blobs.upload(container_name(services.settings), name, data)


def test_backfill_starts_each_matching_blob_once(services: Services) -> None:
    upload(services, ["sales/a.csv", "sales/b.csv", "sales/c.csv", "sales/readme.txt", "elsewhere/d.csv"])
    code, out, _ = invoke("backfill", "nightly", "--dry-run", "--json")
    assert code == 0, out
    dry = json.loads(out)
    assert (dry["listed"], dry["created"], dry["duplicates"], dry["ignored"]) == (5, 3, 0, 0)
    assert services.store.list_runs() == []  # a dry run starts nothing
    code, out, _ = invoke("backfill", "nightly", "--json")
    assert code == 0, out
    first = json.loads(out)
    assert first["created"] == 3 and sorted(first["run_ids"]) == sorted(dry["run_ids"])
    runs = services.store.list_runs()
    assert {r.flow for r in runs} == {"nightly"}  # only the flow asked for, not `other`
    assert sorted(r.trigger.blob["name"] for r in runs if r.trigger.blob) == [
        "sales/a.csv",
        "sales/b.csv",
        "sales/c.csv",
    ]
    starts = [r.message for r in services.queue.receive(max_messages=32) if r.message.kind in ("start", "start_batch")]
    assert sorted(m.run_id for m in starts) == sorted(first["run_ids"])
    code, out, _ = invoke("backfill", "nightly", "--json")  # idempotent by url + eTag
    again = json.loads(out)
    assert again["created"] == 0 and again["duplicates"] == 3
    upload(services, ["sales/a.csv"], b"day,sales\n1,3\n")  # a new version: a new eTag
    code, out, everything = invoke("backfill", "nightly", "--prefix", "sales/a")
    assert code == 0 and "started 1 runs" in out and "1 blobs listed" in everything, everything


def test_backfill_since_and_bad_input(services: Services) -> None:
    upload(services, ["sales/old.csv"])
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%MZ")
    code, out, _ = invoke("backfill", "nightly", "--since", future, "--json")
    assert code == 0 and json.loads(out)["considered"] == 0
    code, out, _ = invoke("backfill", "nightly", "--since", "1d", "--json")
    assert json.loads(out)["created"] == 1
    code, _, everything = invoke("backfill", "nightly", "--since", "yesterday")
    assert code == 2 and "--since" in everything
    code, _, everything = invoke("backfill", "nope")
    assert code == 2 and "no flow named 'nope'" in everything
    code, _, everything = invoke("backfill", "nightly", "--container", "other-box")
    assert code == 2 and "does not watch 'other-box'" in everything


# ---------------------------------------------------------------- dead letters


def bury(services: Services, *messages: Message) -> None:
    services.queue.send_many(list(messages))
    for r in services.queue.receive(max_messages=len(messages)):
        services.queue.dead_letter(r, "UnknownFlow", f"no flow for {r.message.run_id}")


def test_dlq_list_and_replay(services: Services, ops_settings: Settings) -> None:
    bury(services, Message(kind="start", run_id="r1", flow="nightly"), Message(kind="start", run_id="r2", flow="other"))
    code, out, _ = invoke("dlq", "list", "--json")
    assert code == 0, out
    listed = {d["run_id"]: d for d in json.loads(out)}
    assert set(listed) == {"r1", "r2"} and listed["r1"]["reason"] == "UnknownFlow"
    assert listed["r1"]["description"] == "no flow for r1" and listed["r1"]["delivery_count"] == 1
    code, out, _ = invoke("dlq", "list")
    assert code == 0 and "UnknownFlow" in out and "r1" in out
    code, out, _ = invoke("dlq", "replay", listed["r1"]["id"])
    assert code == 0 and "1 replayed" in out, out
    [back] = services.queue.receive()
    assert back.message.run_id == "r1" and back.message.message_id == "r1"
    code, out, _ = invoke("dlq", "replay", "no-such-id")
    assert code == 2 and "not found: no-such-id" in out
    code, _, everything = invoke("dlq", "replay")
    assert code == 2 and "--all" in everything
    code, out, _ = invoke("dlq", "replay", "--all", "--flow", "other", "--json")
    assert code == 0 and [d["run_id"] for d in json.loads(out)["replayed"]] == ["r2"]
    code, out, _ = invoke("dlq", "list")
    assert "no dead letters" in out
