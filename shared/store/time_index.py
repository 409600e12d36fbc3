"""The runs table's time index: one small row per run, in partitions per class and day, newest first.

Table Storage has no secondary indexes: a filter on a property that is not a key scans every
entity. So that listing runs (``conveyor runs``, ``GET /api/runs``), the sweeper and the
retention purge stay fast with 100,000 runs in the table, each run also has one *index row*:

* ``PartitionKey`` = ``"~"`` + class + the inverted UTC day of ``created_at`` (8 digits):
  a partition per class and day. The class is ``a`` (active: pending, queued, running) or
  ``d`` (done: succeeded, failed, cancelled). Inverted, newer days sort first.
* ``RowKey`` = the inverted ``created_at`` (16 digits of microseconds) + ``":"`` + run id,
  so ascending keys are newest first within a day, and across days too.
* properties ``run_id``, ``flow``, ``status``, ``created_at`` for server-side filters.

So "the 50 newest runs" is one key-range query per class (``~a...`` and ``~d...``, merged),
the sweeper's pending/running/queued runs one query over the small ``~a`` partitions, and
"finished before T" (retention) one range of ``~d``. Few queries matter on Azurite too: it
evaluates every query against the whole table, so the number of queries per listing, not
their key ranges, is what its time grows with. Run ids never start with ``~``
(``check_run_id``), so index rows never mix with run rows (``"r"`` + hex partitions).

The run row stays the truth. The index row of a new run is written *before* the run row
(a run is never without its index row, which the sweeper relies on to find runs left
pending); a duplicate create leaves an index row whose run has another ``created_at``.
Readers always load the run documents the index points at and check them again: an index
row that disagrees with its run (that duplicate, or a crash between a status change's save
and its index update) is repaired when it is read (:meth:`TimeIndex.repair`). The price of a
partition per day: in Azure one partition serves about 2,000 entities/s, so the day's
partition bounds the index writes of a sustained ingest at about that rate.

Runs written before the index existed get their rows once per table: the first store that
finds no ``~meta``/``time-index`` marker row scans the run rows' keys, writes their index
rows (idempotent upserts; concurrent builders are harmless) and then the marker.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.azure_errors import map_azure_error
from shared.engine.model import Run, RunStatus

if TYPE_CHECKING:
    from azure.data.tables import TableClient

log = logging.getLogger("conveyor.store.index")

SERVICE = "table"
PREFIX = "~"
ACTIVE = "a"
DONE = "d"
MARKER_PARTITION = "~meta"  # sorts after every "~a…"/"~d…" partition
MARKER_ROW = "time-index"
INDEX_VERSION = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS = 10**16 - 1  # 16 digits: until the year 2286
_SELECT = ["PartitionKey", "RowKey", "run_id", "flow", "status", "created_at"]
_PARALLEL = 8


def run_class(status: RunStatus | str) -> str:
    return DONE if RunStatus(status).terminal else ACTIVE


def _micros(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _inverted(when: datetime) -> int:
    return min(max(_MAX_MICROS - _micros(when), 0), _MAX_MICROS)


def _day(when: datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.astimezone(UTC).strftime("%Y%m%d"))


def index_key(run_id: str, created_at: datetime, cls: str) -> tuple[str, str]:
    """(PartitionKey, RowKey) of a run's index row."""
    return f"{PREFIX}{cls}{99_999_999 - _day(created_at):08d}", f"{_inverted(created_at):016d}:{run_id}"


def index_entity(run: Run, created_iso: str) -> dict[str, Any]:
    pk, rk = index_key(run.run_id, run.created_at, run_class(run.status))
    return {
        "PartitionKey": pk,
        "RowKey": rk,
        "run_id": run.run_id,
        "flow": run.flow,
        "status": run.status.value,
        "created_at": created_iso,
    }


@dataclass(frozen=True)
class IndexRow:
    partition: str
    row_key: str
    run_id: str
    flow: str
    status: str
    created_at: str

    @property
    def cls(self) -> str:
        return self.partition[len(PREFIX)]

    @property
    def order(self) -> str:
        """Inverted time + run id: ascending is newest first, across classes and days."""
        return self.row_key

    @classmethod
    def of(cls, entity: Mapping[str, Any]) -> IndexRow:
        return cls(
            partition=str(entity["PartitionKey"]),
            row_key=str(entity["RowKey"]),
            run_id=str(entity.get("run_id") or str(entity["RowKey"]).split(":", 1)[-1]),
            flow=str(entity.get("flow") or ""),
            status=str(entity.get("status") or ""),
            created_at=str(entity.get("created_at") or ""),
        )


