"""``conveyor demo --many``: the many-models flow, from one file with many stores to one routed endpoint.

The demo's own path (shared/demo.py: a fresh data home, the local host in this process, a real
BlobCreated event from the watcher) with the ``many-models`` flow: the sample generator writes
one sales file with STORES stores into ``landing-stores``; the run's ETL partitions gold by
store, one Azure ML training per store runs (two at a time), each model is registered as
``sales-forecaster-<store>``, gated against that store's champion and served as the store's
partition of the one ``sales-forecaster-stores`` endpoint. This module does what is particular
to it: the data file, each partition's gate decision (from the deploy fan-out's instances) and
one scoring request holding a row of every store, sent to the one endpoint, which routes each
row to its store's model. The table it prints shows which model and version answered each row.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from shared.errors import ConveyorError

if TYPE_CHECKING:
    from rich.console import Console

    from shared.demo import DemoResult
    from shared.engine.model import Run
    from shared.settings import Settings
    from shared.store.base import InstanceStore
    from shared.wiring import Services

FLOW = "many-models"
LANDING = "landing-stores"
STORES = 24
DAYS = 40  # rows per store: quick to train, enough for a holdout of 10
MIN_PARTITIONS = 20  # the demo fails unless this many partition models answered (or every store, if fewer)
PARTITION_KEY = "store"


def generate_stores_data(settings: Settings, out_dir: Path, *, stores: int = STORES, seed: int = 11) -> Path:
    """One sales CSV with ``stores`` stores and DAYS days each, by samples/data/make_sales.py."""
    from shared.demo import generate_data

    return generate_data(
        settings, out_dir, rows=stores * DAYS, seed=seed, stores=stores, name=f"stores-{stores:03d}.csv"
    )


def fanout_outputs(instances: InstanceStore, run: Run, step: str) -> list[dict[str, Any]]:
    """The outputs of a for_each step's succeeded instances, in item order."""
    sr = run.step(step)
    if sr.fanout is None or not sr.fanout.total:
        return []
    out: list[dict[str, Any]] = []
    start = 0
    while start < sr.fanout.total:
        page = instances.instances(run.run_id, step, sr.fanout.epoch, start=start, limit=100)
        if not page:
            break
        out += [dict(i.outputs) for i in page if i.state.value == "succeeded"]
        start = page[-1].index + 1
    return out


def store_rows(run: Run) -> list[dict[str, Any]]:
    """One row per store from the run's gold table (each store's last day), target left out."""
    from shared.demo import TARGET_COLUMNS, gold_table

    gold = gold_table(run)
    if gold is None:
        raise ConveyorError(f"run {run.run_id} wrote no readable gold table", service="demo")
    from deltalake import DeltaTable

    frame = DeltaTable(gold).to_pandas().sort_values([PARTITION_KEY, "day"])
    frame = frame.drop_duplicates(PARTITION_KEY, keep="last")
    keep = [c for c in frame.columns if str(c).lower() not in TARGET_COLUMNS]
    rows = frame[keep].to_dict(orient="records")
    return [{str(k): (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in rows]


def split_body(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MLflow's ``dataframe_split`` of ``rows`` (every row has the same columns)."""
    columns = list(rows[0])
    return {"dataframe_split": {"columns": columns, "data": [[row[c] for c in columns] for row in rows]}}


def predictions_table(rows: list[dict[str, Any]], answer: dict[str, Any], decisions: dict[str, str]) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False, title="one endpoint, one model per store")
    for name, justify in (("store", "right"), ("model", "left"), ("version", "right"), ("gate", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    table.add_column("prediction", justify="right")
    models = answer.get("models") or {}
    for row, partition, prediction in zip(rows, answer["partitions"], answer["predictions"], strict=True):
        served = models.get(partition) or {}
        decision = decisions.get(partition, "-")
        style = "green" if decision == "promoted" else "yellow" if decision == "rejected" else ""
        table.add_row(
            Text(str(row[PARTITION_KEY])),
            Text(str(served.get("model") or "-")),
            Text(str(served.get("version") or "-")),
            Text(decision, style=style),
            Text(f"{prediction:.2f}" if isinstance(prediction, float) else str(prediction)),
        )
    return table


def score_partitions(services: Services, run: Run, result: DemoResult, out: Console) -> None:
    """Score a row of every store through the one endpoint; sets ``result`` (ok, prediction, served)."""
    from shared.demo import post_scoring
    from shared.terminal import say

    deploys = fanout_outputs(services.instances, run, "deploy")
    decisions = {str(o.get("partition")): str(o.get("decision")) for o in deploys if o.get("partition")}
    counts = Counter(decisions.values())
    endpoint = next((str(o["endpoint"]) for o in deploys if o.get("endpoint")), None)
    if endpoint is None:
        result.error = "the run deployed nothing (no deploy instance succeeded)"
        return
    served = services.deployer.partitions(endpoint)
    say(
        out,
        f"gate: {counts.get('promoted', 0)} partitions promoted, {counts.get('rejected', 0)} rejected "
        f"(each against its own champion on r2); endpoint {endpoint} serves {len(served)} partitions",
    )
    if not served:
        result.error = f"endpoint {endpoint} serves no partition"
        return
    url = next(iter(served.values())).scoring_url
    result.scoring_url = url
    rows = store_rows(run)
    answer = post_scoring(url, split_body(rows))
    predictions = answer.get("predictions")
    partitions = answer.get("partitions")
    if not isinstance(predictions, list) or not isinstance(partitions, list) or len(predictions) != len(rows):
        raise ConveyorError(f"the routed endpoint answered no prediction per row: {str(answer)[:300]}", service="demo")
    result.prediction = predictions
    result.served = {
        str(p): {**(answer.get("models") or {}).get(p, {}), "prediction": v}
        for p, v in zip(partitions, predictions, strict=True)
    }
    say(out, f"scoring url: {url}  (one request, {len(rows)} rows, routed by {PARTITION_KEY})")
    out.print(predictions_table(rows, answer, decisions))
    numeric = all(isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) for p in predictions)
    models = {(m.get("model"), m.get("version")) for m in result.served.values()}
    wanted = min(len(rows), MIN_PARTITIONS)  # every store of a small file; at least 20 of a big one
    result.ok = numeric and len(models) >= wanted and len(result.served) == len(rows)
    if not numeric:
        result.error = f"predictions are not numbers: {predictions!r}"
    elif not result.ok:
        result.error = f"{len(models)} partition models answered {len(rows)} stores (the demo wants {wanted})"
    else:
        say(out, f"predictions from {len(models)} partition models through one endpoint")
