"""The storage resource provider's request limits, per subscription and region, as in Azure.

Microsoft Learn, "Scalability and performance targets for the Azure Storage resource provider":
management operations through ARM are limited per subscription and region of the resource:

| operations | limit |
|---|---|
| read (GET of an account) | 800 per 5 minutes |
| list (`listKeys`; listing accounts) | 100 per 5 minutes |
| write (create, update, `regenerateKey`) | 10 per second and 1,200 per hour |

A request over a limit gets Azure's answer: 429 `TooManyRequests`, "The request is being
throttled as the limit has been reached for operation type - Read_ObservationWindow_00:05:00.
For more information, see - https://aka.ms/srpthrottlinglimits", with `Retry-After` in seconds
(as reported in microsoft/onefuzz#2100 and velero-io/velero#4282).  Each
limit is a token bucket refilled evenly over its window.  Azure's answers for `listKeys` name the
read window; the sandbox charges `listKeys` to the stricter list budget (100 per 5 minutes), so
code that stays inside it stays inside Azure's.  Listing the accounts of a whole subscription is
charged to the subscription's own bucket (region `*`).

The limits are on by default and changed through the control API (`PUT /arm/limits`,
`SandboxClient.set_arm_limits`) so tests can make them small; `DELETE /arm/limits` restores
Azure's and empties the buckets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from sandbox.http import AzureError, json_response, read_json

CLASSES = ("read", "list", "write")


@dataclass(frozen=True)
class Limit:
    """At most `limit` requests per `window_s` seconds."""

    limit: int
    window_s: float

    @property
    def label(self) -> str:
        seconds = round(self.window_s)
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


AZURE_LIMITS: dict[str, tuple[Limit, ...]] = {
    "read": (Limit(800, 300.0),),
    "list": (Limit(100, 300.0),),
    "write": (Limit(10, 1.0), Limit(1200, 3600.0)),
}


class StorageProviderLimits:
    """Token buckets per (subscription, region, operation class, window)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.enabled = True
        self.limits: dict[str, tuple[Limit, ...]] = dict(AZURE_LIMITS)
        self._buckets: dict[tuple[str, str, str, int], tuple[float, float]] = {}
        self.throttled = 0

    def reset(self) -> None:
        self.enabled = True
        self.limits = dict(AZURE_LIMITS)
        self._buckets.clear()

    def configure(self, body: Any) -> None:
        """`{"enabled": bool, "read"|"list"|"write": {"limit", "window_s"} or a list of them}`; classes
        not named keep their current limits.  Buckets start full.

        Raises:
            ValueError: an unknown class or a bad limit.
        """
        if not isinstance(body, dict):
            raise ValueError("the body must be an object")
        limits = dict(self.limits)
        for name, value in body.items():
            if name == "enabled":
                continue
            if name not in CLASSES:
                raise ValueError(f"unknown operation class {name!r} (use {', '.join(CLASSES)} or enabled)")
            entries = value if isinstance(value, list) else [value]
            parsed = []
            for entry in entries:
                if not isinstance(entry, dict) or set(entry) - {"limit", "window_s"}:
                    raise ValueError(f"{name}: each limit is {{'limit': n, 'window_s': seconds}}")
                limit, window = int(entry.get("limit", 0)), float(entry.get("window_s", 0))
                if limit < 1 or window <= 0:
                    raise ValueError(f"{name}: limit must be at least 1 and window_s positive")
                parsed.append(Limit(limit, window))
            limits[name] = tuple(parsed)
        self.limits = limits
        self.enabled = bool(body.get("enabled", self.enabled))
        self._buckets.clear()

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, **{name: [asdict(limit) for limit in limits] for name, limits in self.limits.items()},
                "throttled": self.throttled}

    def charge(self, subscription: str, region: str, operation: str) -> None:
        """Take one request of `operation` ("read", "list", "write") from every bucket it uses.

        Raises:
            AzureError: 429 TooManyRequests with Retry-After when a bucket is empty (nothing is taken then).
        """
        if not self.enabled:
            return
        now = self._clock()
        updates = []
        for limit in self.limits.get(operation, ()):
            key = (subscription.lower(), region.lower(), operation, int(limit.window_s * 1000))
            tokens, stamp = self._buckets.get(key, (float(limit.limit), now))
            rate = limit.limit / limit.window_s
            tokens = min(float(limit.limit), tokens + (now - stamp) * rate)
            if tokens < 1.0:
                self.throttled += 1
                retry_after = max(1, math.ceil((1.0 - tokens) / rate))
                raise AzureError(429, "TooManyRequests", (
                    f"The request is being throttled as the limit has been reached for operation type - "
                    f"{operation.title()}_ObservationWindow_{limit.label}. For more information, see - https://aka.ms/srpthrottlinglimits"
                ), headers={"Retry-After": str(retry_after)})
            updates.append((key, tokens - 1.0))
        for key, tokens in updates:
            self._buckets[key] = (tokens, now)

    def control_routes(self, app: web.Application) -> None:
        async def get_limits(request: web.Request) -> web.Response:
            return json_response(self.describe())

        async def put_limits(request: web.Request) -> web.Response:
            try:
                self.configure(await read_json(request))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, status=400)
            return json_response(self.describe())

        async def reset_limits(request: web.Request) -> web.Response:
            self.reset()
            return json_response(self.describe())

        app.router.add_get("/arm/limits", get_limits)
        app.router.add_put("/arm/limits", put_limits)
        app.router.add_delete("/arm/limits", reset_limits)
