"""RunStore on Azure Table Storage (Azurite locally).

Entity layout (table ``settings.runs_table``):

* ``PartitionKey`` = ``"r"`` + the first hex digit of sha256(run id): 16 fixed buckets.
  A point read needs only the run id; bulk ingest batches up to 100 creates per
  transaction (transactions must stay in one partition), and in Azure the load spreads over
  16 partitions instead of one (a single partition targets ~2,000 entities/s).
* ``RowKey`` = run id.
* ``flow``, ``status``, ``created_at``/``updated_at`` (ISO 8601 UTC strings, which sort
  lexicographically), ``version``, and the run JSON in ``doc`` — split across ``doc``,
  ``doc1``, ``doc2``… when it exceeds one string property (64 KiB of UTF-16).
* for each run a time-index row (``shared.store.time_index``, partitions ``~a<day>`` and
  ``~d<day>``): written before the run row is created, moved when the run's status changes,
  read by ``list_runs`` and ``purge`` so neither scans the table.

Concurrency: ``save`` replaces the entity only if its ETag still matches (If-Match).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.azure_errors import map_azure_error
from shared.engine.model import Run, RunStatus
from shared.errors import ConcurrencyError, NotFoundError, ValidationError
from shared.store.base import PurgeReport, RunStore
from shared.store.table_batch import CreateTransactions
from shared.store.time_index import ACTIVE, DONE, IndexRow, TimeIndex, index_entity, index_key, run_class
from shared.transport import transport_kwargs

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

SERVICE = "table"
BUCKETS = "0123456789abcdef"
# Chars per doc property: 15,000 chars is at most 30,000 UTF-16 units (< 32 Ki units = 64 KiB)
# even if every char is outside the BMP; ASCII-heavy JSON packs 30,000 chars per property.
_FAST_CHUNK = 30_000
_SAFE_CHUNK = 15_000
_MAX_UNITS = 32_000
_MAX_DOC_UNITS = 480_000  # ~960 KB of UTF-16: entities are limited to 1 MiB in total
_TX_SIZE = 100  # operations per entity group transaction (service limit)
_TX_MAX_UNITS = 1_500_000  # keep a transaction's payload well under the 4 MiB limit
_TX_ROUNDS = 3  # transactions tried per chunk (each leaving out the ids found to exist) before one by one
_KEYS_PER_QUERY = 14  # RowKey comparisons per existence query (+ PartitionKey = the service's 15)
_TABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
_BAD_KEY_CHARS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")
_MAX_LIST = 1000
_KNOWN_MAX = 20_000  # runs whose stored status this store remembers (to skip index writes)


def partition_for(run_id: str) -> str:
    return "r" + hashlib.sha256(run_id.encode("utf-8")).hexdigest()[0]


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _units(text: str) -> int:
    """Length in UTF-16 code units (what the Table service counts)."""
    return len(text.encode("utf-16-le")) // 2


def split_doc(doc: str) -> list[str]:
    """Chunks that each fit one Table string property."""
    if len(doc) <= _SAFE_CHUNK:
        return [doc]
    chunks: list[str] = []
    i = 0
    while i < len(doc):
        chunk = doc[i : i + _FAST_CHUNK]
        if len(chunk) > _SAFE_CHUNK and _units(chunk) > _MAX_UNITS:
            chunk = doc[i : i + _SAFE_CHUNK]
        chunks.append(chunk)
        i += len(chunk)
    return chunks


def doc_property(index: int) -> str:
    return "doc" if index == 0 else f"doc{index}"


def join_doc(entity: Mapping[str, Any]) -> str:
    parts: list[str] = []
    i = 0
    while (part := entity.get(doc_property(i))) is not None:
        parts.append(part)
        i += 1
    return "".join(parts)


def check_run_id(run_id: str) -> None:
    if not run_id or len(run_id) > 512 or _BAD_KEY_CHARS.search(run_id) or run_id.startswith("~"):
        raise ValidationError(
            "run id must be 1-512 characters without '/', '\\', '#', '?' or control characters, not starting with '~'",
            field="run_id",
        )


def check_table_name(table_name: str) -> None:
    if not isinstance(table_name, str) or not _TABLE_RE.match(table_name):
        raise ValidationError(
            f"table name {table_name!r} must be 3-63 letters/digits starting with a letter",
            field="CONVEYOR_RUNS_TABLE",
        )


def table_client(
    settings: Settings, table_name: str, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
) -> TableClient:
    """A TableClient for ``table_name`` in the data account: identity-based (``TableClient(endpoint,
    table, credential)``) when the settings give a table service URI / account name and no
    connection string; else the connection string (Azurite locally). ``client_kwargs`` go to the
    SDK client (retry, transport options)."""
    from azure.data.tables import TableClient

    from shared.azure_identity import storage_clients

    check_table_name(table_name)
    make = storage_clients(
        settings,
        "table",
        "store",
        TableClient,
        credential=credential,
        client_kwargs=client_kwargs,
        endpoint_arg="endpoint",
    )
    return make(table_name=table_name)  # type: ignore[no-any-return]


class TableOnce:
    """Creates a client's table on first use, once per process (thread-safe).

    ``created()`` runs after this call created the table, ``existed()`` when it was there
    already (the run store builds or checks its time index there)."""

    def __init__(
        self,
        client: TableClient,
        *,
        created: Callable[[], Any] | None = None,
        existed: Callable[[], Any] | None = None,
    ) -> None:
        self._client = client
        self._created = created
        self._existed = existed
        self._ready = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            from azure.core.exceptions import ResourceExistsError

            try:
                self._client.create_table()
                if self._created is not None:
                    self._created()
            except ResourceExistsError:
                if self._existed is not None:
                    self._existed()
            except Exception as exc:
                raise map_azure_error(exc, SERVICE) from exc
            self._ready = True


class TableRunStore(RunStore):
    def __init__(
        self,
        connection_string: str,
        table_name: str,
        client: TableClient | None = None,
        client_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``client_options``: the options ``client`` was made with (shared.transport's), for the
        bulk-create pipeline (shared.store.table_batch) that sits beside it."""
        check_table_name(table_name)
        options = dict(client_options) if client_options is not None else transport_kwargs()
        if client is None:
            from azure.data.tables import TableClient

            client = TableClient.from_connection_string(connection_string, table_name=table_name, **options)
        self.table_name = table_name
        self._client = client
        self._transactions = CreateTransactions.for_client(client, options)
        self._index = TimeIndex(client)
        # a new table: every run gets its index row at creation; runs written before the
        # index existed are indexed once, by the first process that opens the table
        self._ensure_table = TableOnce(client, created=self._index.mark_built, existed=self._index_if_unbuilt)
        # run id -> (ETag, the stored Run's status and created_at): a save that keeps the status
        # needs no index write; one that changes it knows which index row to move.
        self._known: OrderedDict[str, tuple[str | None, _Stored]] = OrderedDict()
        self._known_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
    ) -> TableRunStore:
        """The run store on ``settings.runs_table`` (see :func:`table_client`)."""
        from shared.azure_identity import client_options

        client = table_client(settings, settings.runs_table, credential=credential, client_kwargs=client_kwargs)
        return cls("", settings.runs_table, client, client_options(settings, "table", client_kwargs))

    # -- helpers -------------------------------------------------------------------------

    def _index_if_unbuilt(self) -> None:
        if not self._index.built():
            self._index.build()

    def _remember(self, run: Run) -> None:
        with self._known_lock:
            self._known[run.run_id] = (run.etag, _Stored(run.status, run.created_at))
            self._known.move_to_end(run.run_id)
            while len(self._known) > _KNOWN_MAX:
                self._known.popitem(last=False)

    def _stored_before(self, run: Run) -> _Stored | None:
        """The stored status/created_at of ``run`` as of its ETag (remembered, else read)."""
        with self._known_lock:
            known = self._known.get(run.run_id)
        if known is not None and known[0] == run.etag:
            return known[1]
        from azure.core.exceptions import ResourceNotFoundError

        try:
            row = self._client.get_entity(partition_for(run.run_id), run.run_id, select=["status", "created_at"])
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        try:
            return _Stored(RunStatus(str(row.get("status"))), datetime.fromisoformat(str(row.get("created_at"))))
        except ValueError:
            return None

    # -- entities --------------------------------------------------------------------------

    @staticmethod
    def to_entity(run: Run) -> dict[str, Any]:
        check_run_id(run.run_id)
        doc = run.model_dump_json()
        if len(doc) > _MAX_DOC_UNITS // 2 and _units(doc) > _MAX_DOC_UNITS:
            raise ValidationError(
                f"run document is too large for Table Storage ({len(doc)} chars); keep large data in blobs",
                field="run",
            )
        entity: dict[str, Any] = {
            "PartitionKey": partition_for(run.run_id),
            "RowKey": run.run_id,
            "flow": run.flow,
            "status": run.status.value,
            "created_at": _iso(run.created_at),
            "updated_at": _iso(run.updated_at),
            "version": run.version,
        }
        for i, chunk in enumerate(split_doc(doc)):
            entity[doc_property(i)] = chunk
        return entity

    @staticmethod
    def index_of(entity: Mapping[str, Any], run: Run) -> dict[str, Any]:
        """The time-index row of the run row ``entity`` (see shared.store.time_index)."""
        return index_entity(run, entity["created_at"])

    @staticmethod
    def from_entity(entity: Mapping[str, Any], etag: str | None) -> Run:
        run = Run.model_validate_json(join_doc(entity))
        run.etag = etag
        return run

    @staticmethod
    def _etag_of(metadata: Mapping[str, Any] | None) -> str | None:
        if not metadata:
            return None
        etag = metadata.get("etag")
        return str(etag) if etag is not None else None

    # -- RunStore ------------------------------------------------------------------------

    def create_if_absent(self, run: Run) -> bool:
        entity = self.to_entity(run)
        self._ensure_table()
        self._index.upsert(self.index_of(entity, run))  # first: a run is never without its index row
        return self._create_one(run, entity)

    def _create_one(self, run: Run, entity: dict[str, Any]) -> bool:
        from azure.core.exceptions import ResourceExistsError

        try:
            metadata = self._client.create_entity(entity)
        except ResourceExistsError:
            # ours, if the SDK retried a create the service had applied (its answer was lost);
            # else our index row, if its created_at differs, is repaired when read
            if not self._is_ours(run):
                return False
            self._remember(run)
            return True
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        run.etag = self._etag_of(metadata)
        self._remember(run)
        return True

    def get(self, run_id: str) -> Run:
        check_run_id(run_id)
        self._ensure_table()
        from azure.core.exceptions import ResourceNotFoundError

        try:
            entity = self._client.get_entity(partition_for(run_id), run_id)
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"run {run_id} not found", service=SERVICE, status=404) from exc
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        run = self.from_entity(entity, self._etag_of(entity.metadata))
        self._remember(run)
        return run

    def save(self, run: Run) -> Run:
        """Replace the run row (If-Match); when its status changed, its index row follows.

        The index row is written after the run row (the run row is the truth): a crash in
        between leaves the index row stale until a reader repairs it."""
        if not run.etag:
            raise ConcurrencyError(f"run {run.run_id} has no ETag: load it before saving", service=SERVICE)
        saved = run.model_copy(update={"version": run.version + 1})
        entity = self.to_entity(saved)
        self._ensure_table()
        before = self._stored_before(run)
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            metadata = self._client.update_entity(
                entity, mode=UpdateMode.REPLACE, etag=run.etag, match_condition=MatchConditions.IfNotModified
            )
        except ResourceNotFoundError as exc:
            raise NotFoundError(f"run {run.run_id} not found", service=SERVICE, status=404) from exc
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise map_azure_error(exc, SERVICE) from exc
            own = self._own_save(entity)
            if own is None:
                raise ConcurrencyError(
                    f"run {run.run_id} changed since it was read", service=SERVICE, status=412
                ) from exc
            metadata = dict(own)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        saved.etag = self._etag_of(metadata)
        if before is None or before.status is not saved.status or before.created_at != saved.created_at:
            self._move_index(entity, before, saved)
        self._remember(saved)
        return saved

    def _own_save(self, entity: dict[str, Any]) -> Mapping[str, Any] | None:
        """After a 412: the stored row's metadata when it is exactly the run we saved -- the SDK
        retried a replace the service had applied but whose answer was lost -- else None (a
        real race: someone else saved first)."""
        try:
            stored = self._client.get_entity(entity["PartitionKey"], entity["RowKey"])
        except Exception:
            return None
        if join_doc(stored) != join_doc(entity):
            return None
        return stored.metadata  # type: ignore[no-any-return]

    def _move_index(self, entity: Mapping[str, Any], before: _Stored | None, saved: Run) -> None:
        """The index row follows a status change; tried three times (each write is idempotent)."""
        new = self.index_of(entity, saved)
        old = None if before is None else index_key(saved.run_id, before.created_at, run_class(before.status))
        last: Exception | None = None
        for _ in range(3):
            try:
                self._index.upsert(new)
                if old is not None and old != (new["PartitionKey"], new["RowKey"]):
                    self._index.delete(*old)
                return
            except Exception as exc:
                last = exc
        import logging

        logging.getLogger("conveyor.store").warning(
            "run %s saved as %s, but its index row was not updated (repaired when next read): %s",
            saved.run_id,
            saved.status.value,
            last,
        )

    def list_runs(
        self,
        flow: str | None = None,
        statuses: Iterable[RunStatus] | None = None,
        limit: int = 100,
        *,
        created_before: datetime | None = None,
    ) -> list[Run]:
        """Newest first (at most 1000), through the time index: reads index rows of the
        matching class(es) newest first, then the runs they point at, which are checked
        again (and their index rows repaired when they disagree)."""
        limit = max(0, min(int(limit), _MAX_LIST))
        wanted = list(dict.fromkeys(RunStatus(s) for s in statuses)) if statuses is not None else None
        if limit == 0 or wanted == []:
            return []
        self._ensure_table()
        classes = [ACTIVE, DONE] if wanted is None else sorted({run_class(s) for s in wanted})
        rows = self._index.rows(
            classes,
            flow=flow,
            statuses=None if wanted is None else [s.value for s in wanted],
            created_before=created_before,
            page=limit + 10,
        )
        found: list[Run] = []
        seen: set[str] = set()
        batch = limit
        while len(found) < limit:
            chunk: list[IndexRow] = []
            for row in rows:
                if row.run_id in seen:  # a stale second row of a run: repair it, show the run once
                    chunk.append(row)
                    continue
                seen.add(row.run_id)
                chunk.append(row)
                if len({r.run_id for r in chunk}) >= batch:
                    break
            if not chunk:
                break
            ids = list(dict.fromkeys(r.run_id for r in chunk))
            runs = dict(zip(ids, self._get_many(ids), strict=True))
            for row in chunk:
                run = runs.get(row.run_id)
                self._check_row(row, run)
            for rid in ids:
                run = runs[rid]
                if run is None:
                    continue
                if flow is not None and run.flow != flow:
                    continue
                if wanted is not None and run.status not in wanted:
                    continue
                if created_before is not None and run.created_at >= created_before:
                    continue
                found.append(run)
            batch = max(limit - len(found), 10)
        found.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return found[:limit]

    def _check_row(self, row: IndexRow, run: Run | None) -> None:
        if run is None:
            self._index.repair(row, None, None)
            return
        expected = index_entity(run, _iso(run.created_at))
        moved = (expected["PartitionKey"], expected["RowKey"]) != (row.partition, row.row_key)
        if moved or row.status != run.status.value or row.flow != run.flow:
            self._index.repair(row, run, _iso(run.created_at))

    def purge(
        self,
        created_before: datetime,
        statuses: Iterable[RunStatus],
        *,
        dry_run: bool = False,
        limit: int | None = None,
    ) -> PurgeReport:
        """Delete finished runs created before ``created_before`` whose status is in ``statuses``.

        Reads only index rows of finished runs in that time range; each run row is deleted
        only if it is still what the index says (If-Match on its ETag, after checking its
        stored status), then its index row. Active runs are never deleted."""
        wanted = [RunStatus(s) for s in statuses]
        active = [s.value for s in wanted if not s.terminal]
        if active:
            raise ValidationError(f"only finished runs can be purged, not {', '.join(active)}", field="status")
        report = PurgeReport(created_before=created_before, statuses=[s.value for s in wanted], dry_run=dry_run)
        if not wanted:
            return report
        self._ensure_table()
        rows = self._index.rows([DONE], statuses=[s.value for s in wanted], created_before=created_before, page=1000)
        candidates: list[IndexRow] = []
        for row in rows:
            if limit is not None and len(candidates) >= limit:
                break
            candidates.append(row)
        report.matched = len(candidates)
        if dry_run:
            report.run_ids = [r.run_id for r in candidates]
            return report
        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(lambda row: self._purge_one(row, wanted, created_before), candidates))
        report.run_ids = [row.run_id for row, ok in zip(candidates, outcomes, strict=True) if ok]
        report.deleted = len(report.run_ids)
        report.skipped = report.matched - report.deleted
        return report

    def _purge_one(self, row: IndexRow, wanted: list[RunStatus], created_before: datetime) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        home = partition_for(row.run_id)
        try:
            stored = self._client.get_entity(home, row.run_id, select=["status", "created_at"])
        except ResourceNotFoundError:
            self._index.delete(row.partition, row.row_key)  # an orphan index row
            return False
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        status = str(stored.get("status") or "")
        created = str(stored.get("created_at") or "")
        if created != row.created_at:
            self._index.delete(row.partition, row.row_key)  # a duplicate create's index row: not this run's
            return False
        if status not in {s.value for s in wanted} or created >= _iso(created_before):
            return False  # rerun, or not what the index says: left alone (and repaired when listed)
        try:
            self._client.delete_entity(
                home,
                row.run_id,
                etag=self._etag_of(stored.metadata),
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if exc.status_code == 412:
                return False  # changed since it was read (a rerun): kept
            raise map_azure_error(exc, SERVICE) from exc
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        self._index.delete(row.partition, row.row_key)
        with self._known_lock:
            self._known.pop(row.run_id, None)
        return True

    def _get_or_none(self, run_id: str) -> Run | None:
        try:
            return self.get(run_id)
        except NotFoundError:
            return None

    def get_many(self, run_ids: list[str]) -> list[Run | None]:
        return self._get_many(run_ids)

    def _get_many(self, run_ids: list[str]) -> list[Run | None]:
        if len(run_ids) <= 4:
            return [self._get_or_none(rid) for rid in run_ids]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self._get_or_none, run_ids))

    def create_many(self, runs: list[Run]) -> list[bool]:
        """Bulk create-once: first the runs' index rows (transactions per day partition), then
        the runs in entity group transactions of up to 100 creates per partition, chunks in
        parallel. A chunk refused because some ids exist is submitted again without them (see
        ``_create_chunk``); one refused for another reason (a duplicate id in the input) falls
        back to one create per entity. Each result says whether this call created."""
        if not runs:
            return []
        entities = [self.to_entity(r) for r in runs]
        self._ensure_table()
        self._index_many([self.index_of(e, r) for e, r in zip(entities, runs, strict=True)])
        results: list[bool] = [False] * len(runs)
        by_partition: dict[str, list[int]] = defaultdict(list)
        for i, entity in enumerate(entities):
            by_partition[entity["PartitionKey"]].append(i)
        chunks: list[list[int]] = []
        for indexes in by_partition.values():
            chunk: list[int] = []
            units = 0
            for i in indexes:
                size = sum(len(v) for k, v in entities[i].items() if k.startswith("doc"))
                if chunk and (len(chunk) >= _TX_SIZE or units + size > _TX_MAX_UNITS):
                    chunks.append(chunk)
                    chunk, units = [], 0
                chunk.append(i)
                units += size
            if chunk:
                chunks.append(chunk)

        def run_chunk(chunk: list[int]) -> None:
            created = self._create_chunk([runs[i] for i in chunk], [entities[i] for i in chunk])
            for i, ok in zip(chunk, created, strict=True):
                results[i] = ok

        if len(chunks) == 1:
            run_chunk(chunks[0])
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
                list(pool.map(run_chunk, chunks))
        return results

    def _index_many(self, rows: list[dict[str, Any]]) -> None:
        """Index rows of new runs: inserted 100 per transaction per partition; a transaction refused
        (a row already there: the same run's retried create) is written row by row (upserts)."""
        by_partition: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        for row in rows:
            by_partition[row["PartitionKey"]][row["RowKey"]] = row
        chunks = []
        for same in by_partition.values():
            unique_rows = list(same.values())
            chunks += [unique_rows[i : i + _TX_SIZE] for i in range(0, len(unique_rows), _TX_SIZE)]

        def one(chunk: list[dict[str, Any]]) -> None:
            if len(chunk) > 1 and self._submit_creates(chunk).etags is not None:
                return
            for row in chunk:
                self._index.upsert(row)

        if len(chunks) == 1:
            one(chunks[0])
            return
        with ThreadPoolExecutor(max_workers=min(8, len(chunks))) as pool:
            list(pool.map(one, chunks))

    def _create_chunk(self, runs: list[Run], entities: list[dict[str, Any]]) -> list[bool]:
        """Creates of one partition: one transaction; when it is refused because some ids exist
        (a redelivered drop), look the chunk's ids up (a few queries), leave the existing ones
        out and submit the rest again, instead of one create per entity."""
        results = [False] * len(runs)
        pending = list(range(len(runs)))
        for _ in range(_TX_ROUNDS):
            if len(pending) == 1:
                break
            outcome = self._submit_creates([entities[i] for i in pending])
            if outcome.etags is not None:
                for i, etag in zip(pending, outcome.etags, strict=True):
                    runs[i].etag = etag
                    results[i] = True
                    self._remember(runs[i])
                return results
            if outcome.status != 409:  # a duplicate id in the input, a size limit: one by one
                break
            existing = self._existing_keys(entities[pending[0]]["PartitionKey"], [runs[i].run_id for i in pending])
            if not existing:  # refused, yet nothing is there (deleted meanwhile?): one by one
                break
            still: list[int] = []
            for i in pending:
                if runs[i].run_id not in existing:
                    still.append(i)
                elif outcome.maybe_applied:  # our first POST may have landed before the reset
                    results[i] = self._is_ours(runs[i])
            pending = still
            if not pending:
                return results
        for i in pending:
            results[i] = self._create_one(runs[i], entities[i])
        return results

    def _existing_keys(self, partition: str, run_ids: list[str]) -> set[str]:
        """Which of ``run_ids`` (all in ``partition``) exist: queries of at most 15 comparisons
        (the service's limit per filter), selecting only the RowKey."""
        found: set[str] = set()
        for start in range(0, len(run_ids), _KEYS_PER_QUERY):
            keys = run_ids[start : start + _KEYS_PER_QUERY]
            params: dict[str, Any] = {"pk": partition}
            ors = []
            for j, key in enumerate(keys):
                params[f"k{j}"] = key
                ors.append(f"RowKey eq @k{j}")
            query = "PartitionKey eq @pk and ( " + " or ".join(ors) + " )"
            try:
                rows = self._client.query_entities(query, parameters=params, select=["RowKey"])
                found.update(str(e["RowKey"]) for e in rows)
            except Exception as exc:
                raise map_azure_error(exc, SERVICE) from exc
        return found

    def _is_ours(self, run: Run) -> bool:
        """After a connection reset, a create refused as existing may be our own first attempt:
        it is ours if the stored run has our (random, per-run) traceparent."""
        try:
            stored = self.get(run.run_id)
        except NotFoundError:
            return False
        if stored.traceparent and stored.traceparent == run.traceparent:
            run.etag = stored.etag
            return True
        return False

    def _submit_creates(self, entities: list[dict[str, Any]]) -> _TxOutcome:
        """One entity group transaction of creates: ETags in order, or the status with which the
        service refused it because of one of its entities (409 exists, 400 duplicate/size).

        A connection reset while posting (Azurite closes idle keep-alive connections) is retried
        once on a fresh connection; the outcome then says the first POST may have been applied."""
        try:
            return self._submit_creates_once(entities)
        except _ConnectionReset:
            outcome = self._submit_creates_once(entities, retried=True)
            outcome.maybe_applied = True
            return outcome

    def _submit_creates_once(self, entities: list[dict[str, Any]], retried: bool = False) -> _TxOutcome:
        from azure.core.exceptions import HttpResponseError
        from azure.data.tables import TableTransactionError

        if self._transactions is None:
            try:
                replies = self._client.submit_transaction([("create", e) for e in entities])
            except TableTransactionError as exc:
                return _TxOutcome(None, exc.status_code or 400)
            except HttpResponseError as exc:
                if exc.status_code in (400, 413):
                    return _TxOutcome(None, exc.status_code)
                raise map_azure_error(exc, SERVICE) from exc
            except Exception as exc:
                if not retried and _is_connection_reset(exc):
                    raise _ConnectionReset from exc
                raise map_azure_error(exc, SERVICE) from exc
            return _TxOutcome([self._etag_of(reply) for reply in replies])
        try:
            reply = self._transactions.submit(entities)
        except Exception as exc:
            if not retried and _is_connection_reset(exc):
                raise _ConnectionReset from exc
            raise map_azure_error(exc, SERVICE) from exc
        if reply.status in (400, 413):
            return _TxOutcome(None, reply.status)
        if reply.status != 202:
            raise map_azure_error(HttpResponseError(message=reply.text[:300], response=reply.response), SERVICE)
        statuses = reply.statuses
        if statuses and all(200 <= st < 300 for st in statuses) and len(statuses) == len(entities):
            return _TxOutcome(reply.etags)
        failed = [st for st in statuses if not 200 <= st < 300]
        if failed and failed[0] in (400, 409, 413):
            return _TxOutcome(None, failed[0])
        status = failed[0] if failed else 500
        raise map_azure_error(
            HttpResponseError(message=f"transaction failed with {status}: {reply.text[:300]}", response=reply.response),
            SERVICE,
        )


@dataclass(frozen=True)
class _Stored:
    """What the store last saw of a run row: enough to find its index row."""

    status: RunStatus
    created_at: datetime


@dataclass
class _TxOutcome:
    """A create transaction's outcome: the ETags, or the status that refused it."""

    etags: list[str | None] | None
    status: int = 0
    maybe_applied: bool = False  # retried after a connection reset: the first POST may have landed


class _ConnectionReset(Exception):
    """The connection was reset or closed under a request (retried once, then mapped)."""


_RESET_TYPES = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.RemoteDisconnected)


def _is_connection_reset(exc: BaseException) -> bool:
    """Whether ``exc`` (an SDK or requests error) was caused by a reset/closed connection."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _RESET_TYPES):
            return True
        todo.extend([e.__cause__, e.__context__, getattr(e, "inner_exception", None), *e.args])
    return False
