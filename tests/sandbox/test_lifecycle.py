"""`python -m sandbox` starts quickly and leaves no process behind, however it is stopped."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from sandbox.client import SandboxProcess


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _wait_gone(processes: list[psutil.Process], timeout: float = 10.0) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def _start() -> tuple[SandboxProcess, float, list[psutil.Process]]:
    started = time.monotonic()
    process = SandboxProcess()
    elapsed = time.monotonic() - started
    children = _descendants(process.process.pid)
    return process, elapsed, children


def test_starts_in_under_ten_seconds_with_azurite_and_stops_everything_on_sigterm() -> None:
    process, elapsed, children = _start()
    try:
        assert elapsed < 10.0, f"sandbox took {elapsed:.1f}s to become ready"
        commands = [" ".join(child.cmdline()) for child in children]
        assert any("azurite" in command for command in commands), commands
        assert process.client.call("GET", "/health")["ok"] is True
    finally:
        process.close()
    assert process.process.returncode == 0
    assert _wait_gone(children) == []


def test_sigkill_of_the_sandbox_takes_azurite_with_it() -> None:
    process, _, children = _start()
    try:
        assert children
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait(timeout=10)
        alive = _wait_gone(children)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        process.close()


def test_the_env_file_disappears_with_the_sandbox() -> None:
    process, _, _ = _start()
    env_file = process.env_file
    assert env_file.exists()
    process.close()
    assert not env_file.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT])
def test_sigint_is_a_clean_stop(sig: signal.Signals) -> None:
    process, _, children = _start()
    try:
        process.process.send_signal(sig)
        assert process.process.wait(timeout=15) == 0
        assert _wait_gone(children) == []
    finally:
        process.close()
