"""Role assignments in infra/ against core/permissions/roles.py and core/permissions/matrix.py.

- every role definition id in a template is a role vaultrelay knows, with its name in a comment;
- assignments are named with guid() and scoped to a resource, never a subscription;
- nothing broad (Owner, Contributor, User Access Administrator) is ever granted;
- the custom roles are exactly core/permissions/roles.py CUSTOM_ROLES (Cosmos DB key reader and operator,
  app settings writer), each no broader than what vaultrelay does;
- for the example config (and a richer one), every role `vaultrelay plan --permissions` says is
  needed is granted by rbac.bicep fed with the rendered parameters, and nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from core.config import LoadedConfig, load_config, parse_config
from core.permissions.matrix import MATRIX, Grant, PermissionReport, compute_permissions, render_bicep_parameters
from core.permissions.roles import (
    APP_SETTINGS_WRITER,
    BUILTIN_ROLES,
    COSMOS_KEY_OPERATOR,
    COSMOS_KEY_READER,
    CUSTOM_ROLES,
    ROLES_BY_NAME,
)
from tests.infra.bicep import (
    APP,
    DEPLOYMENT_SUBSCRIPTION,
    GUID,
    INFRA,
    ROOT,
    SimulatedGrant,
    bicep_files,
    body,
    parse,
    role_variables,
    simulate_rbac,
    walk,
)

KNOWN_ROLES = {**BUILTIN_ROLES, **CUSTOM_ROLES}
BROAD = {"8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "b24988ac-6180-42a0-ab88-20f7382dd24c", "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"}
DATA_IDENTITY = "11111111-2222-3333-4444-555555555555"


def _guid_lines(path: Path) -> list[tuple[int, str, str]]:
    lines = path.read_text().splitlines()
    return [(i, m.group(0), lines[i]) for i, line in enumerate(lines) for m in GUID.finditer(line)]


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_role_id_is_known_and_named_in_a_comment(path: Path) -> None:
    lines = path.read_text().splitlines()
    for index, guid, line in _guid_lines(path):
        role = KNOWN_ROLES.get(guid.lower())
        assert role is not None, f"{path.name}:{index + 1}: {guid} is not a role in core/permissions/roles.py"
        comment = (line.split("//", 1)[1] if "//" in line else "") + " " + (lines[index - 1] if index else "")
        assert role.name.lower() in comment.lower(), f"{path.name}:{index + 1}: {guid} needs a comment naming '{role.name}'"
        assert guid.lower() not in BROAD, f"{path.name}:{index + 1}: {role.name} is too broad"


def _role_assignments() -> list[tuple[Path, str, dict[str, Any]]]:
    return [(path, name, resource) for path in bicep_files() for name, resource in parse(path).get("resources", {}).items()
            if resource["type"] == "Microsoft.Authorization/roleAssignments"]


def test_role_assignments_use_guid_names_and_resource_scopes() -> None:
    assignments = _role_assignments()
    assert assignments
    for path, name, resource in assignments:
        tree = parse(path)
        assert tree["globals"]["scope"]["value"] == "resourceGroup", f"{path.name}: role assignments at subscription scope"
        config = body(resource)
        assert config["name"]["function"]["type"] == "guid", f"{path.name}: {name} is not named with guid()"
        scope, parts = config["scope"], []
        while isinstance(scope, dict) and scope.get("operator", {}).get("type") == "nested_resource_accessor":
            parts.append(scope["operator"]["operands"]["operand_1"])  # account::blobService::container
            scope = scope["operator"]["operands"]["operand_2"]
        target = "__".join([*parts, scope]) if isinstance(scope, str) else None
        assert target in tree["resources"] and tree["resources"][target]["existing"], f"{path.name}: {name} scope {scope}"
        definition = config["properties"]["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id"
        assert definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        assert config["properties"]["principalType"] in ("ServicePrincipal", "principalType")


def test_role_definitions_only_in_the_custom_role_file() -> None:
    definitions = [(p, n) for p in bicep_files() for n, r in parse(p).get("resources", {}).items()
                   if r["type"] == "Microsoft.Authorization/roleDefinitions"]
    assert sorted((p.name, n) for p, n in definitions) == [
        ("custom-roles.bicep", "appSettingsWriterRole"), ("custom-roles.bicep", "cosmosKeyOperatorRole"),
        ("custom-roles.bicep", "cosmosKeyReaderRole")]


def test_custom_roles_match_core() -> None:
    tree = parse(INFRA / "app" / "custom-roles.bicep")
    ids = role_variables(tree)
    defined = {}
    for resource in tree["resources"].values():
        role = body(resource)
        properties = role["properties"]
        assert properties["type"] == "CustomRole" and properties["assignableScopes"] == "scopes"
        [permissions] = properties["permissions"]
        assert permissions["notActions"] == [] and permissions["dataActions"] == [] and permissions["notDataActions"] == []
        defined[ids[role["name"]]] = (properties["roleName"], tuple(permissions["actions"]), properties["description"])
    assert defined == {r.role_id: (r.name, r.actions, r.description) for r in CUSTOM_ROLES.values()}


def test_custom_roles_grant_only_what_vaultrelay_does() -> None:
    """Each custom role's actions are reads of the resource itself or actions the permissions
    matrix needs; reading Cosmos DB keys or connection strings cannot regenerate them, and the app
    settings role cannot deploy, restart or delete the site."""
    needed = {n.action.lower() for needs in MATRIX.values() for n in needs}
    for role in CUSTOM_ROLES.values():
        for action in role.actions:
            assert action.lower().endswith("/read") or action.lower() in needed, (role.name, action)
    regenerate = "Microsoft.DocumentDB/databaseAccounts/regenerateKey/action"
    assert COSMOS_KEY_OPERATOR.allows(regenerate, data=False) and not COSMOS_KEY_READER.allows(regenerate, data=False)
    for action in ("listKeys/action", "listConnectionStrings/action", "readonlykeys/action"):
        assert COSMOS_KEY_READER.allows(f"Microsoft.DocumentDB/databaseAccounts/{action}", data=False)
    assert not COSMOS_KEY_OPERATOR.allows("Microsoft.DocumentDB/databaseAccounts/write", data=False)
    assert not ROLES_BY_NAME["cosmos db account reader role"].allows("Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action", data=False)
    for action in ("config/list/action", "config/write", "slots/config/list/action", "slots/config/write"):
        assert APP_SETTINGS_WRITER.allows(f"Microsoft.Web/sites/{action}", data=False)
    for action in ("write", "delete", "restart/action", "publishxml/action", "slots/write", "extensions/write", "sourcecontrols/write"):
        assert not APP_SETTINGS_WRITER.allows(f"Microsoft.Web/sites/{action}", data=False), action
        assert ROLES_BY_NAME["website contributor"].allows(f"Microsoft.Web/sites/{action}", data=False)  # what it no longer grants


def test_host_roles_on_the_deployment_storage_and_telemetry() -> None:
    """The Functions host needs blob access (owner: deployment packages, leases) on
    AzureWebJobsStorage; the work queue gets message roles on the queues only (no queue
    management, nothing account-wide); vaultrelay's state needs tables; telemetry the publisher role."""
    tree = parse(INFRA / "app" / "host-rbac.bicep")
    roles = role_variables(tree)
    storage_roles = {roles[v] for v in tree["variables"]["storageRoles"]["value"]}
    assert {KNOWN_ROLES[r].name for r in storage_roles} == {"Storage Blob Data Owner", "Storage Table Data Contributor"}
    queue_roles = [KNOWN_ROLES[roles[v]].name for v in tree["variables"]["workQueueRoles"]["value"]]
    assert sorted(queue_roles) == ["Storage Queue Data Message Processor", "Storage Queue Data Message Sender", "Storage Queue Data Reader"]
    assert body(tree["resources"]["workQueueAccess"])["scope"] == "workQueue"
    assert body(tree["resources"]["poisonQueueAccess"])["scope"] == "poisonQueue"
    # What plan --permissions says the work queue needs is what these roles grant.
    from core.permissions.matrix import MATRIX

    for need in MATRIX["state:work_queue"]:
        assert need.role in queue_roles and ROLES_BY_NAME[need.role.lower()].allows(need.action, data=need.data)
    assert not any(ROLES_BY_NAME[n.lower()].allows("Microsoft.Storage/storageAccounts/queueServices/queues/write", data=False)
                   for n in queue_roles)
    telemetry = body(tree["resources"]["telemetryAccess"])
    assert telemetry["scope"] == "appInsights"
    assert KNOWN_ROLES[roles["monitoringMetricsPublisher"]].name == "Monitoring Metrics Publisher"
    own_vault = body(tree["modules"]["ownVaultAccess"])["params"]["roleDefinitionIds"]
    assert [KNOWN_ROLES[roles[v]].name for v in own_vault] == ["Key Vault Secrets Officer"]
    # The state tables live in this account: the grant covers what the matrix says state needs.
    table_role = ROLES_BY_NAME["storage table data contributor"]
    assert table_role.allows("Microsoft.Storage/storageAccounts/tableServices/tables/entities/write", data=True)


