"""Load a config file: YAML with line numbers, `${VAR}` interpolation, validation, all errors at once.

YAML: plain scalars are resolved by the YAML 1.2 core schema, not PyYAML's YAML 1.1 one, so `no`,
`on`, `1:30` and `2024-01-01` stay strings and `017` is not octal; a variable's literal value is
the text written (`1.10` stays `1.10`, `0x1F` stays `0x1F`, `true` stays `true`).

Interpolation: `${VAR}` is the variable's value, `${VAR:-default}` falls back to `default` when
VAR is unset or empty (the default may itself hold `${OTHER}`), `$$` is a literal `$`.  An unset or
empty variable without a default is an error, except inside a `fallback:` entry: that entry is then
skipped at run time (a warning says so), because a fallback such as a service principal for local
runs is meant to be absent in Azure.

The config is read from a file (a FIFO or device too, with a deadline), from standard input when
the path is `-`, or given as text (`parse_config`).
"""

from __future__ import annotations

import difflib
import os
import re
import select
import stat
import sys
import time
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.config.model import ENV_VAR_NAME, Config, ManagedIdentityStore
from core.errors import ConfigError, ConfigProblem

DEFAULT_CONFIG = "vaultrelay.yaml"
_VAR_START = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
_LOCATED = re.compile(r"^@([^@]+)@ (.*)$")

# Bounds on what the YAML parser is asked to build, so that a hostile or broken file is a clean
# ConfigError instead of a hang, a RecursionError or gigabytes of memory.  A real config (even
# thousands of variables) is far below each of them.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64  # nested mappings/lists; a config needs about 8
MAX_NODES = 500_000  # YAML nodes once every alias is expanded (a "billion laughs" file has 10**9)
# Bytes of scalar text (keys and values, UTF-8) once every alias is expanded: a 1 MB string aliased
# 3,000 times is 3 GB when anything copies it (interpolation of a `$$` does), though few nodes.
MAX_EXPANDED_BYTES = 16 * 1024 * 1024
# How long a FIFO or device named as the config may take to deliver data (a FIFO nobody writes
# to would otherwise block the reader forever).
STREAM_WAIT_S = 10.0
STDIN = "-"
STDIN_NAME = "<stdin>"
# Digits of the longest integer built as a number (Python refuses to convert longer ones, and no
# config value needs more); a longer one stays text, which validation then reports.
MAX_INT_DIGITS = 4000


def _yaml_12_loader() -> Any:
    """libyaml's safe loader when PyYAML has it (the same nodes, marks and errors, about ten times
    faster), resolving plain scalars by the YAML 1.2 core schema instead of YAML 1.1: only
    true/false (any case style) are booleans, only ~/null/empty are null, integers are decimal,
    0o octal or 0x hex, and there are no sexagesimal numbers or timestamps."""
    base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Yaml12Loader(base):  # type: ignore[misc, valid-type]
        pass

    Yaml12Loader.yaml_implicit_resolvers = {}
    resolvers = [
        ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
        ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
        ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
        ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
         "-+.0123456789"),
        ("merge", r"^(?:<<)$", "<"),
    ]
    for tag, pattern, first in resolvers:
        Yaml12Loader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), list(first))

    def construct_int(loader: Any, node: yaml.ScalarNode) -> int | str:
        text = str(loader.construct_scalar(node))
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
        if len(digits) > MAX_INT_DIGITS:
            return text
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        return sign * int(digits)

    Yaml12Loader.add_constructor("tag:yaml.org,2002:int", construct_int)
    return Yaml12Loader


