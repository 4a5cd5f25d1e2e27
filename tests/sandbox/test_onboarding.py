"""Trying your own config against the sandbox (issue 18 item 15): the env file extends PYTHONPATH,
`python -m sandbox seed|grant|identities` prepare it the way the demo prepares it for the example."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from sandbox.client import SandboxProcess, read_env_file

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(sys.executable)


def sourced(env_file: Path, script: str, pythonpath: str | None) -> str:
    """What `script` prints in a bash that sourced the env file (with PYTHONPATH set before, or not)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(["bash", "-c", f"set -a; . {env_file}; set +a; {script}"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_env_file_extends_pythonpath_instead_of_replacing_it(sandbox_process: SandboxProcess, tmp_path: Path) -> None:
    hostshim = str(ROOT / "sandbox" / "hostshim")
    assert sourced(sandbox_process.env_file, 'printf %s "$PYTHONPATH"', None) == hostshim
    assert sourced(sandbox_process.env_file, 'printf %s "$PYTHONPATH"', "/opt/mine:/opt/more") == f"{hostshim}:/opt/mine:/opt/more"
    (tmp_path / "mymodule.py").write_text("VALUE = 'mine'\n")
    domain = sandbox_process.env["SANDBOX_DOMAIN"]
    probe = (f"{PYTHON} -c \"import mymodule, socket; print(mymodule.VALUE, socket.getaddrinfo('kv-source.vault.{domain}', 443)[0][4][0])\"")
    assert sourced(sandbox_process.env_file, probe, str(tmp_path)).split() == ["mine", "127.0.0.1"]
    assert read_env_file(sandbox_process.env_file)["PYTHONPATH"] == hostshim


def test_subprocess_env_extends_the_callers_pythonpath(sandbox_process: SandboxProcess, monkeypatch: object) -> None:
    import os

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = "/opt/callers"
    try:
        assert sandbox_process.subprocess_env()["PYTHONPATH"] == f"{ROOT / 'sandbox' / 'hostshim'}:/opt/callers"
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def sandbox_cli(process: SandboxProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), "-m", "sandbox", *args, "--env-file", str(process.env_file)], cwd=ROOT,
                          env=process.subprocess_env(), capture_output=True, text=True, timeout=300, check=False)


def test_seed_and_grant_prepare_the_sandbox_for_your_own_config(sandbox_process: SandboxProcess, tmp_path: Path) -> None:
    identities = sandbox_cli(sandbox_process, "identities")
    assert identities.returncode == 0, identities.stderr
    app_client_id = next(line.split()[1] for line in identities.stdout.splitlines() if line.startswith("app "))
    vault = f"kv-mine-{uuid.uuid4().hex[:6]}"
    config = tmp_path / "mine.yaml"
    config.write_text(textwrap.dedent(f"""
        secretStores:
          azure: {{type: azure.managed_identity}}
          app:
            type: azure.managed_identity
            identity: {{type: user_assigned, client_id: "{app_client_id}"}}
        envs:
          dev:
            DB_PASSWORD: {{from: {{store: azure, vault: {vault}, secret: db-password}}}}
            API_KEY: {{from: {{store: app, vault: {vault}, secret: api-key}}}}
            CERT: {{from: {{store: azure, vault: {vault}, secret: tls, type: certificate}}}}
            SIGNING: {{from: {{store: app, vault: {vault}, secret: signing, type: key}}}}
    """))
    env = sandbox_process.subprocess_env()
    before = subprocess.run([str(PYTHON.parent / "vaultrelay"), "resolve", "-c", str(config), "-e", "dev", "--reveal", "-f", "json"],
                            env=env, capture_output=True, text=True, timeout=300, check=False)
    assert before.returncode == 1  # nothing there yet, no roles
    seeded = sandbox_cli(sandbox_process, "seed", "--config", str(config), "--secret", f"{vault}/db-password=hunter2")
    assert seeded.returncode == 0, seeded.stderr
    assert "4 Key Vault objects written" in seeded.stdout and "hunter2" not in seeded.stdout
    granted = sandbox_cli(sandbox_process, "grant", "--config", str(config))
    assert granted.returncode == 0, granted.stderr
    assert f"system: Key Vault Secrets User on key vault {vault}" in granted.stdout
    assert f"app: Key Vault Secrets User on key vault {vault}" in granted.stdout
    after = subprocess.run([str(PYTHON.parent / "vaultrelay"), "resolve", "-c", str(config), "-e", "dev", "--reveal", "-f", "json"],
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    assert after.returncode == 0, after.stderr
    values = json.loads(after.stdout)
    assert values["DB_PASSWORD"] == "hunter2" and len(values["API_KEY"]) >= 24
    assert "-----BEGIN CERTIFICATE-----" in values["CERT"] and json.loads(values["SIGNING"])["kty"] == "RSA"
    again = sandbox_cli(sandbox_process, "seed", "--config", str(config))
    assert again.returncode == 0 and "0 Key Vault objects written" in again.stdout  # idempotent: nothing overwritten


def test_the_docs_show_how_to_run_the_sandbox_and_prepare_it() -> None:
    text = (ROOT / "docs" / "sandbox.md").read_text()
    for needle in (".venv/bin/python -m sandbox", "make sandbox", "python -m sandbox seed", "python -m sandbox grant"):
        assert needle in text, needle
