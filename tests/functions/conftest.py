"""Access to the functions that function_app.py registers, as the Functions host sees them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import function_app
from demo.seed import example_environment, seed_example
from sandbox.client import SandboxClient

_REGISTERED: dict[str, Any] | None = None


def registered_functions() -> dict[str, Any]:
    """Function name -> azure.functions Function (get_functions() may run only once per app)."""
    global _REGISTERED
    if _REGISTERED is None:
        _REGISTERED = {fn.get_function_name(): fn for fn in function_app.app.get_functions()}
    return _REGISTERED


@pytest.fixture(scope="session")
def functions() -> dict[str, Any]:
    return registered_functions()


@pytest.fixture(scope="module")
def seeded(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    """The sandbox prepared like the demo, with the example config's variables set for the module."""
    seed_example(sandbox)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in example_environment(sandbox).items():
            patch.setenv(key, value)
        yield sandbox
