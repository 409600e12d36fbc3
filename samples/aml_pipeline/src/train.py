"""Train a RandomForest on the gold table; save it as an MLflow model.

    python train.py --gold <delta table dir> --model <output dir> [--partition 7] [--report <dir>]

Saved with mlflow.sklearn in the skops format (MLflow 3's safe default). skops only loads
types on its allow-list, and tree ensembles need ``sklearn.tree._tree.Tree``, which is named
here as ``skops_trusted_types``. The scoring endpoint checks the file against its own list.
The model's requirements are the packages it needs to load and predict, pinned to the versions
that trained it (``pip_requirements``): MLflow's own inference would run a subprocess that
imports the model to trace its imports (seconds per model) and lists whatever else it finds.

``--partition`` trains on one store of a gold table partitioned by store (the many-models
flow); ``--report`` also evaluates the model on the holdout in the same process, as
evaluate.py does (one process per partition instead of two: the many-models pipeline).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import SEED, holdout_metrics, load_gold, report_metrics, split

SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
MODEL_PACKAGES = ["mlflow", "numpy", "pandas", "scikit-learn", "scipy", "skops"]


def pinned_requirements() -> list[str]:
    """``package==version`` for each package the saved model needs (the versions installed here)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in MODEL_PACKAGES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the sales forecaster")
    parser.add_argument("--gold", required=True)
    parser.add_argument("--model", required=True, help="output folder for the MLflow model")
    parser.add_argument("--trees", type=int, default=60)
    parser.add_argument("--partition", default=None, help="only the rows of this store (a partitioned gold table)")
    parser.add_argument("--report", default=None, help="evaluate on the holdout too; metrics.json goes here")
    args = parser.parse_args(argv)

    import mlflow.sklearn
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_gold(args.gold, args.partition)
    x_train, x_test, y_train, y_test = split(x, y)
    model = RandomForestRegressor(n_estimators=args.trees, random_state=SEED, n_jobs=1)
    model.fit(x_train, y_train)
    out = Path(args.model)
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)  # a retried attempt: save_model refuses a non-empty folder
    mlflow.sklearn.save_model(
        model,
        str(out),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        input_example=x_train.head(3),
        pip_requirements=pinned_requirements(),
    )
    where = f" of store {args.partition}" if args.partition is not None else ""
    print(f"model saved to {out} (trained on {len(x_train)} rows{where})")
    if args.report:
        report_metrics(holdout_metrics(model, x_test, y_test), args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
