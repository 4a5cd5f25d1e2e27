"""Shared fixtures: one sandbox (local Azure) per test session, driven through its env file."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from core.sources.listed_keys import PROCESS_LISTED_KEYS
from sandbox.client import SandboxClient, SandboxProcess


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    process = SandboxProcess()
    saved = dict(os.environ)
    process.apply_to_current_process()
    try:
        yield process
    finally:
        process.close()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def sandbox(sandbox_process: SandboxProcess) -> SandboxClient:
    """The running sandbox's control API and facts."""
    return sandbox_process.client


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