_YAML_LOADER: Any = _yaml_12_loader()

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and what the loader learned about it."""

    config: Config
    file: str
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)
    warnings: list[ConfigProblem] = field(default_factory=list)
    # (store, fallback index) -> why the entry is skipped (an unset variable)
    skipped_fallbacks: dict[tuple[str, int], str] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def config_path(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """`explicit`, else `$VAULTRELAY_CONFIG`, else `vaultrelay.yaml`."""
    environ = os.environ if environ is None else environ
    return Path(explicit or environ.get("VAULTRELAY_CONFIG") or DEFAULT_CONFIG)


def load_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read and validate a config file.

    Raises:
        ConfigError: the file is missing, unreadable, not YAML or invalid; every problem is listed.
    """
    file = config_path(path, environ)
    name = STDIN_NAME if str(file) == STDIN else str(file)
    try:
        raw = _read_stdin() if str(file) == STDIN else read_config_bytes(file)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(name, None, "", f"not UTF-8 text (byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(name, None, "", f"cannot read config: {exc.strerror or exc}")]) from None
    return parse_config(text, name, environ=environ)


def _read_stdin() -> bytes:
    """Standard input up to its end (`--config -`), at most one byte past the size bound."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise ConfigError([ConfigProblem(STDIN_NAME, None, "", "cannot read config: there is no standard input")])
    data = stream.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(STDIN_NAME, None, "", f"the input is too large (more than {MAX_CONFIG_BYTES:,} bytes)")])
    return bytes(data)


def read_config_bytes(file: Path, *, wait_s: float = STREAM_WAIT_S) -> bytes:
    """The bytes of config file `file`.  A regular file is read whole (size-checked first); a FIFO,
    a socket or a device is read without blocking, each wait for data bounded by `wait_s`, so a
    FIFO nobody writes to is an error instead of a hang.

    Raises:
        ConfigError: a directory, too large, or no data in time.
        OSError: it cannot be opened or read.
    """
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError([ConfigProblem(str(file), None, "", "cannot read config: it is a directory")])
        if stat.S_ISREG(info.st_mode):
            if info.st_size > MAX_CONFIG_BYTES:
                raise ConfigError([ConfigProblem(str(file), None, "", _too_large(info.st_size))])
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(MAX_CONFIG_BYTES + 1)
        return _read_stream(fd, str(file), wait_s)
    finally:
        os.close(fd)


def _read_stream(fd: int, name: str, wait_s: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    kind = "FIFO" if stat.S_ISFIFO(os.fstat(fd).st_mode) else "stream"
    while True:
        # A FIFO opened without a writer reads as empty at once but polls as not ready until a
        # writer comes: wait for readiness (bounded), then read what is there.
        ready, _, _ = select.select([fd], [], [], wait_s)
        if not ready:
            waited = "nothing is writing to it" if size == 0 else "its writer stopped sending"
            raise ConfigError([ConfigProblem(name, None, "", f"cannot read config: no data from the {kind} within {wait_s:g} s ({waited})")])
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([ConfigProblem(name, None, "", f"the {kind} delivers more than {MAX_CONFIG_BYTES:,} bytes")])


def parse_config(text: str, file: str = DEFAULT_CONFIG, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Validate config `text` (named `file` in messages).

    Raises:
        ConfigError: every problem found.
    """
    environ = os.environ if environ is None else environ
    problems: list[ConfigProblem] = []
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigProblem(file, None, "", _too_large(len(text)))])
    lines: dict[Path_, int] = {}
    texts: dict[Path_, str] = {}
    try:
        _check_shape(text, file)
        _, data = _compose_and_construct(text, lambda root: _index(root, (), lines, problems, file, texts))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([ConfigProblem(file, line, "", f"not valid YAML: {reason}")]) from None
    if data is None:
        raise ConfigError([ConfigProblem(file, 1, "", "the file is empty: expected version: 1, secretStores: and envs:")])
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, "", f"expected a mapping at the top level, got {_kind(data)}")])
    _literals_as_written(data, texts)

    missing: dict[tuple[str, int], _Missing] = {}
    warnings: list[ConfigProblem] = []
    data = _interpolate(data, (), environ, problems, missing, file, lines)
    skipped = {key: entry.describe() for key, entry in missing.items()}
    for (store, index), reason in skipped.items():
        path: Path_ = ("secretStores", store, "fallback", index)
        warnings.append(ConfigProblem(file, lines.get(path), _dotted(path), f"skipped at run time: {reason}", "warning"))

    problems.extend(_cross_references(data, lines, file))
    problems.extend(_variable_names(data, lines, file))
    config: Config | None = None
    for attempt in range(3):
        try:
            config = Config.model_validate(data)
            break
        except ValidationError as exc:
            if attempt < 2 and _strings_as_written(exc, data, texts):
                continue
            problems.extend(_problems(exc, data, lines, file))
            break
    if problems:
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigError(_dedupe(problems) + warnings)
    assert config is not None
    warnings.extend(_warnings(config, lines, file))
    return LoadedConfig(config=config, file=file, lines=lines, warnings=warnings, skipped_fallbacks=skipped)


