"""Use case: status.  Per env and target: last push, drift (since when), last error; the rotation
records; the envs whose work items were poisoned; what expires inside a window (the expiry view
needs the sources: when they cannot be reached the rest still answers, with `expiry_error`).
`vaultrelay status` and `GET /api/status` render it; never values."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core.app.sync import engine
from core.expiry import DEFAULT_WINDOW, Expiring, expiring
from core.runtime import Runtime


@dataclass
class Status:
    targets: list[dict[str, Any]]
    rotations: list[dict[str, Any]]
    poisoned: list[dict[str, Any]]
    window: timedelta
    expiring: list[Expiring] = field(default_factory=list)
    expiry_error: Exception | None = None


def status(runtime: Runtime, window: timedelta = DEFAULT_WINDOW) -> Status:
    """The status of every target, rotation and poisoned env, and what expires within `window`.

    Raises:
        ConfigError: the config has no usable `state:` section.
        StateUnavailable: the state tables cannot be read.
    """
    syncs = engine(runtime)
    found = Status(syncs.status(), syncs.rotation_status(), syncs.poisoned_status(), window)
    try:
        found.expiring = expiring(syncs, window)
    except Exception as exc:  # the sources are unreachable: the rest of status still answers
        found.expiry_error = exc
    return found
