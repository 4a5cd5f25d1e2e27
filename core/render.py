"""A bundle's values as text: JSON, dotenv or shell, shared by the CLI, the HTTP API and the blob
target (every dotenv vaultrelay writes comes from `render_dotenv`).

`render` only formats what it is given: callers decide whether those are revealed values or
masks.  `negotiate` picks a format from an HTTP `Accept` header.

The dotenv dialect (docs/security.md, "HTTP callers and outputs", says the same for users):

* Readers it is exact for: POSIX shells (`. file` in dash, `source file` in bash, with or
  without `set -a`) and python-dotenv 1.x (`load_dotenv` / `dotenv_values`, interpolation on,
  its default).  Every value written reads back exactly, and nothing in a value is run, expanded
  or able to start another variable.  A value no single quoting reads back the same in all of
  them is refused (`UnrepresentableValue`, naming the variable and why, never the value):
  a NUL (no environment can hold one), a carriage return (python-dotenv opens files with
  universal newlines and reads it as a newline), a `${...}` that python-dotenv would expand
  (it interpolates single-quoted values too, and `\\$` is no escape to it), a trailing
  backslash, and a value that has both a character single quotes cannot carry for
  python-dotenv (`'`, `\\\\`) and one double quotes cannot carry for a shell (`$`, a backtick).
* Forms, in order of preference: bare when the value is made only of ``A-Z a-z 0-9 _ @ % + =
  : , . / -`` (exact for every reader, Docker included); single-quoted, nothing escaped; else
  double-quoted with only `\\` and `"` escaped.  A line break is written as itself inside the
  quotes (a PEM bundle stays a PEM bundle).
* Docker's `docker run --env-file` (docker/cli `pkg/kvfile`) does no unquoting and reads every
  line as its own variable.  It reads bare values exactly.  Quoted single-line values it would
  read with their quotes: the file says so in a comment naming them.  A value with a line break
  it would split into lines that it reads as variables of their own, so before any variable the
  file carries `export DOCKER_ENV_FILE_CANNOT_READ_<NAME>`: inert for shells (an unset
  variable marked for export is not passed on) and for python-dotenv (a name without a value,
  which `load_dotenv` skips and `dotenv_values` lists as None), and a line Docker refuses
  (`variable 'export DOCKER_ENV_FILE_CANNOT_READ_<NAME>' contains whitespaces`) before it
  reads anything else.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable, Mapping

FORMATS = ("json", "dotenv", "shell")

MEDIA_TYPES = {
    "json": "application/json",
    "dotenv": "text/plain",
    "shell": "text/x-shellscript",
}

# Accept media type -> format; the first listed is the default for */*.
_ACCEPTED = {
    "application/json": "json",
    "text/plain": "dotenv",
    "text/x-shellscript": "shell",
    "application/x-sh": "shell",
}


class UnrepresentableValue(ValueError):
    """Some values cannot be written in the format asked for.  `problems` maps each variable's
    name to the reason; the message names variables and reasons, never a value."""

    def __init__(self, fmt: str, problems: Mapping[str, str]) -> None:
        self.fmt = fmt
        self.problems = dict(sorted(problems.items()))
        listed = "; ".join(f"{name}: {reason}" for name, reason in self.problems.items())
        super().__init__(f"cannot be written as {fmt}: {listed}")


def render(values: Mapping[str, str], fmt: str) -> str:
    """`values` (name -> text) in `fmt`, sorted by name, ending with a newline.

    Raises:
        ValueError: `fmt` is not one of FORMATS.
        UnrepresentableValue: dotenv or shell, and a name or value cannot be written exactly.
    """
    if fmt == "json":
        return json.dumps(dict(values), indent=2, sort_keys=True) + "\n"
    if fmt == "dotenv":
        return render_dotenv(values)
    if fmt == "shell":
        _check(values, "shell", _shell_problem)
        return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(values.items()))
    raise ValueError(f"unknown format '{fmt}' (expected {', '.join(FORMATS)})")


# ---- dotenv ------------------------------------------------------------------------------------
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Bare values: nothing here is special in a shell word after `NAME=` (no `~`, `$`, quotes, globs,
# braces or blanks), in python-dotenv's unquoted values (no `#`, no whitespace) or to Docker.
_BARE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
# python-dotenv's POSIX-variable pattern (dotenv/variables.py), which it applies to every value.
_DOTENV_EXPANSION = re.compile(r"\$\{[^}:]*(?::-[^}]*)?\}")
_SURROGATE = re.compile("[\ud800-\udfff]")
DOCKER_GUARD_PREFIX = "DOCKER_ENV_FILE_CANNOT_READ_"


def render_dotenv(values: Mapping[str, str]) -> str:
    """`values` as a dotenv file (the dialect in the module docstring), sorted by name.

    Raises:
        UnrepresentableValue: a name is not an environment variable name, or a value cannot be
            written so that POSIX shells and python-dotenv both read it back exactly.
    """
    encoded = _check(values, "dotenv", _dotenv_problem)
    quoted = [name for name in encoded if encoded[name] != values[name]]
    spanning = [name for name in quoted if "\n" in values[name]]
    single = [name for name in quoted if name not in spanning]
    head: list[str] = []
    if single:
        head.append(f"# docker --env-file keeps quotes: it would not read {', '.join(single)} exactly\n")
    if spanning:
        head.append("# docker --env-file cannot read values that span lines: the next line makes it refuse this file\n")
        for name in spanning:
            guard = DOCKER_GUARD_PREFIX + name
            while guard in values:
                guard += "_"
            head.append(f"export {guard}\n")
    return "".join(head) + "".join(f"{name}={encoded[name]}\n" for name in encoded)


def dotenv_value(value: str) -> str:
    """One value as written after `NAME=`: bare, single-quoted or double-quoted.

    Raises:
        ValueError: the value cannot be written exactly (the message says why, not the value).
    """
    problem = _dotenv_problem(value)
    if problem:
        raise ValueError(problem)
    if _BARE.fullmatch(value):
        return value
    if _single_quotable(value):
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _single_quotable(value: str) -> bool:
    # A shell ends single quotes at the first `'`; python-dotenv decodes `\\` and `\'` inside
    # them (and a trailing backslash would escape the closing quote: refused before this).
    return "'" not in value and "\\\\" not in value


def _dotenv_problem(value: str) -> str | None:
    problem = _shell_problem(value)
    if problem:
        return problem
    if "\r" in value:
        return "it contains a carriage return, which python-dotenv reads back as a line feed"
    if _DOTENV_EXPANSION.search(value):
        return "it contains ${...}, which python-dotenv expands whatever the quoting"
    if value.endswith("\\"):
        return "it ends with a backslash, which python-dotenv takes as escaping the closing quote"
    if _single_quotable(value) or ("$" not in value and "`" not in value):
        return None
    return ("it has ' or \\\\ (which single quotes cannot carry for python-dotenv) and $ or a backtick "
            "(which double quotes cannot carry for a shell)")


def _shell_problem(value: str) -> str | None:
    if "\x00" in value:
        return "it contains a NUL character, which no environment variable can hold"
    if _SURROGATE.search(value):
        return "it is not valid Unicode text"
    return None


def _check(values: Mapping[str, str], fmt: str, problem_of: Callable[[str], str | None]) -> dict[str, str]:
    """name -> the value as written (dotenv) or as given (shell), in name order.

    Raises:
        UnrepresentableValue: every name and value that cannot be written, at once.
    """
    problems: dict[str, str] = {}
    encoded: dict[str, str] = {}
    for name in sorted(values):
        value = values[name]
        if not _NAME.fullmatch(name):
            problems[name if name.isprintable() else name.encode("unicode_escape").decode()] = "not an environment variable name"
            continue
        problem = problem_of(value)
        if problem:
            problems[name] = problem
        else:
            encoded[name] = dotenv_value(value) if fmt == "dotenv" else value
    if problems:
        raise UnrepresentableValue(fmt, problems)
    return encoded


def negotiate(accept: str | None, default: str = "json") -> str | None:
    """The format an `Accept` header asks for: the acceptable media type with the highest q
    (ties: the order in the header), `default` for a missing header or `*/*`; None when nothing
    offered is acceptable."""
    if accept is None or not accept.strip():
        return default
    best: tuple[float, int, str] | None = None
    for position, part in enumerate(accept.split(",")):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        q = 1.0
        for param in pieces[1:]:
            key, _, raw = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(raw.strip())
                except ValueError:
                    q = 0.0
        if not q > 0 or q > 1:
            continue
        if media in _ACCEPTED:
            fmt = _ACCEPTED[media]
        elif media in ("*/*", "*"):
            fmt = default
        elif media == "application/*":
            fmt = "json"
        elif media == "text/*":
            fmt = "dotenv"
        else:
            continue
        candidate = (-q, position, fmt)
        if best is None or candidate < best:
            best = candidate
    return best[2] if best else None