class TimeIndex:
    """Reads and writes the index rows of one runs table (``client``)."""

    def __init__(self, client: TableClient) -> None:
        self._client = client

    # -- writing ---------------------------------------------------------------------------

    def upsert(self, entity: dict[str, Any]) -> None:
        from azure.data.tables import UpdateMode

        try:
            self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def delete(self, partition: str, row_key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._client.delete_entity(partition, row_key)
        except ResourceNotFoundError:
            pass
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def repair(self, row: IndexRow, run: Run | None, created_iso: str | None) -> None:
        """Make the index agree with the run ``row`` points at (None: the run is gone)."""
        try:
            if run is None:
                self.delete(row.partition, row.row_key)
                return
            assert created_iso is not None
            entity = index_entity(run, created_iso)
            moved = (entity["PartitionKey"], entity["RowKey"]) != (row.partition, row.row_key)
            if moved or row.status != run.status.value or row.flow != run.flow:
                self.upsert(entity)
                if moved:
                    self.delete(row.partition, row.row_key)
        except Exception:  # a repair is an optimisation of later reads: never fail the read
            log.warning("index row %s of run %s not repaired", row.row_key, row.run_id, exc_info=True)

    # -- reading ---------------------------------------------------------------------------

    def rows(
        self,
        classes: Iterable[str],
        *,
        flow: str | None = None,
        statuses: Iterable[str] | None = None,
        created_before: datetime | None = None,
        page: int = 100,
    ) -> Iterator[IndexRow]:
        """Index rows of the classes, newest first (one query per class, merged), filtered on the
        server. The first page of each is read in parallel; later pages as the merge needs them."""
        wanted = list(dict.fromkeys(statuses)) if statuses is not None else None
        streams = [self._stream(cls, flow, wanted, created_before, page) for cls in classes]
        if len(streams) == 1:
            yield from streams[0]
            return
        with ThreadPoolExecutor(max_workers=len(streams)) as pool:
            primed = list(pool.map(_prime, streams))
        yield from heapq.merge(*primed, key=lambda row: row.order)

    def _stream(
        self, cls: str, flow: str | None, statuses: list[str] | None, created_before: datetime | None, page: int
    ) -> Iterator[IndexRow]:
        params: dict[str, Any] = {"lo": f"{PREFIX}{cls}", "hi": f"{PREFIX}{chr(ord(cls) + 1)}"}
        clauses = ["PartitionKey ge @lo", "PartitionKey lt @hi"]
        if created_before is not None:
            # strictly before: later days sort first, so "before" is the cutoff day's partition
            # from just after the cutoff's key, and every partition after it
            pk, rk = index_key("", created_before - timedelta(microseconds=1), cls)
            params.update(pkc=pk, rkc=rk)
            clauses.append("( PartitionKey gt @pkc or ( PartitionKey eq @pkc and RowKey ge @rkc ) )")
        if flow is not None:
            clauses.append("flow eq @flow")
            params["flow"] = flow
        if statuses:
            ors = []
            for i, value in enumerate(statuses):
                params[f"s{i}"] = value
                ors.append(f"status eq @s{i}")
            clauses.append("( " + " or ".join(ors) + " )")  # the SDK substitutes space-separated @params
        try:
            pages = self._client.query_entities(
                " and ".join(clauses), parameters=params, select=_SELECT, results_per_page=max(1, min(page, 1000))
            )
            for entity in pages:
                yield IndexRow.of(entity)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    # -- the one-time build for runs written before the index ------------------------------

    def built(self) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            marker = self._client.get_entity(MARKER_PARTITION, MARKER_ROW)
        except ResourceNotFoundError:
            return False
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return int(marker.get("version") or 0) >= INDEX_VERSION

    def mark_built(self) -> None:
        self.upsert({"PartitionKey": MARKER_PARTITION, "RowKey": MARKER_ROW, "version": INDEX_VERSION})

    def build(self) -> int:
        """Index rows for every run row (idempotent), then the marker. Returns the runs indexed."""
        select = ["PartitionKey", "RowKey", "flow", "status", "created_at"]
        try:
            rows = list(
                self._client.query_entities(
                    "PartitionKey lt @tilde", parameters={"tilde": PREFIX}, select=select, results_per_page=1000
                )
            )
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        entities = []
        for row in rows:
            created = str(row.get("created_at") or "")
            try:
                created_at = datetime.fromisoformat(created)
                status = RunStatus(str(row.get("status") or ""))
            except ValueError:
                log.warning("run row %s has no readable created_at/status; not indexed", row.get("RowKey"))
                continue
            run_id = str(row["RowKey"])
            pk, rk = index_key(run_id, created_at, run_class(status))
            entities.append(
                {
                    "PartitionKey": pk,
                    "RowKey": rk,
                    "run_id": run_id,
                    "flow": str(row.get("flow") or ""),
                    "status": status.value,
                    "created_at": created,
                }
            )
        if entities:
            log.info("building the time index of %d runs written before it", len(entities))
            with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
                list(pool.map(self.upsert, entities))
        self.mark_built()
        return len(entities)


def _prime(stream: Iterator[IndexRow]) -> Iterator[IndexRow]:
    """Fetch the stream's first page now (in a pool thread); the rest stays lazy."""
    first = next(stream, None)
    return iter(()) if first is None else itertools.chain([first], stream)
