"""One Azure Batch task: cross-validate a RandomForest on one input CSV.

The pattern of the Azure Batch + scikit-learn blog post: one task per file, each task fits
and scores its own model. Writes ``<output-dir>/score.json``:
``{"input", "rows", "cv_r2_mean", "cv_r2_std"}``.

    python score_file.py --input sales.csv --output-dir out/

``--input`` may be a local path or a blob URL (read with azure-storage-blob, with the SAS in
CONVEYOR_TASK_STORAGE_SAS when set, else the URL as is, e.g. carrying its own SAS).
The file is self-contained: Batch fetches it alone as a resource file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

FEATURES = ["store", "day", "temperature", "promo", "price"]
TARGET = "sales"


def read_bytes(source: str) -> bytes:
    if source.startswith(("http://", "https://")):
        from azure.storage.blob import BlobClient

        credential = os.environ.get("CONVEYOR_TASK_STORAGE_SAS") or None
        return BlobClient.from_blob_url(source, credential=credential).download_blob().readall()
    return Path(source).read_bytes()


def score(source: str, output_dir: str | Path, folds: int = 3, seed: int = 0) -> dict:
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold, cross_val_score

    frame = pd.read_csv(io.BytesIO(read_bytes(source)))
    for col in [*FEATURES, TARGET]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame = frame.dropna(subset=[*FEATURES, TARGET])
    # Drop absurd targets (typos like 99999) with a robust rule: farther than 10 MADs from the median.
    med = frame[TARGET].median()
    mad = (frame[TARGET] - med).abs().median() * 1.4826
    if mad > 0:
        frame = frame[(frame[TARGET] - med).abs() <= 10 * mad]
    x, y = frame[FEATURES].to_numpy(dtype=float), frame[TARGET].to_numpy(dtype=float)
    model = RandomForestRegressor(n_estimators=50, random_state=seed, n_jobs=1)
    scores = cross_val_score(model, x, y, cv=KFold(folds, shuffle=True, random_state=seed), scoring="r2")
    result = {
        "input": source,
        "rows": len(frame),
        "cv_r2_mean": float(np.mean(scores)),
        "cv_r2_std": float(np.std(scores)),
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "score.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cross-validate a RandomForest on one CSV")
    parser.add_argument("--input", required=True, help="local path or blob URL of a sales CSV")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(score(args.input, args.output_dir, args.folds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
