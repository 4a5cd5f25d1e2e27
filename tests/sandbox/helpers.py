"""Small helpers shared by the sandbox contract tests."""

from __future__ import annotations

from sandbox.client import SandboxClient
from tests.world import unique

__all__ = ["arm_kwargs", "unique"]




def arm_kwargs(sandbox: SandboxClient) -> dict[str, str]:
    return {"base_url": sandbox.arm_endpoint}
