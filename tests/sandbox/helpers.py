"""Small helpers shared by the sandbox contract tests."""

from __future__ import annotations

import uuid

from sandbox.client import SandboxClient


def unique(prefix: str) -> str:
    """A name no other test uses (tests share one sandbox)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def arm_kwargs(sandbox: SandboxClient) -> dict[str, str]:
    return {"base_url": sandbox.arm_endpoint}
