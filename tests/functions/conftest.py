"""Access to the functions that function_app.py registers, as the Functions host sees them."""

from __future__ import annotations

from typing import Any

import pytest

import function_app

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
