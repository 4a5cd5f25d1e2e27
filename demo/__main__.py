"""`make demo`: start the local Azure, prepare it like a platform team would, then run vaultrelay.

Steps: start the sandbox (Azurite + Azure stand-ins), seed secrets and grant roles through ARM,
validate and plan the example config, resolve it with the managed identity (values masked), and
run a command under `vaultrelay exec`.  Everything stops when the demo ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "vaultrelay.yaml"


def main() -> int:
    console = Console()
    from demo.seed import example_environment, seed_example
    from sandbox.client import SandboxProcess

    started = time.monotonic()
    console.rule("1. local Azure")
    with SandboxProcess() as sandbox:
        console.print(f"sandbox up in {time.monotonic() - started:.1f}s: Azurite, managed identity endpoint, Key Vault, ARM, Event Grid")
        sandbox.apply_to_current_process()
        client = sandbox.client
        seeded = seed_example(client)
        os.environ.update(example_environment(client))
        os.environ["VAULTRELAY_CONFIG"] = str(CONFIG)
        console.print(f"seeded {seeded['secrets']} Key Vault objects and {seeded['roles']} role assignments (through ARM)")

        env = sandbox.subprocess_env()  # includes the name resolution for *.vaultrelay.test
        env.update(example_environment(client))
        env["VAULTRELAY_CONFIG"] = str(CONFIG)
        vaultrelay = [sys.executable, "-m", "core.cli"]
        steps = [
            ("2. validate the config (static, no network)", [*vaultrelay, "validate"]),
            ("3. plan: what env production resolves, with which identity", [*vaultrelay, "plan", "--env", "production"]),
            ("4. resolve with the managed identity (values masked)", [*vaultrelay, "resolve", "--env", "production", "--format", "table"]),
            ("5. sync: push env production to a target vault, a blob and app settings", [*vaultrelay, "sync"]),
            ("6. sync again: nothing changed, so nothing is written", [*vaultrelay, "sync"]),
            ("7. rotate the storage account key (dual-key: regenerate the inactive key, switch, re-push)", [*vaultrelay, "rotate", "--force"]),
            ("8. status: last push, drift and rotations per env and target", [*vaultrelay, "status"]),
            ("9. exec: a child process gets the variables", [
                *vaultrelay, "exec", "--env", "production", "--", sys.executable, "-c",
                "import os; print('child sees', sum(k in os.environ for k in ('DATABASE_PASSWORD', 'STORAGE_SAS', 'COSMOS_CONNECTION')), "
                "'secrets; DATABASE_PASSWORD has', len(os.environ['DATABASE_PASSWORD']), 'characters')",
            ]),
        ]
        for title, argv in steps:
            console.rule(title)
            result = subprocess.run(argv, env=env, cwd=ROOT, check=False)
            if result.returncode != 0:
                console.print(f"[red]step failed with exit code {result.returncode}[/red]")
                return result.returncode
        counters = client.counters()
        console.rule("what the local Azure saw")
        targets = ", ".join(f"{k}: {v}" for k, v in sorted(counters.get("by_target", {}).items()))
        console.print(f"{counters.get('total')} requests, {counters.get('tokens_issued')} tokens issued; by target: {targets}")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s; the sandbox and Azurite are stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
