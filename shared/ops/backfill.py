"""Backfill: start a flow for blobs that already exist (``conveyor backfill FLOW``).

The blobs are listed through the BlobStore port (Azurite locally, Blob Storage in Azure) and
each becomes a real ``Microsoft.Storage.BlobCreated`` event (the one the local watcher
delivers), ingested for that one flow by the same code as a live event. The run id is the
live one, ``run_id_for(flow, url, eTag)``, so a backfill is idempotent: running it twice,
or over blobs whose live event already started a run, starts nothing new.

Ingest is paced: events go in chunks of ``CHUNK`` (one ``create_many`` and a few sends
each) on at most ``parallel`` threads. A chunk that fails is counted and reported; running
the backfill again picks it up (what it did create is a duplicate the second time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from shared.errors import ConveyorError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from shared.blobs.base import BlobInfo
    from shared.ingest.service import IngestResult
    from shared.wiring import Services

log = logging.getLogger("conveyor.ops.backfill")

CHUNK = 100
MAX_PARALLEL = 16


@dataclass
class BackfillReport:
    flow: str
    container: str
    prefix: str
    since: datetime | None
    dry_run: bool
    listed: int = 0  # blobs under the prefix
    considered: int = 0  # of those, modified at or after ``since``
    created: int = 0  # runs started (dry run: that would start)
    duplicates: int = 0  # already had their run
    ignored: int = 0  # the flow's trigger ignores them (suffix, empty, waiting for a manifest)
    failed: int = 0  # in chunks that failed (run the backfill again)
    errors: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # created (dry run: would be)

    def as_json(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "container": self.container,
            "prefix": self.prefix,
            "since": self.since.isoformat() if self.since else None,
            "dry_run": self.dry_run,
            "listed": self.listed,
            "considered": self.considered,
            "created": self.created,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "failed": self.failed,
            "errors": self.errors[:20],
            "run_ids": self.run_ids,
        }


def blob_container(services: Services, flow: str, container: str | None) -> str:
    """``container``, or the one container the flow's blob triggers watch."""
    spec = services.flows.flows.get(flow)
    if spec is None:
        known = ", ".join(sorted(services.flows.flows)) or "none"
        raise NotFoundError(f"no flow named {flow!r} (known flows: {known})")
    watched = sorted({t.container for t in spec.triggers if getattr(t, "kind", None) == "blob"})  # type: ignore[union-attr]
    if not watched:
        raise ValidationError(f"flow {flow!r} has no blob trigger: nothing to backfill", field="FLOW")
    if container is None:
        if len(watched) > 1:
            raise ValidationError(f"flow {flow!r} watches {', '.join(watched)}: pick one", field="--container")
        return watched[0]
    if container not in watched:
        raise ValidationError(
            f"flow {flow!r} does not watch {container!r} (it watches {', '.join(watched)})", field="--container"
        )
    return container


def backfill(
    services: Services,
    flow: str,
    *,
    container: str | None = None,
    prefix: str = "",
    since: datetime | None = None,
    dry_run: bool = False,
    parallel: int = 4,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> BackfillReport:
    """List, filter and ingest; ``on_total(n)`` once, then ``on_progress(done)`` per chunk."""
    from shared.ingest.service import IngestService

    if not 1 <= parallel <= MAX_PARALLEL:
        raise ValidationError(f"must be 1-{MAX_PARALLEL}", field="--parallel")
    name = blob_container(services, flow, container)
    report = BackfillReport(flow=flow, container=name, prefix=prefix, since=since, dry_run=dry_run)
    blobs = services.blobs.list_blobs(name, prefix)
    report.listed = len(blobs)
    chosen = [b for b in blobs if since is None or b.last_modified >= since]
    chosen.sort(key=lambda b: (b.last_modified, b.name))  # oldest first, as they arrived
    report.considered = len(chosen)
    events = _events(services, chosen)
    if on_total is not None:
        on_total(len(events))
    ingest = IngestService.from_services(services)
    chunks = [events[i : i + CHUNK] for i in range(0, len(events), CHUNK)]

    def one(chunk: list[dict[str, Any]]) -> list[IngestResult]:
        return ingest.ingest_blob_events(chunk, flow=flow, dry_run=dry_run)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {pool.submit(one, c): len(c) for c in chunks}
        for future in as_completed(futures):
            try:
                results = future.result()
            except ConveyorError as exc:
                report.failed += futures[future]
                report.errors.append(str(exc))
                log.warning("backfill %s: a chunk of %d blobs failed: %s", flow, futures[future], exc)
            else:
                _count(report, results)
            if on_progress is not None:
                on_progress(futures[future])
    return report


def _events(services: Services, blobs: list[BlobInfo]) -> list[dict[str, Any]]:
    """Each blob as the BlobCreated event the watcher would deliver (ingest parses it as a live one)."""
    from shared.host.watcher import account_name
    from shared.ingest.eventgrid import blob_created_event

    account = services.settings.azure.storage.account_name or account_name(services.settings)
    return [blob_created_event(b, account) for b in blobs]


def _count(report: BackfillReport, results: list[IngestResult]) -> None:
    for r in results:
        if r.status in ("created", "new"):
            report.created += 1
            report.run_ids.append(r.run_id)
        elif r.status == "duplicate":
            report.duplicates += 1
        else:
            report.ignored += 1
