"""The RunStore port: runs with optimistic concurrency on the store's ETag."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from shared.engine.model import Run, RunStatus


@dataclass
class PurgeReport:
    """What a retention purge found (``matched``) and removed (``deleted``; ``skipped`` changed meanwhile)."""

    created_before: datetime
    statuses: list[str]
    dry_run: bool
    matched: int = 0
    deleted: int = 0
    skipped: int = 0
    run_ids: list[str] = field(default_factory=list)  # deleted (or, in a dry run, matched)


class RunStore(ABC):
    @abstractmethod
    def create_if_absent(self, run: Run) -> bool:
        """Insert ``run``; True if this call created it, False if the id already existed.

        On True, ``run.etag`` is set to the stored ETag.
        """

    @abstractmethod
    def get(self, run_id: str) -> Run:
        """Load a run with its ETag; raise shared.errors.NotFoundError if absent."""

    @abstractmethod
    def save(self, run: Run) -> Run:
        """Replace the run if its ETag still matches; return it with the new ETag.

        Raise shared.errors.ConcurrencyError when someone else saved first.
        """

    @abstractmethod
    def list_runs(
        self,
        flow: str | None = None,
        statuses: Iterable[RunStatus] | None = None,
        limit: int = 100,
        *,
        created_before: datetime | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by flow, status and creation time (before)."""

    def purge(
        self,
        created_before: datetime,
        statuses: Iterable[RunStatus],
        *,
        dry_run: bool = False,
        limit: int | None = None,
    ) -> PurgeReport:
        """Delete finished runs created before ``created_before`` with one of ``statuses``.

        Active statuses are a ValidationError. ``dry_run`` only counts; ``limit`` caps one call.
        A store without retention support (a read-only double) says so."""
        from shared.errors import PermanentError

        raise PermanentError(f"{type(self).__name__} cannot purge runs")

    def create_many(self, runs: list[Run]) -> list[bool]:
        """create_if_absent for many runs; adapters may batch."""
        return [self.create_if_absent(r) for r in runs]
