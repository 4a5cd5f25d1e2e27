"""Notifications: one signed POST per event, sent once across every instance.

Events: `push_failed` (a target's push failed), `drift_found` (a target was changed by someone
else), `rotation_done` / `rotation_failed`, `expiring` (something vaultrelay cannot renew expires
within `notify.expiring_within`).  Each carries names and times, never a value.  The body is
signed as the webhook target signs (`X-VaultRelay-Timestamp`, `X-VaultRelay-Signature: sha256=`
HMAC of `<timestamp>.<body>`).

Once across instances: before sending, an instance claims the event in the state's `events`
table (partition `notify`, one row per event occurrence, created only if absent: Table Storage
answers 409 to every other creator).  The winner sends and marks the row `sent` (ETag-conditional);
a send that fails marks it `failed`, and a later run re-claims it by an ETag-conditional replace
(one winner again); a claim left `sending` by an instance that died is re-claimed after
CLAIM_STALE_S.  An occurrence is what makes an event new: the error text and the last successful
push for `push_failed`, the drifted names and the push they drifted from for `drift_found`, the
new active key or the error for rotations, the expiry time for `expiring`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from core.state.tables import Conflict, Row, StateUnavailable

log = logging.getLogger("vaultrelay.notify")

PARTITION = "notify"
CLAIM_STALE_S = 300.0
TITLES = {"push_failed": "vaultrelay: a push failed", "drift_found": "vaultrelay: drift found", "rotation_done": "vaultrelay: rotation done",
          "rotation_failed": "vaultrelay: rotation failed", "expiring": "vaultrelay: expiring and not renewable"}


class Notifier:
    """Sends the config's notifications (`notify:`) through the engine's state and clients."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.config = engine.config.notify
        self.sent: list[str] = []  # event keys this instance sent (for reports and tests)

    @property
    def enabled(self) -> bool:
        return self.config is not None

    def wants(self, event: str) -> bool:
        return self.config is not None and event in self.config.events

    def emit(self, event: str, subject: str, occurrence: str, details: dict[str, Any]) -> bool:
        """Send `event` about `subject` unless this occurrence was already sent (by any instance).
        Returns True when this call sent it.  Never raises: a notification failure is logged and
        retried by a later run."""
        if not self.wants(event):
            return False
        key = hashlib.sha256(f"{event}\0{subject}\0{occurrence}".encode()).hexdigest()[:40]
        from core import telemetry

        try:
            claim = self._claim(key, event, subject)
            if claim is None:
                return False
            problem = self._send(event, subject, details)
            claim.fields.update({"status": "sent" if problem is None else "failed", "error": problem or "",
                                 "at": datetime.now(UTC).isoformat()})
            try:
                self.engine.state.put("events", claim)
            except (Conflict, StateUnavailable) as exc:
                log.warning("notification %s %s: state not updated: %s", event, subject, exc)
        except StateUnavailable as exc:
            log.warning("notification %s %s not sent: %s", event, subject, exc)
            return False
        telemetry.record_notification(event, sent=problem is None)
        if problem is not None:
            log.warning("notification %s %s failed: %s (a later run tries again)", event, subject, problem)
            return False
        self.sent.append(key)
        return True

    def _claim(self, key: str, event: str, subject: str) -> Row | None:
        """This instance's claim on the event (a row it created or took over), or None."""
        state = self.engine.state
        now = datetime.now(UTC)
        fields = {"event": event, "subject": subject, "status": "sending", "claimed_by": self.engine.owner, "claimed_at": now.isoformat()}
        try:
            return state.put("events", Row(PARTITION, key, fields))
        except Conflict:
            pass
        current = state.get("events", PARTITION, key)
        if current is None or current.fields.get("status") == "sent":
            return None
        if current.fields.get("status") == "sending":
            try:
                claimed = datetime.fromisoformat(str(current.fields.get("claimed_at")))
            except ValueError:
                claimed = now
            if (now - claimed).total_seconds() < CLAIM_STALE_S:
                return None
        try:  # failed, or a claim its instance abandoned: one instance takes it over
            return state.put("events", Row(PARTITION, key, fields, current.etag))
        except Conflict:
            return None

    def payload(self, event: str, subject: str, details: dict[str, Any]) -> dict[str, Any]:
        """The body in the configured format: names and times only."""
        at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        document = {"event": event, "subject": subject, "at": at, "details": details}
        assert self.config is not None
        if self.config.format == "json":
            return document
        lines = [f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(details.items())]
        text = f"{TITLES[event]}: {subject}"
        if self.config.format == "slack":
            return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{text}*\n" + "\n".join(lines)}}],
                    "vaultrelay": document}
        return {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": text, "title": text,
                "themeColor": "2EB886" if event == "rotation_done" else "D63333",
                "sections": [{"facts": [{"name": k, "value": str(v)} for k, v in sorted(details.items())], "text": at}],
                "vaultrelay": document}

    def _send(self, event: str, subject: str, details: dict[str, Any]) -> str | None:
        from core.targets.webhook import deliver

        assert self.config is not None
        body = json.dumps(self.payload(event, subject, details), sort_keys=True).encode()
        try:
            key = self.engine.resolve_variable(self.config.signing_key, "notify.signing_key")
        except Exception as exc:
            return f"the signing key did not resolve: {type(exc).__name__}"
        return deliver(self.config.url, body, key, {"X-VaultRelay-Event": event}, timeout=float(self.config.timeout),
                       retries=self.config.retries, ssl_context=self.engine.broker.clients.https_context())


def occurrence(*parts: Any) -> str:
    """What makes an event new (hashed into its key with the event and subject)."""
    return "\0".join(str(p) for p in parts)
