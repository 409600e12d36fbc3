"""The operator's commands of the ``conveyor`` CLI: ``dlq list|replay``, ``backfill``, ``purge``.

They live apart from shared/cli.py and are registered on its typer app by
:func:`register_ops`, which receives the few helpers they share with the other commands
(the error wrapper, the storage context, the console), so this module never imports cli.py.
Like ``conveyor runs``, they talk to storage through ``Services`` (Azurite locally, starting
it for the command when needed; Service Bus and the data account in azure mode).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from shared.clock import utcnow
from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.queue.base import DeadLetter, ReplayReport
    from shared.wiring import Services

StorageContext = Callable[[], AbstractContextManager["Services"]]


def _dump(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, default=str, indent=2) + "\n")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def dead_letter_table(entries: list[DeadLetter]) -> Table:
    table = Table(show_header=True, header_style="bold")
    for col in ("id", "run", "flow", "kind", "reason", "deliveries", "description", "when"):
        table.add_column(col, overflow="fold")
    for d in entries:
        table.add_row(
            d.id[:36],
            (d.run_id or "-")[:12],
            d.flow or "-",
            d.kind or "(not a message)",
            d.reason,
            str(d.delivery_count),
            d.description[:80],
            _when(d.dead_lettered_at or d.enqueued_at),
        )
    return table


def print_replay(report: ReplayReport, console: Console) -> None:
    for d in report.replayed:
        console.print(f"replayed {d.id} (run {d.run_id}, message id {d.message_id})", markup=False, highlight=False)
    for d, why in report.kept:
        console.print(f"kept {d.id} (run {d.run_id or '-'}): {why}", markup=False, highlight=False)
    for missing in report.missing:
        console.print(f"not found: {missing}", markup=False, highlight=False)
    console.print(
        f"{len(report.replayed)} replayed, {len(report.kept)} kept, {len(report.missing)} not found", highlight=False
    )


def register_ops(
    app: typer.Typer,
    friendly: Callable[[Any], Any],
    storage: StorageContext,
    console: Console,
    err_console: Console,
) -> None:
    """Add ``dlq``, ``backfill`` and ``purge`` to ``app``."""
    dlq = typer.Typer(help="Dead-lettered queue messages: list them, replay them.", no_args_is_help=True)
    app.add_typer(dlq, name="dlq")

    @dlq.command("list")
    @friendly
    def dlq_list(
        limit: int = typer.Option(100, "--limit", min=1, max=5000),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Dead-lettered messages: reason, description, delivery count and the run each belongs to."""
        with storage() as services:
            entries = services.queue.dead_letters(limit=limit)
        if as_json:
            _dump([d.as_json() for d in entries])
            return
        if not entries:
            console.print("no dead letters")
            return
        console.print(dead_letter_table(entries))

    @dlq.command("replay")
    @friendly
    def dlq_replay(
        ids: list[str] | None = typer.Argument(
            None, metavar="ID...", help="entry ids (or message ids) from `dlq list`"
        ),
        replay_all: bool = typer.Option(False, "--all", help="every dead letter (of --flow, if given)"),
        flow: str | None = typer.Option(None, "--flow"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Re-send dead-lettered messages (message id intact); each leaves the dead-letter queue only once sent.

        Exit 0 when every chosen message was replayed, 1 when some were kept, 2 when an id was not found.
        """
        if bool(ids) == replay_all:
            raise ValidationError("give entry ids or --all (not both)", field="ID")
        with storage() as services:
            report = services.queue.replay_dead_letters(None if replay_all else list(ids or []), flow=flow)
        if as_json:
            _dump(report.as_json())
        else:
            print_replay(report, console)
        if report.missing:
            raise typer.Exit(2)
        if report.kept:
            raise typer.Exit(1)

    @app.command()
    @friendly
    def backfill(
        flow: str = typer.Argument(..., metavar="FLOW"),
        container: str | None = typer.Option(None, "--container", help="default: the container the flow watches"),
        prefix: str = typer.Option("", "--prefix", help="only blobs whose name starts with this"),
        since: str | None = typer.Option(
            None, "--since", help="modified at/after: 2026-01-31, 2026-01-31T08:00Z or 7d"
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="say what would start; start nothing"),
        parallel: int = typer.Option(4, "--parallel", min=1, max=16, help="ingest chunks in flight at once"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Start FLOW for blobs that already exist, as if each had just landed (idempotent by url + eTag)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from shared.ops.backfill import backfill as run_backfill
        from shared.ops.timespec import parse_since

        when = parse_since(since, "--since", utcnow()) if since else None
        progress = Progress(
            TextColumn("backfill"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=as_json or not err_console.is_terminal,
        )
        task = progress.add_task("backfill", total=None)
        with progress, storage() as services:
            report = run_backfill(
                services,
                flow,
                container=container,
                prefix=prefix,
                since=when,
                dry_run=dry_run,
                parallel=parallel,
                on_total=lambda n: progress.update(task, total=n),
                on_progress=lambda n: progress.advance(task, n),
            )
        if as_json:
            _dump(report.as_json())
        else:
            verb = "would start" if dry_run else "started"
            console.print(
                f"backfill {flow} from {report.container}/{report.prefix}: {report.listed} blobs listed, "
                f"{report.considered} considered; {verb} {report.created} runs, {report.duplicates} already had "
                f"one, {report.ignored} ignored by the trigger, {report.failed} failed",
                markup=False,
                highlight=False,
            )
            for error in report.errors[:5]:
                err_console.print(f"  {error}", markup=False, highlight=False)
        if report.failed:
            raise typer.Exit(1)

    @app.command()
    @friendly
    def purge(
        older_than: str = typer.Option(..., "--older-than", help="age of the runs to delete: 30d, 12h, 2w"),
        status: list[str] | None = typer.Option(
            None, "--status", help="succeeded, failed, cancelled (repeatable; default: all three)"
        ),
        dry_run: bool = typer.Option(False, "--dry-run", help="count what would be deleted; delete nothing"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Delete finished runs created longer ago than --older-than (never an active run)."""
        from shared.ops.retention import FINISHED, parse_statuses, purge_runs
        from shared.ops.timespec import parse_age

        age = parse_age(older_than, "--older-than")
        statuses = parse_statuses(status or FINISHED, "--status")
        with storage() as services:
            report = purge_runs(services, age, statuses, utcnow(), dry_run=dry_run)
        if as_json:
            _dump(
                {
                    "created_before": report.created_before.isoformat(),
                    "statuses": report.statuses,
                    "dry_run": report.dry_run,
                    "matched": report.matched,
                    "deleted": report.deleted,
                    "skipped": report.skipped,
                    "run_ids": report.run_ids,
                }
            )
            return
        what = ", ".join(report.statuses)
        before = report.created_before.strftime("%Y-%m-%d %H:%M:%SZ")
        if dry_run:
            console.print(f"would delete {report.matched} runs ({what}) created before {before}", highlight=False)
        else:
            console.print(
                f"deleted {report.deleted} runs ({what}) created before {before}"
                + (f"; {report.skipped} changed meanwhile and were kept" if report.skipped else ""),
                highlight=False,
            )
