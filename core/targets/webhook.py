"""`type: webhook` target: HTTPS POST of the bundle (or only the changed names), signed.

Headers: `X-VaultRelay-Timestamp` (unix seconds) and `X-VaultRelay-Signature: sha256=<hex>`, the
HMAC-SHA256 of `<timestamp>.<body>` under the signing key (itself a reference).  Any 2xx is the
acknowledgement.

The receiver is not trusted to behave: each attempt (connect, TLS, sending, status and headers,
and the body) must complete within `timeout` seconds, or it is a failure, not a push; at most
64 KiB of its answer is read (core.azure.bounded_http), the rest is never read.  408, 429 and 5xx
answers, timeouts and connection failures are retried `retries` times with exponential backoff
and jitter (a `Retry-After` of up to 60 s is honoured), within max(30, timeout x (retries + 1))
seconds in all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
import urllib.parse
from typing import Any

from core.azure.bounded_http import BoundedHttpError, request
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError

MAX_ANSWER_BYTES = 64 * 1024
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


def signature(key: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookTargetWriter:
    kind = "webhook"
    whole_bundle = True
    ownership_in_state = False

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        return Snapshot(fingerprints={name: recorded.get(name) for name in names})  # a webhook cannot be read back

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        payload: dict[str, Any] = {
            "env": env, "changed": sorted(change.writes), "removed": sorted(change.removals),
            # Keyed for this target alone: equal bundles sent to two receivers carry unrelated fingerprints.
            "fingerprint": self.ctx.fingerprinter.derive(f"target\0{self.ctx.name}").of_mapping({n: i.value for n, i in desired.items()}),
        }
        if self.config.payload == "bundle":
            payload["values"] = {name: item.value.reveal() for name, item in sorted(desired.items())}
        body = json.dumps(payload, sort_keys=True).encode()
        key = self.ctx.resolve_value(self.config.signing_key)
        problem = deliver(self.config.url, body, key, {"X-VaultRelay-Env": env}, timeout=float(self.config.timeout),
                          retries=self.config.retries, ssl_context=self.ctx.clients.https_context())
        if problem is None:
            return PushResult(writes=1)
        raise TargetError(f"target {self.ctx.name}: {problem}")


def deliver(url: str, body: bytes, key: str, extra_headers: dict[str, str], *, timeout: float, retries: int, ssl_context: Any) -> str | None:
    """POST `body` signed under `key` (timestamp and signature headers), retrying as described
    above.  Returns None when a 2xx acknowledged it, else what went wrong (the host, never the
    path or query: they may carry a token)."""
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json", "X-VaultRelay-Timestamp": timestamp,
        "X-VaultRelay-Signature": signature(key, timestamp, body), "User-Agent": "vaultrelay", **extra_headers,
    }
    budget_ends = time.monotonic() + max(30.0, timeout * (retries + 1))
    host = urllib.parse.urlsplit(url).netloc
    problem = "webhook not called"
    for attempt in range(retries + 1):
        wait = min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.5)  # jitter, not a secret
        try:
            answer = request("POST", url, body=body, headers=headers, deadline_s=timeout, max_bytes=MAX_ANSWER_BYTES, ssl_context=ssl_context)
        except BoundedHttpError as exc:
            problem = (f"webhook {host} did not answer within {timeout:g} s (connect, send, headers and body)" if exc.kind == "timeout"
                       else f"webhook {host} unreachable: {exc}")
        else:
            if 200 <= answer.status < 300:
                return None
            problem = f"webhook {host} answered HTTP {answer.status}"
            if answer.status not in RETRY_STATUSES:
                break
            wait = max(wait, _retry_after(answer.headers.get("retry-after")))
        if attempt == retries or time.monotonic() + wait + timeout > budget_ends:
            break
        time.sleep(wait)
    return problem


def _retry_after(value: str | None) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the exponential wait then
