"""Use case: the timer's run.  Rotations that are due (core.app.rotate, which pushes what they
changed), then a sync of every env with targets (enqueued as work items in queue mode)."""

from __future__ import annotations

from typing import Any

from core.app.rotate import rotate
from core.app.sync import engine
from core.runtime import Runtime


def scheduled(runtime: Runtime) -> dict[str, Any]:
    """Rotate what is due, then sync (or enqueue) every env with targets; the outcome by name, never values.

    Raises:
        ConfigError: the config has no usable `state:` section.
        azure.core.exceptions.AzureError: the work queue could not be written (queue mode).
    """
    rotations = rotate(runtime)  # counted where rotation runs (re-pushes enqueued in queue mode)
    planner = engine(runtime)
    items = planner.request_sync(runtime.envs_with_targets(), reason="scheduled", trigger="timer")
    if items is not None:
        return {"rotations": [r.as_dict() for r in rotations], "ok": not any(r.outcome == "error" for r in rotations),
                "target_writes": 0, "targets": [], "failures": {}, "enqueued": len(items),
                "envs": sum(len(i.envs) for i in items)}
    report = planner.sync()
    return {
        "rotations": [r.as_dict() for r in rotations], "ok": report.ok, "target_writes": report.target_writes,
        "targets": [f"{t.env}->{t.target}: {t.outcome}" for t in report.targets], "failures": report.failures,
    }
