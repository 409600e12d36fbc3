"""Train a RandomForest on the gold table; save it as an MLflow model.

    python train.py --gold <delta table dir> --model <output dir>

Saved with mlflow.sklearn in the skops format (MLflow 3's safe default). skops only loads
types on its allow-list, and tree ensembles need ``sklearn.tree._tree.Tree``, which is named
here as ``skops_trusted_types``. The scoring endpoint checks the file against its own list.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import SEED, load_gold, split

SKOPS_TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train the sales forecaster")
    parser.add_argument("--gold", required=True)
    parser.add_argument("--model", required=True, help="output folder for the MLflow model")
    parser.add_argument("--trees", type=int, default=60)
    args = parser.parse_args(argv)

    import mlflow.sklearn
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_gold(args.gold)
    x_train, _x_test, y_train, _y_test = split(x, y)
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
    )
    print(f"model saved to {out} (trained on {len(x_train)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
