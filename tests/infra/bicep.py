"""Offline Bicep helpers for the infra tests: parse with pycep, and evaluate the simple grant
filters of infra/app/rbac.bicep to see which parameter entries get which roles.

The Bicep CLI is not available here, so these tests check what a parser can: syntax, the
structure of the templates, role ids and names, settings, and the grants a rendered parameters
file produces.  Deploy-time validation (`az deployment sub what-if`) stays a manual step.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
APP = "<the Function app's identity>"
DEPLOYMENT_SUBSCRIPTION = "<deployment subscription>"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

# rbac-*.bicep module -> (kind of scope, how its params name the resource)
SCOPE_MODULES = {
    "rbac-keyvault.bicep": ("vault", ("vaultName",)),
    "rbac-storage.bicep": ("storage", ("accountName",)),
    "rbac-container.bicep": ("container", ("accountName", "containerName")),
    "rbac-cosmos.bicep": ("cosmos", ("accountName",)),
    "rbac-site.bicep": ("site", ("siteName",)),
    "rbac-containerapp.bicep": ("containerapp", ("appName",)),
    "rbac-sql.bicep": ("sql", ("serverName",)),
}


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def parse(path: Path) -> dict[str, Any]:
    return dict(_parser().parse(file_path=path))


def walk(node: Any) -> Any:
    """Every dict and list inside `node` (depth first), `node` included."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def evaluate(node: Any, item_name: str, item: dict[str, Any], names: dict[str, Any]) -> Any:
    """Evaluate the expressions rbac.bicep uses on a list entry: `x.prop`, `(x.?prop ?? default)`,
    `!`, `&&`, `||`, literals, parameter names (`names`) and `subscription().subscriptionId`.
    Anything else fails the test: keep the filters that simple (and parenthesized: pycep binds
    `x.a && y` as `x.(a && y)`)."""
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return names.get(node, node)
    operator = node.get("operator") if isinstance(node, dict) else None
    if operator is None:
        raise AssertionError(f"unsupported expression in rbac.bicep: {node}")
    kind, operands = operator["type"], operator["operands"]
    if kind == "or":
        return evaluate(operands["operand_1"], item_name, item, names) or evaluate(operands["operand_2"], item_name, item, names)
    if kind == "and":
        return evaluate(operands["operand_1"], item_name, item, names) and evaluate(operands["operand_2"], item_name, item, names)
    if kind == "not":
        return not evaluate(operands["bool_value"], item_name, item, names)
    if kind == "property_accessor":
        target, key = operands["operand_1"], operands["operand_2"]
        if isinstance(target, dict) and target.get("function", {}).get("type") == "subscription" and key == "subscriptionId":
            return DEPLOYMENT_SUBSCRIPTION
        assert target == item_name, f"unsupported accessor in rbac.bicep: {node}"
        if isinstance(key, dict) and key.get("operator", {}).get("type") == "coalesce":
            inner = key["operator"]["operands"]
            if inner["operand_1"] in item:
                return item[inner["operand_1"]]
            return evaluate(inner["operand_2"], item_name, item, names)
        assert isinstance(key, str), f"unsupported accessor in rbac.bicep: {node}"
        return item[key]
    raise AssertionError(f"unsupported expression in rbac.bicep: {node}")


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """The properties block of a parsed module or resource, whether or not it has a loop or a
    condition (pycep nests those one level deeper)."""
    config = declaration["config"]
    while "config" in config and ("loop_type" in config or "condition" in config):
        config = config["config"]
    return dict(config)


def role_variables(tree: dict[str, Any]) -> dict[str, str]:
    """Variables whose value is a role definition id (a GUID)."""
    return {name: var["value"] for name, var in tree.get("variables", {}).items()
            if isinstance(var.get("value"), str) and GUID.fullmatch(var["value"])}


@dataclass(frozen=True)
class SimulatedGrant:
    """One role assignment module instance of rbac.bicep for one parameter entry."""

    module: str
    kind: str  # "vault", "storage", "container", "cosmos", "site", "sql", "containerapp"
    name: str  # vault / account / "account/container" / cosmos account / site / SQL server
    resource_group: str
    subscription: str
    principal: str
    role_ids: tuple[str, ...]


def simulate_rbac(parameters: dict[str, list[dict[str, Any]]]) -> list[SimulatedGrant]:
    """The role assignments infra/app/rbac.bicep makes for `parameters` (list name -> entries)."""
    tree = parse(INFRA / "app" / "rbac.bicep")
    roles = role_variables(tree)
    variables = tree["variables"]
    names = {"principalId": APP}
    grants: list[SimulatedGrant] = []
    for module_name, module in tree["modules"].items():
        path = module["detail"]["path"]
        kind, name_params = SCOPE_MODULES[path]
        loop = module["config"]["loop_type"]["detail"]
        array, item_name = loop["array_name"], loop["item_name"]
        if array in parameters or array in tree["parameters"]:
            entries = list(parameters.get(array, []))
        else:
            function = variables[array]["value"]["function"]
            assert function["type"] == "filter", f"{module_name}: loop over {array}, which is not a filter of a parameter"
            source = function["parameters"]["input_array"]
            detail = function["parameters"]["expression"]["detail"]
            entries = [e for e in parameters.get(source, []) if evaluate(detail["expression"], detail["var_1"], e, names)]
        config = body(module)
        params = config["params"]
        scope = config["scope"]["function"]["parameters"]
        for entry in entries:
            def value(node: Any, entry: dict[str, Any] = entry, item_name: str = item_name) -> str:
                return str(evaluate(node, item_name, entry, names))

            grants.append(SimulatedGrant(
                module=module_name, kind=kind, name="/".join(value(params[p]) for p in name_params),
                resource_group=value(scope["resource_group_name"]), subscription=value(scope["subscription_id"]),
                principal=value(params["principalId"]), role_ids=tuple(roles[r] for r in params["roleDefinitionIds"]),
            ))
    return grants
