"""`vaultrelay exec`'s child: started with its variables, signals passed on, its status returned.

SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to vaultrelay go to the child, once:
a signal the terminal sent (Ctrl-C, Ctrl-\\, a hang-up) already reached the child, which is in the
same foreground process group, so only signals sent to vaultrelay itself (`kill`, a supervisor,
a CI runner's timeout) are forwarded.  The exit status is the child's, or 128 + n when a signal
n ended it, as shells report it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
SI_KERNEL = 0x80  # si_code of a signal the kernel (the terminal driver) sent


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + n for death by signal n."""
    return 128 - returncode if returncode < 0 else returncode


def run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run `argv` with exactly `env`, passing on signals, and return its exit status.

    Raises:
        FileNotFoundError: the command does not exist.
        PermissionError: it is not executable.
        ValueError: an argument or a variable holds a NUL character.
    """
    if hasattr(signal, "sigtimedwait") and hasattr(os, "posix_spawn"):
        return _run_waiting_for_signals(list(argv), dict(env))
    return _run_with_handlers(list(argv), dict(env))


def _executable(command: str, env: Mapping[str, str]) -> str:
    if os.sep in command:
        return command
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        raise FileNotFoundError(command)
    return found


def _run_waiting_for_signals(argv: list[str], env: dict[str, str]) -> int:
    """Linux and other POSIX systems with sigtimedwait: the signals are blocked here and read
    synchronously with their sender's details (`si_code`), the child starts with the mask and
    dispositions a shell would give it."""
    watched = {*FORWARDED, signal.SIGCHLD}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        defaults = {signal.SIGPIPE, *(s for s in (getattr(signal, "SIGXFSZ", None),) if s is not None)}
        pid = os.posix_spawn(_executable(argv[0], env), argv, env, setsigmask=previous, setsigdef=defaults)
        while True:
            info = signal.sigtimedwait(watched, 0.5)
            if info is not None and info.si_signo != signal.SIGCHLD:
                if info.si_code != SI_KERNEL:
                    _send(pid, info.si_signo)
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return exit_status(os.waitstatus_to_exitcode(status))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _send(pid: int, signo: int) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass


def _run_with_handlers(argv: list[str], env: dict[str, str]) -> int:
    """Elsewhere: handlers forward every signal (a terminal's Ctrl-C then reaches the child twice)."""
    child = subprocess.Popen(argv, env=env)
    saved = {}

    def forward(signo: int, _frame: object) -> None:
        _send(child.pid, signo)

    for signo in FORWARDED:
        saved[signo] = signal.signal(signo, forward)
    try:
        while True:
            try:
                return exit_status(child.wait())
            except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for old platforms
                continue
    finally:
        for signo, handler in saved.items():
            signal.signal(signo, handler)
        sys.stdout.flush()
