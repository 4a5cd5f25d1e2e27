"""VaultPacer on its own: a vault's shared backoff after a 429, driven by a clock the test moves.

Threads call `acquire()` as the Key Vault clients' workers do; the clock only moves when the
test moves it, so "not before Retry-After" is checked against the pacer's own notion of time.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from core.azure.clients import VaultPacer

SETTLE_S = 0.05


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Callers:
    """Threads blocked in `acquire()`; records the pacer-clock time at which each got through."""

    def __init__(self, pacer: VaultPacer, clock: FakeClock) -> None:
        self.pacer = pacer
        self.clock = clock
        self.entered: list[float] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._call, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _call(self) -> None:
        self.pacer.acquire()
        with self._lock:
            self.entered.append(self.clock())

    def count(self) -> int:
        with self._lock:
            return len(self.entered)

    def settle(self, expected: int, timeout: float = 1.0) -> int:
        """Waits until `expected` callers got through, then a moment more: the count after that."""
        deadline = time.monotonic() + timeout
        while self.count() < expected and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(SETTLE_S)
        return self.count()

    def finish(self) -> None:
        """Lets every remaining caller through (releasing without a status changes no limit)."""
        deadline = time.monotonic() + 2.0
        while any(t.is_alive() for t in self._threads) and time.monotonic() < deadline:
            self.pacer.release(None, None)
            time.sleep(0.005)
        self.pacer.release(None, None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def callers(clock: FakeClock) -> Iterator[Callable[[VaultPacer], Callers]]:
    made: list[Callers] = []

    def make(pacer: VaultPacer) -> Callers:
        c = Callers(pacer, clock)
        made.append(c)
        return c

    yield make
    for c in made:
        c.finish()


def _hold(pacer: VaultPacer, n: int) -> None:
    """n requests in flight (acquired by the test itself, never blocked: the limit is open)."""
    for _ in range(n):
        pacer.acquire()


def test_no_acquire_returns_before_retry_after(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(clock=clock)
    _hold(pacer, 3)
    pacer.release(429, 30.0)  # the vault is closed until 130
    waiting = callers(pacer)
    waiting.start(6)
    assert waiting.settle(1, timeout=0.1) == 0
    clock.now = 129.9
    pacer.release(200, None)  # a success elsewhere wakes the waiters: still closed
    assert waiting.settle(1, timeout=0.15) == 0
    clock.now = 130.0
    pacer.release(None, None)
    # 3 were in flight when the 429 came back (limit 1); the success since made it 2.
    assert waiting.settle(2) == 2
    assert all(t >= 130.0 for t in waiting.entered)


def test_a_later_shorter_retry_after_does_not_reopen_the_vault(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(clock=clock)
    _hold(pacer, 8)
    pacer.release(429, 10.0)  # closed until 110
    clock.now = 105.0
    pacer.release(429, 1.0)  # says 106: the earlier 110 stands
    waiting = callers(pacer)
    waiting.start(2)
    clock.now = 107.0
    for _ in range(6):
        pacer.release(None, None)  # nothing in flight: only the time holds them
    assert waiting.settle(1, timeout=0.15) == 0
    clock.now = 110.0
    pacer.release(None, None)
    assert waiting.settle(2) == 2
    assert min(waiting.entered) >= 110.0


def test_the_in_flight_limit_halves_and_grows_back_by_one_per_round(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(clock=clock)
    _hold(pacer, 8)
    pacer.release(429, 1.0)  # 8 in flight when the 429 came back: limit 4
    for _ in range(7):
        pacer.release(None, None)  # the other 7 failed without an answer: no change
    clock.now += 1.0
    waiting = callers(pacer)
    waiting.start(12)
    assert waiting.settle(4) == 4  # exactly the halved limit gets through
    # Each success adds 1/limit: 4.25 lets a 5th in flight, and a whole round of 4 successes
    # (4.92) still allows 5; the round's 5th success (5.12) allows 6.
    pacer.release(200, None)
    assert waiting.settle(6) == 6  # the freed slot and one more: 5 in flight
    for _ in range(3):
        pacer.release(200, None)
    assert waiting.settle(9) == 9  # only the 3 freed slots: still 5 in flight
    pacer.release(200, None)
    assert waiting.settle(11) == 11  # the freed slot and one more: 6 in flight


def test_a_second_429_halves_what_is_in_flight_then(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(clock=clock)
    _hold(pacer, 20)
    pacer.release(429, 1.0)  # limit 10
    for _ in range(14):
        pacer.release(None, None)  # 5 left in flight
    pacer.release(429, 1.0)  # 5 in flight: limit 2
    for _ in range(4):
        pacer.release(None, None)
    clock.now += 1.0
    waiting = callers(pacer)
    waiting.start(5)
    assert waiting.settle(2) == 2


def test_the_limit_is_lifted_once_it_grows_above_the_ceiling(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(ceiling=6, clock=clock)
    _hold(pacer, 10)
    pacer.release(429, 1.0)  # limit 5
    for _ in range(9):
        pacer.release(None, None)
    clock.now += 1.0
    # 5 -> 6 takes 6 successes (5.2, 5.39, 5.58, 5.76, 5.93, then 6.1 >= the ceiling).
    for _ in range(6):
        _hold(pacer, 1)
        pacer.release(200, None)
    waiting = callers(pacer)
    waiting.start(50)
    assert waiting.settle(50) == 50  # no in-flight limit any more


def test_below_the_ceiling_the_limit_still_holds(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    # The same as above with one success fewer: the limit is 5.93 (6 in flight), not lifted.
    pacer = VaultPacer(ceiling=6, clock=clock)
    _hold(pacer, 10)
    pacer.release(429, 1.0)
    for _ in range(9):
        pacer.release(None, None)
    clock.now += 1.0
    for _ in range(5):
        _hold(pacer, 1)
        pacer.release(200, None)
    waiting = callers(pacer)
    waiting.start(50)
    assert waiting.settle(6) == 6


def test_an_unthrottled_vault_has_no_limit(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    pacer = VaultPacer(clock=clock)
    waiting = callers(pacer)
    waiting.start(100)
    assert waiting.settle(100) == 100


def test_inside_waits_at_most_a_longer_closure_is_refused_not_waited(clock: FakeClock, callers: Callable[[VaultPacer], Callers]) -> None:
    from core.azure.retry import WaitRefused, waits_at_most

    pacer = VaultPacer(clock=clock)
    _hold(pacer, 1)
    pacer.release(429, 30.0)  # closed until 130
    with waits_at_most(5.0) as limit, pytest.raises(WaitRefused) as refused:
        pacer.acquire()
    assert refused.value.status_code == 429 and limit.refused_s == pytest.approx(30.0)
    # A limit longer than the closure: waited for, as without one.
    longer = waits_at_most(60.0)
    limit = longer.__enter__()
    try:
        context = contextvars.copy_context()  # the caller's limit, in the thread that acquires
    finally:
        longer.__exit__(None, None, None)
    done = threading.Event()
    threading.Thread(target=lambda: (context.run(pacer.acquire), done.set()), daemon=True).start()
    assert not done.wait(0.1)
    clock.now = 130.0
    pacer.release(None, None)
    assert done.wait(2.0) and limit.refused_s == 0.0
