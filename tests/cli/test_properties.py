"""Generated configs and command lines through the installed console script: never a traceback,
only the documented exit codes (issue 18 item 6)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.cli_json import DOCUMENTS
from sandbox.client import SandboxProcess
from tests.cli.conftest import ROOT, vaultrelay

FIXTURES = sorted((ROOT / "tests" / "core" / "fixtures" / "dsops").glob("*/*.yaml"))
BASE = """secretStores:
  azure: {type: azure.managed_identity}
  data:
    type: azure.managed_identity
    identity: {type: user_assigned, client_id: "${DATA_ID:-11111111-2222-3333-4444-555555555555}"}
envs:
  prod:
    LOG_LEVEL: info
    KEY: {from: {store: azure, vault: kv-source, secret: api-key}}
    DATA: {from: {store: data, vault: kv-shared, secret: data-api-key}}
    SAS: {from: {store: azure, resource_type: storage, account: sandboxstore, operation: generate_sas, permissions: rl, expiry: 1h}}
"""
# Pieces a mutation may insert: YAML syntax, YAML 1.1 literals, hostile values, near-miss keys.
TOKENS = [
    ": ", "- ", "{", "}", "[", "]", "&a ", "*a", "<<: *a", "!!python/object:os.system ", "!!binary ", "? ", "|\n", ">\n", "\t",
    "version: 2", "version: 1", "no", "on", "0x1F", "017", "1:30", "2024-01-01", "9" * 5000, "1e400", ".nan", "~", "''", '"\\0"',
    "${UNSET}", "${A:-${B:-c}}", "$$", "${", "expiry: 0", "expiry: 30d", "permissions: z", "stores:", "envs:", "from:", "store: nope",
    "vault: Bad_Vault", "secret: x", "state: {store: azure}", "targets: {}", "cashe: {}", "X-Y: 1", "1BAD: v", "\x1b[31m", "é", "\u202e",
]
COMMANDS = [["validate"], ["plan", "-e", "prod"], ["plan", "--permissions"], ["resolve", "-e", "prod", "--reveal"],
            ["resolve", "-e", "prod", "--masked", "-f", "json"], ["status"], ["sync", "--dry-run"], ["rotate"],
            ["exec", "-e", "prod", "--", "true"], ["completion", "bash"]]
NOISE = ["-v", "-vv", "-o", "json", "--output", "text", "-e", "prod", "-e", "nope", "--reveal", "--masked", "-f", "shell", "--format",
         "xml", "--allow-partial", "--bicep-params", "/nonexistent/dir/params.json", "--", "--config", "-", "--help", "--bogus", "-x",
         "plan", "exec", "prod", "é", ""]


@st.composite
def config_text(draw: st.DrawFn) -> str:
    source = draw(st.sampled_from(["base", "fixture", "random"]))
    if source == "random":
        return str(draw(st.text(max_size=300)))
    text = BASE if source == "base" else draw(st.sampled_from(FIXTURES)).read_text()
    lines = text.splitlines()
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["insert", "delete", "replace", "indent"]))
        at = draw(st.integers(0, max(len(lines) - 1, 0)))
        token = draw(st.sampled_from(TOKENS))
        if action == "insert":
            lines.insert(at, "  " * draw(st.integers(0, 3)) + token)
        elif action == "delete" and lines:
            del lines[at]
        elif action == "replace" and lines:
            line = lines[at]
            cut = draw(st.integers(0, len(line)))
            lines[at] = line[:cut] + token + line[cut:]
        elif lines:
            lines[at] = " " + lines[at]
    return "\n".join(lines) + "\n"


@st.composite
def command_line(draw: st.DrawFn) -> list[str]:
    argv = list(draw(st.sampled_from(COMMANDS)))
    for _ in range(draw(st.integers(0, 3))):
        argv.insert(draw(st.integers(0, len(argv))), draw(st.sampled_from(NOISE)))
    return argv


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=config_text(), argv=command_line(), via_stdin=st.booleans())
@example(text=BASE.replace("LOG_LEVEL: info", "LOG_LEVEL: " + "9" * 5000), argv=["validate"], via_stdin=False)
@example(text=BASE, argv=["plan", "--permissions", "--bicep-params", "/nonexistent/dir/params.json"], via_stdin=False)
@example(text=BASE, argv=["resolve", "-e", "prod", "--reveal", "-c", "-"], via_stdin=True)
def test_no_traceback_and_only_documented_exit_codes(text: str, argv: list[str], via_stdin: bool, tmp_path: Path,
                                                      sandbox_process: SandboxProcess) -> None:
    config = tmp_path / "vaultrelay.yaml"
    config.write_text(text, encoding="utf-8")
    env = sandbox_process.subprocess_env()  # everything a run reaches is the local Azure on loopback
    env["VAULTRELAY_CONFIG"] = "-" if via_stdin else str(config)
    env.pop("NO_COLOR", None)
    result = vaultrelay(*argv, env=env, input=text if via_stdin else "", timeout=180)
    assert "Traceback" not in result.text, result
    assert "internal error" not in result.err, result
    assert result.code in (0, 1, 2), result
    command = next((a for a in argv if a in ("validate", "plan", "sync", "rotate", "status")), None)
    asked_json = any(a == "json" and i > 0 and argv[i - 1] in ("-o", "--output") for i, a in enumerate(argv))
    if asked_json and command and result.out.startswith("{"):
        name = "plan-permissions" if command == "plan" and "--permissions" in argv else command
        document = json.loads(result.out)
        assert document["command"] == DOCUMENTS[name].model_fields["command"].default and document["ok"] == (result.code == 0)
