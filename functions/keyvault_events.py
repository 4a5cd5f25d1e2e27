"""Event Grid `keyvault_events`: Key Vault secret events (Event Grid or CloudEvents schema).

Malformed or unrelated events are acknowledged (logged); only a failure to act on a valid event
raises, so that Event Grid retries it (with its own backoff and dead-lettering).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import azure.functions as func

bp = func.Blueprint()
NO_CONTEXT: func.Context = None  # type: ignore[assignment]  # the host passes it; tests may not
log = logging.getLogger("vaultrelay.functions")


def event_as_dict(event: func.EventGridEvent) -> dict[str, Any]:
    """The delivered event in its wire shape (the trigger parses both schemas into one object)."""
    try:
        data = event.get_json()
    except ValueError:
        data = None
    return {"id": event.id, "eventType": event.event_type, "subject": event.subject, "data": data,
            "dataVersion": event.data_version, "topic": event.topic}


@bp.event_grid_trigger(arg_name="event")
def keyvault_events(event: func.EventGridEvent, context: func.Context = NO_CONTEXT) -> None:
    """React to SecretNewVersionCreated (re-sync the envs that use the secret) and
    SecretNearExpiry / SecretExpired (re-mint what vaultrelay owns, else warn)."""
    from core import telemetry
    from core.app.events import handle_event
    from core.runtime import live_runtime

    with telemetry.invocation(context, "keyvault_events"):
        # No config (ConfigUnavailable) or a failure to act raises: Event Grid delivers again.
        outcome = dict(handle_event(live_runtime().current(), event_as_dict(event)).__dict__)
        telemetry.annotate(outcome=outcome.get("outcome"))
        log.info("key vault event %s: %s", outcome.get("event_id"), json.dumps(outcome, default=str))
