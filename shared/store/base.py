"""The RunStore port (runs with optimistic concurrency on the store's ETag) and the
InstanceStore port (the fan-outs of for_each steps, outside the run document)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.engine.model import FanOut, InstanceRun, Run, RunStatus, StepState


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

    def get_many(self, run_ids: list[str]) -> list[Run | None]:
        """``get`` for many runs (None for an absent one); adapters may read in parallel."""
        from shared.errors import NotFoundError

        out: list[Run | None] = []
        for run_id in run_ids:
            try:
                out.append(self.get(run_id))
            except NotFoundError:
                out.append(None)
        return out


class InstanceStore(ABC):
    """The state of for_each fan-outs, outside the run document (which stays the same size however
    many items a step fans out over).

    Per (run, step): one :class:`FanOut` row (the counts; its ETag serialises the instance
    transitions), the instance rows (one per epoch and index) and the item list in pages. All of
    one run's rows live together so that :meth:`save` can write a FanOut row and its instances
    in one transaction.
    """

    @abstractmethod
    def fanouts(self, run_id: str) -> dict[str, FanOut]:
        """Every FanOut row of the run, by step (with ETags)."""

    @abstractmethod
    def instance(self, run_id: str, step: str, epoch: int, index: int) -> InstanceRun | None:
        """One instance row (with its ETag), or None if it never began."""

    @abstractmethod
    def instances(
        self,
        run_id: str,
        step: str,
        epoch: int,
        *,
        states: Iterable[StepState] | None = None,
        start: int = 0,
        limit: int = 100,
    ) -> list[InstanceRun]:
        """Instance rows with ``index >= start``, by index, at most ``limit``, optionally only these states."""

    @abstractmethod
    def save(self, fanout: FanOut, instances: Iterable[InstanceRun] = ()) -> tuple[FanOut, list[InstanceRun]]:
        """Write ``fanout`` and ``instances`` atomically, each only if unchanged since read (its
        ETag; ``etag=None`` means "must not exist yet"). Returns them with their new ETags.

        Raise shared.errors.ConcurrencyError when any of them changed (nothing is written).
        At most MAX_INSTANCES_PER_SAVE instances per call.
        """

    @abstractmethod
    def save_instances(self, run_id: str, instances: Iterable[InstanceRun]) -> tuple[None, list[InstanceRun]]:
        """Write instance rows only (a poll that changed no count), atomically, each only if unchanged."""

    @abstractmethod
    def put_items(self, run_id: str, step: str, epoch: int, items: list[Any]) -> None:
        """Store the fan-out's item list (idempotent: the same epoch always has the same items)."""

    @abstractmethod
    def items(self, run_id: str, step: str, epoch: int, start: int, count: int) -> list[Any]:
        """Items ``[start, start + count)`` (fewer at the end of the list)."""


MAX_INSTANCES_PER_SAVE = 90  # a Table transaction holds 100 operations, the FanOut row is one
ITEMS_PER_PAGE = 100
