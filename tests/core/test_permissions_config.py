"""Per-config permissions: which identity needs which least roles on which scope, the Bicep
parameters they render to, and `vaultrelay plan --permissions` (no network, no sandbox)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from core.cli import EXIT_CONFIG, EXIT_OK, main
from core.config import load_config, parse_config
from core.permissions.matrix import (
    MATRIX,
    compute_permissions,
    format_permissions,
    least_roles,
    render_bicep_parameters,
)
from tests.configs import config_yaml, mi_store, ref, secret_ref

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vaultrelay.yaml"
DATA_ID = "11111111-2222-3333-4444-555555555555"
# Variables the sandbox fixture may have put into the process environment.
AMBIENT = ("AZURE_CLIENT_ID", "AZURE_SUBSCRIPTION_ID", "VAULTRELAY_SUBSCRIPTION_ID", "VAULTRELAY_STATE_ACCOUNT", "VAULTRELAY_CONFIG")


def roles_by_scope(report: object) -> dict[tuple[str, str, str], tuple[str, ...]]:
    return {(g.identity.key, g.scope.kind, g.scope.name): g.roles for g in report.grants}  # type: ignore[attr-defined]


def test_least_roles_drops_roles_another_chosen_role_covers() -> None:
    assert least_roles([*MATRIX["source:keyvault_secret"], *MATRIX["target:keyvault"]]) == ("Key Vault Secrets Officer",)
    assert least_roles([*MATRIX["source:cosmos_readonly_key"], *MATRIX["source:cosmos_key"]]) == ("vaultrelay Cosmos DB Key Reader",)
    assert least_roles([*MATRIX["source:cosmos_connection_string"], *MATRIX["rotate:cosmos_key"]]) == ("vaultrelay Cosmos DB Key Operator",)
    assert least_roles(MATRIX["source:cosmos_connection_string"]) == ("vaultrelay Cosmos DB Key Reader",)
    assert least_roles(MATRIX["source:cosmos_readonly_key"]) == ("Cosmos DB Account Reader Role",)
    storage = least_roles([*MATRIX["source:storage_key"], *MATRIX["source:sas_user_delegation_read"][:1]])
    assert storage == ("Storage Account Key Operator Service Role", "Storage Blob Delegator")
    assert least_roles([]) == ()


def test_example_config_needs() -> None:
    loaded = load_config(EXAMPLE, environ={"DATA_IDENTITY_CLIENT_ID": DATA_ID})
    report = compute_permissions(loaded, environ={})
    got = roles_by_scope(report)
    data = f"user-assigned:client_id={DATA_ID}"
    assert got[("system-assigned", "vault", "kv-source")] == ("Key Vault Secrets User",)
    assert got[("system-assigned", "vault", "kv-target")] == ("Key Vault Secrets Officer",)  # the target
    assert got[("system-assigned", "vault", "kv-state")] == ("Key Vault Secrets Officer",)  # state.vault, a vault of its own
    assert got[(data, "vault", "kv-shared")] == ("Key Vault Secrets User",)
    assert got[("system-assigned", "storage", "sandboxstore")] == ("Storage Account Key Operator Service Role", "Storage Blob Delegator")
    assert got[("system-assigned", "container", "sandboxstore/uploads")] == ("Storage Blob Data Contributor",)  # rcw
    assert got[("system-assigned", "container", "sandboxdata/bundles")] == ("Storage Blob Data Contributor",)
    assert got[("system-assigned", "cosmos", "sandbox-cosmos")] == ("vaultrelay Cosmos DB Key Reader",)  # a connection string: no regeneration
    assert got[("system-assigned", "site", "sandbox-web")] == ("vaultrelay App Settings Writer",)
    assert got[("system-assigned", "table", "sandboxstore")] == ("Storage Table Data Contributor",)
    locate = next(g for g in report.grants if g.scope.kind == "subscription")
    assert locate.optional and locate.roles == ("Reader",)
    assert any("contained database user in myserver.database.windows.net/mydb" in n for n in report.notes)
    assert any("https://graph.microsoft.com" in n for n in report.notes)
    capabilities = {c for g in report.grants for c in g.capabilities}
    assert "rotate:storage_key" in capabilities  # STORAGE_KEY rotates


def test_user_delegation_sas_read_only_needs_blob_data_reader() -> None:
    text = config_yaml(stores={"s": mi_store()}, envs={
        "e": {
            "READ": ref("s", resource_type="storage", account="acct", resource_group="rg", operation="generate_sas",
                        container="c", permissions="rl", expiry="1h"),
        },
    })
    report = compute_permissions(parse_config(text, "t.yaml", environ={}), environ={})
    got = roles_by_scope(report)
    assert got[("system-assigned", "storage", "acct")] == ("Storage Blob Delegator",)
    assert got[("system-assigned", "container", "acct/c")] == ("Storage Blob Data Reader",)
    assert not any(g.optional for g in report.grants)  # a resource group was given: no subscription listing


def test_envs_filter_limits_references_and_targets() -> None:
    text = config_yaml(stores={"s": mi_store()}, state={"store": "s", "account": "ststate"}, envs={
        "a": {"X": secret_ref("x", vault="kv-a", store="s")},
        "b": {"Y": secret_ref("y", vault="kv-b", store="s")},
    }, targets={"out": {"type": "keyvault", "env": "b", "store": "s", "vault": "kv-out"}})
    loaded = parse_config(text, "t.yaml", environ={})
    only_a = {g.scope.name for g in compute_permissions(loaded, envs=["a"], environ={}).grants}
    assert only_a == {"kv-a"}
    only_b = {g.scope.name for g in compute_permissions(loaded, envs=["b"], environ={}).grants}
    assert only_b == {"kv-b", "kv-out", "ststate", "vaultrelay-work"}  # state: its tables and the work queue


def test_service_principal_stores_are_reported_but_not_rendered() -> None:
    legacy = {"type": "azure.keyvault", "vault_name": "kv-old",
              "auth": {"client_id": "c0ffee00-0000-0000-0000-000000000000", "client_secret": "x", "tenant_id": "t"}}
    text = config_yaml(stores={"legacy": legacy}, envs={"e": {"X": ref("legacy", secret="x")}})
    report = compute_permissions(parse_config(text, "t.yaml", environ={}), environ={})
    [grant] = report.grants
    assert grant.identity.kind == "service_principal" and grant.scope.name == "kv-old"
    document, warnings = render_bicep_parameters(report, environ={})
    assert document["parameters"]["sourceVaults"]["value"] == []
    assert any("not a managed identity" in w for w in warnings)


def test_format_permissions_groups_by_identity() -> None:
    loaded = load_config(EXAMPLE, environ={"DATA_IDENTITY_CLIENT_ID": DATA_ID})
    text = format_permissions(compute_permissions(loaded, environ={}))
    assert text.startswith(f"permissions for {EXAMPLE}")
    assert "system-assigned managed identity of the Function app" in text
    assert f"user-assigned managed identity (client_id={DATA_ID})" in text
    assert "key vault kv-source: Key Vault Secrets User" in text
    assert "(avoidable: give the resource group)" in text
    assert "outside Azure RBAC:" in text


@pytest.fixture()
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AMBIENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_IDENTITY_CLIENT_ID", DATA_ID)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_plan_permissions(quiet_env: None) -> None:
    code, out, _err = run("--config", str(EXAMPLE), "plan", "--permissions")
    assert code == EXIT_OK
    assert "key vault kv-target: Key Vault Secrets Officer" in out
    code, out_env, _ = run("--config", str(EXAMPLE), "plan", "--permissions", "--env", "production")
    assert code == EXIT_OK and out_env == out  # the example has one env


def test_cli_plan_bicep_params(quiet_env: None, tmp_path: Path) -> None:
    target = tmp_path / "params.json"
    code, out, err = run("--config", str(EXAMPLE), "plan", "--permissions", "--bicep-params", str(target))
    assert code == EXIT_OK and f"wrote {target}" in out
    document = json.loads(target.read_text())
    shipped = json.loads((ROOT / "infra" / "main.parameters.json").read_text())
    assert set(document["parameters"]) == set(shipped["parameters"])
    assert document["parameters"]["identityType"]["value"] == "SystemAssigned"
    assert "warning: sourceVaults: fill in the resource group of kv-source" in err
    code, out, _ = run("--config", str(EXAMPLE), "plan", "--bicep-params", "-")
    assert code == EXIT_OK and '"$schema"' in out


def test_cli_plan_usage_errors(quiet_env: None) -> None:
    code, _, err = run("--config", str(EXAMPLE), "plan")
    assert code == EXIT_CONFIG and "plan needs --env" in err
    code, _, err = run("--config", str(EXAMPLE), "plan", "--permissions", "--env", "nope")
    assert code == EXIT_CONFIG and "no env 'nope'" in err


def test_unset_azure_client_id_in_a_fallback_is_the_apps_identity() -> None:
    text = config_yaml(stores={"kv": mi_store(fallback=[
                {
                    "type": "managed_identity",
                    "identity": {"type": "user_assigned", "client_id": "${AZURE_CLIENT_ID}"},
                },
                {"type": "azure_cli"},
            ])}, envs={"production": {"X": ref("kv", vault="kv-source", secret="x", subscription="s1")}})
    loaded = parse_config(text, "t.yaml", environ={})
    report = compute_permissions(loaded, environ={})
    [grant] = report.grants
    assert grant.identity.description == "user-assigned managed identity (client_id=${AZURE_CLIENT_ID}, not set here)"
    document, _ = render_bicep_parameters(report, loaded.config, environ={})
    assert document["parameters"]["identityType"]["value"] == "UserAssigned"
    assert document["parameters"]["sourceVaults"]["value"] == [
        {"name": "kv-source", "resourceGroup": "<resource group of kv-source>", "subscriptionId": "s1", "secrets": True}]
    assert document["parameters"]["additionalUserAssignedIdentityIds"]["value"] == []


def test_tagged_secret_rotation_needs_secrets_officer_on_the_vault_and_the_rotating_role_on_each_listed_account() -> None:
    text = config_yaml(stores={"azure": mi_store(default_subscription="s0")}, state={"store": "azure", "account": "stateacct"},
                       envs={}, rotation={
        "tagged_secrets": [
            {
                "vault": "kv-rotated",
                "store": "azure",
                "accounts": [
                    "/subscriptions/s1/resourceGroups/rg1/providers/Microsoft.Storage/storageAccounts/st1",
                    {"type": "cosmosdb", "name": "cdb", "resource_group": "rg2"},
                    {"type": "sql", "name": "sql1", "resource_group": "rg3", "subscription": "s3"},
                ],
            },
        ],
    })
    report = compute_permissions(parse_config(text, "t.yaml", environ={}), environ={})
    grant = next(g for g in report.grants if g.scope.kind == "vault" and g.scope.name == "kv-rotated")
    assert grant.roles == ("Key Vault Secrets Officer",) and list(grant.capabilities) == ["rotation:tagged"]
    accounts = {(g.scope.kind, g.scope.name, g.scope.subscription, g.scope.resource_group): g.roles for g in report.grants
                if g.scope.kind in ("storage", "cosmos", "sql")}
    assert accounts == {
        ("storage", "st1", "s1", "rg1"): ("Storage Account Key Operator Service Role",),
        ("cosmos", "cdb", "s0", "rg2"): ("vaultrelay Cosmos DB Key Operator",),
        ("sql", "sql1", "s3", "rg3"): ("SQL Server Contributor",),
    }
    assert not any(g.optional for g in report.grants)  # every listed account names its resource group
    assert not report.notes
    # Planning one env's needs leaves the whole-config rotation out.
    assert not any(g.scope.name == "kv-rotated" for g in compute_permissions(parse_config(text, "t.yaml", environ={}), envs=[], environ={}).grants)
