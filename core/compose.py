"""Composed values: a variable written as a template over its env's other variables.

    DATABASE_URL:
      template: "postgresql://app:{{ DATABASE_PASSWORD | urlencode }}@db.internal:5432/app"

This is the stage after resolve: the references are fetched once each (core.resolve
deduplicates them), then every composed variable is rendered, in dependency order, from the
bundle's values.  Rendering uses Jinja2's `SandboxedEnvironment` with `StrictUndefined` (a name or
attribute that does not exist is an error, never an empty string) and no autoescaping; the filters
people need for connection strings and files are `urlencode`, `b64encode`, `b64decode`, `json` /
`tojson`, `default` and `trim`.

A composed value is a secret like any other (masked, fingerprinted, never logged).  Its expiry is
the earliest of its inputs', so a target that follows expiries follows the SAS inside a URL.  An
error never carries a value: the messages below are fixed per kind of failure and name only the
variable and its YAML path, never the exception text (Jinja's messages may quote an operand).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

log = logging.getLogger("vaultrelay.compose")

FILTERS = ("urlencode", "b64encode", "b64decode", "json", "tojson", "default", "trim")


class ComposeError(Exception):
    """A template could not be rendered; the message never contains a value."""


class _FilterProblem(Exception):
    """Raised by our filters with a fixed message (no value)."""


def _urlencode(value: Any) -> str:
    # Every reserved character is encoded (`/`, `@`, `:` included): the value is one component of
    # a URL (a password in userinfo, a query parameter), not a path.
    return quote(str(value), safe="")


def _b64encode(value: Any) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _b64decode(value: Any) -> str:
    try:
        return base64.b64decode(str(value).encode(), validate=True).decode()
    except (binascii.Error, ValueError):
        raise _FilterProblem("b64decode: the input is not base64") from None
    except UnicodeDecodeError:
        raise _FilterProblem("b64decode: the decoded bytes are not UTF-8 text") from None


def _json(value: Any) -> str:
    # Plain JSON (Jinja's own tojson escapes <, >, & and ' for HTML, which a connection string or
    # a config file does not want).
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        raise _FilterProblem("json: the input cannot be written as JSON") from None


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    """The one template environment: sandboxed, strict, no autoescaping, only our filters."""
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    builtin = env.filters
    env.filters = {"urlencode": _urlencode, "b64encode": _b64encode, "b64decode": _b64decode, "json": _json,
                   "tojson": _json, "default": builtin["default"], "trim": builtin["trim"]}
    env.globals = {}
    env.tests = {name: builtin_test for name, builtin_test in env.tests.items() if name in ("defined", "undefined", "none", "string")}
    return env


def dependencies(template: str) -> set[str]:
    """The names a template reads.

    Raises:
        TemplateSyntaxError: the template does not parse (the message is about the template,
            which is config, not a value).
    """
    return set(meta.find_undeclared_variables(environment().parse(template)))


@dataclass(frozen=True)
class Composition:
    """One composed variable of a plan: its template and the variables it reads."""

    name: str
    path: str  # e.g. envs.production.DATABASE_URL.template
    template: str
    depends_on: tuple[str, ...]


def template_problems(env: str, templates: Mapping[str, str], names: Iterable[str]) -> list[tuple[str, str]]:
    """(YAML path, message) for every template of `env` that does not parse, uses a filter that
    does not exist, names a variable the env does not have, or is part of a cycle."""
    known = set(names)
    problems: list[tuple[str, str]] = []
    graph: dict[str, set[str]] = {}
    for name, template in templates.items():
        path = f"envs.{env}.{name}.template"
        try:
            ast = environment().parse(template)
        except TemplateSyntaxError as exc:
            problems.append((path, f"the template does not parse: {exc.message} (line {exc.lineno} of the template)"))
            continue
        unknown_filters = sorted({node.name for node in ast.find_all(_filter_node()) if node.name not in environment().filters})
        if unknown_filters:
            problems.append((path, f"unknown filter {', '.join(unknown_filters)} (filters: {', '.join(FILTERS)})"))
            continue
        try:
            used = set(meta.find_undeclared_variables(ast))
        except TemplateSyntaxError as exc:
            problems.append((path, f"the template does not compile: {exc.message}"))
            continue
        unknown = sorted(used - known)
        if unknown:
            problems.append((path, f"the template uses {', '.join(unknown)}, which env '{env}' does not have "
                                   f"(variables: {', '.join(sorted(known - {name})) or 'none'})"))
        if name in used:
            problems.append((path, f"the template uses {name} itself"))
        graph[name] = (used & known) - {name}
    for cycle in _cycles(graph):
        first = cycle[0]
        problems.append((f"envs.{env}.{first}.template", f"templates form a cycle: {' -> '.join([*cycle, first])}"))
    return problems


def _filter_node() -> Any:
    from jinja2 import nodes

    return nodes.Filter


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Each cycle among composed variables once (as found from its smallest name)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    key = frozenset(trail)
                    if key not in seen:
                        seen.add(key)
                        found.append(trail)
                elif nxt in graph and nxt not in trail and nxt > start:
                    stack.append((nxt, [*trail, nxt]))
    return found


def order(compositions: Mapping[str, Composition]) -> list[Composition]:
    """Composed variables so that each comes after the composed variables it reads (validation
    refused cycles)."""
    done: set[str] = set()
    ordered: list[Composition] = []

    def visit(name: str, trail: frozenset[str]) -> None:
        if name in done or name in trail or name not in compositions:
            return
        for dep in compositions[name].depends_on:
            visit(dep, trail | {name})
        done.add(name)
        ordered.append(compositions[name])

    for name in sorted(compositions):
        visit(name, frozenset())
    return ordered


def render(composition: Composition, inputs: Mapping[str, str]) -> str:
    """The template rendered over `inputs` (name -> plain value).

    Raises:
        ComposeError: rendering failed; the message names the variable and the kind of failure,
            never a value.
    """
    where = f"{composition.path}"
    try:
        return environment().from_string(composition.template).render(dict(inputs))
    except _FilterProblem as exc:
        raise ComposeError(f"{where}: {exc}") from None
    except UndefinedError:
        raise ComposeError(f"{where}: the template reads an attribute or item that does not exist (variables are plain "
                           "strings; use `property:` on a reference to read a key of a JSON secret)") from None
    except SecurityError:
        raise ComposeError(f"{where}: the template does something the sandbox forbids") from None
    except TemplateSyntaxError as exc:
        raise ComposeError(f"{where}: the template does not parse: {exc.message}") from None
    except Exception as exc:
        raise ComposeError(f"{where}: rendering failed with {type(exc).__name__} (the message is not shown: it may quote a value)") from None


def compose_bundle(bundle: Any, compositions: Mapping[str, Composition]) -> None:
    """Render every composed variable into `bundle` (a core.bundle.Bundle), in dependency
    order.  A composed variable whose input did not resolve, or whose template fails, lands in
    `bundle.failures` (reason `would_mint` when an input is a token a dry run would mint)."""
    from core.bundle import ResolutionFailure, ResolvedValue
    from core.values import SecretValue

    for composition in order(compositions):
        name = composition.name
        missing = [dep for dep in composition.depends_on if dep not in bundle.values]
        if missing:
            reasons = {bundle.failures[d].reason for d in missing if d in bundle.failures}
            reason = "would_mint" if reasons == {"would_mint"} else "dependency"
            bundle.failures[name] = ResolutionFailure(name, composition.path, reason,
                                                      f"composed from {', '.join(missing)}, which did not resolve")
            continue
        inputs = {dep: bundle.values[dep] for dep in composition.depends_on}
        try:
            text = render(composition, {dep: item.value.reveal() for dep, item in inputs.items()})
        except ComposeError as exc:
            bundle.failures[name] = ResolutionFailure(name, composition.path, "invalid", str(exc))
            log.warning("could not compose %s (%s): invalid template result", name, composition.path)
            continue
        expiries = [item.expires_on for item in inputs.values() if item.expires_on is not None]
        versions = ",".join(f"{dep}@{item.version}" for dep, item in sorted(inputs.items()) if item.version)
        bundle.values[name] = ResolvedValue(
            name=name, value=SecretValue(text), source=f"template over {', '.join(sorted(inputs)) or 'nothing'}",
            store="", identity="", version=None, expires_on=min(expiries) if expiries else None,
            detail={"kind": "template", **({"inputs": versions} if versions else {})},
        )
