"""Timer `sync`: due rotations, then a sync of every env with targets.

The schedule is the app setting `VAULTRELAY_SYNC_SCHEDULE` (NCRONTAB, e.g. `0 */15 * * * *`).
The Functions host runs one timer invocation at a time across instances (a blob lease); vaultrelay's
own leases make an overlapping run (a manual sync, a late past-due run) do no double work.
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

bp = func.Blueprint()
NO_CONTEXT: func.Context = None  # type: ignore[assignment]  # the host passes it; tests may not
log = logging.getLogger("vaultrelay.functions")


@bp.timer_trigger(schedule="%VAULTRELAY_SYNC_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def sync_timer(timer: func.TimerRequest, context: func.Context = NO_CONTEXT) -> None:
    """Rotate what is due and sync every env; a failure is logged and retried on the next tick."""
    from core import telemetry
    from core.app.scheduled import scheduled
    from core.runtime import live_runtime

    with telemetry.invocation(context, "sync_timer"):
        if timer.past_due:
            log.warning("sync timer is past due; running now")
        live = live_runtime()
        runtime = live.current()
        live.flush_audit()  # counts of a quiet instance get stored too
        result = scheduled(runtime)
        telemetry.annotate(outcome="ok" if result["ok"] else "incomplete")
        log.info("scheduled sync: %s", json.dumps({k: result[k] for k in ("ok", "target_writes", "targets", "rotations")}, default=str))
        if not result["ok"]:
            log.error("scheduled sync incomplete: %s", json.dumps(result["failures"]))
