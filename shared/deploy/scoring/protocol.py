"""MLflow's scoring protocol, and routing rows to partitions: the part of scoring both endpoints run.

The local scoring server (shared/deploy/scoring_server.py) and the Azure ML many-models
scoring script (azureml_score.py, next to this file, shipped to Azure with it as the
deployment's code) read request bodies, route rows and predict with this module, so a client
gets the same answers and the same errors from both. It imports nothing of Conveyor's (it runs
inside an Azure ML deployment where only this folder is present); pandas is imported lazily.

A body is a JSON object with exactly one of

  {"dataframe_split": {"columns": [...], "data": [[...], ...], "index": [...]}}   (index optional)
  {"dataframe_records": [{column: value}, ...]}
  {"instances": [{column: value}, ...]}
  {"inputs": {column: [values], ...}}  or  {"inputs": [{column: value}, ...]}

and an optional ``"params"`` object; Conveyor's own ``{"rows": [...]}`` and a bare list of rows
are accepted too. Every problem is a RequestError with an HTTP status and the field it names
(``dataframe_split.data[3][1]``, ``rows[0].price``).

Routing (many models): each row names its partition in the endpoint's partition key column
(``partition_of``: ``7``, ``7.0`` and ``"7"`` are partition ``7``); rows without the column take
``params.partition``. A partition the endpoint does not serve is the endpoint's ``unknown`` error
(a 404 ``unknown_partition`` naming it and the cell it came from).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs", "rows")
# long/integer columns go to int64/int32: larger magnitudes would overflow in the cast
INT_BOUNDS = {"long": 2**63, "integer": 2**31}
NUMERIC_TYPES = ("double", "float", "long", "integer")

log = logging.getLogger("conveyor.scoring")

_CODES = {400: "validation_error", 404: "not_found", 503: "model_unavailable"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code or _CODES.get(status, "error")


@dataclass
class Table:
    """Rows of ``{column: value}`` from one scoring body, and how to name a cell of it in an error."""

    rows: list[dict[str, Any]]
    cell: Callable[[int, str], str]  # field of row i, column c
    missing: Callable[[int, str], str]  # field to name when row i lacks column c
    params: dict[str, Any] = field(default_factory=dict)  # the body's "params" object


def _records(value: Any, key: str) -> Table:
    if not isinstance(value, list) or not value:
        raise RequestError(400, "must be a non-empty list of {column: value} objects", field=key)
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise RequestError(400, "must be an object of {column: value}", field=f"{key}[{i}]")
    return Table(value, lambda i, c: f"{key}[{i}].{c}", lambda i, c: f"{key}[{i}].{c}")


def _split(value: Any) -> Table:
    key = "dataframe_split"
    if not isinstance(value, dict):
        raise RequestError(400, 'must be an object {"columns": [...], "data": [[...]]}', field=key)
    for extra in sorted(set(value) - {"columns", "data", "index"}):
        raise RequestError(400, "unknown field; expected columns, data and optionally index", field=f"{key}.{extra}")
    columns, data = value.get("columns"), value.get("data")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise RequestError(400, "must be a non-empty list of column names", field=f"{key}.columns")
    if len(set(columns)) != len(columns):
        raise RequestError(400, "column names must be unique", field=f"{key}.columns")
    if not isinstance(data, list) or not data:
        raise RequestError(400, "must be a non-empty list of rows (lists of values)", field=f"{key}.data")
    index = value.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(data)):
        raise RequestError(400, "must be a list with one entry per row of data", field=f"{key}.index")
    rows = []
    for i, row in enumerate(data):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(
                400, f"must be a list of {len(columns)} values (one per column)", field=f"{key}.data[{i}]"
            )
        rows.append(dict(zip(columns, row, strict=True)))
    position = {c: j for j, c in enumerate(columns)}
    return Table(rows, lambda i, c: f"{key}.data[{i}][{position[c]}]", lambda i, c: f"{key}.columns")


def _columns(value: dict[str, Any]) -> Table:
    key = "inputs"
    if not value:
        raise RequestError(400, "must name at least one column", field=key)
    lengths = set()
    for col, values in value.items():
        if not isinstance(values, list) or not values:
            raise RequestError(400, "must be a non-empty list of values (one per row)", field=f"{key}.{col}")
        lengths.add(len(values))
    if len(lengths) != 1:
        raise RequestError(400, "every column must have the same number of values", field=key)
    n = lengths.pop()
    rows = [{col: values[i] for col, values in value.items()} for i in range(n)]
    return Table(rows, lambda i, c: f"{key}.{c}[{i}]", lambda i, c: f"{key}.{c}")


def parse_scoring_body(body: Any) -> Table:
    """The rows of a scoring body in any accepted format (see the module docstring)."""
    if isinstance(body, list):
        return _records(body, "rows")  # Conveyor's bare list of rows
    accepted = ", ".join(PROTOCOL_KEYS)
    if not isinstance(body, dict):
        raise RequestError(400, f"must be a JSON object with one of {accepted}", field="body")
    for extra in sorted(set(body) - {*PROTOCOL_KEYS, "params"}):
        raise RequestError(
            400, f"unknown field; expected one of {accepted} (and optionally params)", field=extra or '""'
        )
    keys = [k for k in PROTOCOL_KEYS if k in body]
    if len(keys) != 1:
        raise RequestError(400, f"needs exactly one of {accepted}", field="body")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise RequestError(400, "must be an object", field="params")
    key = keys[0]
    value = body[key]
    if key == "dataframe_split":
        table = _split(value)
    elif key == "inputs" and isinstance(value, dict):
        table = _columns(value)
    else:
        table = _records(value, key)
    table.params = dict(params or {})
    return table


def _number(value: Any, typ: str, field: str) -> float | int:
    """A finite number for a numeric column (integral and in range for long/integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(400, f"must be a number, got {_show(value)}", field=field)
    try:
        number = float(value) if not isinstance(value, int) else value
    except ValueError:
        raise RequestError(400, f"must be a number, got {_show(value)}", field=field) from None
    if isinstance(number, float) and not math.isfinite(number):
        raise RequestError(400, f"must be a finite number, got {_show(value)}", field=field)
    bound = INT_BOUNDS.get(typ)
    if bound is not None:
        if isinstance(number, float):
            if not number.is_integer():
                raise RequestError(400, f"must be an integer, got {_show(value)}", field=field)
            number = int(number)
        if not -bound <= number < bound:
            raise RequestError(400, f"out of range for a {typ} column", field=field)
    elif abs(number) > 1.7e308:
        raise RequestError(400, "out of range for a double column", field=field)
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def partition_of(value: Any) -> str | None:
    """The partition a row's key value names: text as it is, an integer (or an integral float) in
    decimal; None for anything else (booleans, fractions, lists, null)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        return value
    return None


def partition_order(partition: str) -> tuple[int, int, str]:
    """Sort key: integer partitions by value first (2 before 10), then the others as text."""
    return (0, int(partition), "") if partition.isascii() and partition.isdigit() else (1, 0, partition)


def unknown_partition(
    endpoint: str, partition: str, field: str | None, served: list[str] | None = None
) -> RequestError:
    """The 404 for a partition ``endpoint`` does not serve (``served``: the ones it does, if known)."""
    listed = ""
    if served is not None:
        shown = ", ".join(served[:10]) + (", …" if len(served) > 10 else "")
        listed = f" (it serves {len(served)}: {shown})"
    return RequestError(
        404,
        f"endpoint {endpoint!r} serves no partition {partition[:64]!r}{listed}",
        field=field,
        code="unknown_partition",
    )


def route_rows(
    table: Table, key: str, is_served: Callable[[str], bool], unknown: Callable[[str, str], RequestError]
) -> list[str]:
    """The partition of each row of a routed endpoint's request (see the module docstring).

    A row names its partition in the ``key`` column; rows without it take the request's
    ``params.partition`` (which then fills the column in, as the model reads it). A partition
    ``is_served`` denies is ``unknown(partition, field)``, raised.
    """
    given_raw = table.params.get("partition")
    given = None
    if given_raw is not None:
        given = partition_of(given_raw)
        if given is None:
            raise RequestError(400, f"must be text or an integer, got {_show(given_raw)}", field="params.partition")
        if not is_served(given):
            raise unknown(given, "params.partition")
    routes: list[str] = []
    for i, row in enumerate(table.rows):
        raw = row.get(key)
        if raw is None:
            if given is None:
                raise RequestError(
                    400,
                    f"missing the partition key column {key!r} (or name the partition once as params.partition)",
                    field=table.missing(i, key),
                )
            row[key] = given_raw
            routes.append(given)
            continue
        partition = partition_of(raw)
        cell = table.cell(i, key)
        if partition is None:
            raise RequestError(400, f"a partition key must be text or an integer, got {_show(raw)}", field=cell)
        if given is not None and partition != given:
            raise RequestError(
                400, f"this row is for partition {partition[:64]!r} but params.partition is {given[:64]!r}", field=cell
            )
        if not is_served(partition):
            raise unknown(partition, cell)
        routes.append(partition)
    return routes


# ---------------------------------------------------------------- predicting


Columns = list[tuple[str, str, bool]]  # the model's input columns: (name, type, required)


def input_columns(model: Any) -> Columns:
    """The named inputs of an MLflow pyfunc model's signature (empty when it has none)."""
    columns: Columns = []
    try:
        schema = model.metadata.get_input_schema()
    except Exception:
        schema = None
    if schema is not None and getattr(schema, "has_input_names", lambda: False)():
        for spec in schema.inputs:
            typ = getattr(spec, "type", None)
            columns.append((spec.name, str(getattr(typ, "name", typ)), bool(getattr(spec, "required", True))))
    return columns


def predict_rows(model: Any, columns: Columns, table: Table, indices: Iterable[int], what: str) -> list[Any]:
    """Predictions of ``model`` for ``table.rows[i]`` for each ``i`` of ``indices``, in that order.

    Numeric columns of the signature are checked (finite, integral and in range for long/integer)
    and cast as the model expects; a row missing a required column is a 400 naming it. What the
    model itself raises is logged (``what`` names the endpoint) and answered as a 400 that echoes
    nothing of it.
    """
    import pandas as pd

    picked = list(indices)
    rows = [table.rows[i] for i in picked]
    for col, typ, required in columns:
        for i, row in zip(picked, rows, strict=True):
            if required and (col not in row or row[col] is None):
                raise RequestError(400, f"missing column {col!r}", field=table.missing(i, col))
            if col in row and row[col] is not None and typ in NUMERIC_TYPES:
                row[col] = _number(row[col], typ, table.cell(i, col))
    try:
        frame = pd.DataFrame.from_records(rows)
        if columns:
            for col, typ, _ in columns:
                if col in frame and typ in NUMERIC_TYPES:
                    frame[col] = pd.to_numeric(frame[col]).astype("float64" if typ in ("double", "float") else "int64")
            frame = frame[[c for c, _, _ in columns if c in frame]]
        predictions = model.predict(frame)
    except Exception:
        log.warning("scoring: endpoint %s: predict failed", what, exc_info=True)
        raise RequestError(
            400, "the model could not score these rows (check the column names and types)", field="body"
        ) from None
    values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    values = [v.tolist() if hasattr(v, "tolist") else v for v in values]
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]