def test_dead_letter_role_is_blob_data_contributor_on_the_container_only() -> None:
    tree = parse(INFRA / "app" / "eventgrid.bicep")
    access = tree["modules"]["deadLetterAccess"]
    assert access["detail"]["path"] == "rbac-container.bicep"
    ids = body(access)["params"]["roleDefinitionIds"]
    assert [KNOWN_ROLES[role_variables(tree)[v]].name for v in ids] == ["Storage Blob Data Contributor"]


# ---- the example config's needs are what the template grants -------------------------------
RICH_CONFIG = """
version: 1
secretStores:
  app:
    type: azure.managed_identity
    identity:
      type: user_assigned
      client_id: aaaaaaaa-0000-0000-0000-000000000001
    default_subscription: 00000000-0000-0000-0000-00000000000a
    resources:
      - {type: keyvault, name: kv-src, resource_group: rg-src}
      - {type: keyvault, name: kv-out, resource_group: rg-out}
      - {type: keyvault, name: kv-state, resource_group: rg-state}
      - {type: storage, name: stdata, resource_group: rg-data}
      - {type: storage, name: ststate, resource_group: rg-state}
      - {type: cosmosdb, name: cosmos-rw, resource_group: rg-db, subscription: 00000000-0000-0000-0000-00000000000b}
  team:
    type: azure.managed_identity
    identity:
      type: user_assigned
      object_id: bbbbbbbb-0000-0000-0000-000000000002
envs:
  prod:
    SECRET: {from: {store: app, vault: kv-src, secret: s1}}
    CERT: {from: {store: app, vault: kv-src, secret: c1, type: certificate}}
    JWK: {from: {store: app, vault: kv-src, secret: k1, type: key}}
    KEYONLY: {from: {store: app, vault: kv-out, secret: k2, type: key}}
    STKEY: {from: {store: app, resource_type: storage, account: stdata, key: active, rotate: {every: 30d}}}
    READSAS: {from: {store: app, resource_type: storage, account: stdata, operation: generate_sas, container: logs, permissions: rl, expiry: 1h}}
    TABLESAS: {from: {store: app, resource_type: storage, account: stdata, operation: generate_sas, table: t1, permissions: r, expiry: 1h}}
    COSMOS: {from: {store: app, resource_type: cosmosdb, account: cosmos-rw, key: active, rotate: {every: 30d}}}
    COSMOS_RO: {from: {store: team, resource_type: cosmosdb, account: cosmos-ro, key: primary_readonly, resource_group: rg-ro}}
    TEAM: {from: {store: team, vault: kv-team, secret: t}}
targets:
  out:
    type: keyvault
    env: prod
    store: app
    vault: kv-out
  files:
    type: blob
    env: prod
    store: app
    account: stdata
    container: bundles
  site:
    type: app_settings
    env: prod
    store: app
    site: web1
    resource_group: rg-web
    subscription: 00000000-0000-0000-0000-00000000000c
  staging:
    type: app_settings
    env: prod
    store: app
    site: web2
    slot: staging
    resource_group: rg-web
state:
  store: app
  account: ststate
  vault: kv-state
rotation:
  tagged_secrets:
    - vault: kv-rotated
      store: app
      accounts:
        - /subscriptions/00000000-0000-0000-0000-00000000000d/resourceGroups/rg-sql/providers/Microsoft.Sql/servers/sql1
        - {type: cosmosdb, name: cosmos-tagged, resource_group: rg-db}
        - {type: storage, name: sttagged, resource_group: rg-data}
"""


