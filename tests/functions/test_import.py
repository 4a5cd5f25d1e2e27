"""`import function_app` stays cheap: azure.functions and the blueprints, nothing heavier."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Loaded on the first request instead: the engine, the Azure SDK, token validation, config parsing.
HEAVY = {"jwt", "cryptography", "pydantic", "yaml", "requests", "aiohttp", "rich", "msal", "urllib3"}


def _modules_after(statement: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_import_function_app_loads_no_azure_sdk_besides_azure_functions() -> None:
    modules = _modules_after("import function_app")
    assert "function_app" in modules and "functions.http_api" in modules
    sdk = sorted(m for m in modules if m.startswith("azure.") and not m.startswith("azure.functions"))
    assert sdk == [], f"import function_app loaded Azure SDK modules: {sdk[:10]}"
    heavy = sorted({m.split(".")[0] for m in modules} & HEAVY)
    assert heavy == [], f"import function_app loaded {heavy}; import them on first use"
