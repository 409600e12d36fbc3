"""Databricks job: the medallion layers for one dropped sales file.

bronze  the raw CSV as it arrived (all columns as text) + where it came from
silver  typed, de-duplicated, no missing values, no outliers
gold    one row per store and day with the model's features

    python medallion.py --input <blob URL or local path> --lake <dbfs:/ URI or dir> [--partition-by store]

With ``--partition-by <column>`` gold is a Delta table partitioned by that column (one folder
per value, as Databricks writes it) and the result also lists the partitions, so a flow can
fan out one training per partition (the many-models flow)::

    "partition_key": "store",
    "partitions": [{"partition": "1", "rows": 40}, {"partition": "2", "rows": 40}, ...]

``partition`` is the value as text (what a model name and a routed endpoint use).

Tables are Delta tables written with the ``deltalake`` package (no Spark needed), so the same
file runs as a Databricks job and locally. Blob URLs are read with azure-storage-blob using
the read SAS in CONVEYOR_TASK_STORAGE_SAS when set (what a local run gets; a Databricks
cluster reads through its own identity). The job ends with
``dbutils.notebook.exit(json)`` (``{"bronze", "silver", "gold", "rows"}``, plus the partitions);
where there is no
``dbutils`` (plain python) the JSON is printed instead.

``--lake dbfs:/conveyor/lake/<run>`` is written through the cluster's ``/dbfs`` mount and
reported as ``dbfs:/`` URIs; Conveyor's local Databricks backend hands the script the
matching directory under its data home instead, so locally the paths are local ones.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
from pathlib import Path
from typing import Any

COLUMNS = ["store", "day", "temperature", "promo", "price", "sales"]
FEATURES = ["store", "day", "day_of_week", "temperature", "promo", "price"]
TARGET = "sales"


def read_bytes(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        from azure.storage.blob import BlobClient

        credential = os.environ.get("CONVEYOR_TASK_STORAGE_SAS") or None
        return BlobClient.from_blob_url(source, credential=credential).download_blob().readall()
    return Path(source).read_bytes()


def bronze(source: str, lake: Path) -> Any:
    import pandas as pd
    from deltalake import write_deltalake

    raw = pd.read_csv(io.BytesIO(read_bytes(source)), dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise SystemExit(f"input {source} lacks columns {missing}")
    raw = raw.astype(str)
    raw["_source"] = source
    raw["_row"] = range(len(raw))
    write_deltalake(str(lake / "bronze"), raw, mode="overwrite")
    return raw


def silver(raw: Any, lake: Path) -> Any:
    import pandas as pd
    from deltalake import write_deltalake

    typed = pd.DataFrame({c: pd.to_numeric(raw[c].replace("", None), errors="coerce") for c in COLUMNS})
    typed = typed.dropna()
    typed = typed.drop_duplicates(subset=["store", "day"], keep="first")
    typed = typed.astype({"store": "int64", "day": "int64", "promo": "int64"})
    ok = typed["price"].gt(0) & typed["sales"].ge(0) & typed["temperature"].between(-40, 50)
    med = typed["sales"].median()
    mad = (typed["sales"] - med).abs().median() * 1.4826
    if mad > 0:
        ok &= (typed["sales"] - med).abs() <= 6 * mad
    clean = typed[ok].sort_values(["store", "day"]).reset_index(drop=True)
    write_deltalake(str(lake / "silver"), clean, mode="overwrite")
    return clean


def gold(clean: Any, lake: Path, partition_by: str | None = None) -> Any:
    from deltalake import write_deltalake

    per_day = (
        clean.groupby(["store", "day"], as_index=False)
        .agg(
            temperature=("temperature", "mean"),
            promo=("promo", "max"),
            price=("price", "mean"),
            sales=("sales", "sum"),
        )
        .sort_values(["store", "day"])
        .reset_index(drop=True)
    )
    per_day["day_of_week"] = (per_day["day"] % 7).astype("int64")
    features = per_day[[*FEATURES, TARGET]]
    partitions = [partition_by] if partition_by else None
    write_deltalake(str(lake / "gold"), features, mode="overwrite", partition_by=partitions)
    return features


def partition_list(features: Any, column: str) -> list[dict[str, Any]]:
    """One entry per value of ``column`` in gold: the value as text and its row count, in value order."""
    counts = features.groupby(column).size()
    return [{"partition": str(value), "rows": int(n)} for value, n in sorted(counts.items())]


DBFS = "dbfs:/"
DBFS_MOUNT = Path("/dbfs")  # where a Databricks cluster mounts DBFS for file APIs


def run(source: str, lake: str | Path, partition_by: str | None = None) -> dict[str, Any]:
    if partition_by is not None and partition_by not in FEATURES:
        raise SystemExit(f"--partition-by must be one of the gold columns {FEATURES}, got {partition_by!r}")
    given = str(lake)
    if given.startswith(DBFS):  # on a Databricks cluster DBFS is mounted at /dbfs
        where = DBFS_MOUNT / given[len(DBFS) :].strip("/")
        name = given.rstrip("/") + "/{}"
    else:
        where = Path(given).resolve()
        name = str(where / "{}")
    where.mkdir(parents=True, exist_ok=True)
    raw = bronze(source, where)
    clean = silver(raw, where)
    features = gold(clean, where, partition_by)
    result: dict[str, Any] = {
        "bronze": name.format("bronze"),
        "silver": name.format("silver"),
        "gold": name.format("gold"),
        "rows": {"bronze": len(raw), "silver": len(clean), "gold": len(features)},
    }
    if partition_by:
        result["partition_key"] = partition_by
        result["partitions"] = partition_list(features, partition_by)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bronze -> silver -> gold for one sales file")
    parser.add_argument("--input", required=True, help="blob URL or local path of a sales CSV")
    parser.add_argument("--lake", required=True, help="dbfs:/ URI or directory of the bronze/silver/gold Delta tables")
    parser.add_argument("--partition-by", default=None, help="a gold column to partition gold by (e.g. store)")
    args = parser.parse_args(argv)
    result = json.dumps(run(args.input, args.lake, args.partition_by))
    dbutils = globals().get("dbutils") or getattr(builtins, "dbutils", None)
    if dbutils is not None:
        dbutils.notebook.exit(result)
    else:
        print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