def _example() -> LoadedConfig:
    return load_config(ROOT / "examples" / "vaultrelay.yaml", environ={"DATA_IDENTITY_CLIENT_ID": DATA_IDENTITY})


def _rich() -> LoadedConfig:
    return parse_config(RICH_CONFIG, "rich.yaml", environ={})


CONFIGS = {
    # The example as planned where it runs: the template's state account and state vault, its system identity.
    "example": (_example, {"VAULTRELAY_STATE_ACCOUNT": "sandboxstore", "VAULTRELAY_STATE_VAULT": "kv-state"}),
    "rich": (_rich, {"AZURE_CLIENT_ID": "aaaaaaaa-0000-0000-0000-000000000001"}),
}
_SCOPE_KIND = {"vault": "vault", "storage": "storage", "table": "storage", "container": "container", "cosmos": "cosmos", "site": "site", "containerapp": "containerapp",
               "sql": "sql", "queue": "queue"}


def _rendered(name: str) -> tuple[PermissionReport, dict[str, Any], list[str], dict[str, str]]:
    factory, environ = CONFIGS[name]
    loaded = factory()
    report = compute_permissions(loaded, environ=environ)
    document, warnings = render_bicep_parameters(report, loaded.config, environ=environ)
    return report, document, warnings, environ


