"""The resilience suite's short form: every scenario against the sandbox, invariants asserted.

`bench/soak.py` runs the same scenarios in their long form and prints the figures as a table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resilience.common import ScenarioContext, run_scenario
from resilience.registry import SCENARIOS, load
from sandbox.client import SandboxClient


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_short_form_holds_its_invariants(name: str, clean_faults: SandboxClient, sandbox_process: Any, tmp_path: Path) -> None:
    ctx = ScenarioContext(sandbox=clean_faults, process=sandbox_process, scale="short", workdir=tmp_path, seed=7)
    result = run_scenario(load(name), ctx)
    print(f"\n{name}: {result.seconds}s {result.figures}")
    assert result.violations == [], "\n".join(result.violations)
