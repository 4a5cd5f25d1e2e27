"""Retries for every Azure call vaultrelay makes: azure-core's RetryPolicy, with jitter.

azure-core already honours `Retry-After` on 429/503 and retries 408/429/5xx and connection
errors with exponential backoff; it does not add jitter, so many instances that were throttled
together would retry together.  `JitteredRetryPolicy` spreads the exponential part by +-50 %
(`Retry-After` from the service is honoured exactly), and the whole operation is bounded by
`timeout` seconds (azure-core's absolute deadline across attempts).

azure-core sleeps whatever `Retry-After` says, however long; ARM's storage resource provider
answers its throttling 429s with waits of tens of seconds, up to its 5-minute observation window.
A wait longer than `retry_after_max` (default `backoff_max`, 30 s) is not taken: the call fails
at once with the 429 (reason `throttled`, and the next run or fetch tries again) instead of
holding a fetch or a sync for minutes.  So a throttled call waits at most `per_kind` times
`retry_after_max` seconds.

A work item (core.app.work) waits much less: a worker sleeping out a long `Retry-After` holds a
process (and, in the Functions host, an invocation) that does nothing.  Inside `waits_at_most(s)`
a `Retry-After` longer than `s` seconds is not waited for, by this policy or by a vault's shared
backoff (core.azure.clients.VaultPacer): the call fails as throttled at once, the longest wait
refused is noted, and the item is re-enqueued with at least that delay.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import RetryPolicy

log = logging.getLogger("vaultrelay.retry")


@dataclass
class WaitLimit:
    """The longest `Retry-After` calls in this context wait for (`max_s`), and the longest wait
    they refused (`refused_s`: the delay to come back after)."""

    max_s: float
    refused_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, wait_s: float) -> None:
        with self._lock:
            self.refused_s = max(self.refused_s, wait_s)


_WAIT_LIMIT: contextvars.ContextVar[WaitLimit | None] = contextvars.ContextVar("vaultrelay_wait_limit", default=None)


@contextlib.contextmanager
def waits_at_most(limit: WaitLimit | float) -> Iterator[WaitLimit]:
    """Calls made in this context (and in threads started with a copy of it) fail as throttled
    rather than wait longer than the limit (seconds) for a `Retry-After`."""
    limit = limit if isinstance(limit, WaitLimit) else WaitLimit(float(limit))
    token = _WAIT_LIMIT.set(limit)
    try:
        yield limit
    finally:
        _WAIT_LIMIT.reset(token)


def wait_limit() -> WaitLimit | None:
    """The `waits_at_most` limit in force here, if any."""
    return _WAIT_LIMIT.get()


class WaitRefused(HttpResponseError):
    """A request not sent: the service asked for a longer wait (`Retry-After`) than the caller's
    `waits_at_most` takes.  Read as the 429 it stands for; never retried here."""

    def __init__(self, wait_s: float, what: str) -> None:
        super().__init__(message=f"(Throttled) 429 Too Many Requests: {what} asked for {wait_s:.0f} s more before the next request "
                                 "(Retry-After); not waited for here")
        self.status_code = 429
        self.reason = "Too Many Requests"


class JitteredRetryPolicy(RetryPolicy):
    """RetryPolicy whose exponential backoff is multiplied by a random factor in [0.5, 1.5), and
    which gives up at once on a `Retry-After` longer than `retry_after_max` seconds."""

    def __init__(self, *, rng: random.Random | None = None, retry_after_max: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rng = rng or random.Random()
        self.retry_after_max = float(retry_after_max if retry_after_max is not None else self.backoff_max)

    def is_retry(self, settings: dict[str, Any], response: Any) -> bool:
        if not super().is_retry(settings, response):
            return False
        wait = self.get_retry_after(response)
        limit = wait_limit()
        longest = self.retry_after_max if limit is None else min(self.retry_after_max, limit.max_s)
        if wait is not None and wait > longest:
            http = response.http_request
            if limit is not None:
                limit.refuse(wait)
            log.warning("%s %s answered %s asking to retry after %.0f s, longer than vaultrelay waits (%.0f s): not retried",
                        http.method, urllib.parse.urlsplit(http.url).path, response.http_response.status_code, wait, longest)
            return False
        return True

    def increment(self, settings: dict[str, Any], response: Any = None, error: Any = None) -> bool:
        if isinstance(error, WaitRefused):
            return False  # retrying would only wait for what was refused
        return bool(super().increment(settings, response=response, error=error))

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        base = super().get_backoff_time(settings)
        if base <= 0:
            return 0.0
        return float(min(settings["max_backoff"], base * self._rng.uniform(0.5, 1.5)))


@dataclass(frozen=True)
class RetrySettings:
    """How hard vaultrelay retries one Azure call.

    At most `total` retries in all, and at most `per_kind` of each kind (a retryable status such
    as 429/5xx, a connection failure, a read failure: azure-core's own limit, made explicit):
    with the default waits a call rides over a blip of about three seconds, then fails with a
    clear error and the next run (the timer, an event retry) converges.
    """

    total: int = 6
    per_kind: int = 3
    backoff_factor: float = 0.4
    backoff_max: int = 30
    deadline_s: int = 120

    def policy(self) -> JitteredRetryPolicy:
        return JitteredRetryPolicy(
            retry_total=self.total,
            retry_status=self.per_kind,
            retry_connect=self.per_kind,
            retry_read=self.per_kind,
            retry_backoff_factor=self.backoff_factor,
            retry_backoff_max=self.backoff_max,
            timeout=self.deadline_s,
        )

    def storage_policy(self) -> Any:
        """The blob SDK's own retry policy (storage error codes, secondary endpoints) with this
        budget and `JitteredRetryPolicy`'s waits; its default waits 15 s, then 15 + 3^n s."""
        from azure.storage.blob import ExponentialRetry

        settings = self

        class JitteredStorageRetry(ExponentialRetry):
            def get_backoff_time(self, retry: dict[str, Any]) -> float:
                base = settings.backoff_factor * (2 ** max(int(retry["count"]) - 1, 0))
                return float(min(settings.backoff_max, base * random.uniform(0.5, 1.5)))

        return JitteredStorageRetry(retry_total=self.total, retry_status=self.per_kind, retry_connect=self.per_kind,
                                    retry_read=self.per_kind)