def _principal(grant: Grant, document: dict[str, Any]) -> str:
    identity_type = document["parameters"]["identityType"]["value"]
    app_key = "system-assigned" if identity_type == "SystemAssigned" else None
    if grant.identity.kind == "user_assigned" and identity_type == "UserAssigned" and grant.identity.client_id == "aaaaaaaa-0000-0000-0000-000000000001":
        app_key = grant.identity.key
    if grant.identity.key == app_key:
        return APP
    return grant.identity.object_id or f"<object id of {grant.identity.description}>"


def _granted(grant: Grant, simulated: list[SimulatedGrant], document: dict[str, Any]) -> list[SimulatedGrant]:
    kind = _SCOPE_KIND[grant.scope.kind]
    return [s for s in simulated if s.kind == kind and s.name.lower() == grant.scope.name.lower() and s.principal == _principal(grant, document)]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_needed_role_is_granted_by_the_template(config: str) -> None:
    report, document, _warnings, environ = _rendered(config)
    parameters = {name: p["value"] for name, p in document["parameters"].items() if isinstance(p["value"], list)}
    simulated = simulate_rbac(parameters)
    checked = 0
    for grant in report.grants:
        if grant.optional:
            continue
        if grant.scope.kind == "table" and grant.scope.name.lower() == environ.get("VAULTRELAY_STATE_ACCOUNT", "").lower():
            continue  # the template's own storage account: host-rbac.bicep (tested above)
        if grant.scope.kind == "vault" and grant.scope.name.lower() == environ.get("VAULTRELAY_STATE_VAULT", "").lower():
            continue  # the template's own state vault: host-rbac.bicep (tested below)
        if grant.scope.kind == "queue":
            continue  # the work queue in the template's own storage account: host-rbac.bicep (tested above)
        matches = _granted(grant, simulated, document)
        assert matches, f"nothing granted for {grant.identity.description} on {grant.scope.describe()}"
        roles = [KNOWN_ROLES[r] for s in matches for r in s.role_ids]
        for requirement in grant.requirements:
            need = requirement.need
            assert any(r.allows(need.action, data=need.data) for r in roles), (
                f"{grant.scope.describe()}: {need.action} ({requirement.path}) not granted by {[r.name for r in roles]}")
        if grant.scope.subscription:
            assert all(s.subscription == grant.scope.subscription for s in matches), (grant.scope, matches)
        if grant.scope.resource_group:
            assert all(s.resource_group == grant.scope.resource_group for s in matches), (grant.scope, matches)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_template_grants_nothing_the_config_does_not_need(config: str) -> None:
    report, document, _warnings, _environ = _rendered(config)
    parameters = {name: p["value"] for name, p in document["parameters"].items() if isinstance(p["value"], list)}
    for simulated in simulate_rbac(parameters):
        needed = [g for g in report.grants if not g.optional and _SCOPE_KIND[g.scope.kind] == simulated.kind
                  and g.scope.name.lower() == simulated.name.lower() and _principal(g, document) == simulated.principal]
        assert needed, f"{simulated.module} grants on {simulated.kind} {simulated.name} which nothing needs"
        wanted = {r for g in needed for r in g.roles}
        for role_id in simulated.role_ids:
            assert KNOWN_ROLES[role_id].name in wanted, f"{simulated.module}: {KNOWN_ROLES[role_id].name} on {simulated.name} is more than needed ({wanted})"


