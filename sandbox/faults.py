"""Fault and load controls, and request counters, for every stand-in.

Rules add latency, 5xx answers, dropped connections and slow answers to the requests they
match (by service, target and operation).  Throttling is a token bucket per (service, target)
sized like Key Vault's service limit (4,000 requests per 10 s per vault) and scalable; a
throttled request gets 429 with `Retry-After`.  Counters count every request received, by
endpoint (service:operation), by target (service:vault-or-account), by identity and by status.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.http import AzureError, CallContext

KEYVAULT_BUDGET = 4000
KEYVAULT_WINDOW_S = 10.0


class DropConnection(Exception):
    """The stand-in closes the connection without answering."""


@dataclass
class FaultRule:
    """Faults applied to matching requests; empty selectors match everything."""

    service: str | None = None
    target: str | None = None
    operation: str | None = None
    path_prefix: str | None = None  # e.g. /secrets/db-password: one object (case-insensitive)
    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    retry_after_s: int | None = None  # a Retry-After header on the injected errors (as Azure sends with 429 and 503)
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 5000.0

    def matches(self, ctx: CallContext) -> bool:
        return (
            (self.service is None or self.service == ctx.service)
            and (self.target is None or (ctx.target or "").lower() == self.target.lower())
            and (self.operation is None or self.operation == ctx.operation)
            and (self.path_prefix is None or ctx.path.lower().startswith(self.path_prefix.lower()))
        )


@dataclass
class ThrottleConfig:
    """A token bucket of `capacity` requests refilled over `window_s` seconds."""

    capacity: float = KEYVAULT_BUDGET
    window_s: float = KEYVAULT_WINDOW_S
    enabled: bool = True


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    throttles: dict[str, ThrottleConfig] = field(
        default_factory=lambda: {"keyvault": ThrottleConfig()}
    )


class Faults:
    """Applies the current fault plan; changed at run time through the control API."""

    def __init__(self, seed: int = 0) -> None:
        self.plan = FaultPlan()
        self._rng = random.Random(seed)
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self.throttled = 0

    def configure(self, body: dict[str, Any]) -> None:
        """Replace the plan: `{"rules": [...], "throttles": {"keyvault": {...}}, "seed": n}`.

        Raises:
            ValueError: an unknown field or a bad value.
        """
        rules = [FaultRule(**rule) for rule in body.get("rules", [])]
        for rule in rules:
            for rate in (rule.error_rate, rule.drop_rate, rule.slow_rate):
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("rates must be between 0 and 1")
        throttles = {"keyvault": ThrottleConfig()}
        for service, config in (body.get("throttles") or {}).items():
            throttles[service] = ThrottleConfig(**config)
        self.plan = FaultPlan(rules=rules, throttles=throttles)
        if "seed" in body:
            self._rng.seed(body["seed"])
        self._buckets.clear()

    def describe(self) -> dict[str, Any]:
        return {
            "rules": [asdict(rule) for rule in self.plan.rules],
            "throttles": {k: asdict(v) for k, v in self.plan.throttles.items()},
        }

    def _throttle(self, ctx: CallContext) -> None:
        config = self.plan.throttles.get(ctx.service)
        if config is None or not config.enabled or not ctx.target:
            return
        key = (ctx.service, ctx.target.lower())
        now = time.monotonic()
        rate = config.capacity / config.window_s
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(config.capacity, now)
        bucket.tokens = min(config.capacity, bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        self.throttled += 1
        retry_after = max(1, math.ceil((1.0 - bucket.tokens) / rate))
        raise AzureError(
            429, "Throttled",
            "Request was not processed because too many requests were received. "
            "Reason: VaultRequestTypeBasedThrottlingLimitReached",
            headers={"Retry-After": str(retry_after)},
        )

    async def apply(self, ctx: CallContext) -> None:
        """Delay, fail, drop or throttle the request described by `ctx`.

        Raises:
            AzureError: an injected 5xx or a 429.
            DropConnection: the connection is to be closed without an answer.
        """
        for rule in self.plan.rules:
            if not rule.matches(ctx):
                continue
            if rule.latency_ms:
                await asyncio.sleep(rule.latency_ms / 1000.0)
            if rule.slow_rate and self._rng.random() < rule.slow_rate:
                await asyncio.sleep(rule.slow_ms / 1000.0)
            if rule.drop_rate and self._rng.random() < rule.drop_rate:
                raise DropConnection()
            if rule.error_rate and self._rng.random() < rule.error_rate:
                code = {503: "ServiceUnavailable", 429: "Throttled"}.get(rule.error_status, "InternalError")
                raise AzureError(
                    rule.error_status, code, "The service is temporarily unavailable (injected by the sandbox).",
                    headers={"Retry-After": str(rule.retry_after_s)} if rule.retry_after_s is not None else None,
                )
        self._throttle(ctx)


class Counters:
    """Exact counts of the requests the stand-ins received."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.by_endpoint: Counter[str] = Counter()
        self.by_target: Counter[str] = Counter()
        self.by_identity: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.by_endpoint_status: Counter[str] = Counter()

    def record(self, ctx: CallContext, status: int | str) -> None:
        endpoint = f"{ctx.service}:{ctx.operation}"
        self.total += 1
        self.by_endpoint[endpoint] += 1
        if ctx.target:
            self.by_target[f"{ctx.service}:{ctx.target.lower()}"] += 1
        self.by_identity[ctx.identity_label] += 1
        self.by_status[str(status)] += 1
        self.by_endpoint_status[f"{endpoint}:{status}"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_endpoint": dict(self.by_endpoint),
            "by_target": dict(self.by_target),
            "by_identity": dict(self.by_identity),
            "by_status": dict(self.by_status),
            "by_endpoint_status": dict(self.by_endpoint_status),
        }
