"""Shared fixtures: one sandbox (local Azure) per test session, driven through its env file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from core.sources.listed_keys import PROCESS_LISTED_KEYS
from demo.seed import seed_example
from sandbox.client import SandboxClient, SandboxProcess
from tests.world import World

# ARM's long-running operations complete at once in the sandbox; Azure asks for at least 10 s
# between polls (the sandbox's default, tests/sandbox/test_arm.py).  The session's
# sandbox says 0, so vaultrelay, which honours Retry-After, polls again at once.
SESSION_ARM_RETRY_AFTER = ["--arm-retry-after", "0"]


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    process = SandboxProcess(extra_args=SESSION_ARM_RETRY_AFTER)
    saved = dict(os.environ)
    process.apply_to_current_process()
    try:
        yield process
    finally:
        process.close()
        os.environ.clear()
        os.environ.update(saved)


# The session's sandbox is one subscription shared by every test's world for the whole run: far
# more storage management calls per 5 minutes than one deployment makes.  So its storage resource
# provider limits are 10 times Azure's (sandbox/arm_limits.py); tests of vaultrelay's behaviour
# under the limits lower them with the `arm_limits` fixture, which restores these afterwards.
SESSION_ARM_LIMITS = {"read": {"limit": 8000, "window_s": 300}, "list": {"limit": 1000, "window_s": 300},
                      "write": [{"limit": 100, "window_s": 1}, {"limit": 12000, "window_s": 3600}]}


@pytest.fixture(scope="session")
def sandbox(sandbox_process: SandboxProcess) -> SandboxClient:
    """The running sandbox's control API and facts."""
    sandbox_process.client.set_arm_limits(**SESSION_ARM_LIMITS)  # type: ignore[arg-type]
    return sandbox_process.client


@pytest.fixture()
def arm_limits(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    """The sandbox, for a test that changes the storage resource provider's ARM limits; the
    session's limits (full buckets) are restored afterwards."""
    yield sandbox
    sandbox.set_arm_limits(**SESSION_ARM_LIMITS)  # type: ignore[arg-type]


@pytest.fixture()
def clean_faults(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    """The sandbox with no faults and zeroed counters; faults are cleared again afterwards."""
    sandbox.clear_faults()
    sandbox.reset_counters()
    yield sandbox
    sandbox.clear_faults()


@pytest.fixture(autouse=True)
def fresh_listed_keys() -> Iterator[None]:
    """Each test starts like a new process: no storage key listings kept from another test
    (core.sources.listed_keys keeps them per process for minutes)."""
    PROCESS_LISTED_KEYS.clear()
    yield


@pytest.fixture(scope="module")
def seeded(sandbox: SandboxClient) -> SandboxClient:
    """The sandbox prepared like the demo (demo/seed.py), once per module.  tests/functions and
    tests/infra override it to also set the example config's variables."""
    seed_example(sandbox)
    return sandbox


@pytest.fixture()
def world(seeded: SandboxClient) -> World:
    """A private slice of the seeded sandbox (tests/world.py)."""
    return World(seeded)