def test_rich_config_renders_resource_groups_subscriptions_and_other_identities() -> None:
    report, document, warnings, _ = _rendered("rich")
    values = {name: p["value"] for name, p in document["parameters"].items()}
    assert values["identityType"] == "UserAssigned"
    cosmos = {c["name"]: c for c in values["cosmosAccounts"]}
    assert cosmos["cosmos-rw"] == {"name": "cosmos-rw", "resourceGroup": "rg-db", "subscriptionId": "00000000-0000-0000-0000-00000000000b",
                                   "keys": True, "rotate": True}
    assert cosmos["cosmos-ro"]["readOnlyKeys"] is True and cosmos["cosmos-ro"]["keys"] is False
    assert cosmos["cosmos-ro"]["principalId"] == "bbbbbbbb-0000-0000-0000-000000000002"
    sources = {v["name"]: v for v in values["sourceVaults"]}
    assert sources["kv-src"]["secrets"] is True and sources["kv-src"]["publicKeys"] is True
    assert sources["kv-out"] == {"name": "kv-out", "resourceGroup": "rg-out", "subscriptionId": "00000000-0000-0000-0000-00000000000a",
                                 "secrets": False, "publicKeys": True}
    assert {v["name"] for v in values["targetVaults"]} == {"kv-out", "kv-state", "kv-rotated"}
    # Tagged rotation: each listed account, in its own resource group and subscription, gets the role that rotates it.
    assert values["sqlServers"] == [{"name": "sql1", "resourceGroup": "rg-sql", "subscriptionId": "00000000-0000-0000-0000-00000000000d"}]
    assert cosmos["cosmos-tagged"] == {"name": "cosmos-tagged", "resourceGroup": "rg-db", "subscriptionId": "00000000-0000-0000-0000-00000000000a",
                                       "keys": True, "rotate": True}
    assert {s["name"]: (s.get("keyRead"), s.get("keyRotate"), s["resourceGroup"]) for s in values["storageAccounts"]}["sttagged"] == (
        True, True, "rg-data")
    assert {w["name"] for w in values["webApps"]} == {"web1", "web2"}  # the slot target is granted on its site
    storage = {s["name"]: s for s in values["storageAccounts"]}
    assert storage["stdata"]["keyRead"] and storage["stdata"]["keyRotate"] and storage["stdata"]["userDelegationSas"]
    assert storage["ststate"] == {"name": "ststate", "resourceGroup": "rg-state", "subscriptionId": "00000000-0000-0000-0000-00000000000a",
                                  "tableData": True}
    containers = {c["container"]: c for c in values["blobContainers"]}
    assert containers["logs"]["write"] is False and containers["bundles"]["write"] is True
    assert values["webApps"][0] == {"name": "web1", "resourceGroup": "rg-web", "subscriptionId": "00000000-0000-0000-0000-00000000000c"}
    assert values["additionalUserAssignedIdentityIds"] == [
        "<resource id of user-assigned managed identity (object_id=bbbbbbbb-0000-0000-0000-000000000002)>"]
    assert any("kv-team" in w for w in warnings)  # its resource group is unknown
    assert not any(g.optional for g in report.grants if g.identity.key.startswith("user-assigned:client_id"))


def test_example_renders_placeholders_and_warns_about_them() -> None:
    _report, document, warnings, _ = _rendered("example")
    values = {name: p["value"] for name, p in document["parameters"].items()}
    assert values["identityType"] == "SystemAssigned"  # the example's main store is system-assigned
    assert any(v["resourceGroup"].startswith("<resource group of") for v in values["sourceVaults"])
    assert any("fill in the resource group of kv-source" in w for w in warnings)
    assert any(w.startswith("not granted by the template: Reader") for w in warnings)  # locating accounts
    # The example keeps state in sandboxstore, which is VAULTRELAY_STATE_ACCOUNT here: no extra grant.
    assert not any(s.get("tableData") for s in values["storageAccounts"])


