"""Signals, logging, identity errors, blob configs and what a terminal shows (issue 18 items 3, 9,
10, 11, 13; issue 14 item 11's NUL), through the installed console script."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from sandbox.client import SandboxClient
from tests.cli.conftest import EXAMPLE, VAULTRELAY, offline_env, sync_config, unique, vaultrelay, write
from tests.configs import config_yaml, mi_store, secret_ref


def run_in_terminal(args: list[str], env: dict[str, str], *, columns: int = 100, send: bytes | None = None, after: bytes = b"",
                    timeout: float = 120) -> tuple[int, bytes]:
    """Run the console script on a pseudo-terminal (stdin, stdout and stderr), as in a terminal
    window; `send` is typed once `after` has been printed.  Returns (exit status, what the
    terminal received)."""
    env = {**env, "COLUMNS": str(columns), "LINES": "40", "TERM": env.get("TERM", "xterm-256color")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once (nothing else runs after a fork)
        os.execve(str(VAULTRELAY), [str(VAULTRELAY), *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    received = b""
    deadline = time.monotonic() + timeout
    sent = send is None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            received += chunk
        if not sent and after in received:
            time.sleep(0.2)
            os.write(fd, send or b"")
            sent = True
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), received


SIGNAL_CHILD = """
import os, signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def handler(signo, frame):
    log.write(signal.Signals(signo).name + "\\n")
    if signo == signal.SIGTERM:
        sys.exit(42)
for signo in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(signo, handler)
print("ready", os.environ["GREETING"], flush=True)
open(sys.argv[2], "w").close()
for _ in range(600):
    time.sleep(0.1)
"""


@pytest.fixture()
def literal_config(tmp_path: Path) -> Path:
    return write(tmp_path / "literals.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            GREETING: hello
    """)


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


