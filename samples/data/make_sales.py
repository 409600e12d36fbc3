"""Small synthetic sales data for the demo: deterministic for a seed.

Columns: store, day, temperature, promo, price, sales. With ``dirty=True`` (the default) a
few rows are duplicated, blanked or made absurd, so the silver layer has something to clean.
``noise`` scales the random part of sales: a noisier file trains a worse model.

    python samples/data/make_sales.py --out sales.csv --rows 300 --seed 7
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from pathlib import Path

COLUMNS = ["store", "day", "temperature", "promo", "price", "sales"]


def sales_rows(rows: int = 300, seed: int = 0, stores: int = 4, noise: float = 1.0, dirty: bool = True) -> list[dict]:
    rng = random.Random(seed)
    out: list[dict] = []
    days = max(1, math.ceil(rows / stores))
    for day in range(1, days + 1):
        for store in range(1, stores + 1):
            if len(out) >= rows:
                break
            season = 12.0 + 10.0 * math.sin(2 * math.pi * day / 365.0)
            temperature = round(season + rng.gauss(0, 3), 1)
            promo = 1 if rng.random() < 0.25 else 0
            price = round(rng.uniform(2.0, 6.0), 2)
            base = 40.0 + 8.0 * store
            weekend = 12.0 if day % 7 in (5, 6) else 0.0
            sales = base + weekend + 1.5 * temperature + 25.0 * promo - 6.0 * price + rng.gauss(0, 4.0 * noise)
            out.append(
                {
                    "store": store,
                    "day": day,
                    "temperature": temperature,
                    "promo": promo,
                    "price": price,
                    "sales": round(max(0.0, sales), 2),
                }
            )
    if dirty and len(out) >= 20:
        for i in rng.sample(range(len(out)), 3):  # duplicates
            out.append(dict(out[i]))
        for i in rng.sample(range(len(out)), 2):  # missing values
            out[i] = {**out[i], "temperature": ""}
        i = rng.randrange(len(out))  # an outlier (a typo'd sale)
        out[i] = {**out[i], "sales": 99999.0}
    return out


def make_sales(
    path: str | Path, rows: int = 300, seed: int = 0, stores: int = 4, noise: float = 1.0, dirty: bool = True
) -> Path:
    """Write a sales CSV to ``path`` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sales_rows(rows, seed, stores, noise, dirty))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stores", type=int, default=4)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--clean", action="store_true", help="no duplicates, blanks or outliers")
    args = parser.parse_args(argv)
    path = make_sales(args.out, args.rows, args.seed, args.stores, args.noise, dirty=not args.clean)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
