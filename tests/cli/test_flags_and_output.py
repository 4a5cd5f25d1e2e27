"""Flags anywhere, one stable JSON shape per command, masked output, exit codes, help and completion
(issue 18 items 1, 2, 4, 5, 6, 7, 8, 12, 14, 16), through the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from core.cli_json import DOCUMENTS, SCHEMA_DIR, render_schema
from core.config.loader import read_config_bytes
from core.errors import ConfigError
from tests.cli.conftest import EXAMPLE, ROOT, VAULTRELAY, offline_env, sync_config, unique, vaultrelay, write

LITERALS = """
    secretStores:
      azure: {type: azure.managed_identity}
    envs:
      prod:
        LOG_LEVEL: info
        HOME_DIR: ${NOT_SET:-${HOME}}
"""


@pytest.fixture()
def literals(tmp_path: Path) -> Path:
    return write(tmp_path / "literals.yaml", LITERALS)


def schema_of(name: str) -> Any:
    return jsonschema_rs.validator_for(json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text()))


def assert_document(name: str, text: str) -> dict[str, Any]:
    document = json.loads(text)
    errors = [e.message for e in schema_of(name).iter_errors(document)]
    assert errors == [], errors
    return dict(document)


# ---- 1. global flags anywhere, stdin, FIFOs --------------------------------------------------
def test_global_flags_work_before_and_after_the_command(literals: Path) -> None:
    env = offline_env(HOME="/home/me")
    for args in (["--config", str(literals), "resolve", "-e", "prod", "--reveal", "-f", "json"],
                 ["resolve", "--config", str(literals), "-e", "prod", "--reveal", "-f", "json"],
                 ["resolve", "-e", "prod", "-f", "json", "--reveal", "-c", str(literals), "-v"],
                 ["-v", "resolve", "-e", "prod", "-f", "json", "--reveal", "-c", str(literals)]):
        result = vaultrelay(*args, env=env)
        assert result.code == 0, (args, result)
        assert json.loads(result.out) == {"HOME_DIR": "/home/me", "LOG_LEVEL": "info"}
    before = vaultrelay("--output", "json", "validate", "--config", str(literals), env=env)
    after = vaultrelay("validate", "-o", "json", "-c", str(literals), env=env)
    assert before.code == after.code == 0 and json.loads(before.out) == json.loads(after.out)


def test_a_global_flag_given_twice_with_different_values_is_an_error(literals: Path) -> None:
    result = vaultrelay("--config", str(literals), "validate", "--config", "other.yaml")
    assert result.code == 2 and "--config given twice" in result.err and result.out == ""
    same = vaultrelay("--config", str(literals), "validate", "--config", str(literals))
    assert same.code == 0


def test_config_from_standard_input(literals: Path) -> None:
    result = vaultrelay("validate", "--config", "-", input=literals.read_text())
    assert result.code == 0 and result.out == "<stdin>: ok (1 store, 1 env, 2 variables)\n"
    bad = vaultrelay("validate", "--config", "-", input="secretStores:\n  azure: {type: azure.managed_identity, cashe: {}}\n")
    assert bad.code == 2 and "<stdin>:2: secretStores.azure.cashe: unknown key 'cashe'; did you mean 'cache'?" in bad.err


def test_config_from_a_fifo_is_read_when_written_and_refused_when_nobody_writes(tmp_path: Path, literals: Path) -> None:
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)

    def writer() -> None:
        time.sleep(0.5)
        with open(fifo, "w") as handle:
            handle.write(literals.read_text())

    thread = threading.Thread(target=writer)
    thread.start()
    result = vaultrelay("validate", "--config", str(fifo))
    thread.join()
    assert result.code == 0 and "ok (1 store, 1 env, 2 variables)" in result.out
    began = time.monotonic()
    with pytest.raises(ConfigError) as info:
        read_config_bytes(fifo, wait_s=0.3)  # the CLI waits STREAM_WAIT_S (10 s) the same way
    assert time.monotonic() - began < 5
    assert "no data from the FIFO within 0.3 s (nothing is writing to it)" in str(info.value.problems[0])


# ---- 2. --output json, --version ---------------------------------------------------------------
def test_the_shipped_output_schemas_are_the_generated_ones() -> None:
    for name in DOCUMENTS:
        assert (SCHEMA_DIR / f"{name}.schema.json").read_text() == render_schema(name), "run python -m core.cli_json"


def test_version() -> None:
    result = vaultrelay("--version")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert result.code == 0 and result.out == f"vaultrelay {pyproject['project']['version']}\n"


def test_validate_json_ok_and_with_problems(tmp_path: Path, literals: Path) -> None:
    ok = vaultrelay("validate", "-o", "json", "-c", str(literals))
    document = assert_document("validate", ok.out)
    assert ok.code == 0 and ok.err == ""
    assert (document["ok"], document["stores"], document["envs"], document["variables"], document["problems"]) == (True, 1, 1, 2, [])
    bad = write(tmp_path / "bad.yaml", """
        secretStores:
          azure: {type: azure.managed_identity}
        envs:
          e:
            1BAD: x
            S: {from: {store: azure, resource_type: storage, account: acct1, operation: generate_sas, expiry: 0, permissions: r}}
    """)
    failed = vaultrelay("validate", "-c", str(bad), "-o", "json")
    document = assert_document("validate", failed.out)
    assert failed.code == 2 and document["ok"] is False and failed.err == ""
    assert [(p["line"], p["path"]) for p in document["problems"]] == [(5, "envs.e.1BAD"), (6, "envs.e.S.from.expiry")]


def test_plan_and_permissions_json_match_their_schemas(sandbox_env: dict[str, str]) -> None:
    plan = vaultrelay("plan", "-e", "production", "-o", "json", env=sandbox_env)
    document = assert_document("plan", plan.out)
    assert plan.code == 0 and document["references"] == 10 and document["literals"] == 1
    assert {"name": "LOG_LEVEL", "kind": "literal", "description": "literal value from the config", "store": None, "identity": None,
            "depends_on": None} in document["variables"]
    composed = next(v for v in document["variables"] if v["name"] == "DATABASE_URL")
    assert document["composed"] == 1 and composed["kind"] == "template" and composed["depends_on"] == ["DATABASE_PASSWORD"]
    permissions = vaultrelay("plan", "--permissions", "-o", "json", env=sandbox_env)
    document = assert_document("plan-permissions", permissions.out)
    assert permissions.code == 0 and any("Key Vault Secrets User" in g["roles"] for g in document["grants"])


def test_sync_rotate_status_json_match_their_schemas(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    tag = unique("cli")
    config = sync_config(tmp_path / "sync.yaml", tag)
    dry = vaultrelay("sync", "--dry-run", "-o", "json", "-c", str(config), env=sandbox_env)
    document = assert_document("sync", dry.out)
    assert dry.code == 0 and document["dry_run"] is True and document["targets"][0]["outcome"] == "would_push"
    synced = vaultrelay("-o", "json", "sync", "-c", str(config), env=sandbox_env)
    document = assert_document("sync", synced.out)
    assert synced.code == 0 and document["targets"][0]["outcome"] == "pushed" and document["target_writes"] == 2
    rotated = vaultrelay("rotate", "-c", str(config), "--output", "json", env=sandbox_env)
    document = assert_document("rotate", rotated.out)
    assert rotated.code == 0 and document["rotations"][0]["name"] == "storage:sandboxstore"
    status = vaultrelay("status", "-c", str(config), "-o", "json", env=sandbox_env)
    document = assert_document("status", status.out)
    assert status.code == 0
    (target,) = document["targets"]
    assert target["outcome"] == "ok" and target["variables"] == 2 and target["last_push"].endswith("Z") and "T" in target["last_push"]
    assert any(r["kind"] == "storage" and r["active"] in ("key1", "key2") for r in document["rotations"])


def test_json_reports_a_missing_env_as_an_error_document(sandbox_env: dict[str, str]) -> None:
    result = vaultrelay("plan", "-e", "staging", "-o", "json", env=sandbox_env)
    document = assert_document("plan", result.out)
    assert result.code == 2 and document["ok"] is False and "no env 'staging'" in document["error"]


# ---- 4. masked output is never handed silently to a pipe --------------------------------------
def test_masked_values_are_refused_on_a_pipe_unless_asked_for(literals: Path) -> None:
    refused = vaultrelay("resolve", "-e", "prod", "-c", str(literals))
    assert refused.code == 2 and refused.out == ""
    assert "values are masked and the output is not a terminal: pass --reveal" in refused.err
    masked = vaultrelay("resolve", "-e", "prod", "-c", str(literals), "--masked")
    assert masked.code == 0 and masked.out == ("# docker --env-file keeps quotes: it would not read HOME_DIR, LOG_LEVEL exactly\n"
                                               "HOME_DIR='********'\nLOG_LEVEL='********'\n")
    assert "2 values written masked as ******** (--masked)" in masked.err
    revealed = vaultrelay("resolve", "-e", "prod", "-c", str(literals), "--reveal", "--format", "shell")
    assert revealed.code == 0 and "export LOG_LEVEL=info\n" in revealed.out and revealed.err == ""
    both = vaultrelay("resolve", "-e", "prod", "-c", str(literals), "--reveal", "--masked")
    assert both.code == 2 and "not allowed with argument" in both.err


# ---- 5. YAML literals as written ------------------------------------------------------------
def test_yaml_1_1_literals_reach_the_consumer_as_written(tmp_path: Path) -> None:
    config = write(tmp_path / "literals.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e: {NO: no, ON: on, HEX: 0x1F, OCTAL: 017, VERSION: 1.10, TIME: 1:30, DATE: 2024-01-01}
    """)
    result = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", "-o", "json")
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"NO": "no", "ON": "on", "HEX": "0x1F", "OCTAL": "017", "VERSION": "1.10", "TIME": "1:30",
                                      "DATE": "2024-01-01"}


