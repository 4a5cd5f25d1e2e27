"""The command line as a user runs it: the installed `vaultrelay` console script, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.seed import example_environment
from sandbox.client import SandboxClient, SandboxProcess
from tests.configs import config_yaml, keyvault_target, ref, secret_ref

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vaultrelay.yaml"
VAULTRELAY = Path(sys.executable).parent / "vaultrelay"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def offline_env(**extra: str) -> dict[str, str]:
    """A minimal environment for commands that need no Azure (nothing points at any endpoint)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULTRELAY_", "SANDBOX_", "IDENTITY_", "AZURE_", "MSI_"))}
    env.pop("PYTHONPATH", None)
    env.pop("NO_COLOR", None)
    env.update(extra)
    return env


def vaultrelay(*args: str, env: Mapping[str, str] | None = None, input: str | None = None, cwd: Path | None = None,
               timeout: float = 120) -> Result:
    """Run the console script; stdout and stderr are pipes (not a terminal)."""
    assert VAULTRELAY.exists(), f"{VAULTRELAY} is not installed (make setup)"
    completed = subprocess.run([str(VAULTRELAY), *args], env=dict(env if env is not None else offline_env()), input=input,
                               capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)
    return Result(completed.returncode, completed.stdout, completed.stderr)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def sync_config(path: Path, tag: str) -> Path:
    """A config with state (tables prefixed `tag`), one env of a Key Vault secret and an account
    key rotated every 30 days, pushed to a Key Vault target: what sync, rotate and status need."""
    return write(path, config_yaml(
        state={"store": "azure", "account": "sandboxstore", "table_prefix": tag, "fingerprint_key": "cli-test-fingerprint-key-0123456789"},
        envs={"app": {"API_KEY": secret_ref("api-key"),
                      "STORAGE_KEY": ref(resource_type="storage", account="sandboxstore", key="active", rotate={"every": "30d"})}},
        targets={"vault": keyvault_target("app", prefix=f"{tag}-")}))



@pytest.fixture()
def sandbox_env(seeded: SandboxClient, sandbox_process: SandboxProcess) -> dict[str, str]:
    """The environment of a shell that sourced the sandbox's env file, set up for the example."""
    env = sandbox_process.subprocess_env()
    env.pop("NO_COLOR", None)
    env.update(example_environment(seeded))
    env["VAULTRELAY_CONFIG"] = str(EXAMPLE)
    return env


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"
