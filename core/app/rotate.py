"""Use case: rotate.  Rotation (core.rotation) regenerates and switches keys and tagged secrets and
returns what must be re-pushed; this hands those envs to a sync (core.app.sync.push: inline, or
enqueued as work items in queue mode), records the rotation done once they are out, and sends the
`rotation_done` / `rotation_failed` notifications.  Nothing in core.rotation pushes.

`rotate` is `vaultrelay rotate`, `POST /api/rotate/{name}` and the timer's first step;
`repush` is also what a Key Vault event that rotated a tagged secret calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from core.app.sync import push
from core.notify import Notifier, occurrence
from core.push import SyncEngine
from core.rotation.account_keys import KeyRotation
from core.rotation.regeneration import RotationReport
from core.runtime import Runtime

log = logging.getLogger("vaultrelay.rotate")


def rotate(runtime: Runtime, name: str | None = None, *, force: bool = False,
           progress: Callable[[str], None] | None = None) -> list[RotationReport]:
    """Rotate what is due (or `name`, or everything with `force`) and push what changed.

    Raises:
        NotFoundError: `name` is not a rotation of this config.
        ConfigError: the config has no usable `state:` section.
    """
    reports = KeyRotation(runtime).rotate(name, force=force, progress=progress)
    for report in reports:
        repush(runtime, report)
    notify(runtime, reports)
    return reports


def repush(runtime: Runtime, report: RotationReport) -> RotationReport:
    """Push the envs `report.repush` names (account keys: waiting for an env another instance is
    syncing, since it may have read the old key), then record the rotation done.  A failure makes
    the report an error; an account key rotation then stays in phase `repushing` and the next
    run pushes again."""
    pending = report.repush
    if pending is None:
        return report
    try:
        push(runtime, pending.envs, reason="rotation", trigger=pending.trigger, forget=pending.forget,
             wait_busy=pending.done is not None)
        report.repushed = list(pending.envs)
        if pending.done is not None:
            pending.done()
    except Exception as exc:  # the push failed or stayed busy: the next run resumes (account keys) or the event comes again
        message = f"re-push after {report.name} did not complete: {exc}; will resume"
        log.error("rotation %s: %s", report.name, message)
        runtime.state.audit(runtime.owner, "rotation.failed", report.name, {"error": type(exc).__name__})
        report.outcome, report.error = "error", message
    finally:
        if pending.release is not None:
            pending.release()
    report.repush = None
    return report


def notify(runtime: Runtime, reports: list[RotationReport]) -> None:
    """`rotation_done` / `rotation_failed` notifications (each once across instances)."""
    notifier = Notifier(SyncEngine(runtime))
    if not notifier.enabled:
        return
    for report in reports:
        if report.outcome == "rotated":
            notifier.emit("rotation_done", report.name, occurrence(report.new_active, report.next_due),
                          {"name": report.name, "old_active": report.old_active, "new_active": report.new_active,
                           "next_due": report.next_due, "repushed": report.repushed})
        elif report.outcome == "error":
            notifier.emit("rotation_failed", report.name, occurrence(report.error, report.old_active),
                          {"name": report.name, "error": report.error, "active": report.old_active})
