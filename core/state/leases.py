"""Who holds a lease (`StateStore.acquire_lease`): this process's holder name, and whether a
holder on this host has died holding one."""

from __future__ import annotations

import os
import socket
import uuid


def instance_id() -> str:
    """Who holds a lease: the Functions instance id when there is one, else host and pid."""
    instance = os.environ.get("WEBSITE_INSTANCE_ID")
    return f"{instance}:{os.getpid()}:{uuid.uuid4().hex[:6]}" if instance else f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def holder_is_dead(owner: str) -> bool:
    """True when `owner` is a process on this host that no longer runs (it crashed holding a
    lease).  Holders on other hosts are trusted until their lease expires."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    local = host in (socket.gethostname(), os.environ.get("WEBSITE_INSTANCE_ID", "\0"))
    if not local or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
