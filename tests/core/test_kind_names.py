"""Sources own their kind: no code outside a source's module (and the kind declarations and the
registry) switches on a source kind's name.  Callers ask the source (`registry.get(kind)`) or its
declared features (`registry.features(kind).minted`) instead (core.sources.base.Source).

What counts as a kind switch, found in the AST of every module of `core/`:
- a comparison (`==`, `!=`, `in`, `not in`) of a kind (`x.kind`, `kind`, `row.get("kind")`) with a
  source kind's name, or a collection holding one;
- `x.kind.startswith(...)` / `endswith(...)`;
- a dict literal keyed by a source kind's name (per-kind tables: allowed keys, labels);
- a tuple, list or set literal naming two or more source kinds (`MINTED_KINDS = ("sas", "token")`).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterable
from pathlib import Path

from core.sources import kinds as kind_declarations
from core.sources import registry as registry_module
from core.sources.kinds import REFERENCE_KINDS
from core.sources.registry import default_registry

CORE = Path(__file__).resolve().parents[2] / "core"

# (module, kind name) -> why that name may appear there: another namespace spells it the same.
ALLOWED: dict[tuple[str, str], str] = {
    ("core/permissions/matrix.py", "cosmos"): "role scope kind (Scope.kind) and tagged-rotation account kind: an Azure resource",
    ("core/permissions/matrix.py", "sql"): "role scope kind (Scope.kind) and tagged-rotation account kind: an Azure resource",
    ("core/rotation/tagged_secrets.py", "cosmos"): "provider kind of a sample-tagged secret's account, not a `from:` kind",
    ("core/rotation/tagged_secrets.py", "sql"): "provider kind of a sample-tagged secret's server, not a `from:` kind",
    ("core/sources/key_access.py", "cosmos"): "account kind checked before tagged rotation regenerates keys",
    ("core/app/readiness.py", "keyvault"): "target type (targets.*.type), not a `from:` kind",
    ("core/config/model.py", "keyvault"): "`resources:` entry type (an Azure resource kind)",
    ("core/config/model.py", "sql"): "`resources:` entry type (an Azure resource kind)",
}


def source_kind_names() -> set[str]:
    """Every planned source kind and every `from:` kind."""
    return set(default_registry().kinds()) | {k.name for k in REFERENCE_KINDS}


def own_kinds() -> dict[str, set[str]]:
    """Module (relative path) -> the kind names it may spell: those of the sources it defines."""
    owned: dict[str, set[str]] = {}
    registry = default_registry()
    for kind in registry.kinds():
        path = Path(inspect.getfile(type(registry.get(kind)))).resolve().relative_to(CORE.parent).as_posix()
        owned.setdefault(path, set()).add(kind)
    for planned in owned.values():
        planned.update(k.name for k in REFERENCE_KINDS if any(p == k.name or p.startswith(k.name + "_") for p in planned))
    return owned


def _is_kind(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "kind"
    if isinstance(node, ast.Name):
        return node.id == "kind"
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "kind")


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for element in node.elts for n in _names_in(element, names)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple") and node.args:
        return _names_in(node.args[0], names)
    return []


def kind_switches(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """(line, kind name or "", what) of every kind switch in `source`."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_is_kind(o) for o in operands):
                found.extend((node.lineno, n, "comparison with a kind") for o in operands for n in _names_in(o, names))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith")
              and _is_kind(node.func.value)):
            found.append((node.lineno, "", f"kind.{node.func.attr}(...)"))
        elif isinstance(node, ast.Dict):
            found.extend((node.lineno, n, "dict keyed by kind") for key in node.keys if key is not None for n in _names_in(key, names))
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            named = _names_in(node, names)
            if len(named) >= 2:
                found.extend((node.lineno, n, "collection of kinds") for n in named)
    return found


def violations(core: Path, names: set[str], owned: dict[str, set[str]], exempt: Iterable[str],
               allowed: dict[tuple[str, str], str]) -> list[str]:
    exempt = set(exempt)
    problems = []
    for path in sorted(core.rglob("*.py")):
        relative = path.relative_to(core.parent).as_posix()
        if relative in exempt:
            continue
        for line, name, what in kind_switches(path.read_text(encoding="utf-8"), names):
            if name and (name in owned.get(relative, set()) or (relative, name) in allowed):
                continue
            problems.append(f"{relative}:{line}: {what}" + (f" {name!r}" if name else ""))
    return sorted(set(problems))


def _relative(module: object) -> str:
    return Path(inspect.getfile(module)).resolve().relative_to(CORE.parent).as_posix()  # type: ignore[arg-type]


DECLARATIONS = (_relative(kind_declarations), _relative(registry_module))


def test_no_kind_switch_outside_the_sources_and_their_declarations() -> None:
    found = violations(CORE, source_kind_names(), own_kinds(), DECLARATIONS, ALLOWED)
    assert found == [], "ask the source or its declared features instead:\n" + "\n".join(found)


def test_every_allowed_entry_is_still_needed() -> None:
    """An allow-list entry whose name no longer appears is removed, so the list stays short."""
    names = source_kind_names()
    unused = [f"{module} {name}" for (module, name) in ALLOWED
              if name not in {n for _, n, _ in kind_switches((CORE.parent / module).read_text(encoding="utf-8"), names)}]
    assert unused == []


def test_the_scanner_finds_each_form_of_kind_switch() -> None:
    names = source_kind_names()
    code = textwrap.dedent('''
        MINTED = ("sas", "token")
        LABELS = {"cosmos": "a cosmosdb reference"}
        def f(ref, row, kind):
            if ref.kind == "sas": pass
            if kind in ("storage_key", "other"): pass
            if ref.kind.startswith("keyvault_"): pass
            if row.get("kind") != "sql": pass
            if ref.kind in frozenset({"token"}): pass
            if ref.type == "sas" or ref.kind == "not-a-kind": pass
    ''')
    found = kind_switches(code, names)
    assert sorted((line, name) for line, name, _ in found) == [
        (2, "sas"), (2, "token"), (3, "cosmos"), (5, "sas"), (6, "storage_key"), (7, ""), (8, "sql"), (9, "token")]


def test_a_source_module_may_spell_only_its_own_kinds(tmp_path: Path) -> None:
    owned = own_kinds()
    assert owned["core/sources/storage.py"] == {"storage_key", "sas"}
    assert {"keyvault", "keyvault_secret"} <= owned["core/sources/keyvault.py"]
    core = tmp_path / "core"
    (core / "sources").mkdir(parents=True)
    (core / "sources" / "storage.py").write_text('def f(ref):\n    return ref.kind == "sas" or ref.kind == "cosmos"\n')
    (core / "push.py").write_text('def f(ref):\n    return ref.kind == "sas"\n')
    found = violations(core, source_kind_names(), owned, (), {})
    assert found == ["core/push.py:2: comparison with a kind 'sas'", "core/sources/storage.py:2: comparison with a kind 'cosmos'"]
    assert violations(core, source_kind_names(), owned, (), {("core/push.py", "sas"): "why"}) == [found[1]]
