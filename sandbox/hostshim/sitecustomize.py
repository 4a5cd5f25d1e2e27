"""Loaded by Python at start-up when the sandbox env file is sourced (via PYTHONPATH).

Makes names under $SANDBOX_DOMAIN resolve to the loopback address, nothing else.
"""

import os

_domain = os.environ.get("SANDBOX_DOMAIN")
if _domain:
    import importlib.util
    import pathlib

    _spec = importlib.util.spec_from_file_location(
        "_vaultrelay_sandbox_resolver",
        pathlib.Path(__file__).resolve().parent.parent / "resolver.py",
    )
    if _spec and _spec.loader:
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        _module.install(_domain)
