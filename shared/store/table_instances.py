"""InstanceStore on Azure Table Storage (Azurite locally): the fan-outs of for_each steps.

Table ``settings.instances_table_name`` (default: the runs table's name + ``instances``);
every row of one run shares ``PartitionKey`` = the run id, so a FanOut row and its instance
rows are written in one entity group transaction (atomic, each operation ETag-guarded):

* ``f~<step>``: the FanOut row (``doc``: its JSON);
* ``i~<step>~<epoch:05>~<index:06>``: one instance (``doc``, plus ``state``/``index``/``epoch``
  for queries); the zero-padded keys list instances in index order;
* ``p~<step>~<epoch:05>~<page:06>``: ITEMS_PER_PAGE items of the for_each list (``doc``).

Documents longer than one string property are split across ``doc``, ``doc1``… like run
documents (shared.store.table). A row stays far below the 1 MiB entity limit: a decision
writes at most a FanOut row and LAUNCH_BATCH small instance rows, and items are capped in
size by the engine (shared.engine.decide), so a 10,000-item fan-out is ~100 item pages and
10,000 instance rows, none of them in the run document.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared.azure_errors import map_azure_error
from shared.engine.model import FanOut, InstanceRun, StepState
from shared.errors import ConcurrencyError, ValidationError
from shared.store.base import ITEMS_PER_PAGE, MAX_INSTANCES_PER_SAVE, InstanceStore
from shared.store.table import TableOnce, check_run_id, doc_property, join_doc, split_doc, table_client

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from shared.settings import Settings

SERVICE = "table"
_MAX_ROW_CHARS = 480_000  # ~960 KB of UTF-16 (ASCII JSON): an entity holds 1 MiB
_PAGE = 1000  # rows per query page (the service's maximum)


def head_key(step: str) -> str:
    return f"f~{step}"


def instance_key(step: str, epoch: int, index: int) -> str:
    return f"i~{step}~{epoch:05d}~{index:06d}"


def items_key(step: str, epoch: int, page: int) -> str:
    return f"p~{step}~{epoch:05d}~{page:06d}"


def _doc_props(doc: str, what: str) -> dict[str, str]:
    if len(doc) > _MAX_ROW_CHARS:
        raise ValidationError(f"{what} is too large for Table Storage ({len(doc)} chars)", field=what)
    return {doc_property(i): chunk for i, chunk in enumerate(split_doc(doc))}


class TableInstanceStore(InstanceStore):
    def __init__(self, client: TableClient) -> None:
        self._client = client
        self._ensure_table = TableOnce(client)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None
    ) -> TableInstanceStore:
        """Identity-based or by connection string, exactly like the run store (same account)."""
        name = settings.instances_table_name
        return cls(table_client(settings, name, credential=credential, client_kwargs=client_kwargs))

    @staticmethod
    def _etag(metadata: Mapping[str, Any] | None) -> str | None:
        etag = (metadata or {}).get("etag")
        return str(etag) if etag is not None else None

    # ------------------------------------------------------------ entities

    @staticmethod
    def _head_entity(fan: FanOut) -> dict[str, Any]:
        check_run_id(fan.run_id)
        return {"PartitionKey": fan.run_id, "RowKey": head_key(fan.step), **_doc_props(fan.model_dump_json(), "fanout")}

    @staticmethod
    def _instance_entity(run_id: str, inst: InstanceRun) -> dict[str, Any]:
        return {
            "PartitionKey": run_id,
            "RowKey": instance_key(inst.name, inst.epoch, inst.index),
            "state": inst.state.value,
            "epoch": inst.epoch,
            "index": inst.index,
            **_doc_props(inst.model_dump_json(), "instance"),
        }

    def _query(self, query: str, params: dict[str, Any], limit: int | None = None) -> list[Any]:
        self._ensure_table()
        out: list[Any] = []
        try:
            rows = self._client.query_entities(query, parameters=params, results_per_page=min(limit or _PAGE, _PAGE))
            for row in rows:
                out.append(row)
                if limit is not None and len(out) >= limit:
                    break
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return out

    # ------------------------------------------------------------ InstanceStore

    def fanouts(self, run_id: str) -> dict[str, FanOut]:
        check_run_id(run_id)
        rows = self._query(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi", {"pk": run_id, "lo": "f~", "hi": "f~~"}
        )
        out: dict[str, FanOut] = {}
        for row in rows:
            fan = FanOut.model_validate_json(join_doc(row))
            fan.etag = self._etag(row.metadata)
            out[fan.step] = fan
        return out

    def instance(self, run_id: str, step: str, epoch: int, index: int) -> InstanceRun | None:
        check_run_id(run_id)
        self._ensure_table()
        from azure.core.exceptions import ResourceNotFoundError

        try:
            row = self._client.get_entity(run_id, instance_key(step, epoch, index))
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return self._from_row(row)

    def _from_row(self, row: Any) -> InstanceRun:
        inst = InstanceRun.model_validate_json(join_doc(row))
        inst.etag = self._etag(row.metadata)
        return inst

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
        check_run_id(run_id)
        if limit <= 0:
            return []
        params: dict[str, Any] = {
            "pk": run_id,
            "lo": instance_key(step, epoch, max(0, start)),
            "hi": f"i~{step}~{epoch:05d}~~",
        }
        query = "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi"
        wanted = list(dict.fromkeys(StepState(s).value for s in states)) if states is not None else None
        if wanted is not None:
            if not wanted:
                return []
            ors = []
            for i, value in enumerate(wanted):
                params[f"s{i}"] = value
                ors.append(f"state eq @s{i}")
            query += " and ( " + " or ".join(ors) + " )"
        return [self._from_row(row) for row in self._query(query, params, limit)]

    def save(self, fanout: FanOut, instances: Iterable[InstanceRun] = ()) -> tuple[FanOut, list[InstanceRun]]:
        rows = list(instances)
        ops = [self._op(self._head_entity(fanout), fanout.etag)]
        ops += [self._op(self._instance_entity(fanout.run_id, i), i.etag) for i in rows]
        etags = self._submit(fanout.run_id, ops, len(rows))
        head = fanout.model_copy(update={"etag": etags[0]})
        return head, [i.model_copy(update={"etag": e}) for i, e in zip(rows, etags[1:], strict=True)]

    def save_instances(self, run_id: str, instances: Iterable[InstanceRun]) -> tuple[None, list[InstanceRun]]:
        rows = list(instances)
        if not rows:
            return None, []
        etags = self._submit(run_id, [self._op(self._instance_entity(run_id, i), i.etag) for i in rows], len(rows))
        return None, [i.model_copy(update={"etag": e}) for i, e in zip(rows, etags, strict=True)]

    @staticmethod
    def _op(entity: dict[str, Any], etag: str | None) -> tuple[Any, ...]:
        if etag is None:
            return ("create", entity)
        from azure.core import MatchConditions
        from azure.data.tables import UpdateMode

        return (
            "update",
            entity,
            {"mode": UpdateMode.REPLACE, "etag": etag, "match_condition": MatchConditions.IfNotModified},
        )

    def _submit(self, run_id: str, ops: list[tuple[Any, ...]], instances: int) -> list[str | None]:
        if instances > MAX_INSTANCES_PER_SAVE:
            raise ValidationError(f"at most {MAX_INSTANCES_PER_SAVE} instances per save", field="instances")
        self._ensure_table()
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
        from azure.data.tables import TableTransactionError

        try:
            replies = self._client.submit_transaction(ops)
        except TableTransactionError as exc:
            if exc.status_code in (404, 409, 412):  # gone, exists, changed: someone else wrote first
                raise ConcurrencyError(
                    f"fan-out rows of run {run_id} changed since they were read", service=SERVICE, status=412
                ) from exc
            raise map_azure_error(exc, SERVICE) from exc
        except (ResourceExistsError, ResourceNotFoundError) as exc:
            raise ConcurrencyError(f"fan-out rows of run {run_id} changed", service=SERVICE, status=412) from exc
        except HttpResponseError as exc:
            if exc.status_code in (404, 409, 412):
                raise ConcurrencyError(f"fan-out rows of run {run_id} changed", service=SERVICE, status=412) from exc
            raise map_azure_error(exc, SERVICE) from exc
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc
        return [self._etag(r) for r in replies]

    def put_items(self, run_id: str, step: str, epoch: int, items: list[Any]) -> None:
        check_run_id(run_id)
        self._ensure_table()
        ops: list[tuple[Any, ...]] = []
        size = 0
        for page, start in enumerate(range(0, len(items), ITEMS_PER_PAGE)):
            doc = json.dumps(items[start : start + ITEMS_PER_PAGE], separators=(",", ":"))
            entity = {"PartitionKey": run_id, "RowKey": items_key(step, epoch, page), **_doc_props(doc, "items")}
            if ops and (len(ops) >= 100 or size + len(doc) > 3_000_000):
                self._upsert(ops)
                ops, size = [], 0
            ops.append(("upsert", entity))
            size += len(doc)
        if ops:
            self._upsert(ops)

    def _upsert(self, ops: list[tuple[Any, ...]]) -> None:
        try:
            self._client.submit_transaction(ops)
        except Exception as exc:
            raise map_azure_error(exc, SERVICE) from exc

    def items(self, run_id: str, step: str, epoch: int, start: int, count: int) -> list[Any]:
        check_run_id(run_id)
        if count <= 0:
            return []
        first, last = start // ITEMS_PER_PAGE, (start + count - 1) // ITEMS_PER_PAGE
        rows = self._query(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey le @hi",
            {"pk": run_id, "lo": items_key(step, epoch, first), "hi": items_key(step, epoch, last)},
        )
        out: list[Any] = []
        for row in sorted(rows, key=lambda r: str(r["RowKey"])):
            out.extend(json.loads(join_doc(row)))
        offset = start - first * ITEMS_PER_PAGE
        return out[offset : offset + count]


__all__ = ["TableInstanceStore", "head_key", "instance_key", "items_key"]
