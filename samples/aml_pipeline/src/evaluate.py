"""Evaluate the trained model on the holdout: r2 and rmse.

    python evaluate.py --gold <delta table dir> --model <MLflow model dir> --report <output dir>

Writes ``<report>/metrics.json``. Metrics go to $CONVEYOR_TASK_METRICS_FILE as JSON lines
``{"name", "value"}`` when that is set (Conveyor's local Azure ML backend), else to the
job's MLflow run with mlflow.log_metric (Azure ML).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from common import load_gold, split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evaluate the sales forecaster")
    parser.add_argument("--gold", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args(argv)

    import mlflow.sklearn
    from sklearn.metrics import mean_squared_error, r2_score

    x, y = load_gold(args.gold)
    _x_train, x_test, _y_train, y_test = split(x, y)
    model = mlflow.sklearn.load_model(args.model)
    predicted = model.predict(x_test)
    metrics = {
        "r2": float(r2_score(y_test, predicted)),
        "rmse": float(math.sqrt(mean_squared_error(y_test, predicted))),
        "holdout_rows": float(len(y_test)),
    }
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    sink = os.environ.get("CONVEYOR_TASK_METRICS_FILE")
    if sink:
        with open(sink, "a", encoding="utf-8") as fh:
            for name, value in metrics.items():
                fh.write(json.dumps({"name": name, "value": value}) + "\n")
    else:
        for name, value in metrics.items():
            mlflow.log_metric(name, value)
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
