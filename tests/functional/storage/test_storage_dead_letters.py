"""The local poison queue as a dead-letter queue on Azurite: list and replay.

Dead-lettered entries are listed with reason, description, delivery count and run (all of
them, not only the 32 a peek shows); a replay re-sends the original message to the work
queue with its message id, deletes the entry only after the send, and leaves every other
entry visible in the poison queue.
"""

from __future__ import annotations

import pytest

from shared.engine.model import Message
from shared.errors import TransientError
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import Settings


@pytest.fixture
def queue(storage_settings: Settings) -> StorageQueueWorkQueue:
    return StorageQueueWorkQueue.from_settings(storage_settings.with_overrides(max_delivery_count=2))


def bury(queue: StorageQueueWorkQueue, *messages: Message, reason: str = "UnknownFlow") -> None:
    queue.send_many(list(messages))
    got = []
    while len(got) < len(messages):
        batch = queue.receive(max_messages=32)
        assert batch
        got += batch
    for r in got:
        queue.dead_letter(r, reason, f"cannot handle {r.message.run_id}")


def poison_count(queue: StorageQueueWorkQueue) -> int:
    return int(queue._poison.get_queue_properties().approximate_message_count or 0)


def test_list_shows_every_entry_with_its_run_and_leaves_them_visible(queue: StorageQueueWorkQueue) -> None:
    bury(queue, *[Message(kind="start", run_id=f"run{i:02d}", flow="f" if i % 2 else "g") for i in range(40)])
    queue._client.send_message("garbage")
    queue.receive()  # InvalidMessage: straight to poison
    listed = queue.dead_letters(limit=100)
    assert len(listed) == 41  # more than a peek (32) shows
    by_run = {d.run_id: d for d in listed}
    entry = by_run["run07"]
    assert (entry.flow, entry.kind, entry.reason) == ("f", "start", "UnknownFlow")
    assert entry.description == "cannot handle run07" and entry.delivery_count == 1 and entry.message_id == "run07"
    assert entry.dead_lettered_at is not None
    [junk] = [d for d in listed if d.message is None]
    assert junk.reason == "InvalidMessage" and junk.body == "garbage"
    assert len(queue.dead_letters(limit=100)) == 41  # released: a second listing sees them all again
    assert len(queue.dead_letters(limit=5)) == 5


def test_replay_one_by_id_resends_the_original_and_removes_only_it(queue: StorageQueueWorkQueue) -> None:
    tick = Message(kind="tick", run_id="r1", flow="f", step="train", attempt=2, tick=7)
    bury(queue, tick, Message(kind="start", run_id="r2", flow="f"))
    entry = next(d for d in queue.dead_letters() if d.run_id == "r1")
    report = queue.replay_dead_letters([entry.id])
    assert [d.run_id for d in report.replayed] == ["r1"] and report.missing == []
    [again] = queue.receive()
    assert again.message == tick.with_id()  # the same message, its id intact
    assert again.message.message_id == "r1:train:2:7"
    assert [d.run_id for d in queue.dead_letters()] == ["r2"]
    assert queue.replay_dead_letters(["nope"]).missing == ["nope"]
    # the original message id selects it too
    assert [d.run_id for d in queue.replay_dead_letters(["r2"]).replayed] == ["r2"]
    assert queue.dead_letters() == []


def test_replay_all_of_one_flow_keeps_others_and_unreplayable(queue: StorageQueueWorkQueue) -> None:
    bury(queue, *[Message(kind="start", run_id=f"a{i}", flow="alpha") for i in range(5)])
    bury(queue, Message(kind="start", run_id="b0", flow="beta"))
    queue._client.send_message("{broken")
    queue.receive()
    report = queue.replay_dead_letters(None, flow="alpha")
    assert sorted(d.run_id for d in report.replayed) == [f"a{i}" for i in range(5)]
    assert sorted(m.message.run_id for m in queue.receive(max_messages=10)) == [f"a{i}" for i in range(5)]
    everything = queue.replay_dead_letters(None)
    assert [d.run_id for d in everything.replayed] == ["b0"]
    assert [why for _, why in everything.kept] == ["not a Conveyor message: nothing to replay"]
    assert poison_count(queue) == 1


def test_a_failed_send_keeps_the_entry(queue: StorageQueueWorkQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    bury(queue, Message(kind="start", run_id="r1", flow="f"))

    def down(message: Message, delay_seconds: float = 0.0) -> None:
        raise TransientError("queue down", service="queue")

    monkeypatch.setattr(queue, "send", down)
    report = queue.replay_dead_letters(None)
    assert report.replayed == [] and report.kept[0][1].startswith("send failed, kept")
    assert [d.run_id for d in queue.dead_letters()] == ["r1"]
