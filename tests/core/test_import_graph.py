"""The core's import graph has no cycle: data flows one way (config -> plan -> resolve -> mint ->
push -> record), and nothing calls back up the pipeline.  Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the core modules it imports (anywhere in the file)."""
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_core_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "core.plan" in graph and "core.push" in graph
    assert cycles(graph) == []


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """core/rotation modules -> what they import from the push stage or the use cases (core/app)."""
    rotation = {m: deps for m, deps in graph.items() if m == "core.rotation" or m.startswith("core.rotation.")}
    upward = {m: sorted(d for d in deps if d == "core.push" or d == "core.app" or d.startswith("core.app.")) for m, deps in rotation.items()}
    return {m: d for m, d in upward.items() if d}


def test_rotation_does_not_call_back_up_the_pipeline() -> None:
    """Rotation returns what must be re-pushed; the rotate use case (core.app.rotate) pushes it.
    So nothing in core/rotation imports the push stage or the use cases."""
    graph = import_graph()
    assert "core.rotation.account_keys" in graph and "core.rotation.tagged_secrets" in graph
    assert upward_imports(graph) == {}


def test_the_rotation_check_sees_an_upward_import() -> None:
    graph = {"core.rotation.x": {"core.push", "core.state"}, "core.rotation.y": {"core.app.sync"}, "core.app.rotate": {"core.push"}}
    assert upward_imports(graph) == {"core.rotation.x": ["core.push"], "core.rotation.y": ["core.app.sync"]}


def imports_of_the_use_cases(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Pipeline modules (everything in core/ but the use cases, the runtime that assembles them
    and the CLI) -> what they import from core/app."""
    shells = ("core.app", "core.cli", "core.cli_json")
    stages = {m: deps for m, deps in graph.items() if not any(m == s or m.startswith(s + ".") for s in shells)}
    upward = {m: sorted(d for d in deps if d == "core.app" or d.startswith("core.app.")) for m, deps in stages.items()}
    return {m: d for m, d in upward.items() if d}


def test_no_stage_imports_the_use_cases() -> None:
    """The use cases (core/app) call the stages; no stage (push, resolve, rotation, state, ...)
    calls a use case back: push emits notifications through core.notify, not core.app."""
    graph = import_graph()
    assert "core.push" in graph and "core.app.sync" in graph
    assert imports_of_the_use_cases(graph) == {}


def test_the_use_case_check_sees_an_upward_import() -> None:
    graph = {"core.push": {"core.app.notify", "core.state"}, "core.app.sync": {"core.push"}, "core.cli": {"core.app.sync"}}
    assert imports_of_the_use_cases(graph) == {"core.push": ["core.app.notify"]}
