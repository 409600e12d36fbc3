"""The local host's Event Grid source (the blob watcher) on Azurite, with hostile blob names.

A blob whose name the ingest parser refuses (a newline, a carriage return, a tab, DEL) is
skipped with a warning and a ``trigger.refused`` telemetry event; every other blob of the
container, landed before or after it, still starts its run -- the watcher never stops at a bad
name. (Azurite itself turns a backslash into ``/``, and answers 500 to any listing of a
container holding a name with ESC, which real Blob Storage lists encoded: neither can be
staged here.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient

from shared.host.runtime import LocalHost
from shared.settings import Settings
from shared.telemetry.local import read_trace
from tests.conftest import unique_suffix

BAD = ["bad\nname.csv", "cr\rname.csv", "tab\tname.csv", "del\x7fname.csv"]


def _eventually(check: Callable[[], bool], seconds: float = 60.0) -> bool:
    """Poll ``check`` (bounded); the watcher works on its own interval."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return check()


def test_bad_names_are_skipped_and_later_blobs_still_start(e2e_settings: Settings, tmp_path: Path, caplog: Any) -> None:
    container = f"sec{unique_suffix()}"
    flows = tmp_path / "flows.yaml"
    flows.write_text(
        "flows:\n  land:\n    triggers:\n      - kind: blob\n"
        f"        container: {container}\n        suffix: .csv\n"
        "    steps:\n      - name: etl\n        kind: databricks\n"
        "        params:\n          python_file: samples/databricks_etl/medallion.py\n",
        encoding="utf-8",
    )
    s = e2e_settings.with_overrides(flows_file=flows)
    # The raw SDK client: Conveyor's own upload refuses such names, but anyone may write them.
    raw = BlobServiceClient.from_connection_string(s.connection_string).get_container_client(container)
    raw.create_container()
    raw.upload_blob("first.csv", b"a,b\n1,2\n")
    for name in BAD:
        raw.upload_blob(name, b"a,b\n1,2\n")
    with caplog.at_level(logging.WARNING), LocalHost(s, workers=0, schedule=False) as host:
        services = host.services
        assert services is not None

        def names() -> set[str]:
            return {str(r.trigger.blob["name"]) for r in services.store.list_runs() if r.trigger.blob}

        assert _eventually(lambda: "first.csv" in names()), names()
        raw.upload_blob("later.csv", b"a,b\n3,4\n")  # lands after the bad ones
        assert _eventually(lambda: "later.csv" in names()), names()

        def refused() -> list[dict[str, Any]]:
            services.telemetry.flush()
            return [r for r in read_trace(s.home, None) if r["name"] == "trigger.refused"]

        assert _eventually(lambda: len(refused()) >= len(BAD)), refused()
        assert names() == {"first.csv", "later.csv"}
        # each bad blob version is refused once, not on every pass
        time.sleep(3 * s.watch_interval_seconds)
        assert len(refused()) == len(BAD)
        warned = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
        for name in BAD:
            assert repr(name)[1:-1] in warned, warned
