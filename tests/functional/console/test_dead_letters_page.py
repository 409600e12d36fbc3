"""The console's dead-letters page over the real local poison queue on Azurite (read-only)."""

from __future__ import annotations

from shared.api.http import HttpRequest
from shared.console.handlers import Console
from shared.engine.model import Message
from shared.queue.storage_queue import StorageQueueWorkQueue
from shared.settings import Settings
from shared.wiring import Services


def test_dead_lettered_messages_are_listed_with_reason_and_run(storage_settings: Settings) -> None:
    queue = StorageQueueWorkQueue.from_settings(storage_settings)
    queue.send(Message(kind="tick", run_id="run-dlq-1", flow="demo", step="etl", attempt=1, tick=3))
    [got] = queue.receive()
    queue.dead_letter(got, "UnknownFlow", "flow '<demo>' is not in flows.yaml")
    console = Console(Services(storage_settings, queue=queue))
    resp = console.handle(HttpRequest("GET", "/dead-letters"))
    body = resp.body.decode()
    assert resp.status == 200
    assert "UnknownFlow" in body and "flow &#39;&lt;demo&gt;&#39; is not in flows.yaml" in body
    assert 'href="/runs/run-dlq-1"' in body and "tick" in body
    assert "Replay" not in body  # read-only until a replay is wired
    [entry] = queue.peek_poison()  # peeked, not taken
    assert entry["reason"] == "UnknownFlow"
