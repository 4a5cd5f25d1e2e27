"""Name resolution for the sandbox domain inside Python processes.

glibc does not resolve `*.localhost`-style wildcard names and there is no DNS server to ask, so
every host under the sandbox domain (`SANDBOX_DOMAIN`, default `vaultrelay.test`, a reserved TLD)
is answered as 127.0.0.1 by a wrapper around `socket.getaddrinfo`.  Other names resolve as
before.  The env file puts `sandbox/hostshim` on `PYTHONPATH`, whose `sitecustomize` calls
`install()`, so any Python process that sources the env file reaches the sandbox with the
unmodified Azure SDK clients.
"""

from __future__ import annotations

import socket
from typing import Any

_installed_suffixes: set[str] = set()
_original_getaddrinfo = socket.getaddrinfo


def _sandbox_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if isinstance(host, bytes):
        name = host.decode("ascii", "ignore")
    else:
        name = host
    if isinstance(name, str):
        lowered = name.lower().rstrip(".")
        for suffix in _installed_suffixes:
            if lowered == suffix or lowered.endswith("." + suffix):
                return _original_getaddrinfo("127.0.0.1", *args, **kwargs)
    return _original_getaddrinfo(host, *args, **kwargs)


def install(domain: str) -> None:
    """Resolve `domain` and every name under it to 127.0.0.1 in this process."""
    _installed_suffixes.add(domain.lower().strip("."))
    socket.getaddrinfo = _sandbox_getaddrinfo
