"""The console's dead-letters page over the real local poison queue on Azurite: listed, then replayed."""

from __future__ import annotations

import re
from urllib.parse import urlencode

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
    [entry] = queue.dead_letters()  # listed, not taken
    assert entry.reason == "UnknownFlow"
    # Replay through the page: the same-origin form post with the page's token
    token = re.search(r'name="csrf" value="([^"]+)"', body)
    assert token is not None and "Replay" in body
    cookie = resp.headers["Set-Cookie"].split(";", 1)[0]
    origin = {"Host": "127.0.0.1:7071", "Origin": "http://127.0.0.1:7071", "Cookie": cookie}
    form = urlencode({"csrf": token.group(1), "message_id": entry.message_id}).encode()
    post = HttpRequest(
        "POST",
        "/dead-letters/replay",
        headers={**origin, "Content-Type": "application/x-www-form-urlencoded"},
        body=form,
    )
    assert console.handle(post).status == 303
    assert queue.dead_letters() == []
    [back] = queue.receive()  # the original message, its id intact
    assert back.message.message_id == got.message.message_id and back.message.run_id == "run-dlq-1"
