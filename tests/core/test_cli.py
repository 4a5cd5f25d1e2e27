"""The `vaultrelay` command line against the sandbox: exit codes, formats, masking, exec."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.cli import EXIT_CONFIG, EXIT_OK, EXIT_RESOLUTION, MASK, main
from demo.seed import EXAMPLE_SECRETS, example_environment
from sandbox.client import SandboxClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "examples" / "vaultrelay.yaml")



@pytest.fixture()
def example_env(seeded: SandboxClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxClient]:
    for key, value in example_environment(seeded).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VAULTRELAY_CONFIG", EXAMPLE)
    yield seeded


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_validate_ok_and_config_errors(tmp_path: Path, example_env: SandboxClient) -> None:
    code, out, _ = run("validate")
    assert code == EXIT_OK and "ok (2 stores, 1 env, 12 variables)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nsecretStores:\n  azure:\n    type: azure.managed_identity\n    cashe: {}\n")
    code, out, err = run("--config", str(bad), "validate")
    assert code == EXIT_CONFIG and out == ""
    assert f"{bad}:5: secretStores.azure.cashe: unknown key 'cashe'; did you mean 'cache'?" in err
    code, _, err = run("--config", str(tmp_path / "missing.yaml"), "validate")
    assert code == EXIT_CONFIG and "cannot read config" in err


def test_plan_shows_stores_and_identities_without_values(example_env: SandboxClient) -> None:
    code, out, _ = run("plan", "--env", "production")
    assert code == EXIT_OK
    assert "keyvault secret kv-source/database-password@latest" in out
    assert "user-assigned managed identity" in out and "system-assigned managed identity" in out
    assert "10 references (10 unique), 1 literal, 1 composed value\n" in out
    assert all(value not in out for value in EXAMPLE_SECRETS.values())
    code, _, err = run("plan", "--env", "staging")
    assert code == EXIT_CONFIG and "no env 'staging'" in err and "envs: production" in err


def test_resolve_masks_unless_revealed_in_every_format(example_env: SandboxClient) -> None:
    code, out, _ = run("resolve", "--env", "production", "--format", "json", "--masked")
    assert code == EXIT_OK
    masked = json.loads(out)
    assert set(masked.values()) == {MASK} and len(masked) == 12
    code, out, _ = run("resolve", "--env", "production", "--format", "json", "--reveal")
    values = json.loads(out)
    assert values["DATABASE_PASSWORD"] == EXAMPLE_SECRETS[("kv-source", "database-password")]
    assert values["DATA_SECRET"] == EXAMPLE_SECRETS[("kv-shared", "data-api-key")]
    assert values["LOG_LEVEL"] == "info"
    assert "-----BEGIN CERTIFICATE-----" in values["TLS_CERT"]
    assert "Authentication=Active Directory Managed Identity" in values["SQL_CONNECTION"]
    assert example_env.identities["data"].client_id in values["SQL_CONNECTION"]
    code, out, _ = run("resolve", "--env", "production", "--format", "shell", "--reveal")
    assert "export DATABASE_PASSWORD=s3cr3t-db-password\n" in out
    code, out, _ = run("resolve", "--env", "production", "--format", "dotenv", "--masked")
    assert f"API_KEY='{MASK}'\n" in out


def test_resolution_errors_exit_1_and_print_nothing_unless_partial(tmp_path: Path, example_env: SandboxClient) -> None:
    config = tmp_path / "partial.yaml"
    config.write_text(
        "version: 1\nsecretStores: {azure: {type: azure.managed_identity}}\n"
        "envs:\n  e:\n    GOOD: {from: {store: azure, vault: kv-source, secret: api-key}}\n"
        "    MISSING: {from: {store: azure, vault: kv-source, secret: no-such-secret}}\n"
        "    DENIED: {from: {store: azure, vault: kv-shared, secret: anything}}\n"
    )
    code, out, err = run("--config", str(config), "resolve", "--env", "e", "--format", "json", "--reveal")
    assert code == EXIT_RESOLUTION and out == ""
    assert "error: MISSING: envs.e.MISSING.from: not_found" in err
    assert "error: DENIED: envs.e.DENIED.from: access_denied" in err and "Key Vault Secrets User" in err
    assert "nothing printed" in err
    code, out, err = run("--config", str(config), "resolve", "--env", "e", "--format", "json", "--reveal", "--allow-partial")
    assert code == EXIT_RESOLUTION and json.loads(out) == {"GOOD": EXAMPLE_SECRETS[("kv-source", "api-key")]}


def test_exec_passes_variables_and_the_exit_code(tmp_path: Path, example_env: SandboxClient) -> None:
    marker = tmp_path / "seen"
    script = f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(os.environ['DATABASE_PASSWORD']); raise SystemExit(7)"
    code, _, _ = run("exec", "--env", "production", "--", sys.executable, "-c", script)
    assert code == 7
    assert marker.read_text() == EXAMPLE_SECRETS[("kv-source", "database-password")]
    code, _, err = run("exec", "--env", "production", "--", "definitely-not-a-command-xyz")
    assert code == 127 and "command not found" in err
    code, _, err = run("exec", "--env", "production")
    assert code == EXIT_CONFIG and "exec needs a command" in err


def test_no_secret_value_reaches_logs_or_output_at_debug(example_env: SandboxClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # A CLI process does not load the Function app, which keeps the SDK loggers at WARNING
    # (core/logs.py): here they inherit DEBUG, as in a CLI process.
    from core.logs import set_sdk_log_level

    sdk_levels = set_sdk_log_level(logging.NOTSET)
    try:
        code, out, err = run("-vvv", "resolve", "--env", "production", "--format", "json", "--masked")
    finally:
        for name, level in sdk_levels.items():
            logging.getLogger(name).setLevel(level)
    assert code == EXIT_OK
    code, revealed, _ = run("resolve", "--env", "production", "--format", "json", "--reveal")
    values = [v for k, v in json.loads(revealed).items() if k != "LOG_LEVEL"]
    text = out + err + caplog.text + "".join(str(r.args) for r in caplog.records)
    assert len(caplog.records) > 10  # the SDKs and vaultrelay did log at DEBUG
    leaked = [v[:6] + "..." for v in values if v in text]
    assert leaked == []
    assert os.environ.get("DATABASE_PASSWORD") is None


def test_status_with_the_state_table_refused_is_a_clear_error_not_a_traceback(tmp_path: Path, example_env: SandboxClient) -> None:
    # The state account answers 403 (a non-retried refusal): status names the table and the cause.
    example_env.set_faults(rules=[{"service": "storage", "target": "sandboxstore", "error_rate": 1.0, "error_status": 403}])
    try:
        code, _out, err = run("status")
    finally:
        example_env.clear_faults()
    assert code == EXIT_RESOLUTION, err
    assert err.startswith("error: ") and "Traceback" not in err and "HTTP 403" in err
    assert "table" in err.lower()
