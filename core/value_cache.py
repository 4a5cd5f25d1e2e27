"""Per-run deduplication and the process-wide value cache.

`SingleFlight` runs a function once per key while concurrent callers wait for that one result
(one `listKeys` per account per run, one GET per unique secret).  `ValueCache` keeps resolved
values for `secret_cache.ttl` seconds across runs in one process (a warm Functions instance).
Neither ever logs a value.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Run `fn` once per key; later and concurrent callers get the same result or exception."""

    def __init__(self) -> None:
        self._futures: dict[Hashable, Future[T]] = {}
        self._lock = threading.Lock()
        self.calls = 0

    def do(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            future = self._futures.get(key)
            owner = future is None
            if owner:
                future = self._futures[key] = Future()
        assert future is not None
        if owner:
            self.calls += 1
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        return future.result()

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._futures.pop(key, None)


class ValueCache(Generic[T]):
    """A TTL cache; entries expire `ttl_s` after they were stored or when they expire themselves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[Hashable, tuple[float, T]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self._clock():
                self.hits += 1
                return entry[1]
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: T, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock() + ttl_s, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def invalidate(self, predicate: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key matches; returns how many were dropped."""
        with self._lock:
            doomed = [key for key in self._entries if predicate(key)]
            for key in doomed:
                del self._entries[key]
            return len(doomed)
