"""The JSON Schema of the config format, generated from the model and shipped in `schema/`.

Regenerate with `python -m core.config.schema` (a test fails when the shipped file is stale).
Editors pick it up through a `# yaml-language-server: $schema=...` line or their settings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from core.config.model import Config

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schema" / "vaultrelay.schema.json"
SCHEMA_ID = "https://vaultrelay.dev/schema/vaultrelay.schema.json"


def generate_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def render_schema() -> str:
    return json.dumps(generate_schema(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_FILE.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_FILE.write_text(render_schema())
    sys.stdout.write(f"wrote {SCHEMA_FILE}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
