"""The scenarios, in the order the issue lists them (modules are imported on demand)."""

from __future__ import annotations

import importlib
from types import ModuleType

SCENARIOS: dict[str, str] = {
    "429 storm": "resilience.storm",
    "flaky azure": "resilience.flaky",
    "events at least once": "resilience.events",
    "many instances": "resilience.instances",
    "crash anywhere": "resilience.crash",
    "storage unavailable": "resilience.storage_outage",
    "bad input": "resilience.bad_input",
    "queue workers": "resilience.queue_workers",
}


def load(name: str) -> ModuleType:
    """The scenario module registered as `name`."""
    return importlib.import_module(SCENARIOS[name])
