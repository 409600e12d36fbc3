"""The lifecycle-event outbox on Table Storage (Azurite locally), next to the runs table.

Table ``<runs table>events``:

* pending rows: ``PartitionKey`` = ``"p"`` + the first hex digit of the event id (16
  buckets), ``RowKey`` = event id; ``event`` (the CloudEvent JSON), ``pending`` (JSON list of
  sink names still to take it), ``attempts``, ``first_at``, ``next_at`` (ISO UTC, which sort),
  ``state`` (``pending`` | ``expired``), ``last_error``, ``seq`` (the order of the events one
  transition produced: they share ``first_at``, and ``due`` returns them in that order).
  A deliverer leases a row by moving its ``next_at`` forward with If-Match on the row's
  ETag, so two deliverers never send the same row at the same time (a deliverer that dies
  loses its lease when ``next_at`` passes).
* delivered rows (tombstones): ``PartitionKey`` = ``"d"`` + the event's day (``YYYYMMDD``),
  ``RowKey`` = event id, so a re-derived event that was already delivered is not sent again
  (:meth:`TableOutbox.add` with ``skip_delivered``), and old ones are purged by day.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.azure_errors import map_azure_error
from shared.events.base import CloudEventJson, Outbox, OutboxEntry
from shared.store.table import TableOnce, table_client

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

SERVICE = "table"
MAX_EVENT_CHARS = 30_000  # one string property (64 KiB of UTF-16) with room to spare


def outbox_table_name(runs_table: str) -> str:
    return runs_table[:57] + "events"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _day(event: CloudEventJson) -> str:
    try:
        when = datetime.fromisoformat(str(event.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        when = datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y%m%d")


@dataclass
class _Row:
    """Where an entry's row is and the ETag it was read or last written with."""

    pk: str
    rk: str
    etag: str | None
    seq: int = 0


