"""Queue `sync_work`: one work item (a small batch of envs) from the work queue, synced.

Planners (the timer, `POST /api/sync`, Key Vault events, rotations) enqueue work items in queue
mode (`VAULTRELAY_SYNC_MODE=queue`); the host scales this function out by queue length.  A
failure raises: the host makes the message visible again after `visibilityTimeout` and moves it
to `<queue>-poison` after `maxDequeueCount` deliveries (host.json, docs/deploy.md); the last
failing delivery records the env as poisoned for `status`.  `vaultrelay worker` runs the same
use case (`core.app.worker.work_item`) outside the host.
"""

from __future__ import annotations

import json
import logging

import azure.functions as func

bp = func.Blueprint()
NO_CONTEXT: func.Context = None  # type: ignore[assignment]  # the host passes it; tests may not
log = logging.getLogger("vaultrelay.functions")


@bp.queue_trigger(arg_name="msg", queue_name="%VAULTRELAY_WORK_QUEUE%", connection="AzureWebJobsStorage")
def sync_work(msg: func.QueueMessage, context: func.Context = NO_CONTEXT) -> None:
    """Sync the envs of one work item; raises when it failed (delivered again, then poisoned)."""
    from core import telemetry
    from core.app.worker import work_item
    from core.runtime import live_runtime

    with telemetry.invocation(context, "sync_work"):
        text = msg.get_body().decode("utf-8", errors="replace")
        result = dict(work_item(live_runtime().current(), text, int(msg.dequeue_count or 1)).__dict__)
        telemetry.annotate(outcome=result["outcome"])
        log.info("work item %s: %s", result["item"], json.dumps(
            {k: result[k] for k in ("outcome", "envs", "target_writes", "requeued", "delay_s")}, default=str))