def test_rendered_parameters_match_main_parameters_json() -> None:
    import json

    shipped = json.loads((INFRA / "main.parameters.json").read_text())
    declared = parse(INFRA / "main.bicep")["parameters"]
    for name in CONFIGS:
        _report, document, _warnings, _ = _rendered(name)
        assert set(document["parameters"]) == set(shipped["parameters"]), name
        assert set(document["parameters"]) <= set(declared)
        for key in ("environmentName", "location", "vaultrelayConfig", "syncSchedule"):
            assert document["parameters"][key] == shipped["parameters"][key]
        # Every entry field the renderer writes is a field of the list's type in main.bicep.
        types = parse(INFRA / "main.bicep")["types"]
        for param, type_name in (("sourceVaults", "sourceVaultType"), ("targetVaults", "targetVaultType"),
                                 ("storageAccounts", "storageAccountType"), ("blobContainers", "blobContainerType"),
                                 ("cosmosAccounts", "cosmosAccountType"), ("webApps", "webAppType")):
            fields = set(types[type_name]["value"])
            for entry in document["parameters"][param]["value"]:
                assert set(entry) <= fields, (param, set(entry) - fields)


def test_deployment_subscription_default_is_used_when_entries_name_none() -> None:
    [grant] = simulate_rbac({"webApps": [{"name": "w", "resourceGroup": "rg"}]})
    assert grant.subscription == DEPLOYMENT_SUBSCRIPTION and grant.principal == APP
    assert [KNOWN_ROLES[r].name for r in grant.role_ids] == ["vaultrelay App Settings Writer"]


def test_no_template_mentions_a_broad_role_at_all() -> None:
    for path in bicep_files():
        text = path.read_text().lower()
        for guid in BROAD:
            assert guid not in text, path
        for node in walk(parse(path)):
            if isinstance(node, str):
                assert node.lower() not in {"owner", "contributor", "user access administrator"}, path


def test_the_config_blob_container_gets_blob_data_reader_for_the_app_only_when_set() -> None:
    """VAULTRELAY_CONFIG as a blob URL is read with the app's identity (core/config/source.py):
    main.bicep's configBlobContainer becomes one Storage Blob Data Reader grant on that container."""
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["configBlobContainer"]["default"] == {"account": "", "container": ""}  # no grant by default
    assert body(main["modules"]["configAccess"])["params"]["configContainers"] == "configContainers"
    [grant] = simulate_rbac({"configContainers": [{"account": "stconfig", "container": "config", "resourceGroup": "rg-config"}]})
    assert (grant.kind, grant.name, grant.resource_group, grant.subscription, grant.principal) == (
        "container", "stconfig/config", "rg-config", DEPLOYMENT_SUBSCRIPTION, APP)
    [role] = [KNOWN_ROLES[r] for r in grant.role_ids]
    assert role.name == "Storage Blob Data Reader"
    assert role.allows("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", data=True)
    assert not role.allows("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", data=True)
    assert simulate_rbac({"configContainers": []}) == []


def test_the_state_vault_is_created_for_the_apps_identity_alone() -> None:
    """The state vault keeps user delegation keys, the fingerprint key and minted SAS tokens: the
    template creates it (RBAC, purge protection, no platform access), names it in
    VAULTRELAY_STATE_VAULT, grants Key Vault Secrets Officer to the app's identity and nothing to
    anyone else; rendered parameters never put it in a list that grants other roles or principals."""
    main = parse(INFRA / "main.bicep")
    assert main["parameters"]["createStateVault"]["default"] is True
    params = body(main["modules"]["stateVault"])["params"]
    assert params["name"] == "stateVaultResourceName" and params["enableRbacAuthorization"] is True
    assert params["enablePurgeProtection"] is True and params["enableSoftDelete"] is True
    assert (params["enableVaultForDeployment"], params["enableVaultForTemplateDeployment"], params["enableVaultForDiskEncryption"]) == (
        False, False, False)
    assert "roleAssignments" not in params and "accessPolicies" not in params and "secrets" not in params
    [diagnostics] = params["diagnosticSettings"]  # reads are audited in the workspace
    assert "logAnalytics" in json.dumps(diagnostics["workspaceResourceId"])
    assert main["variables"]["stateVaultSettings"]["value"] == {"VAULTRELAY_STATE_VAULT": "stateVaultResourceName"}
    assert main["outputs"]["VAULTRELAY_STATE_VAULT"]
    host = parse(INFRA / "app" / "host-rbac.bicep")
    access = body(host["modules"]["ownVaultAccess"])["params"]
    assert access["principalId"] == "principalId" and access["vaultName"] == "stateVaultName"
    assert [KNOWN_ROLES[role_variables(host)[v]].name for v in access["roleDefinitionIds"]] == ["Key Vault Secrets Officer"]
    # The example's state.vault is ${VAULTRELAY_STATE_VAULT:-kv-state}: where it runs, that is the template's vault.
    environ = {"DATA_IDENTITY_CLIENT_ID": DATA_IDENTITY, "VAULTRELAY_STATE_ACCOUNT": "sandboxstore", "VAULTRELAY_STATE_VAULT": "kv-vrs-abc"}
    loaded = load_config(ROOT / "examples" / "vaultrelay.yaml", environ=environ)
    assert loaded.config.state is not None and loaded.config.state.vault == "kv-vrs-abc"
    document, _ = render_bicep_parameters(compute_permissions(loaded, environ=environ), loaded.config, environ=environ)
    granted = [e for name in ("sourceVaults", "targetVaults") for e in document["parameters"][name]["value"]]
    assert granted and not any(e["name"] == "kv-vrs-abc" for e in granted)
    # A state.vault that is not the template's is granted like any vault vaultrelay writes.
    elsewhere = {**environ, "VAULTRELAY_STATE_VAULT": "kv-other"}
    document, _ = render_bicep_parameters(compute_permissions(loaded, environ=elsewhere), loaded.config, environ=elsewhere)
    assert "kv-vrs-abc" in [e["name"] for e in document["parameters"]["targetVaults"]["value"]]


