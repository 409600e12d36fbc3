"""What train.py and evaluate.py share: reading the gold table, the holdout split, the metrics."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

FEATURES = ["store", "day", "day_of_week", "temperature", "promo", "price"]
TARGET = "sales"
SEED = 0
HOLDOUT = 0.25


def load_gold(path: str, partition: str | None = None, column: str = "store") -> Any:
    """Features and target of the gold table; with ``partition``, only the rows where ``column``
    equals it (a partition of a table written with ``--partition-by``, read by its folder)."""
    from deltalake import DeltaTable

    table = DeltaTable(path)
    frame = table.to_pandas(partitions=[(column, "=", partition)]) if partition is not None else table.to_pandas()
    missing = [c for c in [*FEATURES, TARGET] if c not in frame.columns]
    if missing:
        raise SystemExit(f"gold table {path} lacks columns {missing}")
    if frame.empty:
        raise SystemExit(f"gold table {path} has no rows" + (f" where {column} = {partition}" if partition else ""))
    frame = frame.sort_values(["store", "day"]).reset_index(drop=True)
    # Features as floats: the model's signature is then all doubles, and the scoring
    # endpoint accepts ints and floats alike.
    return frame[FEATURES].astype("float64"), frame[TARGET].astype("float64")


def split(x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
    """The same holdout in both scripts (seeded)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=HOLDOUT, random_state=SEED)


def holdout_metrics(model: Any, x_test: Any, y_test: Any) -> dict[str, float]:
    """r2 and rmse of ``model`` on the holdout."""
    from sklearn.metrics import mean_squared_error, r2_score

    predicted = model.predict(x_test)
    return {
        "r2": float(r2_score(y_test, predicted)),
        "rmse": float(math.sqrt(mean_squared_error(y_test, predicted))),
        "holdout_rows": float(len(y_test)),
    }


def report_metrics(metrics: dict[str, float], report: str) -> None:
    """``<report>/metrics.json``, and the metrics to $CONVEYOR_TASK_METRICS_FILE as JSON lines
    ``{"name", "value"}`` when that is set (Conveyor's local Azure ML backend), else to the job's
    MLflow run with mlflow.log_metric (Azure ML)."""
    out = Path(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    sink = os.environ.get("CONVEYOR_TASK_METRICS_FILE")
    if sink:
        with open(sink, "a", encoding="utf-8") as fh:
            for name, value in metrics.items():
                fh.write(json.dumps({"name": name, "value": value}) + "\n")
    else:
        import mlflow

        for name, value in metrics.items():
            mlflow.log_metric(name, value)
    print(json.dumps(metrics))
