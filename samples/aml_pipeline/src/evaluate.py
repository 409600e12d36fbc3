"""Evaluate the trained model on the holdout: r2 and rmse.

    python evaluate.py --gold <delta table dir> --model <MLflow model dir> --report <output dir>

Writes ``<report>/metrics.json``. Metrics go to $CONVEYOR_TASK_METRICS_FILE as JSON lines
``{"name", "value"}`` when that is set (Conveyor's local Azure ML backend), else to the
job's MLflow run with mlflow.log_metric (Azure ML).
"""

from __future__ import annotations

import argparse

from common import holdout_metrics, load_gold, report_metrics, split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="evaluate the sales forecaster")
    parser.add_argument("--gold", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--partition", default=None, help="only the rows of this store (a partitioned gold table)")
    args = parser.parse_args(argv)

    import mlflow.sklearn

    x, y = load_gold(args.gold, args.partition)
    _x_train, x_test, _y_train, y_test = split(x, y)
    model = mlflow.sklearn.load_model(args.model)
    report_metrics(holdout_metrics(model, x_test, y_test), args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
