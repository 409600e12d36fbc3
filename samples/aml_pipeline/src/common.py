"""What train.py and evaluate.py share: reading the gold table and the holdout split."""

from __future__ import annotations

from typing import Any

FEATURES = ["store", "day", "day_of_week", "temperature", "promo", "price"]
TARGET = "sales"
SEED = 0
HOLDOUT = 0.25


def load_gold(path: str) -> Any:
    from deltalake import DeltaTable

    frame = DeltaTable(path).to_pandas()
    missing = [c for c in [*FEATURES, TARGET] if c not in frame.columns]
    if missing:
        raise SystemExit(f"gold table {path} lacks columns {missing}")
    frame = frame.sort_values(["store", "day"]).reset_index(drop=True)
    # Features as floats: the model's signature is then all doubles, and the scoring
    # endpoint accepts ints and floats alike.
    return frame[FEATURES].astype("float64"), frame[TARGET].astype("float64")


def split(x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
    """The same holdout in both scripts (seeded)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=HOLDOUT, random_state=SEED)