class TableOutbox(Outbox):
    def __init__(self, client: TableClient) -> None:
        self._client = client
        self._ensure = TableOnce(client)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
    ) -> TableOutbox:
        """The same account as the run store (identity-based or connection string)."""
        name = outbox_table_name(settings.runs_table)
        return cls(table_client(settings, name, credential=credential, client_kwargs=client_kwargs))

    @staticmethod
    def _pending_key(event_id: str) -> tuple[str, str]:
        return "p" + (event_id[:1] or "0"), event_id

    def _delivered(self, event: CloudEventJson) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self._client.get_entity("d" + _day(event), str(event["id"]), select=["RowKey"])
        except ResourceNotFoundError:
            return False
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return True

    # -- Outbox ----------------------------------------------------------------------------

    def add(
        self, events: list[CloudEventJson], sinks: list[str], now: datetime, *, skip_delivered: bool = False
    ) -> list[bool]:
        from azure.core.exceptions import ResourceExistsError

        self._ensure()
        added: list[bool] = []
        at = _iso(now)
        for seq, event in enumerate(events):
            if skip_delivered and self._delivered(event):
                added.append(False)
                continue
            text = json.dumps(event, separators=(",", ":"), default=str)
            if len(text) > MAX_EVENT_CHARS:  # never lose the event for its size: drop the bulky data
                event = {**event, "data": {k: event["data"].get(k) for k in ("run_id", "flow", "trace_id")}}
                text = json.dumps(event, separators=(",", ":"), default=str)
            pk, rk = self._pending_key(str(event["id"]))
            entity = {
                "PartitionKey": pk,
                "RowKey": rk,
                "event": text,
                "pending": json.dumps(list(sinks)),
                "attempts": 0,
                "seq": seq,  # order within one recording (events of one transition share first_at)
                "first_at": at,
                "next_at": at,
                "state": "pending",
                "last_error": "",
            }
            try:
                self._client.create_entity(entity)
            except ResourceExistsError:
                added.append(False)
                continue
            except Exception as exc:
                raise map_azure_error(exc, SERVICE) from exc
            added.append(True)
        return added

    def due(self, now: datetime, limit: int = 100) -> list[OutboxEntry]:
        self._ensure()
        query = "PartitionKey ge 'p' and PartitionKey lt 'q' and state eq 'pending' and next_at le @now"
        try:
            rows = self._client.query_entities(query, parameters={"now": _iso(now)}, results_per_page=min(limit, 1000))
            entries = []
            for row in rows:
                entries.append(self._entry(row))
                if len(entries) >= limit:
                    break
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        entries.sort(key=lambda e: (e.first_at, e.handle.seq))
        return entries

    @staticmethod
    def _entry(row: Mapping[str, Any]) -> OutboxEntry:
        return OutboxEntry(
            event=json.loads(row["event"]),
            pending=list(json.loads(row.get("pending") or "[]")),
            attempts=int(row.get("attempts") or 0),
            first_at=datetime.fromisoformat(row["first_at"]),
            next_at=datetime.fromisoformat(row["next_at"]),
            last_error=str(row.get("last_error") or ""),
            handle=_Row(row["PartitionKey"], row["RowKey"], row.metadata.get("etag"), int(row.get("seq") or 0)),  # type: ignore[attr-defined]
        )

    def _update(self, entry: OutboxEntry, changes: dict[str, Any]) -> str | None:
        """Merge ``changes`` into the entry's row if it is unchanged; its new ETag, or None if it moved on."""
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        pk, rk, etag = entry.handle.pk, entry.handle.rk, entry.handle.etag
        try:
            meta = self._client.update_entity(
                {"PartitionKey": pk, "RowKey": rk, **changes},
                mode=UpdateMode.MERGE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceNotFoundError:
            return None
        except HttpResponseError as exc:
            if exc.status_code == 412:
                return None
            raise map_azure_error(exc, SERVICE) from exc
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return str(meta.get("etag"))

    def claim(self, entry: OutboxEntry, until: datetime) -> OutboxEntry | None:
        etag = self._update(entry, {"next_at": _iso(until)})
        if etag is None:
            return None
        entry.handle.etag = etag
        entry.next_at = until
        return entry

    def retry(self, entry: OutboxEntry, pending: list[str], next_at: datetime, error: str) -> None:
        etag = self._update(
            entry,
            {
                "pending": json.dumps(pending),
                "attempts": entry.attempts + 1,
                "next_at": _iso(next_at),
                "last_error": error[:2000],
            },
        )
        if etag is not None:
            entry.handle.etag = etag

    def done(self, entry: OutboxEntry) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        pk, rk, etag = entry.handle.pk, entry.handle.rk, entry.handle.etag
        tombstone = {"PartitionKey": "d" + _day(entry.event), "RowKey": rk, "delivered_at": _iso(datetime.now(UTC))}
        try:
            self._client.upsert_entity(tombstone, mode=UpdateMode.REPLACE)
            self._client.delete_entity(pk, rk, etag=etag, match_condition=MatchConditions.IfNotModified)
        except ResourceNotFoundError:
            pass
        except HttpResponseError as exc:
            if exc.status_code != 412:  # 412: someone else took the row over (a lost lease): theirs now
                raise map_azure_error(exc, SERVICE) from exc
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def expire(self, entry: OutboxEntry, error: str) -> None:
        self._update(entry, {"state": "expired", "attempts": entry.attempts + 1, "last_error": error[:2000]})

    def purge(self, before: datetime) -> int:
        """Tombstones of days before ``before`` and expired rows first seen before it."""
        self._ensure()
        day = "d" + before.astimezone(UTC).strftime("%Y%m%d")
        queries = [
            ("PartitionKey ge 'd' and PartitionKey lt @day", {"day": day}),
            (
                "PartitionKey ge 'p' and PartitionKey lt 'q' and state eq 'expired' and first_at lt @t",
                {"t": _iso(before)},
            ),
        ]
        count = 0
        try:
            for query, params in queries:
                for row in list(
                    self._client.query_entities(query, parameters=params, select=["PartitionKey", "RowKey"])
                ):
                    self._client.delete_entity(row["PartitionKey"], row["RowKey"])
                    count += 1
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return count
