"""Every dotenv vaultrelay writes (core.render.render_dotenv), read back by the readers it
is written for, with values an attacker who can set one secret would choose.

Readers: dash (`/bin/sh`) and bash sourcing the file (run for real), python-dotenv (the pinned
dev dependency, `dotenv_values` with its default interpolation), and Docker's `--env-file` rules
(no Docker engine here: `docker_env_file` below follows docker/cli v28 `pkg/kvfile/kvfile.go`,
`parseKeyValueFile`, and the `docker container run --env` reference: "Lines beginning with # are
treated as line comments and are ignored, whereas a # appearing anywhere else in a line is treated
as part of the variable value"; quotes are part of the value).

The property: either the file is written and every reader gets exactly the values (Docker: the
bare ones, with every quoted one named in the file's Docker comment, or it refuses the whole file
when a value spans lines), runs nothing and sees no other variable; or the render is refused
with an error that names each refused variable and why (never a value), and only for values a
reader could not get back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest
from dotenv import dotenv_values
from dotenv.variables import Variable, parse_variables
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.render import DOCKER_GUARD_PREFIX, UnrepresentableValue, render, render_dotenv

SHELLS = [shell for shell in ("sh", "bash") if shutil.which(shell)]
_WORK = Path(tempfile.mkdtemp(prefix="vaultrelay-dotenv-"))
MARKER = _WORK / "ran"  # any payload that runs creates it
OTHER = "VAULTRELAY_TEST_OTHER"  # a variable in the readers' environment a value might pull in

REASONS = {
    "it contains a NUL character, which no environment variable can hold",
    "it is not valid Unicode text",
    "it contains a carriage return, which python-dotenv reads back as a line feed",
    "it contains ${...}, which python-dotenv expands whatever the quoting",
    "it ends with a backslash, which python-dotenv takes as escaping the closing quote",
    "it has ' or \\\\ (which single quotes cannot carry for python-dotenv) and $ or a backtick "
    "(which double quotes cannot carry for a shell)",
}

# ---- Docker's env-file rules ----------------------------------------------------------------------
# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space property (not \x1c-\x1f,
# which Python's str.isspace() also counts).
_GO_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}
_MAX_SCAN_TOKEN = 64 * 1024  # bufio.MaxScanTokenSize


class DockerRefused(Exception):
    pass


def docker_env_file(data: bytes, lookup: Mapping[str, str]) -> list[str]:
    """`KEY=VALUE` entries as `docker run --env-file` builds them from `data` (docker/cli v28)."""
    tokens = data.split(b"\n")
    if tokens and tokens[-1] == b"":
        tokens.pop()  # bufio.ScanLines: no empty final token
    entries: list[str] = []
    for number, raw in enumerate(tokens, 1):
        raw = raw[:-1] if raw.endswith(b"\r") else raw  # ScanLines drops a trailing \r
        if len(raw) >= _MAX_SCAN_TOKEN:
            raise DockerRefused("bufio.Scanner: token too long")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DockerRefused(f"invalid utf8 bytes at line {number}") from None
        if number == 1:
            text = text.removeprefix("\ufeff")
        line = text.lstrip("".join(_GO_SPACE))
        if not line or line[0] == "#":
            continue
        key, equals, _ = line.partition("=")
        if not key:
            raise DockerRefused(f"no variable name on line '{line}'")
        if " " in key or "\t" in key:
            raise DockerRefused(f"variable '{key}' contains whitespaces")
        if equals:
            entries.append(line)
        elif line in lookup:
            entries.append(f"{key}={lookup[line]}")
    return entries


def test_docker_rules_as_documented() -> None:
    text = "# comment\n  \n\ufeffX=1\nA=it's # kept\nB='quoted'\n\tC= spaced \r\nD\nE\n"
    assert docker_env_file(text.encode(), {"D": "from-host"}) == [
        "\ufeffX=1", "A=it's # kept", "B='quoted'", "C= spaced ", "D=from-host"]
    with pytest.raises(DockerRefused, match="contains whitespaces"):
        docker_env_file(b"export A\nB=1\n", {})
    with pytest.raises(DockerRefused, match="no variable name"):
        docker_env_file(b"=x\n", {})


# ---- the readers --------------------------------------------------------------------------------
def source_printf(shell: str, path: Path, names: list[str]) -> tuple[list[str], str]:
    """`. file; printf %s "$NAME"` for each name, in `shell`."""
    script = '. "$1"; shift; for name do eval "value=\\${$name}"; printf "%s\\0" "$value"; done'
    done = subprocess.run([shell, "-c", script, shell, str(path), *names], capture_output=True, timeout=20,
                          env={"PATH": os.environ["PATH"], OTHER: "leaked"}, cwd=_WORK)
    assert done.returncode == 0, done.stderr
    return done.stdout.decode().split("\0")[:-1], done.stderr.decode()


def source_exported(shell: str, path: Path) -> dict[str, str]:
    """Every variable a child process sees after `set -a; . file` in `shell` (a clean environment)."""
    done = subprocess.run([shell, "-c", 'set -a; . "$1"; env -0', shell, str(path)], capture_output=True, timeout=20,
                          env={"PATH": os.environ["PATH"], OTHER: "leaked"}, cwd=_WORK)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return dict(entry.split("=", 1) for entry in done.stdout.decode().split("\0")[:-1])


@pytest.fixture(scope="module")
def shell_baseline() -> dict[str, dict[str, str]]:
    empty = _WORK / "empty.env"
    empty.write_text("")
    return {shell: source_exported(shell, empty) for shell in SHELLS}


# ---- what an attacker would put in a secret -------------------------------------------------------
_PAYLOADS = [
    f"$(touch {MARKER})", f"`touch {MARKER}`", f"';touch {MARKER};'", f'";touch {MARKER};"', f"\ntouch {MARKER}\n",
    f"${{{OTHER}}}", f"${{{OTHER}:-x}}", f"${{{OTHER}", f"${OTHER}", "$((6*7))", "\nEVIL=injected\n", "\nexport EVIL\n",
    "\n#", " #", "#", "\\", "\\\\", "\\'", '\\"', "\\n", "\\$", "'", '"', "$", "`", "{", "}", "~", "*", "!", "&", ";",
    "=", "\t", " ", "\n", "\r", "\x00", "\x0b", "\x1c", "\u2028", "\x85", "é", "\ufeff", "-----BEGIN KEY-----\nMIIB\n",
]
_fragment = st.one_of(st.sampled_from(_PAYLOADS), st.text(max_size=6),
                      st.text(alphabet="ab01=+/-_.:@%,'\"\\$`#{} \n", max_size=8))
_value = st.lists(_fragment, max_size=6).map("".join)
_name = st.from_regex(r"V[A-Z0-9_]{0,7}", fullmatch=True)  # not a variable the shells own (PATH, IFS, _)
_values = st.dictionaries(_name, _value, min_size=1, max_size=4)


def unreadable(value: str) -> bool:
    """Whether no quoting reads `value` back the same in POSIX shells and python-dotenv (an oracle
    written from the readers' rules, with python-dotenv's own variable parser)."""
    expands = any(isinstance(atom, Variable) for atom in parse_variables(value))
    return ("\x00" in value or "\r" in value or expands or value.endswith("\\")
            or (("'" in value or "\\\\" in value) and ("$" in value or "`" in value)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(values=_values)
@example(values={"VA": f"$(touch {MARKER})`touch {MARKER}`", "VB": "plain", "VC": "-----BEGIN KEY-----\nMIIB\nEVIL=1\n-----END KEY-----\n"})
@example(values={"VURL": f"https://x/?k=${{{OTHER}}}"})
@example(values={"VP": "it's", "VQ": "a\\b$c", "VR": "x\\"})
def test_every_reader_reads_back_exactly_and_runs_nothing(values: dict[str, str], shell_baseline: dict[str, dict[str, str]]) -> None:
    MARKER.unlink(missing_ok=True)
    try:
        text = render_dotenv(values)
    except UnrepresentableValue as exc:
        assert exc.problems, "refused without naming a variable"
        assert set(exc.problems) <= set(values)
        for name, reason in exc.problems.items():
            assert reason in REASONS
            assert unreadable(values[name]), f"{name} refused but every reader could read it"
        assert str(exc) == "cannot be written as dotenv: " + "; ".join(f"{n}: {r}" for n, r in sorted(exc.problems.items()))
        assert not any(unreadable(values[n]) for n in set(values) - set(exc.problems))
        return
    assert not any(unreadable(v) for v in values.values())
    path = _WORK / "bundle.env"
    path.write_bytes(text.encode())
    names = sorted(values)

    for shell in SHELLS:
        printed, stderr = source_printf(shell, path, names)
        assert printed == [values[n] for n in names] and not stderr, shell
        exported = source_exported(shell, path)
        added = {k: v for k, v in exported.items() if k not in shell_baseline[shell] or k in values}
        assert added == values, shell  # exactly these variables, exactly these values, nothing else
    assert not MARKER.exists(), "sourcing the file ran a command taken from a value"

    os.environ[OTHER] = "leaked"
    try:
        read = dotenv_values(path)
    finally:
        del os.environ[OTHER]
    assert {k: v for k, v in read.items() if v is not None} == values
    assert {k for k, v in read.items() if v is None} == {DOCKER_GUARD_PREFIX + n for n in values if "\n" in values[n]}

    docker_comment = next((line for line in text.splitlines() if line.startswith("# docker --env-file keeps quotes")), "")
    if any("\n" in v for v in values.values()):
        with pytest.raises(DockerRefused, match=f"variable 'export {DOCKER_GUARD_PREFIX}"):
            docker_env_file(text.encode(), {})
        return
    entries = dict(entry.split("=", 1) for entry in docker_env_file(text.encode(), {}))
    assert set(entries) == set(values)
    for name, value in values.items():
        if entries[name] != value:
            assert name in docker_comment.split(": it would not read ")[1].removesuffix(" exactly").split(", ")


def test_nul_and_bad_names_are_refused_in_dotenv_and_shell_naming_only_the_variable() -> None:
    for fmt in ("dotenv", "shell"):
        with pytest.raises(UnrepresentableValue) as caught:
            render({"OK": "fine", "HAS_NUL": "top\x00secret"}, fmt)
        assert caught.value.problems == {"HAS_NUL": "it contains a NUL character, which no environment variable can hold"}
        assert "secret" not in str(caught.value)
        with pytest.raises(UnrepresentableValue, match="not an environment variable name"):
            render({"A=B": "x"}, fmt)
    assert render({"B": "it's $HOME\n", "A": "plain"}, "shell") == "export A=plain\nexport B='it'\"'\"'s $HOME\n'\n"


def test_forms_bare_single_double_and_the_docker_lines() -> None:
    text = render({"A": "plain", "B": "a b", "C": 'say "hi"\'s \\x', "D": "-----BEGIN X-----\nabc\n-----END X-----\n"}, "dotenv")
    assert text == (
        "# docker --env-file keeps quotes: it would not read B, C exactly\n"
        "# docker --env-file cannot read values that span lines: the next line makes it refuse this file\n"
        f"export {DOCKER_GUARD_PREFIX}D\n"
        "A=plain\n"
        "B='a b'\n"
        'C="say \\"hi\\"\'s \\\\x"\n'
        "D='-----BEGIN X-----\nabc\n-----END X-----\n'\n"
    )
    assert render({"A": "plain", "E": ""}, "dotenv") == "A=plain\nE=\n"
