"""`type: webhook` target: HTTPS POST of the bundle (or only the changed names), signed.

Headers: `X-VaultRelay-Timestamp` (unix seconds) and `X-VaultRelay-Signature: sha256=<hex>`, the
HMAC-SHA256 of `<timestamp>.<body>` under the signing key (itself a reference).  Retries with
exponential backoff and jitter through azure-core's retry policy; any 2xx is the acknowledgement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


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
        from azure.core import PipelineClient
        from azure.core.exceptions import AzureError
        from azure.core.pipeline.policies import HeadersPolicy
        from azure.core.rest import HttpRequest

        from core.retry import JitteredRetryPolicy

        payload: dict[str, Any] = {
            "env": env, "changed": sorted(change.writes), "removed": sorted(change.removals),
            # Keyed for this target alone: equal bundles sent to two receivers carry unrelated fingerprints.
            "fingerprint": self.ctx.fingerprinter.derive(f"target\0{self.ctx.name}").of_mapping({n: i.value for n, i in desired.items()}),
        }
        if self.config.payload == "bundle":
            payload["values"] = {name: item.value.reveal() for name, item in sorted(desired.items())}
        body = json.dumps(payload, sort_keys=True).encode()
        key = self.ctx.resolve_value(self.config.signing_key)
        timestamp = str(int(time.time()))
        retry = JitteredRetryPolicy(retry_total=self.config.retries, retry_backoff_factor=0.5, timeout=max(30, self.config.timeout * (self.config.retries + 1)))
        client: Any = PipelineClient(self.config.url, policies=[HeadersPolicy(), retry], transport=self.ctx.clients.transport())
        request = HttpRequest("POST", self.config.url, content=body, headers={
            "Content-Type": "application/json", "X-VaultRelay-Timestamp": timestamp,
            "X-VaultRelay-Signature": signature(key, timestamp, body), "X-VaultRelay-Env": env,
        })
        try:
            response = client.send_request(request, timeout=self.config.timeout)
        except AzureError as exc:
            raise TargetError(f"target {self.ctx.name}: webhook unreachable: {type(exc).__name__}") from None
        if not 200 <= response.status_code < 300:
            raise TargetError(f"target {self.ctx.name}: webhook answered HTTP {response.status_code}")
        return PushResult(writes=1)