# ---- 3. signals -------------------------------------------------------------------------------
def test_exec_forwards_sigint_sighup_sigterm_and_returns_the_childs_status(tmp_path: Path, literal_config: Path) -> None:
    (tmp_path / "child.py").write_text(SIGNAL_CHILD)
    log, ready = tmp_path / "signals.log", tmp_path / "ready"
    process = subprocess.Popen([str(VAULTRELAY), "exec", "-c", str(literal_config), "-e", "e", "--", sys.executable,
                                str(tmp_path / "child.py"), str(log), str(ready)], env=offline_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for(ready)
    for signo in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        process.send_signal(signo)
        time.sleep(0.3)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 42, err
    assert log.read_text().split() == ["SIGINT", "SIGHUP", "SIGTERM"]
    assert out == "ready hello\n" and "Traceback" not in err


def test_exec_reports_death_by_signal_as_128_plus_n(tmp_path: Path, literal_config: Path) -> None:
    killed = vaultrelay("exec", "-c", str(literal_config), "-e", "e", "--", "sh", "-c", "kill -KILL $$")
    assert killed.code == 128 + signal.SIGKILL
    ready = tmp_path / "ready"
    process = subprocess.Popen([str(VAULTRELAY), "exec", "-c", str(literal_config), "-e", "e", "--", "sh", "-c", f"touch {ready}; exec sleep 60"],
                               env=offline_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(ready)
    process.send_signal(signal.SIGTERM)  # forwarded: sh dies of it, vaultrelay says so the shell way
    process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM


def test_ctrl_c_on_the_terminal_reaches_the_child_once(tmp_path: Path, literal_config: Path) -> None:
    """The terminal sends SIGINT to the whole foreground group, child included: vaultrelay must
    not send it a second one."""
    child = tmp_path / "child.py"
    child.write_text("""
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def handler(signo, frame):
    log.write("SIGINT\\n")
signal.signal(signal.SIGINT, handler)
print("ready", flush=True)
time.sleep(1.5)
time.sleep(1.0)
sys.exit(3)
""")
    log = tmp_path / "signals.log"
    code, _ = run_in_terminal(["exec", "-c", str(literal_config), "-e", "e", "--", sys.executable, str(child), str(log)],
                              offline_env(), send=b"\x03", after=b"ready")
    assert code == 3
    assert log.read_text().split() == ["SIGINT"]


def test_ctrl_c_during_a_resolve_exits_130_at_once_without_a_traceback(clean_faults: SandboxClient, sandbox_env: dict[str, str]) -> None:
    clean_faults.set_faults(rules=[{"service": "keyvault", "latency_ms": 4000}])
    process = subprocess.Popen([str(VAULTRELAY), "resolve", "-e", "production", "--reveal"], env=sandbox_env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and out == ""
    assert err.endswith("interrupted\n") and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert time.monotonic() - interrupted < 3.0  # not held by the requests still in flight


def test_a_nul_in_a_value_is_a_clean_exec_error(tmp_path: Path) -> None:
    config = write(tmp_path / "nul.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs:
          e:
            FINE: ok
            BROKEN: "before\\0after"
    """)
    marker = tmp_path / "ran"
    result = vaultrelay("exec", "-c", str(config), "-e", "e", "--", "touch", str(marker))
    assert result.code == 1 and "Traceback" not in result.text
    assert result.err == ("error: BROKEN holds a NUL character, which an environment variable cannot carry; not running touch "
                          "(resolve --format json shows such values escaped)\n")
    assert not marker.exists()
    shown = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", "-f", "json")
    assert json.loads(shown.out)["BROKEN"] == "before\0after"


# ---- 9. logging -------------------------------------------------------------------------------
def test_default_output_has_no_sdk_log_lines_and_v_shows_vaultrelay_steps(sandbox_env: dict[str, str]) -> None:
    quiet = vaultrelay("resolve", "-e", "production", "--reveal", "-f", "json", env=sandbox_env)
    assert quiet.code == 0 and quiet.err == ""
    verbose = vaultrelay("resolve", "-e", "production", "--reveal", "-f", "json", "-v", env=sandbox_env)
    lines = verbose.err.splitlines()
    assert verbose.code == 0 and any(line.startswith("info: vaultrelay.") for line in lines), lines
    assert not any(": azure." in line or line.startswith(("info: azure", "debug: azure")) for line in lines), lines
    assert len(lines) < 40


def test_vv_adds_sdk_traffic_redacted(sandbox_env: dict[str, str]) -> None:
    revealed = json.loads(vaultrelay("resolve", "-e", "production", "--reveal", "-f", "json", env=sandbox_env).out)
    traced = vaultrelay("resolve", "-e", "production", "--reveal", "-f", "json", "-vv", env=sandbox_env)
    assert traced.code == 0
    assert "azure.core.pipeline.policies.http_logging_policy: Request URL:" in traced.err
    assert re.search(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.", traced.err) is None  # no token
    assert "sig=" not in traced.err.replace("sig=REDACTED", "").replace("sig=***", "")
    leaked = [name for name, value in revealed.items() if name != "LOG_LEVEL" and len(value) > 6 and value in traced.err]
    assert leaked == []


def test_the_debug_block_is_honoured_without_v(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    debug = {"enabled": True, "log_tokens": False, "log_requests": True, "trace_identity": True}
    config = write(tmp_path / "debug.yaml", config_yaml(stores={"azure": mi_store(debug=debug)},
                                                        envs={"e": {"API_KEY": secret_ref("api-key")}}))
    result = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", "-f", "json", env=sandbox_env)
    assert result.code == 0
    assert re.search(r"^info: vaultrelay\.requests: GET https://kv-source\.\S+/secrets/api-key/ -> 200", result.err, re.M), result.err
    assert re.search(r"^info: vaultrelay\.identity: token for https://vault\.\S+ from system-assigned managed identity", result.err, re.M)
    assert re.search(r"^debug: vaultrelay\.", result.err, re.M)
    assert "azure.core" not in result.err and "eyJ" not in result.err


# ---- 10. identity errors ----------------------------------------------------------------------
def test_an_unknown_identity_is_one_line_naming_it_the_status_and_what_to_check(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    nobody = {"type": "user_assigned", "client_id": "99999999-2222-3333-4444-555555555555"}
    config = write(tmp_path / "identity.yaml", config_yaml(stores={"nobody": mi_store(nobody)}, envs={"e": {
        "A": secret_ref("api-key", store="nobody"), "B": secret_ref("database-password", store="nobody")}}))
    result = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", env=sandbox_env)
    assert result.code == 1
    assert result.err.splitlines() == [
        "error: identity user-assigned managed identity (client_id=99999999-2222-3333-4444-555555555555) of store 'nobody': "
        "the managed identity endpoint answered HTTP 400 (Unable to load the proper Managed Identity); check that this identity "
        "is assigned to the host (the store's client_id, resource_id or object_id) and that the host has managed identity enabled; "
        "2 variables not resolved: A, B",
        "2 of 2 variables failed; nothing printed (use --allow-partial)",
    ]


def test_an_identity_endpoint_answering_500_is_reported_as_such(tmp_path: Path, clean_faults: SandboxClient,
                                                                 sandbox_env: dict[str, str]) -> None:
    config = write(tmp_path / "identity.yaml", config_yaml(envs={"e": {"A": secret_ref("api-key")}}))
    clean_faults.set_faults(rules=[{"service": "identity", "error_rate": 1.0, "error_status": 500}])
    result = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", env=sandbox_env)
    assert result.code == 1
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.err
    assert errors[0].startswith("error: identity system-assigned managed identity of store 'azure': "
                                "the managed identity endpoint answered HTTP 500 (")
    assert "retry later" in errors[0] and "configuration not found" not in result.err and "get_token" not in result.err


# ---- 11. config from a blob URL -----------------------------------------------------------------
def test_the_config_can_be_a_blob_url_read_with_the_managed_identity(seeded: SandboxClient, sandbox_env: dict[str, str]) -> None:
    service = BlobServiceClient(seeded.storage_endpoint("sandboxstore"), credential=seeded.admin_credential())
    container = service.get_container_client(unique("cliconfig"))
    container.create_container()
    try:
        container.upload_blob("vaultrelay.yaml", EXAMPLE.read_bytes())
        url = f"{seeded.storage_endpoint('sandboxstore')}/{container.container_name}/vaultrelay.yaml"
        by_flag = vaultrelay("validate", "--config", url, env=sandbox_env)
        assert by_flag.code == 0 and by_flag.out == f"{url}: ok (2 stores, 1 env, 12 variables)\n", by_flag.err
        by_setting = vaultrelay("plan", "-e", "production", env={**sandbox_env, "VAULTRELAY_CONFIG": url})
        assert by_setting.code == 0 and "10 references (10 unique), 1 literal" in by_setting.out
        missing = vaultrelay("validate", "--config", url.replace("vaultrelay.yaml", "nope.yaml"), env=sandbox_env)
        assert missing.code == 2 and missing.err.endswith("the blob does not exist\n") and "no such file" not in missing.err
        with_sas = vaultrelay("validate", "--config", url + "?sig=abc", env=sandbox_env)
        assert with_sas.code == 2 and "must not carry a query" in with_sas.err
    finally:
        container.delete_container()
        service.close()


# ---- 13. terminal output ----------------------------------------------------------------------
def test_revealed_tables_are_not_truncated_and_control_characters_are_escaped(tmp_path: Path) -> None:
    long_value = "v" + "0123456789abcdef" * 6
    config = write(tmp_path / "terminal.yaml", f"""
        secretStores: {{azure: {{type: azure.managed_identity}}}}
        envs:
          e:
            LONG: {long_value}
            TITLE: "\\e]0;pwned\\a[bold]x[/bold]"
    """)
    code, screen = run_in_terminal(["resolve", "-c", str(config), "-e", "e", "--reveal"], offline_env(NO_COLOR="1"), columns=60)
    text = screen.decode()
    assert code == 0 and "…" not in text
    cells = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") >= 3 and "LONG" in text)
    assert long_value in cells
    assert "\\x1b]0;pwned\\x07[bold]x[/bold]" in cells
    assert "\x1b" not in text and "\x07" not in text  # NO_COLOR: not one escape sequence


def test_no_color_is_fully_plain_and_colour_is_there_without_it(tmp_path: Path) -> None:
    config = write(tmp_path / "plain.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs: {e: {A: a}}
    """)
    _, styled = run_in_terminal(["resolve", "-c", str(config), "-e", "e"], offline_env())
    _, plain = run_in_terminal(["resolve", "-c", str(config), "-e", "e"], offline_env(NO_COLOR="1"))
    assert b"\x1b[" in styled  # bold headers, italic title on a terminal
    assert b"\x1b" not in plain and b"A" in plain and b"********" in plain


def test_dotenv_on_a_terminal_escapes_control_characters_and_a_pipe_gets_the_bytes(tmp_path: Path) -> None:
    config = write(tmp_path / "ctl.yaml", """
        secretStores: {azure: {type: azure.managed_identity}}
        envs: {e: {T: "a\\e[2Jb"}}
    """)
    _, screen = run_in_terminal(["resolve", "-c", str(config), "-e", "e", "--reveal", "-f", "shell"], offline_env())
    assert b"\x1b[2J" not in screen and b"a\\x1b[2Jb" in screen
    assert b"control characters in values are shown escaped" in screen
    piped = vaultrelay("resolve", "-c", str(config), "-e", "e", "--reveal", "-f", "json")
    assert json.loads(piped.out) == {"T": "a\x1b[2Jb"}


def test_status_uses_one_time_format_and_sync_shows_progress_only_on_a_terminal(tmp_path: Path, sandbox_env: dict[str, str]) -> None:
    tag = unique("clip")
    config = sync_config(tmp_path / "sync.yaml", tag)
    code, screen = run_in_terminal(["sync", "-c", str(config)], sandbox_env, columns=160)
    assert code == 0 and b"1/1" in screen  # rich's progress display (M of N) was drawn
    piped = vaultrelay("sync", "-c", str(config), env=sandbox_env)
    assert piped.code == 0 and piped.err == ""  # no progress when piped
    assert vaultrelay("rotate", "-c", str(config), env=sandbox_env).code == 0
    status = vaultrelay("status", "-c", str(config), env=sandbox_env)
    assert status.code == 0
    times = re.findall(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?", status.out)
    assert len(times) >= 3 and all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}Z", t) for t in times), times
