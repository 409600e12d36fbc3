"""`import function_app` against importing every heavy SDK eagerly, in fresh interpreters.

Goal: light import ≤ 15% of the eager one and ≤ 0.3 s.
"""

from __future__ import annotations

import subprocess
import sys

from bench.common import ROOT, interleaved, report

HEAVY = ["azure.batch", "databricks.sdk", "azureml.core", "azure.ai.ml", "mlflow", "sklearn.ensemble"]

_PROG = """
import time, sys
t = time.perf_counter()
import function_app
{extra}
print(time.perf_counter() - t)
"""


def _measure(extra: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PROG.format(extra=extra)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main(rounds: int = 5) -> bool:
    eager = "\n".join(f"import {m}" for m in HEAVY)
    light, heavy = interleaved(lambda: _measure(""), lambda: _measure(eager), rounds)
    ratio = light / heavy
    ok = ratio <= 0.15 and light <= 0.3
    report(
        "cold start",
        f"import function_app {light:.3f}s vs eager SDKs {heavy:.3f}s = {ratio:.1%}",
        "<=15% and <=0.3s",
        ok,
    )
    return ok


if __name__ == "__main__":
    main()