def test_a_config_that_only_reads_cosmos_connection_strings_and_writes_app_settings_gets_no_broad_role() -> None:
    """Issue 14 item 12: `plan --permissions` and the template agree on the least roles, and they
    cannot regenerate a Cosmos DB key or deploy to, restart or delete a site."""
    loaded = parse_config("""
version: 1
secretStores:
  s: {type: azure.managed_identity}
envs:
  e:
    COSMOS: {from: {store: s, resource_type: cosmosdb, account: cdb, resource_group: rg, format: connection_string}}
    RW_KEY: {from: {store: s, resource_type: cosmosdb, account: cdb2, resource_group: rg, key: primary}}
targets:
  app: {type: app_settings, env: e, store: s, site: web, resource_group: rg}
  slot: {type: app_settings, env: e, store: s, site: web, slot: staging, resource_group: rg}
state: {store: s, account: stateacct}
""", "t.yaml", environ={})
    environ = {"VAULTRELAY_STATE_ACCOUNT": "stateacct"}
    report = compute_permissions(loaded, environ=environ)
    document, _ = render_bicep_parameters(report, loaded.config, environ=environ)
    simulated = simulate_rbac({name: p["value"] for name, p in document["parameters"].items() if isinstance(p["value"], list)})
    planned = {(g.scope.kind, g.scope.name): set(g.roles) for g in report.grants if g.scope.kind not in ("table", "queue")}  # state, work queue: host-rbac.bicep
    granted: dict[tuple[str, str], set[str]] = {}
    for grant in simulated:
        granted.setdefault((grant.kind, grant.name), set()).update(KNOWN_ROLES[r].name for r in grant.role_ids)
    assert planned == granted == {("cosmos", "cdb"): {"vaultrelay Cosmos DB Key Reader"}, ("cosmos", "cdb2"): {"vaultrelay Cosmos DB Key Reader"},
                                  ("site", "web"): {"vaultrelay App Settings Writer"}}
    roles = [KNOWN_ROLES[r] for grant in simulated for r in grant.role_ids]
    assert not any(r.allows("Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", data=False) for r in roles)
    assert not any(r.allows("Microsoft.Web/sites/write", data=False) or r.allows("Microsoft.Web/sites/delete", data=False) for r in roles)


def test_a_state_vault_used_by_another_identity_is_granted_to_that_identity() -> None:
    """host-rbac.bicep grants the template's state vault to the app's identity only; a state store
    on another identity gets its own targetVaults entry (with its principalId)."""
    loaded = parse_config("""
version: 1
secretStores:
  team: {type: azure.managed_identity, identity: {type: user_assigned, object_id: bbbbbbbb-0000-0000-0000-000000000002}}
envs: {}
state: {store: team, account: stateacct, vault: kv-s}
""", "t.yaml", environ={})
    environ = {"VAULTRELAY_STATE_ACCOUNT": "stateacct", "VAULTRELAY_STATE_VAULT": "kv-s"}
    document, _ = render_bicep_parameters(compute_permissions(loaded, environ=environ), loaded.config, environ=environ)
    [entry] = document["parameters"]["targetVaults"]["value"]
    assert entry["name"] == "kv-s" and entry["principalId"] == "bbbbbbbb-0000-0000-0000-000000000002"
