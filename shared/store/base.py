"""The RunStore port: runs with optimistic concurrency on the store's ETag."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from shared.engine.model import Run, RunStatus


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
        self, flow: str | None = None, statuses: Iterable[RunStatus] | None = None, limit: int = 100
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by flow and status."""

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
