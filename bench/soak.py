"""Soak: every resilience scenario in its long form against a sandbox of its own, as one table.

Run with `.venv/bin/python bench/soak.py` (or `make soak`); `--short` runs the short form (the one
`make test` asserts), `--only NAME` (repeatable) picks scenarios by their registry name.  Each
scenario runs with logs captured at DEBUG and the leak scanner after it (scenario 8), exactly as
in `tests/resilience`.  Prints one row per scenario (time, key figures, PASS/FAIL), then every
violation; exits 1 when any scenario has a violation or fails to run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

# Figures every scenario reports that say nothing about the scenario itself.
_COMMON = ("leaks found", "log bytes scanned")


def _figures(figures: dict[str, Any]) -> str:
    shown = [f"{k}: {v}" for k, v in figures.items() if k not in _COMMON]
    shown.append(f"leaks found: {figures.get('leaks found', '?')}")
    return "\n".join(shown)


def main() -> int:
    from resilience.registry import SCENARIOS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the short form (what make test runs)")
    parser.add_argument("--only", action="append", choices=list(SCENARIOS), metavar="NAME",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=7, help="seed for the scenarios' random choices")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from resilience.common import ScenarioContext, ScenarioResult, run_scenario
    from resilience.registry import load
    from sandbox.client import SandboxProcess

    scale = "short" if args.short else "long"
    names = args.only or list(SCENARIOS)
    console = Console(width=max(160, Console().width))
    load_avg = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    console.print(f"[bold]vaultrelay soak[/]: {len(names)} scenario(s), {scale} form, seed {args.seed}; "
                  f"host: {os.cpu_count()} CPUs, load average {' '.join(load_avg)} at start")
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory(prefix="vaultrelay-soak-") as tmp, SandboxProcess() as sbx:
        sbx.apply_to_current_process()
        for name in names:
            workdir = Path(tmp) / name.replace(" ", "-")
            workdir.mkdir()
            sbx.client.clear_faults()
            sbx.client.reset_counters()
            ctx = ScenarioContext(sandbox=sbx.client, process=sbx, scale=scale, workdir=workdir, seed=args.seed)  # type: ignore[arg-type]
            console.print(f"running [bold]{name}[/] ...")
            began = time.monotonic()
            try:
                result = run_scenario(load(name), ctx)
            except Exception as exc:  # a scenario that cannot run is a failure, reported by kind
                result = ScenarioResult(name, violations=[f"the scenario did not run to its end: {type(exc).__name__}: {str(exc)[:300]}"])
                result.seconds = round(time.monotonic() - began, 2)
                console.print(traceback.format_exc(limit=6), markup=False)
            finally:
                sbx.client.clear_faults()
            result.name = name
            results.append(result)

    table = Table(title=f"Resilience suite, {scale} form (sandbox on loopback; figures from the sandbox's counters and state)")
    table.add_column("scenario", no_wrap=True)
    table.add_column("time", justify="right")
    table.add_column("key figures")
    table.add_column("result", no_wrap=True)
    for result in results:
        verdict = "[green]PASS[/]" if not result.violations else f"[red]FAIL ({len(result.violations)})[/]"
        table.add_row(result.name, f"{result.seconds:.1f}s", _figures(result.figures), verdict, end_section=True)
    console.print(table)
    failed = [r for r in results if r.violations]
    for result in failed:
        console.print(f"[red]{result.name}[/]: {len(result.violations)} violation(s)")
        for violation in result.violations[:50]:
            console.print(f"  - {violation}", markup=False)
    console.print(f"total {time.monotonic() - started:.1f}s; {len(results) - len(failed)} of {len(results)} scenarios passed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
