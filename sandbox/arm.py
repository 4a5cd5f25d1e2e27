"""ARM stand-in (stub: filled in by the ARM work)."""

from __future__ import annotations

from sandbox.http import Service
from sandbox.runtime import Runtime


class ArmService(Service):
    name = "arm"
    case_insensitive_paths = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
