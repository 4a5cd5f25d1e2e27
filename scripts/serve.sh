#!/usr/bin/env bash
# `make serve`: the real Functions host (Core Tools) against the local Azure.
# Starts the sandbox, waits for its env file, exports it (the host's Python worker inherits the
# name resolution and CA bundle), seeds the example, and runs `func start` until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v func >/dev/null 2>&1; then
  echo "Azure Functions Core Tools (func) is not on PATH; install it to run the host locally." >&2
  echo "Without it: 'make demo' calls the same registered functions in-process." >&2
  exit 2
fi
mkdir -p .sandbox
rm -f .sandbox/env
.venv/bin/python -m sandbox --env-file .sandbox/env --quiet &
SANDBOX_PID=$!
trap 'kill "$SANDBOX_PID" 2>/dev/null; wait "$SANDBOX_PID" 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 100); do [ -f .sandbox/env ] && break; sleep 0.1; done
[ -f .sandbox/env ] || { echo "the sandbox did not start" >&2; exit 1; }
set -a; . .sandbox/env; set +a
.venv/bin/python - <<'PY'
import os
from demo.seed import example_environment, seed_example
from sandbox.client import SandboxClient, read_env_file
from pathlib import Path
client = SandboxClient(read_env_file(Path(".sandbox/env")))
seed_example(client)
with open(".sandbox/example.env", "w") as f:
    for k, v in example_environment(client).items():
        f.write(f"export {k}={v}\n")
PY
set -a; . .sandbox/example.env; set +a
export VAULTRELAY_CONFIG="${VAULTRELAY_CONFIG:-examples/vaultrelay.yaml}"
export VAULTRELAY_SYNC_SCHEDULE="${VAULTRELAY_SYNC_SCHEDULE:-0 */15 * * * *}"
export AzureWebJobsStorage="${AzureWebJobsStorage:-UseDevelopmentStorage=true}"
export FUNCTIONS_WORKER_RUNTIME=python
# Only what the host itself needs: every VAULTRELAY_* value comes from the sandbox env above
# (local.settings.json.example lists them for a deployment against Azure).
[ -f local.settings.json ] || printf '{"IsEncrypted": false, "Values": {"FUNCTIONS_WORKER_RUNTIME": "python", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}}\n' > local.settings.json
echo "Functions host on http://localhost:7071/api (sandbox env in .sandbox/env)"
PATH="$PWD/.venv/bin:$PATH" func start --python