def _compose_and_construct(text: str, index: Callable[[yaml.Node], None]) -> tuple[Any, Any]:
    """The node tree and the data, from one parse (a large config parsed twice spent half its
    load time in the second parse).  `index` sees the tree before construction, which folds
    `<<` merge keys into their mappings."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            index(node)
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def _event_line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def _too_large(size: int) -> str:
    return f"the file is too large ({size:,} bytes; at most {MAX_CONFIG_BYTES:,})"


def _check_shape(text: str, file: str) -> None:
    """Reject nesting deeper than MAX_DEPTH, recursive aliases, more than MAX_NODES nodes and more
    than MAX_EXPANDED_BYTES bytes of scalar text once aliases are expanded, from the parser's
    events (the parser is not recursive and builds nothing; the composer, the constructor and
    validation all are, or expand aliases, and interpolation copies every string it rewrites).

    Raises:
        ConfigError: the file is too deep or expands too far.
        yaml.YAMLError: the text is not YAML.
    """
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (expanded nodes, expanded bytes) of the node it names
    open_nodes: list[tuple[str | None, int, int]] = []  # (anchor, nodes, bytes so far) per open collection
    total_nodes = 0
    total_bytes = 0

    def fail(line: int | None, message: str) -> ConfigError:
        return ConfigError([ConfigProblem(file, line, "", message)])

    def add(nodes: int, size: int, event: yaml.Event) -> None:
        nonlocal total_nodes, total_bytes
        if open_nodes:
            anchor, so_far, so_far_bytes = open_nodes[-1]
            open_nodes[-1] = (anchor, so_far + nodes, so_far_bytes + size)
        total_nodes += nodes
        total_bytes += size
        if total_nodes > MAX_NODES:
            raise fail(_event_line(event), f"the file expands to more than {MAX_NODES:,} values (aliases included)")
        if total_bytes > MAX_EXPANDED_BYTES:
            raise fail(_event_line(event), f"the file expands to more than {MAX_EXPANDED_BYTES:,} bytes of text (aliases included); "
                                           "repeat less through aliases")

    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_nodes) >= MAX_DEPTH:
                raise fail(_event_line(event), f"nested more than {MAX_DEPTH} levels deep")
            open_nodes.append((event.anchor, 1, 0))
            total_nodes += 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, count, size = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = (count, size)
            # counted again as one value of its parent (or of the document)
            total_nodes -= count
            total_bytes -= size
            add(count, size, event)
        elif isinstance(event, yaml.ScalarEvent):
            size = len(event.value) if event.value.isascii() else len(event.value.encode("utf-8", "surrogatepass"))
            if event.anchor is not None:
                sizes[event.anchor] = (1, size)
            add(1, size, event)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                if any(anchor == event.anchor for anchor, _, _ in open_nodes):
                    raise fail(_event_line(event), f"alias *{event.anchor} refers to a value that contains it")
                continue  # an unknown alias: the composer reports it with its position
            add(*sizes[event.anchor], event)


# ---- YAML positions -------------------------------------------------------------------------
def _index(node: yaml.Node | None, path: Path_, lines: dict[Path_, int], problems: list[ConfigProblem], file: str,
           texts: dict[Path_, str] | None = None) -> None:
    """Line of every path (and, in `texts`, the source text of every plain scalar that YAML made
    a number or a boolean)."""
    if node is None:
        return
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        if texts is not None and not node.style and node.tag != "tag:yaml.org,2002:str" and node.value:
            texts.setdefault(path, node.value)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a mapping or list as a key: the constructor refuses it with its position
            key = key_node.value
            if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                merged.extend(value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node])
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(ConfigProblem(file, line, _dotted((*path, key)), f"duplicate key '{key}' (first at line {seen[key]})"))
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _index(value_node, (*path, key), lines, problems, file, texts)
        for source in merged:  # keys written in the mapping override merged ones (no duplicates)
            for key_node, value_node in source.value if isinstance(source, yaml.MappingNode) else []:
                if key_node.value not in seen and key_node.value != "<<":
                    seen[key_node.value] = key_node.start_mark.line + 1
                    lines[(*path, key_node.value)] = key_node.start_mark.line + 1
                    _index(value_node, (*path, key_node.value), lines, problems, file, texts)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _index(item, (*path, i), lines, problems, file, texts)


def _literals_as_written(data: dict[str, Any], texts: dict[Path_, str]) -> None:
    """Literal values (`envs.<env>.<VAR>`, a webhook's `signing_key`, `state.fingerprint_key`)
    are the text written: `1.10` stays `1.10`, `0x1F` stays `0x1F`, `True` stays `True`."""
    places: list[tuple[Any, Any, Path_]] = []
    envs = data.get("envs")
    if isinstance(envs, dict):
        for env, variables in envs.items():
            if isinstance(variables, dict):
                places.extend((variables, name, ("envs", env, name)) for name in variables)
    targets = data.get("targets")
    if isinstance(targets, dict):
        places.extend((target, "signing_key", ("targets", name, "signing_key"))
                      for name, target in targets.items() if isinstance(target, dict) and "signing_key" in target)
    state = data.get("state")
    if isinstance(state, dict) and "fingerprint_key" in state:
        places.append((state, "fingerprint_key", ("state", "fingerprint_key")))
    for container, key, path in places:
        if path in texts and not isinstance(container[key], dict | list):
            container[key] = texts[path]


def _dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(type(value), type(value).__name__)


# ---- interpolation --------------------------------------------------------------------------
class _Missing:
    """Variables that were unset or empty where no default applied, in the order met."""

    def __init__(self) -> None:
        self.unset: list[str] = []
        self.empty: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.unset or self.empty)

    def describe(self) -> str:
        parts = []
        for names, what in ((self.unset, "not set"), (self.empty, "empty")):
            if names:
                listed = ", ".join(f"${{{n}}}" for n in names)
                parts.append(f"{listed} {'are' if len(names) > 1 else 'is'} {what}")
        return "; ".join(parts)


def _expand(text: str, environ: Mapping[str, str], missing: _Missing) -> str:
    """`text` with `$$` and every `${VAR}` / `${VAR:-default}` replaced; a default is expanded
    only when it is used, and may hold further `${...}`.  Text that is not a well-formed
    reference (`${` without its `}`, `$x`) stays as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        match = _VAR_START.match(text, i)
        if match is None:
            out.append(char)
            i += 1
            continue
        name = match.group(1)
        after = match.end()
        default: str | None = None
        if text.startswith(":-", after):
            close = _closing_brace(text, after + 2)
            if close is None:
                out.append(char)
                i += 1
                continue
            default, after = text[after + 2:close], close + 1
        elif text.startswith("}", after):
            after += 1
        else:
            out.append(char)
            i += 1
            continue
        current = environ.get(name)
        if current:
            out.append(current)
        elif default is not None:
            out.append(_expand(default, environ, missing))
        else:
            (missing.unset if current is None else missing.empty).append(name)
            out.append(_PLACEHOLDER)
        i = after
    return "".join(out)


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` closing a `${` whose default starts at `start` (nested `${...}` skipped)."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return None


def _interpolate(
    value: Any, path: Path_, environ: Mapping[str, str], problems: list[ConfigProblem],
    skipped: dict[tuple[str, int], _Missing], file: str, lines: dict[Path_, int],
) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), environ, problems, skipped, file, lines) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), environ, problems, skipped, file, lines) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    missing = _Missing()
    result = _expand(value, environ, missing)
    if missing:
        in_fallback = len(path) >= 4 and path[0] == "secretStores" and path[2] == "fallback" and isinstance(path[3], int)
        if in_fallback:
            entry = skipped.setdefault((str(path[1]), int(path[3])), _Missing())
            entry.unset.extend(missing.unset)
            entry.empty.extend(missing.empty)
        else:
            first = (missing.unset or missing.empty)[0]
            problems.append(ConfigProblem(file, lines.get(path), _dotted(path),
                                          f"environment variable {missing.describe()} (write ${{{first}:-default}} for a default)"))
    return result


def _strings_as_written(exc: ValidationError, data: Any, texts: dict[Path_, str]) -> bool:
    """Where a key wants a string and YAML made the plain scalar written there a number or a
    boolean (`version: 0123456789e12...` is a float to YAML 1.2), take the text written instead.
    True when something was replaced (validate again)."""
    replaced = False
    for error in exc.errors(include_input=False, include_url=False):
        if error["type"] != "string_type":
            continue
        loc = _data_path(error["loc"], data)
        parent = _value_at(loc[:-1], data)
        if loc in texts and isinstance(parent, dict | list) and not isinstance(_value_at(loc, data), str):
            parent[loc[-1]] = texts[loc]  # type: ignore[index]
            replaced = True
    return replaced


def _variable_names(data: dict[str, Any], lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    """Every variable name that is not an environment variable name, each at its own line (checked
    on the raw data, so they are reported together with every other problem)."""
    problems: list[ConfigProblem] = []
    envs = data.get("envs")
    if not isinstance(envs, dict):
        return problems
    for env, variables in envs.items():
        if not isinstance(variables, dict):
            continue
        for name in variables:
            if not isinstance(name, str) or not re.fullmatch(ENV_VAR_NAME, name):
                path: Path_ = ("envs", env, name)
                problems.append(ConfigProblem(file, _line(path, lines), _dotted(path),
                                              f"'{name}' is not a valid environment variable name (letters, digits and _, not starting with a digit)"))
    return problems


def _cross_references(data: dict[str, Any], lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    """References to stores that do not exist (checked on the raw data, so they are reported
    together with every other problem)."""
    problems: list[ConfigProblem] = []
    stores = data.get("secretStores")
    envs = data.get("envs")
    if not isinstance(stores, dict) or not isinstance(envs, dict):
        return problems
    for env, variables in envs.items():
        if not isinstance(variables, dict):
            continue
        for name, variable in variables.items():
            ref = variable.get("from") if isinstance(variable, dict) else None
            store = ref.get("store") if isinstance(ref, dict) else None
            if isinstance(store, str) and store not in stores:
                path: Path_ = ("envs", env, name, "from", "store")
                guess = difflib.get_close_matches(store, [str(s) for s in stores], n=1, cutoff=0.6)
                hint = f"did you mean '{guess[0]}'?" if guess else f"stores: {', '.join(sorted(map(str, stores))) or 'none'}"
                problems.append(ConfigProblem(file, _line(path, lines), _dotted(path), f"unknown store '{store}' ({hint})"))
    return problems


# ---- pydantic errors -> problems ------------------------------------------------------------
def _problems(exc: ValidationError, data: Any, lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = _data_path(error["loc"], data)
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if error["type"] == "extra_forbidden":
            key = loc[-1]
            candidates = _allowed_keys(loc[:-1], data)
            guess = difflib.get_close_matches(str(key), candidates, n=1, cutoff=0.6)
            hint = f"; did you mean '{guess[0]}'?" if guess else (f"; expected one of: {', '.join(sorted(candidates))}" if candidates else "")
            message = f"unknown key '{key}'{hint}"
        elif error["type"] == "missing":
            message = f"missing required key '{loc[-1]}'" + _MISSING_HINTS.get((str(loc[-3]) if len(loc) > 2 else "", str(loc[-1])), "")
        elif error["type"] in ("literal_error", "union_tag_invalid"):
            expected = error.get("ctx", {}).get("expected") or error.get("ctx", {}).get("expected_tags")
            message = f"expected {expected}" if expected else message
            if error["type"] == "union_tag_invalid":  # pydantic locates the union; the bad value is its tag
                loc = (*loc, str(error.get("ctx", {}).get("discriminator", "'type'")).strip("'"))
        elif error["type"] == "string_pattern_mismatch":
            message = f"invalid value: {_pattern_hint(loc)}"
        elif error["type"] in ("string_type", "int_type", "bool_type", "dict_type", "list_type", "model_type", "float_type", "int_parsing", "bool_parsing", "float_parsing"):
            expected = {"string_type": "a string", "int_type": "a whole number", "int_parsing": "a whole number", "bool_type": "true or false",
                        "bool_parsing": "true or false", "dict_type": "a mapping", "model_type": "a mapping", "list_type": "a list",
                        "float_type": "a number", "float_parsing": "a number"}[error["type"]]
            message = f"expected {expected}, got {_kind(_value_at(loc, data))}"
        elif error["type"] == "union_tag_not_found":
            message = "missing required key 'type'"
        elif error["type"] == "int_parsing_size":
            message = f"expected a whole number, got a number of {len(str(_value_at(loc, data)).lstrip('+-')):,} digits"
        if error["type"] == "extra_forbidden" and len(loc) == 1 and _looks_like_a_variable(loc[0], _value_at(loc, data)):
            message = (f"unknown key '{loc[0]}': it looks like a variable, which belongs under envs.<env>: "
                       "(this file looks like a fragment of a config, not a whole one)")
        for part in message.split("\n"):
            located = _LOCATED.match(part)
            if located:
                relative = located.group(1).startswith(".")
                parts = tuple(int(p) if p.isdigit() else p for p in located.group(1).lstrip(".").split("."))
                where = (*loc, *parts) if relative else parts
                problems.append(ConfigProblem(file, _line(where, lines), _dotted(where), located.group(2)))
            else:
                problems.append(ConfigProblem(file, _line(loc, lines), _dotted(loc), part))
    return problems


def _looks_like_a_variable(key: Any, value: Any) -> bool:
    """A top-level `NAME: {from: ...}` or `NAME: literal`: a piece of an env pasted on its own."""
    if not isinstance(key, str) or not re.fullmatch(ENV_VAR_NAME, key) or key != key.upper():
        return False
    return (isinstance(value, dict) and "from" in value) or isinstance(value, str | int | float)


def _pattern_hint(loc: Path_) -> str:
    key = loc[-1] if loc else ""
    return {
        "vault": "a vault name is 3-24 letters, digits and hyphens, starting with a letter",
        "secret": "a name is 1-127 letters, digits and hyphens",
        "version": "a version is 32 hex digits",
        "services": "services are letters among b, q, t, f",
        "resource_types": "resource types are letters among s, c, o",
        "ip": "an IPv4 address or range a.b.c.d-e.f.g.h",
        "vault_name": "a vault name is 3-24 letters, digits and hyphens, starting with a letter",
    }.get(str(key), "does not match the expected format") if key else "does not match the expected format"


# (grandparent key, missing key) -> why it is required, appended to "missing required key".
_MISSING_HINTS = {
    ("tagged_secrets", "accounts"): (": list the storage accounts, Cosmos DB accounts and SQL servers this vault's secrets may name in "
                                     "ProviderAddress (resource ids, or type/name/resource_group); nothing is rotated without it "
                                     "(docs/config.md)"),
}


def _line(path: Path_, lines: dict[Path_, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def _data_path(loc: tuple[Any, ...], data: Any) -> Path_:
    """`loc` without pydantic's union tags and validator names: only keys present in the data
    (the last element is kept: it names a missing or unknown key)."""
    path: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(current, dict) and part in current:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            path.append(part)
            current = current[part]
        elif last and isinstance(part, str) and not _is_tag(part):
            path.append(part)
    return tuple(path)


def _is_tag(part: str) -> bool:
    return part.startswith(("function-", "literal[", "azure.")) or part in (
        "managed_identity", "azure_cli", "service_principal", "environment", "workload_identity", "Cloud", "str")


def _value_at(path: Path_, data: Any) -> Any:
    current = data
    for part in path:
        try:
            current = current[part]
        except (KeyError, IndexError, TypeError):
            return None
    return current


def _allowed_keys(path: Path_, data: Any) -> list[str]:
    """Field names (by alias) of the model found at `path` in a Config."""
    tp: Any = Config
    current = data
    for part in path:
        tp = _select(tp, current)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
            if part not in fields:
                return []
            tp = fields[part].annotation
        else:
            origin = typing.get_origin(tp)
            args = typing.get_args(tp)
            if origin is dict:
                tp = args[1]
            elif origin is list:
                tp = args[0]
            else:
                return []
        current = _value_at((part,), current)
    tp = _select(tp, current)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _select(tp: Any, value: Any) -> Any:
    """Unwrap Annotated/Optional, and pick a union member by the data's `type`."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
            if len(members) == 1:
                tp = members[0]
                continue
            wanted = value.get("type") if isinstance(value, dict) else None
            for model in models:
                annotation = model.model_fields.get("type")
                if annotation is not None and wanted in typing.get_args(annotation.annotation):
                    return model
            return models[0] if len(models) == 1 else tp
        return tp


def _dedupe(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    seen: set[tuple[Any, ...]] = set()
    result = []
    for problem in problems:
        key = (problem.path, problem.message.split(" (")[0])
        if key not in seen:
            seen.add(key)
            result.append(problem)
    return result


# ---- warnings: keys that are accepted but change nothing here ---------------------------------
def _warnings(config: Config, lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    warnings: list[ConfigProblem] = []
    for name, store in config.secretStores.items():
        if not isinstance(store, ManagedIdentityStore):
            path: Path_ = ("secretStores", name, "auth", "client_secret")
            warnings.append(ConfigProblem(file, _line(path, lines), _dotted(path),
                                          "type azure.keyvault authenticates with a client secret; type azure.managed_identity needs none (see docs/config.md)", "warning"))
            continue
        if store.preferred_regions:
            path = ("secretStores", name, "preferred_regions")
            warnings.append(ConfigProblem(file, _line(path, lines), _dotted(path),
                                          "has no effect: Key Vault, ARM and storage endpoints are not chosen by region, and keys and "
                                          "connection strings are the same in every region", "warning"))
        if len(store.identity.selectors) > 1:
            used, *ignored = store.identity.selectors
            path = ("secretStores", name, "identity", ignored[0])
            warnings.append(ConfigProblem(file, _line(path, lines), _dotted(path)[: -len(ignored[0]) - 1],
                                          f"{used} and {' and '.join(ignored)} are both given: {used} is used and "
                                          f"{', '.join(ignored)} ignored (keep one)", "warning"))
        if store.fallback is not None and store.identity.type != "system_assigned":
            if not any(f.type == "managed_identity" for f in store.fallback):
                path = ("secretStores", name, "identity")
                warnings.append(ConfigProblem(file, _line(path, lines), _dotted(path),
                                              "identity is unused: the fallback list has no managed_identity entry", "warning"))
    warnings.extend(_sas_caps(config, lines, file))
    warnings.extend(_user_delegation_lifetimes(config, lines, file))
    return warnings


def _sas_caps(config: Config, lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    """A SAS `expiry` longer than the store's `max_sas_expiry` (user delegation SAS have their own
    bound as well: `_user_delegation_lifetimes`)."""
    from core.config.durations import format_duration

    warnings: list[ConfigProblem] = []
    for env, variables in config.envs.items():
        for name, variable in variables.items():
            ref = variable.from_
            store = config.secretStores.get(ref.store) if ref is not None else None
            if ref is None or not ref.features.minted or ref.expiry is None or not isinstance(store, ManagedIdentityStore):
                continue
            path: Path_ = ("envs", env, name, "from", "expiry")
            caps = [(store.max_sas_expiry, f"store '{ref.store}' caps SAS lifetimes at max_sas_expiry {format_duration(store.max_sas_expiry)}")]
            cap, why = min(caps, key=lambda c: c[0])
            if ref.expiry > cap:
                warnings.append(ConfigProblem(file, _line(path, lines), _dotted(path),
                                              f"expiry {format_duration(ref.expiry)} is capped to {format_duration(cap)}: {why}", "warning"))
    return warnings


def _user_delegation_lifetimes(config: Config, lines: dict[Path_, int], file: str) -> list[ConfigProblem]:
    """A user delegation SAS cannot outlive its delegation key, which Azure grants for at most 7
    days from its own clock; vaultrelay keeps keys an hour inside that (core.mint.sas).
    Longer lifetimes are capped (up to 7 days) or refused at run time: say so here."""
    from core.mint.sas import USER_DELEGATION_KEY_MAX, USER_DELEGATION_SAS_MAX, format_lifetime

    found: list[ConfigProblem] = []
    for env, variables in config.envs.items():
        for name, variable in variables.items():
            ref = variable.from_
            if ref is None or not ref.features.minted or ref.effective_sas_type != "user_delegation" or ref.expiry is None:
                continue
            store = config.secretStores.get(ref.store)
            cap = float(store.max_sas_expiry) if isinstance(store, ManagedIdentityStore) else float(ref.expiry)
            lifetime = min(float(ref.expiry), cap)
            path: Path_ = ("envs", env, name, "from", "expiry")
            if lifetime > USER_DELEGATION_KEY_MAX.total_seconds():
                message = (f"a user delegation SAS cannot outlive its delegation key (Azure grants one for at most 7 days): this one "
                           f"will fail at run time; use at most {format_lifetime(USER_DELEGATION_SAS_MAX)}")
            elif lifetime > USER_DELEGATION_SAS_MAX.total_seconds():
                message = (f"a user delegation SAS lasts at most {format_lifetime(USER_DELEGATION_SAS_MAX)} (its delegation key ends "
                           f"an hour inside Azure's 7-day bound, which the service measures by its own clock): it will be capped")
            else:
                continue
            found.append(ConfigProblem(file, _line(path, lines), _dotted(path), message, "warning"))
    return found
