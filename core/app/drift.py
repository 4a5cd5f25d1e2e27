"""Use case: accept drift.  What a target holds now becomes the baseline for the names given (or
every drifted name), so it is no longer reported (`vaultrelay accept-drift`,
`POST /api/drift/{env}/{target}/accept`); audited."""

from __future__ import annotations

from collections.abc import Sequence

from core.push import SyncEngine, TargetReport
from core.runtime import Runtime


def accept_drift(runtime: Runtime, env: str | None = None, target: str | None = None, names: Sequence[str] = ()) -> list[TargetReport]:
    """Accept the drift recorded for the matching targets (core.push.SyncEngine.accept_drift).

    Raises:
        NotFoundError: no target matches `env` and `target`.
        StateUnavailable: the state tables failed.
    """
    return SyncEngine(runtime).accept_drift(env, target, names)
