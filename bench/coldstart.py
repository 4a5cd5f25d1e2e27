"""Benchmark: the cold-start import cost of the Function app.

Run with `.venv/bin/python bench/coldstart.py`.  Each sample is a fresh Python process that
times one statement: `import azure.functions` (the floor every Python Function app pays) or
`import function_app` (which includes it).  Samples of the two alternate, after warm-up runs that
compile `.pyc` files and fill the OS cache, and the medians are compared.  Target: function_app
costs at most 1.3x azure.functions alone (the engine, the Azure SDK, PyJWT and pydantic load on
the first request, not at import).

Prints both medians and the ratio; `--check` exits 1 when the ratio is over the target.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.3

_TIMER = """
import time
began = time.perf_counter()
{statement}
print(time.perf_counter() - began)
"""


def sample(statement: str, env: dict[str, str]) -> float:
    """Seconds one fresh interpreter spends on `statement`."""
    result = subprocess.run(
        [sys.executable, "-c", _TIMER.format(statement=statement)], cwd=ROOT, env=env,
        capture_output=True, text=True, check=True, timeout=120,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=21, help="samples of each import (default 21)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs of each first (default 3)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio exceeds {TARGET}")
    args = parser.parse_args(argv)

    # Only the project on the path: no sandbox name-resolution shim or other site customization.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    statements = {"azure.functions": "import azure.functions", "function_app": "import function_app"}
    for _ in range(args.warmup):
        for statement in statements.values():
            sample(statement, env)
    times: dict[str, list[float]] = {name: [] for name in statements}
    for _ in range(args.runs):
        for name, statement in statements.items():
            times[name].append(sample(statement, env))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["function_app"] / medians["azure.functions"]
    for name, values in times.items():
        print(f"import {name:<16} median {medians[name] * 1000:7.1f} ms  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"ratio function_app / azure.functions: {ratio:.2f}x (target <= {TARGET}x): {verdict}")
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    raise SystemExit(main())