# ---- 6. no tracebacks, exit 2 for config and usage problems ------------------------------------
def test_a_huge_number_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "huge.yaml"
    config.write_text("secretStores:\n  azure:\n    type: azure.managed_identity\n    performance:\n      max_concurrent: " + "9" * 100_001 + "\n")
    result = vaultrelay("validate", "-c", str(config))
    assert result.code == 2 and "Traceback" not in result.text
    assert result.err == (f"{config}:5: secretStores.azure.performance.max_concurrent: expected a whole number, "
                          "got a number of 100,001 digits\n")


def test_an_unwritable_bicep_params_path_is_a_clear_error(tmp_path: Path, literals: Path) -> None:
    for path in (tmp_path / "missing-dir" / "params.json", tmp_path):
        result = vaultrelay("plan", "--permissions", "--bicep-params", str(path), "-c", str(literals))
        assert result.code == 2 and "Traceback" not in result.text
        assert result.err.startswith(f"error: cannot write {path}: ")
    json_result = vaultrelay("plan", "--permissions", "--bicep-params", str(tmp_path), "-c", str(literals), "-o", "json")
    assert json_result.code == 2 and json.loads(json_result.out)["error"].startswith(f"cannot write {tmp_path}")


# ---- 7, 8. validation messages; the reference page's examples ------------------------------------
def test_every_problem_at_its_own_line_through_the_cli(tmp_path: Path) -> None:
    config = write(tmp_path / "many.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            SAS:
              from:
                store: azure
                resource_type: storage
                account: acct1
                operation: generate_sas
                expiry: 30d
            LONG:
              from: {store: azure, resource_type: storage, account: acct1, operation: generate_sas, permissions: r, expiry: 30d}
            1BAD: x
            2BAD: y
    """)
    result = vaultrelay("validate", "-c", str(config))
    assert result.code == 2
    assert result.err.splitlines() == [
        f"{config}:5: envs.e.SAS.from: a SAS reference needs permissions",
        f"{config}:13: envs.e.1BAD: '1BAD' is not a valid environment variable name (letters, digits and _, not starting with a digit)",
        f"{config}:14: envs.e.2BAD: '2BAD' is not a valid environment variable name (letters, digits and _, not starting with a digit)",
    ]
    del_bad = config.read_text().replace("    1BAD: x\n", "").replace("    2BAD: y\n", "").replace("        expiry: 30d\n", "        expiry: 30d\n        permissions: r\n", 1)
    config.write_text(del_bad)
    warned = vaultrelay("validate", "-c", str(config))
    assert warned.code == 0
    assert f"{config}:13: envs.e.LONG.from.expiry: warning: expiry 30d is capped to 1w" in warned.err


@pytest.mark.parametrize("fixture", ["02-system-assigned-identity.yaml", "18-multi-environment-setup.yaml", "03-user-assigned-identity.yaml"])
def test_reference_examples_without_version_validate(fixture: str) -> None:
    path = ROOT / "tests" / "core" / "fixtures" / "dsops" / "full" / fixture
    result = vaultrelay("validate", "-c", str(path))
    assert result.code == 0 and result.out.startswith(f"{path}: ok (1 store"), result.err
    assert "missing required key 'version'" not in result.err


# ---- 12. state-less commands --------------------------------------------------------------------
@pytest.mark.parametrize("command", ["sync", "status", "rotate"])
def test_state_less_commands_all_say_what_is_missing(command: str, literals: Path) -> None:
    result = vaultrelay(command, "-c", str(literals))
    assert result.code == 2 and result.out == ""
    assert result.err == (f"{literals}: state: {command} needs a state: section (Table Storage; see docs/config.md#state): "
                          "there is nothing to push to or record without it\n")
    as_json = vaultrelay(command, "-c", str(literals), "-o", "json")
    document = assert_document(command, as_json.out)
    assert as_json.code == 2 and document["problems"][0]["path"] == "state"


# ---- 14. help, -e once, completion --------------------------------------------------------------
@pytest.mark.parametrize("command", ["validate", "plan", "resolve", "exec", "sync", "rotate", "status", "completion"])
def test_every_command_has_a_description_and_examples(command: str) -> None:
    result = vaultrelay(command, "--help")
    assert result.code == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].startswith(f"usage: vaultrelay {command}")
    assert "examples:" in result.out and f"  vaultrelay {command}" in result.out
    if "--env" in result.out:
        env_help = next(line for line in lines if line.strip().startswith("--env"))
        assert len(env_help.split("ENV", 1)[1].strip()) > 10 or "the env" in result.out.split("--env ENV", 1)[1][:200]
    top = vaultrelay("--help")
    assert f"    {command}" in top.out


def test_an_option_given_twice_is_an_error(literals: Path) -> None:
    result = vaultrelay("resolve", "-e", "a", "-e", "b", "--reveal", "-c", str(literals))
    assert result.code == 2 and "--env/-e given twice ('a' and 'b'): give it once" in result.err
    typo = vaultrelay("resolv")
    assert typo.code == 2 and "did you mean 'resolve'?" in typo.err


def complete(line: str, env: dict[str, str], tmp_path: Path) -> list[str]:
    """What `vaultrelay` answers a shell asking to complete `line` (argcomplete's protocol)."""
    answer = tmp_path / f"answer-{unique()}"
    subprocess.run([str(VAULTRELAY)], env={**env, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": "bash", "COMP_LINE": line,
                                           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
                                           "_ARGCOMPLETE_IFS": "\n"}, check=False, timeout=60, capture_output=True)
    return sorted(filter(None, answer.read_text().split("\n")))


def test_completion_of_commands_options_and_env_names(tmp_path: Path, literals: Path) -> None:
    env = offline_env(VAULTRELAY_CONFIG=str(literals))
    assert complete("vaultrelay res", env, tmp_path) == ["resolve "]
    assert "--reveal" in [c.strip() for c in complete("vaultrelay resolve --re", env, tmp_path)]
    assert [c.strip() for c in complete("vaultrelay resolve -e ", env, tmp_path)] == ["prod"]


def test_bash_completion_script_completes_in_bash(tmp_path: Path, literals: Path) -> None:
    script = vaultrelay("completion", "bash")
    assert script.code == 0 and "complete" in script.out
    (tmp_path / "completion.bash").write_text(script.out)
    probe = (f"source {tmp_path / 'completion.bash'}; COMP_WORDS=(vaultrelay sta); COMP_CWORD=1; COMP_LINE='vaultrelay sta'; "
             "COMP_POINT=${#COMP_LINE}; _python_argcomplete vaultrelay; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = offline_env(VAULTRELAY_CONFIG=str(literals), PATH=f"{VAULTRELAY.parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-c", probe], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.split() == ["status"], result


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_completion_scripts(shell: str, tmp_path: Path) -> None:
    script = vaultrelay("completion", shell)
    assert script.code == 0 and "vaultrelay" in script.out and "_ARGCOMPLETE" in script.out
    binary = shutil.which(shell)
    if binary is None:
        pytest.skip(f"{shell} is not installed here: the script was generated but not parsed")
    path = tmp_path / f"completion.{shell}"
    path.write_text(script.out)
    checked = subprocess.run([binary, "-n", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    if shell == "fish":  # fish completes a command line on request: check what it offers
        env = offline_env(VAULTRELAY_CONFIG=str(write(tmp_path / "c.yaml", LITERALS)), PATH=f"{VAULTRELAY.parent}:{os.environ['PATH']}")
        asked = subprocess.run([binary, "-c", f"source {path}; complete -C 'vaultrelay sta'; complete -C 'vaultrelay resolve -e '"],
                               env=env, capture_output=True, text=True, timeout=60, check=False)
        assert asked.stdout.splitlines() == ["status\tper env and target: last push, drift, last error; rotations (needs a state: section)",
                                             "prod"], asked


# ---- 16. small things ----------------------------------------------------------------------------
def test_nested_defaults_empty_variables_and_plurals(tmp_path: Path, literals: Path) -> None:
    result = vaultrelay("resolve", "-c", str(literals), "-e", "prod", "--reveal", "-o", "json", env=offline_env(HOME="/h"))
    assert json.loads(result.out)["HOME_DIR"] == "/h"
    config = write(tmp_path / "empty.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs: {e: {A: "${EMPTY_ONE}", B: "${UNSET_ONE}"}}
    """)
    failed = vaultrelay("validate", "-c", str(config), env=offline_env(EMPTY_ONE=""))
    assert failed.code == 2
    assert "environment variable ${EMPTY_ONE} is empty (write ${EMPTY_ONE:-default} for a default)" in failed.err
    assert "environment variable ${UNSET_ONE} is not set" in failed.err
    assert vaultrelay("validate", "-c", str(literals)).out.endswith("ok (1 store, 1 env, 2 variables)\n")
    assert vaultrelay("validate", "-c", str(EXAMPLE), env=offline_env(DATA_IDENTITY_CLIENT_ID="11111111-2222-3333-4444-555555555555")).out.endswith(
        "ok (2 stores, 1 env, 12 variables)\n")


def test_the_package_metadata_uses_an_spdx_license_without_deprecation_warnings(tmp_path: Path) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    script = ("import sys; from setuptools import build_meta; "
              f"name = build_meta.prepare_metadata_for_build_wheel({str(tmp_path)!r}); "
              f"sys.stdout.write(open({str(tmp_path)!r} + '/' + name + '/METADATA').read())")
    built = subprocess.run([str(Path(VAULTRELAY).parent / "python"), "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    assert "License-Expression: MIT" in built.stdout
    assert "project.license` as a TOML table is deprecated" not in built.stderr
    for line in (ROOT / "Makefile").read_text().splitlines():
        if "setuptools==" in line:
            version = line.split("setuptools==")[1].split()[0]
            assert int(version.split(".")[0]) >= 77  # SPDX license expressions need setuptools 77
