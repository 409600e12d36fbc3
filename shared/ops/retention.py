"""Retention: purge finished runs older than an age (``conveyor purge``, the daily timer).

:func:`purge_runs` asks the RunStore to delete finished runs created before ``now - age``
whose status is one of ``statuses`` (it reads the time index, never the whole table), then
removes each purged run's local telemetry file (``<home>/telemetry/<run>.jsonl``) and the
lifecycle-event outbox's delivered/expired records of the same age.
:func:`apply_retention` is what the Functions timer (``functions/operations.py``,
``CONVEYOR_RETENTION_SCHEDULE``) and the local host's scheduler run: ``CONVEYOR_RETENTION_DAYS``
(0 = off) and ``CONVEYOR_RETENTION_STATUSES``. Blobs, registered models and deployments are
not touched: they belong to their own stores.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from shared.engine.model import RunStatus
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.store.base import PurgeReport
    from shared.wiring import Services

log = logging.getLogger("conveyor.ops.retention")

FINISHED = tuple(s.value for s in RunStatus if s.terminal)


def parse_statuses(values: Iterable[str], field: str) -> list[RunStatus]:
    """Finished statuses from ``succeeded,failed`` style items; anything else names the field."""
    out: list[RunStatus] = []
    for raw in values:
        for part in str(raw).split(","):
            name = part.strip().lower()
            if not name:
                continue
            if name not in FINISHED:
                raise ValidationError(f"{name!r} is not a finished status; one of {', '.join(FINISHED)}", field=field)
            out.append(RunStatus(name))
    if not out:
        raise ValidationError(f"give at least one of {', '.join(FINISHED)}", field=field)
    return list(dict.fromkeys(out))


def purge_runs(
    services: Services, older_than: timedelta, statuses: Iterable[RunStatus], now: datetime, *, dry_run: bool = False
) -> PurgeReport:
    report = services.store.purge(now - older_than, list(statuses), dry_run=dry_run)
    events = services.events
    if not dry_run and events is not None:  # delivered/expired lifecycle events of the same age
        try:
            events.outbox.purge(report.created_before)
        except Exception:
            log.warning("retention: old lifecycle events not purged", exc_info=True)
    if not dry_run and report.run_ids:
        telemetry = services.settings.home / "telemetry"
        for run_id in report.run_ids:
            with contextlib.suppress(OSError):
                (telemetry / f"{run_id}.jsonl").unlink(missing_ok=True)
        log.info("retention: purged %d runs created before %s", report.deleted, report.created_before.isoformat())
    return report


def apply_retention(services: Services, now: datetime) -> PurgeReport | None:
    """The daily purge the settings ask for; None when ``CONVEYOR_RETENTION_DAYS`` is 0."""
    s = services.settings
    if s.retention_days <= 0:
        return None
    statuses = parse_statuses(s.retention_statuses, "CONVEYOR_RETENTION_STATUSES")
    return purge_runs(services, timedelta(days=s.retention_days), statuses, now)
