"""core.sources.listed_keys: bounded-time reuse, one listing for concurrent callers, forgetting."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from core.sources.listed_keys import DEFAULT_TTL_S, ListedKeys, listed_keys_ttl


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.wall = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> float:
        return self.now


def key(account: str = "acct", identity: str = "mi") -> tuple[str, ...]:
    return ("keys", "https://arm", "sub", account, identity)


def test_a_listing_is_reused_for_its_ttl_then_listed_again() -> None:
    clock = Clock()
    kept = ListedKeys(clock=clock, wall=lambda: clock.wall)
    calls: list[int] = []

    def fetch() -> dict[str, str]:
        calls.append(1)
        return {"key1": f"v{len(calls)}"}

    assert kept.get(key(), 300, fetch) == {"key1": "v1"}
    clock.now = 299
    assert kept.get(key(), 300, fetch) == {"key1": "v1"}
    assert kept.get(key(identity="other"), 300, fetch) == {"key1": "v2"}  # per identity
    clock.now = 301
    assert kept.get(key(), 300, fetch) == {"key1": "v3"}
    # reuse=False lists afresh and keeps what it listed; ttl 0 keeps nothing.
    assert kept.get(key(), 300, fetch, reuse=False) == {"key1": "v4"}
    assert kept.get(key(), 300, fetch) == {"key1": "v4"}
    assert kept.get(key("nokeep"), 0, fetch) == {"key1": "v5"}
    assert kept.get(key("nokeep"), 0, fetch) == {"key1": "v6"}


def test_concurrent_callers_share_one_listing_and_its_failure() -> None:
    kept = ListedKeys()
    started = threading.Event()
    calls = 0

    def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        time.sleep(0.2)
        return "listed"

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda _: kept.get(key(), 300, slow), range(64)))
    assert results == ["listed"] * 64 and calls == 1

    def failing() -> str:
        raise RuntimeError("429")

    with pytest.raises(RuntimeError):
        kept.get(key("b"), 300, failing)
    assert kept.get(key("b"), 300, lambda: "later") == "later"  # a failure is not kept


def test_forget_drops_an_account_for_every_identity_or_only_older_listings() -> None:
    clock = Clock()
    kept = ListedKeys(clock=clock, wall=lambda: clock.wall)
    kept.get(key("acct", "a"), 300, lambda: 1)
    kept.get(key("acct", "b"), 300, lambda: 2)
    kept.get(key("other"), 300, lambda: 3)
    clock.wall += timedelta(minutes=1)
    kept.put(("shared-key", "https://arm", "sub", "acct", "a"), True, 300)
    assert kept.forget("ACCT", listed_before=clock.wall) == 2
    assert kept.forget("acct") == 1
    assert kept.get(key("other"), 300, lambda: 4) == 3


def test_the_ttl_setting() -> None:
    assert listed_keys_ttl({}) == DEFAULT_TTL_S == 300
    assert listed_keys_ttl({"VAULTRELAY_LISTED_KEYS_TTL_SECONDS": "0"}) == 0
    assert listed_keys_ttl({"VAULTRELAY_LISTED_KEYS_TTL_SECONDS": " 60 "}) == 60
    for bad in ("soon", "-1", "1e9"):
        assert listed_keys_ttl({"VAULTRELAY_LISTED_KEYS_TTL_SECONDS": bad}) == DEFAULT_TTL_S
