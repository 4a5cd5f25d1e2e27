"""The permissions matrix: what each thing vaultrelay does needs in Azure, and the least role.

One source of truth for `vaultrelay plan --permissions`, the Bicep role assignments (checked by
tests) and the hints attached to 403 errors.  Each need names the Azure action, whether it is a
data action, the resource kind whose scope it applies to, and the least built-in (or vaultrelay's
custom) role that grants it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.permissions.roles import ROLES_BY_NAME, RoleDefinition

if TYPE_CHECKING:
    from core.config import Config, LoadedConfig, Reference


@dataclass(frozen=True)
class Need:
    """One Azure permission a capability needs."""

    action: str
    data: bool
    scope_kind: str  # "vault", "storage", "container", "cosmos", "site", "table"
    role: str  # least role name granting it
    why: str

    @property
    def role_definition(self) -> RoleDefinition:
        return ROLES_BY_NAME[self.role.lower()]


_KV_GET = Need("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, "vault", "Key Vault Secrets User", "read secret values")
_KV_KEY_READ = Need("Microsoft.KeyVault/vaults/keys/read", True, "vault", "Key Vault Reader", "read public keys")
_KV_SET = Need("Microsoft.KeyVault/vaults/secrets/setSecret/action", True, "vault", "Key Vault Secrets Officer", "write secrets")
_KV_LIST = Need("Microsoft.KeyVault/vaults/secrets/readMetadata/action", True, "vault", "Key Vault Secrets Officer", "list owned secrets and their tags")
_KV_DELETE = Need("Microsoft.KeyVault/vaults/secrets/delete", True, "vault", "Key Vault Secrets Officer", "delete secrets removed from an env")
_KV_READ_BACK = Need("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, "vault", "Key Vault Secrets Officer",
                     "read a pushed secret back when it changed since vaultrelay's write (drift)")
_KV_RECOVER = Need("Microsoft.KeyVault/vaults/secrets/recover/action", True, "vault", "Key Vault Secrets Officer",
                   "recover vaultrelay's own soft-deleted secret when its variable comes back")
_KV_CERT_IMPORT = Need("Microsoft.KeyVault/vaults/certificates/import/action", True, "vault", "Key Vault Certificates Officer",
                       "import certificates (certificates: certificate)")
_ST_LISTKEYS = Need("Microsoft.Storage/storageAccounts/listkeys/action", False, "storage", "Storage Account Key Operator Service Role", "list account keys")
_ST_REGEN = Need("Microsoft.Storage/storageAccounts/regeneratekey/action", False, "storage", "Storage Account Key Operator Service Role", "regenerate account keys")
_ST_UDK = Need("Microsoft.Storage/storageAccounts/blobServices/generateUserDelegationKey/action", False, "storage", "Storage Blob Delegator", "get a user delegation key")
_BLOB_READ = Need("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read", True, "container", "Storage Blob Data Reader", "what a read-only user delegation SAS grants")
_BLOB_WRITE = Need("Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", True, "container", "Storage Blob Data Contributor", "write blobs (or what a writable user delegation SAS grants)")
# Cosmos DB: no built-in role lists keys or connection strings without being able to change the
# whole account, so reading is "vaultrelay Cosmos DB Key Reader" and only rotation adds
# regenerateKey ("vaultrelay Cosmos DB Key Operator"); listConnectionStrings returns the
# read-write connection strings, so it is a key read like listKeys.
_COSMOS_KEYS = Need("Microsoft.DocumentDB/databaseAccounts/listKeys/action", False, "cosmos", "vaultrelay Cosmos DB Key Reader", "list read-write keys")
_COSMOS_RO = Need("Microsoft.DocumentDB/databaseAccounts/readonlykeys/action", False, "cosmos", "Cosmos DB Account Reader Role", "list read-only keys")
_COSMOS_CS = Need("Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action", False, "cosmos", "vaultrelay Cosmos DB Key Reader", "list connection strings")
_COSMOS_REGEN = Need("Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", False, "cosmos", "vaultrelay Cosmos DB Key Operator", "regenerate keys")
# App settings: list (POST .../config/appsettings/list) and replace (PUT .../config/appsettings),
# on the site or one of its slots; nothing else of the site (Website Contributor could deploy,
# restart, delete it).
_SITE_LIST = Need("Microsoft.Web/sites/config/list/action", False, "site", "vaultrelay App Settings Writer", "read app settings to merge")
_SITE_WRITE = Need("Microsoft.Web/sites/config/write", False, "site", "vaultrelay App Settings Writer", "write app settings")
_SLOT_LIST = Need("Microsoft.Web/sites/slots/config/list/action", False, "site", "vaultrelay App Settings Writer", "read a slot's app settings to merge")
_SLOT_WRITE = Need("Microsoft.Web/sites/slots/config/write", False, "site", "vaultrelay App Settings Writer", "write a slot's app settings")
# A SQL server's administrator password (tagged rotation): read the server, PATCH it.
_SQL_READ = Need("Microsoft.Sql/servers/read", False, "sql", "SQL Server Contributor", "read the server's administrator login")
_SQL_SET = Need("Microsoft.Sql/servers/write", False, "sql", "SQL Server Contributor", "set the server's administrator password")
_SITE_CONFIG_READ = Need("Microsoft.Web/sites/config/read", False, "site", "vaultrelay App Settings Writer", "read the slot-sticky setting names")
# The work queue in the Function app's own storage (core.app.work): planners enqueue (sender),
# the queue trigger and `vaultrelay worker` receive and delete (processor) and read the queue's
# length (reader: the trigger's scaling).  Infra grants them on the queue itself (host-rbac.bicep).
_QUEUE_SEND = Need("Microsoft.Storage/storageAccounts/queueServices/queues/messages/add/action", True, "queue",
                   "Storage Queue Data Message Sender", "enqueue work items (timer, POST /api/sync, events, rotations)")
_QUEUE_PROCESS = Need("Microsoft.Storage/storageAccounts/queueServices/queues/messages/process/action", True, "queue",
                      "Storage Queue Data Message Processor", "receive and delete work items (the queue trigger, vaultrelay worker)")
_QUEUE_READ = Need("Microsoft.Storage/storageAccounts/queueServices/queues/read", False, "queue",
                   "Storage Queue Data Reader", "read the work queue's length (the trigger scales on it)")
_SITE_REFERENCES = Need("Microsoft.Web/sites/config/read", False, "site", "vaultrelay App Settings Writer",
                        "read App Service's status of the Key Vault references it wrote")
_KV_RESOLVE = Need("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, "vault", "Key Vault Secrets User",
                   "resolve the site's Key Vault references (App Service reads them with the site's identity)")
# Container Apps: read the app and its secrets (listSecrets), PATCH it, restart its active revision.
# Container Apps Contributor is the least built-in role with listSecrets and write.
_APP_READ = Need("Microsoft.App/containerApps/read", False, "containerapp", "Container Apps Contributor", "read the app (its active revision)")
_APP_SECRETS = Need("Microsoft.App/containerApps/listSecrets/action", False, "containerapp", "Container Apps Contributor",
                    "read the app's secrets to merge them (PATCH replaces the array)")
_APP_WRITE = Need("Microsoft.App/containerApps/write", False, "containerapp", "Container Apps Contributor", "write the app's secrets")
_APP_RESTART = Need("Microsoft.App/containerApps/revisions/restart/action", False, "containerapp", "Container Apps Contributor",
                    "restart the active revision so it reads the new secrets")
_TABLE_RW = Need("Microsoft.Storage/storageAccounts/tableServices/tables/entities/write", True, "table", "Storage Table Data Contributor", "vaultrelay state")

# capability -> needs.  Capabilities are named "<area>:<what>".
MATRIX: dict[str, tuple[Need, ...]] = {
    "source:keyvault_secret": (_KV_GET,),
    "source:keyvault_certificate": (_KV_GET,),
    "source:keyvault_key": (_KV_KEY_READ,),
    "source:storage_key": (_ST_LISTKEYS,),
    "source:sas_account": (_ST_LISTKEYS,),
    "source:sas_service": (_ST_LISTKEYS,),
    "source:sas_user_delegation_read": (_ST_UDK, _BLOB_READ),
    "source:sas_user_delegation_write": (_ST_UDK, _BLOB_WRITE),
    "source:cosmos_key": (_COSMOS_KEYS,),
    "source:cosmos_readonly_key": (_COSMOS_RO,),
    "source:cosmos_connection_string": (_COSMOS_CS,),
    "source:sql": (),
    "source:token": (),
    "rotate:storage_key": (_ST_LISTKEYS, _ST_REGEN),
    "rotate:cosmos_key": (_COSMOS_KEYS, _COSMOS_REGEN),
    # rotation.tagged_secrets accounts: the alternate key is listed (read-write or read-only) and regenerated.
    "rotate:tagged_cosmos_key": (_COSMOS_KEYS, _COSMOS_RO, _COSMOS_REGEN),
    "rotate:sql_password": (_SQL_READ, _SQL_SET),
    "target:keyvault": (_KV_SET, _KV_LIST, _KV_DELETE, _KV_READ_BACK, _KV_RECOVER),
    "target:keyvault_certificates": (_KV_CERT_IMPORT,),
    "target:blob": (_BLOB_WRITE,),
    "target:app_settings": (_SITE_LIST, _SITE_WRITE),
    "target:app_settings_slot": (_SLOT_LIST, _SLOT_WRITE),
    "target:app_settings_slot_setting": (_SITE_CONFIG_READ, _SITE_WRITE),
    "target:app_settings_references": (_SITE_REFERENCES,),
    "site:keyvault_reference": (_KV_RESOLVE,),
    "target:container_app": (_APP_READ, _APP_SECRETS, _APP_WRITE, _APP_RESTART),
    "target:webhook": (),
    "state:tables": (_TABLE_RW,),
    "state:work_queue": (_QUEUE_SEND, _QUEUE_PROCESS, _QUEUE_READ),
}


def needs_for(capability: str) -> tuple[Need, ...]:
    """The needs of a capability.

    Raises:
        KeyError: unknown capability.
    """
    return MATRIX[capability]


def role_hint_for_action(action: str) -> str | None:
    """The least role that grants `action`, for error messages; None if unknown."""
    lowered = action.lower()
    for needs in MATRIX.values():
        for need in needs:
            if need.action.lower() == lowered:
                return need.role
    return None


# ---- 403s: which role was missing, where ------------------------------------------------------
_DENIED_ACTION = re.compile(r"(?:Action: '|perform action ')([A-Za-z0-9./_-]+)'")
_DENIED_SCOPE = re.compile(r"(?:Resource: '|over scope ')(/[^'\s]+)'")
_RESOURCE_LABELS = {
    "microsoft.keyvault/vaults": "key vault", "microsoft.storage/storageaccounts": "storage account",
    "microsoft.documentdb/databaseaccounts": "Cosmos DB account", "microsoft.web/sites": "site", "microsoft.app/containerapps": "container app", "microsoft.sql/servers": "SQL server",
}
_STORAGE = "Microsoft.Storage/storageAccounts"


def describe_resource(resource_id: str) -> str:
    """'key vault kv-source', 'blob container acct/c', 'subscription <id>': the resource an ARM id
    or RBAC scope names, as people say it (objects inside a vault count as the vault)."""
    parts = [p for p in resource_id.split("/") if p]
    lowered = [p.lower() for p in parts]
    if "providers" in lowered:
        at = lowered.index("providers")
        kind, name = "/".join(lowered[at + 1:at + 3]), (parts[at + 3] if len(parts) > at + 3 else "")
        rest = lowered[at + 4:]
        if kind == "microsoft.storage/storageaccounts" and len(rest) >= 4 and rest[2] in ("containers", "tables"):
            return f"{'blob container' if rest[2] == 'containers' else 'table'} {name}/{parts[at + 7]}"
        return f"{_RESOURCE_LABELS.get(kind, kind)} {name}".strip()
    if "resourcegroups" in lowered:
        return f"resource group {parts[lowered.index('resourcegroups') + 1]}"
    if "subscriptions" in lowered and len(parts) > lowered.index("subscriptions") + 1:
        return f"subscription {parts[lowered.index('subscriptions') + 1]}"
    return resource_id


def _storage_denial(request: Any) -> tuple[str | None, str | None]:
    """(action, place) of a storage data-plane request Azure refused: its 403
    (AuthorizationPermissionMismatch) names neither, so they follow from the request."""
    from urllib.parse import parse_qs, urlsplit

    url = urlsplit(str(getattr(request, "url", "") or ""))
    labels = (url.hostname or "").split(".")
    if len(labels) < 3 or labels[1] not in ("blob", "table"):
        return None, None
    account, service = labels[0], labels[1]
    method = str(getattr(request, "method", "GET")).upper()
    query = {k.lower(): v[-1].lower() for k, v in parse_qs(url.query).items()}
    parts = [p for p in url.path.split("/") if p]
    if service == "blob":
        if not parts:
            if query.get("comp") == "userdelegationkey":
                return f"{_STORAGE}/blobServices/generateUserDelegationKey/action", f"storage account {account}"
            return None, f"storage account {account}"
        verb = "read" if method in ("GET", "HEAD") else ("delete" if method == "DELETE" else "write")
        return f"{_STORAGE}/blobServices/containers/blobs/{verb}", f"blob container {account}/{parts[0]}"
    verb = "read" if method in ("GET", "HEAD") else ("delete" if method == "DELETE" else "write")
    if parts and parts[0].lower().startswith("tables"):  # the table list itself: create, delete, list
        return f"{_STORAGE}/tableServices/tables/{verb}", f"storage account {account}"
    return f"{_STORAGE}/tableServices/tables/entities/{verb}", f"storage account {account}"


def denied_role_hint(exc: BaseException, capability: str | None = None) -> str | None:
    """For a 403 from Azure: "needs '<least role>' on <resource> (denied: <action>)".

    The action and resource come from the answer (Key Vault and ARM name them) or, for storage
    data-plane answers that do not, from the refused request.  With `capability` (what the caller
    was doing, e.g. "target:blob") the role is the one `plan --permissions` names for it (a blob
    target reads before it writes: the denied read still needs Storage Blob Data Contributor);
    without, the matrix's least role for the denied action.  None when nothing useful can be said.
    """
    text = str(getattr(exc, "message", None) or exc)
    found_action = _DENIED_ACTION.search(text)
    found_scope = _DENIED_SCOPE.search(text)
    action = found_action.group(1) if found_action else None
    place = describe_resource(found_scope.group(1)) if found_scope else None
    if action is None:
        response = getattr(exc, "response", None)
        action, storage_place = _storage_denial(getattr(response, "request", None))
        place = place or storage_place
    role: str | None = None
    if capability is not None and MATRIX.get(capability):
        roles = least_roles(MATRIX[capability])
        role = roles[0] if len(roles) == 1 else None
    if role is None and action:
        role = role_hint_for_action(action)
    if role is None:
        return f"missing permission for {action}" + (f" on {place}" if place else "") if action else None
    return f"needs '{role}'" + (f" on {place}" if place else "") + (f" (denied: {action})" if action else "")


def denied_note(exc: BaseException, capability: str) -> str:
    """": needs '<role>' on <resource> (denied: <action>)" for a 403 from Azure, else ""; for
    messages that already say what failed (targets, state)."""
    if not is_access_denied(exc):
        return ""
    hint = denied_role_hint(exc, capability)
    return f": {hint}" if hint else ""


def user_delegation_sas_hint(account: str, container: str, permissions: str) -> str:
    """Why a freshly minted user delegation SAS was refused: Azure checks the RBAC of the
    identity that got the delegation key each time the SAS is used, so it must hold the data role."""
    write = bool(set(permissions) - _SAS_READ_LETTERS)
    role = (_BLOB_WRITE if write else _BLOB_READ).role
    return (f"needs '{role}' on blob container {account}/{container} (a user delegation SAS grants at most "
            f"what the identity that signs it may do)")


def is_access_denied(exc: BaseException) -> bool:
    """Azure answered 403 for lack of a role (not a disabled secret or a failed signature)."""
    if getattr(exc, "status_code", None) != 403:
        return False
    code = str(getattr(exc, "error_code", None) or "")
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    code = code or str(headers.get("x-ms-error-code", ""))
    text = str(getattr(exc, "message", None) or exc)
    return code not in ("SecretDisabled", "AuthenticationFailed", "AuthorizationFailure", "KeyBasedAuthenticationNotPermitted") and "disabled" not in text.lower()


# ---- per-config permissions: who needs what, where --------------------------------------------
# Needs that only exist because a reference names no resource group: vaultrelay then finds the
# resource by listing the subscription.  Giving `resource_group` (or a `resources:` entry, or a
# target's `resource_group`) removes them; the Bicep template never grants them.
_LOCATE_STORAGE = Need("Microsoft.Storage/storageAccounts/read", False, "subscription", "Reader", "find a storage account's resource group by listing the subscription")
_LOCATE_COSMOS = Need("Microsoft.DocumentDB/databaseAccounts/read", False, "subscription", "Reader", "find a Cosmos DB account's resource group by listing the subscription")
_LOCATE_SITE = Need("Microsoft.Web/sites/read", False, "subscription", "Reader", "find a site's resource group by listing the subscription")
_LOCATE_CONTAINERAPP = Need("Microsoft.App/containerApps/read", False, "subscription", "Reader",
                            "find a container app's resource group by listing the subscription")
_KV_READ_BACK = Need("Microsoft.KeyVault/vaults/secrets/getSecret/action", True, "vault", "Key Vault Secrets User", "read back minted SAS tokens and the fingerprint key")

MATRIX.update({
    "state:vault": (_KV_SET, _KV_LIST, _KV_READ_BACK),
    # rotation.tagged_secrets: list the vault's tagged secrets, write their new versions.
    "rotation:tagged": (_KV_SET, _KV_LIST),
    "locate:storage": (_LOCATE_STORAGE,),
    "locate:cosmos": (_LOCATE_COSMOS,),
    "locate:site": (_LOCATE_SITE,),
    "locate:containerapp": (_LOCATE_CONTAINERAPP,),
})

# Letters of a user delegation (Blob) SAS that need more than Storage Blob Data Reader.
_SAS_READ_LETTERS = frozenset("rl")
SYSTEM_ASSIGNED = "system-assigned"


@dataclass(frozen=True)
class IdentityRef:
    """Which credential a store uses, as far as Azure RBAC is concerned."""

    key: str  # "system-assigned", "user-assigned:client_id=...", "service-principal:<client id>", "other:<what>"
    description: str
    kind: str  # "system_assigned", "user_assigned", "service_principal", "site" (a site's own identity), "other"
    client_id: str | None = None
    resource_id: str | None = None
    object_id: str | None = None

    @property
    def is_managed(self) -> bool:
        return self.kind in ("system_assigned", "user_assigned")


@dataclass(frozen=True)
class Scope:
    """Where a role is needed.  `name` is a vault, storage account, "account/container", Cosmos DB
    account, site, state account ("" = the deployment's own storage account) or subscription."""

    kind: str  # "vault", "storage", "container", "cosmos", "site", "sql", "table", "subscription"
    name: str
    subscription: str | None = None  # None: the subscription vaultrelay is deployed in
    resource_group: str | None = None  # None: unknown (the config names none)

    def describe(self) -> str:
        label = {"vault": "key vault", "storage": "storage account", "container": "blob container", "cosmos": "Cosmos DB account",
                 "site": "site", "containerapp": "container app", "sql": "SQL server", "table": "state tables of", "subscription": "subscription",
                 "queue": "work queue (in the deployment's storage account)"}[self.kind]
        if self.kind == "subscription":
            return f"{label} {self.name or '(deployment subscription)'}"
        name = self.name or "the deployment's storage account ($VAULTRELAY_STATE_ACCOUNT)"
        where = []
        if self.resource_group:
            where.append(f"rg {self.resource_group}")
        if self.subscription:
            where.append(f"subscription {self.subscription}")
        return f"{label} {name}" + (f" ({', '.join(where)})" if where else "")


@dataclass(frozen=True)
class Requirement:
    """One need of one capability, and the config path that causes it."""

    capability: str
    need: Need
    path: str

    @property
    def optional(self) -> bool:
        """Avoidable: only needed because the config names no resource group."""
        return self.capability.startswith("locate:")


@dataclass
class Grant:
    """What one identity needs on one scope, and the least roles that grant it."""

    identity: IdentityRef
    scope: Scope
    requirements: list[Requirement] = field(default_factory=list)

    @property
    def capabilities(self) -> list[str]:
        return sorted({r.capability for r in self.requirements})

    @property
    def roles(self) -> tuple[str, ...]:
        return least_roles([r.need for r in self.requirements])

    @property
    def optional(self) -> bool:
        return all(r.optional for r in self.requirements)


@dataclass
class PermissionReport:
    """Every grant a config needs (`compute_permissions`), plus what RBAC cannot express."""

    file: str
    grants: list[Grant] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # needs outside Azure RBAC (SQL users, API permissions)
    warnings: list[str] = field(default_factory=list)

    def identities(self) -> list[IdentityRef]:
        seen: dict[str, IdentityRef] = {}
        for grant in self.grants:
            seen.setdefault(grant.identity.key, grant.identity)
        return list(seen.values())

    def grant(self, identity: IdentityRef, scope: Scope) -> Grant:
        for existing in self.grants:
            if existing.identity.key == identity.key and existing.scope == scope:
                return existing
        created = Grant(identity, scope)
        self.grants.append(created)
        return created

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "grants": [
                {"identity": g.identity.description, "scope": g.scope.describe(), "scope_kind": g.scope.kind, "name": g.scope.name,
                 "subscription": g.scope.subscription, "resource_group": g.scope.resource_group, "roles": list(g.roles),
                 "optional": g.optional, "capabilities": g.capabilities,
                 "because": sorted({f"{r.path}: {r.need.why}" for r in g.requirements})}
                for g in self.grants
            ],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def least_roles(needs: Iterable[Need]) -> tuple[str, ...]:
    """The fewest of the needs' own least roles that still grant every need.

    Each need names its least role; when one of those roles also grants the needs another was
    chosen for (Key Vault Secrets Officer reads what Key Vault Secrets User reads), the narrower
    one is dropped.  The result is sorted by name.
    """
    needs = list(dict.fromkeys(needs))
    chosen: dict[str, list[Need]] = {}
    for need in needs:
        chosen.setdefault(need.role, []).append(need)
    roles = set(chosen)
    for role in sorted(chosen, key=lambda r: (len(chosen[r]), r)):
        rest = roles - {role}
        if rest and all(any(ROLES_BY_NAME[r.lower()].allows(n.action, data=n.data) for r in rest) for n in needs):
            roles = rest
    return tuple(sorted(roles))


def compute_permissions(
    loaded: LoadedConfig, *, envs: Iterable[str] | None = None, environ: Mapping[str, str] | None = None,
) -> PermissionReport:
    """Who needs which roles where for `loaded` to work: every reference of `envs` (all envs by
    default), the targets those envs are pushed to, rotation, and the state section.

    No network: scopes come from the config (`vault`, `account`, `resource_group`, `subscription`,
    the stores' `resources:` and `default_subscription`, `$VAULTRELAY_SUBSCRIPTION_ID`).
    """
    environ = os.environ if environ is None else environ
    config = loaded.config
    wanted = set(config.envs) if envs is None else set(envs)
    report = PermissionReport(file=loaded.file)
    walker = _Walker(config, report, environ, skipped=dict(loaded.skipped_fallbacks))
    for env in sorted(wanted & set(config.envs)):
        for name, variable in config.envs[env].items():
            if variable.from_ is not None:
                walker.reference(variable.from_, f"envs.{env}.{name}.from")
    pushed = False
    for name, target in sorted(config.targets.items()):
        if target.env in wanted:
            pushed = True
            walker.target(name, target)
    rotated = any(v.from_ is not None and v.from_.rotate is not None for e in wanted for v in config.envs.get(e, {}).values())
    if config.state is not None and (pushed or rotated or envs is None):
        walker.state(config.state)
    if envs is None:
        for i, tagged in enumerate(config.rotation.tagged_secrets):
            walker.tagged(tagged, f"rotation.tagged_secrets.{i}")
    return report


def format_permissions(report: PermissionReport) -> str:
    """`vaultrelay plan --permissions` as text: one block per identity, one line per scope."""
    lines = [f"permissions for {report.file}"]
    by_identity: dict[str, list[Grant]] = {}
    for grant in report.grants:
        by_identity.setdefault(grant.identity.key, []).append(grant)
    if not by_identity:
        lines.append("  nothing: no reference, target or state needs an Azure role")
    for grants in by_identity.values():
        lines.append("")
        lines.append(grants[0].identity.description)
        for grant in sorted(grants, key=lambda g: (g.optional, g.scope.kind, g.scope.name)):
            roles = ", ".join(grant.roles)
            suffix = "  (avoidable: give the resource group)" if grant.optional else ""
            lines.append(f"  {grant.scope.describe()}: {roles}{suffix}")
            for because in sorted({f"{r.need.why} ({r.path})" for r in grant.requirements}):
                lines.append(f"      - {because}")
    for title, items in (("outside Azure RBAC", report.notes), ("warnings", report.warnings)):
        if items:
            lines.append("")
            lines.append(f"{title}:")
            lines.extend(f"  - {item}" for item in items)
    return "\n".join(lines) + "\n"


class _Walker:
    """Turns config objects into requirements on a PermissionReport."""

    def __init__(self, config: Config, report: PermissionReport, environ: Mapping[str, str], *,
                 skipped: dict[tuple[str, int], str] | None = None) -> None:
        self.config = config
        self.report = report
        self.environ = environ
        self.skipped = skipped or {}

    # ---- identities and places ----------------------------------------------------------
    def identity(self, store_name: str) -> IdentityRef:
        from core.config.model import KeyVaultStore

        store = self.config.secretStores[store_name]
        if isinstance(store, KeyVaultStore):
            client = store.auth.client_id
            return IdentityRef(f"service-principal:{client.lower()}", f"service principal {client} (store {store_name}, azure.keyvault)",
                               "service_principal", client_id=client)
        identity = store.identity
        if store.fallback is not None:
            managed = [(i, f) for i, f in enumerate(store.fallback) if f.type == "managed_identity"]
            if not managed:
                first = store.fallback[0]
                what = getattr(first, "client_id", None) or first.type
                return IdentityRef(f"other:{first.type}:{what}", f"{first.type.replace('_', ' ')} {what if what != first.type else ''}".strip()
                                   + f" (store {store_name})", "other")
            index, entry = managed[0]
            identity = getattr(entry, "identity", None) or identity
            reason = self.skipped.get((store_name, index))
            if reason is not None and identity.type == "user_assigned":
                # Its selector comes from a variable unset here (${AZURE_CLIENT_ID} in Azure).
                variable = next(iter(re.findall(r"\$\{(\w+)", reason)), "?")
                return IdentityRef(f"user-assigned:client_id=${{{variable}}}",
                                   f"user-assigned managed identity (client_id=${{{variable}}}, not set here)", "user_assigned")
        if identity.type == "system_assigned":
            return IdentityRef(SYSTEM_ASSIGNED, "system-assigned managed identity of the Function app", "system_assigned")
        selector = next((k, getattr(identity, k)) for k in ("client_id", "resource_id", "object_id") if getattr(identity, k))
        return IdentityRef(f"user-assigned:{selector[0]}={selector[1].lower()}", identity.describe(), "user_assigned",
                           client_id=identity.client_id, resource_id=identity.resource_id, object_id=identity.object_id)

    def _override(self, store_name: str, kind: str, name: str) -> tuple[str | None, str | None]:
        from core.config.model import ManagedIdentityStore

        store = self.config.secretStores[store_name]
        if isinstance(store, ManagedIdentityStore):
            for resource in store.resources:
                if resource.type == kind and resource.name.lower() == name.lower():
                    return resource.subscription, resource.resource_group
        return None, None

    def _subscription(self, store_name: str, explicit: str | None, override: str | None) -> str | None:
        from core.config.model import ManagedIdentityStore

        store = self.config.secretStores[store_name]
        default = store.default_subscription if isinstance(store, ManagedIdentityStore) else None
        return (explicit or override or default or self.environ.get("VAULTRELAY_SUBSCRIPTION_ID")
                or self.environ.get("AZURE_SUBSCRIPTION_ID") or None)

    def scope(self, store_name: str, kind: str, name: str, *, subscription: str | None = None, resource_group: str | None = None) -> Scope:
        override_kind = {"vault": "keyvault", "storage": "storage", "container": "storage", "cosmos": "cosmosdb", "table": "storage"}.get(kind)
        lookup = name.split("/")[0]
        o_sub, o_group = self._override(store_name, override_kind, lookup) if override_kind else (None, None)
        return Scope(kind, name, self._subscription(store_name, subscription, o_sub), resource_group or o_group)

    def add(self, store_name: str, scope: Scope, capability: str, path: str, *, container: Scope | None = None) -> None:
        """The needs of `capability` on `scope` (container-scoped needs on `container` if given)."""
        identity = self.identity(store_name)
        for need in MATRIX[capability]:
            where = container if container is not None and need.scope_kind == "container" else scope
            grant = self.report.grant(identity, where)
            requirement = Requirement(capability, need, path)
            if requirement not in grant.requirements:
                grant.requirements.append(requirement)

    def _locate(self, store_name: str, scope: Scope, capability: str, path: str) -> None:
        if scope.resource_group is None:
            self.add(store_name, Scope("subscription", scope.subscription or ""), capability, path)

    # ---- what the config does -----------------------------------------------------------
    def reference(self, ref: Reference, path: str) -> None:
        """What reading `ref` needs: its kind declares it (core.sources.kinds)."""
        ref.declaration.permissions(ref, path, self)

    # what a kind's declaration may ask (core.sources.kinds.PermissionGrants)
    def store_vault(self, store_name: str) -> str | None:
        return getattr(self.config.secretStores[store_name], "vault_name", None)

    def container(self, account_scope: Scope, account: str, container: str | None) -> Scope:
        return Scope("container", f"{account}/{container}", account_scope.subscription, account_scope.resource_group)

    def locate(self, store_name: str, scope: Scope, capability: str, path: str) -> None:
        self._locate(store_name, scope, capability, path)

    def note(self, text: str) -> None:
        self._note(text)

    def describe_identity(self, store_name: str) -> str:
        return self.identity(store_name).description

    def writes_blobs(self, permissions: str) -> bool:
        """Whether a user delegation SAS with `permissions` needs more than Storage Blob Data Reader."""
        return bool(set(permissions) - _SAS_READ_LETTERS)

    def target(self, name: str, target: Any) -> None:
        path = f"targets.{name}"
        if target.type == "keyvault":
            self.add(target.store, self.scope(target.store, "vault", target.vault), "target:keyvault", path)
            if getattr(target, "certificates", "secret") == "certificate":
                self.add(target.store, self.scope(target.store, "vault", target.vault), "target:keyvault_certificates", f"{path}.certificates")
        elif target.type == "blob":
            storage = self.scope(target.store, "container", f"{target.account}/{target.container}")
            self.add(target.store, storage, "target:blob", path)
        elif target.type == "app_settings":
            site = Scope("site", target.site, self._subscription(target.store, target.subscription, None), target.resource_group)
            self.add(target.store, site, "target:app_settings_slot" if target.slot else "target:app_settings", path)
            if target.slot_setting:
                self.add(target.store, site, "target:app_settings_slot_setting", path)
            if target.resource_group is None:
                self.add(target.store, Scope("subscription", site.subscription or ""), "locate:site", path)
            if getattr(target, "references", False):
                vault = self.scope(target.store, "vault", target.vault)
                self.add(target.store, vault, "target:keyvault", path)
                self.add(target.store, site, "target:app_settings_references", path)
                identity = IdentityRef(f"site:{target.site.lower()}:{(target.slot or '').lower()}",
                                       f"managed identity of site {target.site}" + (f" (slot {target.slot})" if target.slot else "")
                                       + " (App Service resolves its Key Vault references with it)", "site", object_id=target.site_principal_id)
                grant = self.report.grant(identity, vault)
                requirement = Requirement("site:keyvault_reference", _KV_RESOLVE, f"{path}.vault")
                if requirement not in grant.requirements:
                    grant.requirements.append(requirement)
        elif target.type == "container_app":
            app = Scope("containerapp", target.app, self._subscription(target.store, target.subscription, None), target.resource_group)
            self.add(target.store, app, "target:container_app", path)
            if target.resource_group is None:
                self.add(target.store, Scope("subscription", app.subscription or ""), "locate:containerapp", path)
            if target.references:
                self.add(target.store, self.scope(target.store, "vault", target.vault), "target:keyvault", path)
                identity = IdentityRef(f"containerapp:{target.app.lower()}:{target.identity.lower()}",
                                       f"managed identity {target.identity} of container app {target.app} (reads its Key Vault secrets)", "site",
                                       resource_id=None if target.identity == "system" else target.identity)
                grant = self.report.grant(identity, self.scope(target.store, "vault", target.vault))
                requirement = Requirement("site:keyvault_reference", _KV_RESOLVE, f"{path}.vault")
                if requirement not in grant.requirements:
                    grant.requirements.append(requirement)
        elif target.type == "webhook":
            if target.signing_key.from_ is not None:
                self.reference(target.signing_key.from_, f"{path}.signing_key.from")

    def tagged(self, tagged: Any, path: str) -> None:
        """rotation.tagged_secrets: the vault's secrets are listed and rewritten; each account the
        entry lists (the only ones rotated) has its keys regenerated or its password set."""
        self.add(tagged.store, self.scope(tagged.store, "vault", tagged.vault), "rotation:tagged", path)
        capabilities = {"storage": "rotate:storage_key", "cosmos": "rotate:tagged_cosmos_key", "sql": "rotate:sql_password"}
        for j, account in enumerate(tagged.accounts):
            kind, subscription, group, name = account.where()
            scope = Scope(kind, name, self._subscription(tagged.store, subscription, None), group)
            self.add(tagged.store, scope, capabilities[kind], f"{path}.accounts.{j}")

    def state(self, state: Any) -> None:
        account = state.account or self.environ.get("VAULTRELAY_STATE_ACCOUNT") or ""
        if state.table_endpoint and not state.account:
            account = state.table_endpoint.split("//")[-1].split(".")[0]
        self.add(state.store, self.scope(state.store, "table", account), "state:tables", "state")
        self.add(state.store, Scope("queue", self.environ.get("VAULTRELAY_WORK_QUEUE") or "vaultrelay-work"), "state:work_queue", "state")
        if state.vault:
            self.add(state.store, self.scope(state.store, "vault", state.vault), "state:vault", "state.vault")
        if state.fingerprint_key is not None and state.fingerprint_key.from_ is not None:
            self.reference(state.fingerprint_key.from_, "state.fingerprint_key.from")

    def _note(self, text: str) -> None:
        if text not in self.report.notes:
            self.report.notes.append(text)


# ---- Bicep parameters: the same grants, in infra/main.parameters.json's shape ------------------
BICEP_PARAMETERS_SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#"
# Parameters infra/main.bicep takes from azd's environment (the renderer keeps them as they are).
AZD_PARAMETERS: dict[str, Any] = {
    "environmentName": "${AZURE_ENV_NAME}",
    "location": "${AZURE_LOCATION}",
    "vaultrelayConfig": "${VAULTRELAY_CONFIG=vaultrelay.yaml}",
    "syncSchedule": "${VAULTRELAY_SYNC_SCHEDULE=0 */15 * * * *}",
    "createStateVault": "${VAULTRELAY_CREATE_STATE_VAULT=true}",
    "keyVaultEventsEnabled": "${VAULTRELAY_KEYVAULT_EVENTS=false}",
    "createCustomRoles": "${VAULTRELAY_CREATE_CUSTOM_ROLES=true}",
}
GRANT_LISTS = ("sourceVaults", "targetVaults", "storageAccounts", "blobContainers", "cosmosAccounts", "webApps", "sqlServers", "containerApps")


def render_bicep_parameters(
    report: PermissionReport, config: Config | None = None, *, environ: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """A deployment parameters document for infra/main.bicep granting `report`'s roles, and the
    warnings about what it could not express (placeholders to fill, grants left out).

    The Function app's own identity is the user-assigned one whose client id is $AZURE_CLIENT_ID
    (or comes from an unset ${AZURE_CLIENT_ID} in a fallback entry) (identityType UserAssigned), else the system-assigned one if a store uses it (identityType
    SystemAssigned).  Grants to other managed identities carry `principalId` (the identity's
    object id when the config gives it, else a placeholder) and those identities are attached
    to the app through `additionalUserAssignedIdentityIds`.
    """
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    identities = report.identities()
    client = (environ.get("AZURE_CLIENT_ID") or "").lower()
    app = next((i for i in identities if i.kind == "user_assigned" and (
        (i.client_id and i.client_id.lower() == client) or i.key == "user-assigned:client_id=${AZURE_CLIENT_ID}")), None)
    identity_type = "UserAssigned"
    if app is None:
        app = next((i for i in identities if i.kind == "system_assigned"), None)
        identity_type = "SystemAssigned" if app is not None else "UserAssigned"
    if app is None and any(i.is_managed for i in identities):
        warnings.append("no store uses the identity the template creates: give a store identity: {type: user_assigned, "
                        "client_id: ${AZURE_CLIENT_ID}} (the template sets AZURE_CLIENT_ID), or use the system-assigned identity")
    extra_identities: list[str] = []
    lists: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {name: {} for name in GRANT_LISTS}

    def entry(list_name: str, grant: Grant, name: str, *, account: str | None = None) -> dict[str, Any]:
        scope = grant.scope
        principal = None if app is not None and grant.identity.key == app.key else _principal_of(grant.identity)
        holder = account or name  # the resource whose resource group is needed
        key = ((account or "").lower(), name.lower(), (scope.resource_group or "").lower(), (scope.subscription or "").lower(), principal or "")
        found = lists[list_name].get(key)
        if found is None:
            found = {"account": account, "container": name} if account is not None else {"name": name}
            found["resourceGroup"] = scope.resource_group or f"<resource group of {holder}>"
            if scope.resource_group is None:
                warnings.append(f"{list_name}: fill in the resource group of {holder} (or give it in the config: "
                                f"resource_group, or a resources: entry)")
            if scope.subscription:
                found["subscriptionId"] = scope.subscription
            if principal is not None:
                found["principalId"] = principal
                if grant.identity.kind == "user_assigned":
                    attached = grant.identity.resource_id or f"<resource id of {grant.identity.description}>"
                    if attached not in extra_identities:
                        extra_identities.append(attached)
            lists[list_name][key] = found
        return found

    for grant in report.grants:
        roles = set(grant.roles)
        scope = grant.scope
        if grant.optional:
            warnings.append(f"not granted by the template: {', '.join(sorted(roles))} on {scope.describe()} for "
                            f"{grant.identity.description} ({', '.join(grant.capabilities)}); give resource groups instead")
            continue
        if not grant.identity.is_managed and grant.identity.kind != "site":
            warnings.append(f"not granted by the template: {', '.join(sorted(roles))} on {scope.describe()} for "
                            f"{grant.identity.description}, which is not a managed identity of the Function app")
            continue
        capabilities = set(grant.capabilities)
        if (scope.kind == "vault" and "state:vault" in capabilities and app is not None and grant.identity.key == app.key
                and scope.name.lower() == (environ.get("VAULTRELAY_STATE_VAULT") or "").lower()):
            # The template's own state vault (createStateVault): host-rbac.bicep grants it, to the app's
            # identity only.  `validate` keeps targets and env references out of it.
            continue
        if scope.kind == "vault":
            if "Key Vault Secrets Officer" in roles:
                entry("targetVaults", grant, scope.name)
            if "Key Vault Secrets User" in roles or "Key Vault Reader" in roles:
                source = entry("sourceVaults", grant, scope.name)
                # `secrets` defaults to true in the template: say false when only keys are read.
                source["secrets"] = bool(source.get("secrets")) or "Key Vault Secrets User" in roles
                if "Key Vault Reader" in roles:
                    source["publicKeys"] = True
                if grant.identity.kind == "site":
                    source["events"] = False  # a site resolving references: no events for vaultrelay in that grant
                    if not grant.identity.object_id:
                        warnings.append(f"sourceVaults: fill in the principalId of the {grant.identity.description} "
                                        f"(or give site_principal_id in the config)")
        elif scope.kind == "container":
            account, _, container = scope.name.partition("/")
            blob = entry("blobContainers", grant, container, account=account)
            blob["write"] = bool(blob.get("write")) or "Storage Blob Data Contributor" in roles
        elif scope.kind in ("storage", "table"):
            account = scope.name
            if scope.kind == "table" and (not account or account.lower() == (environ.get("VAULTRELAY_STATE_ACCOUNT") or "").lower()):
                continue  # the template's own storage account: granted there
            storage = entry("storageAccounts", grant, account)
            if "Storage Account Key Operator Service Role" in roles:
                storage["keyRead"] = True
                if "rotate:storage_key" in capabilities:
                    storage["keyRotate"] = True
            if "Storage Blob Delegator" in roles:
                storage["userDelegationSas"] = True
            if "Storage Table Data Contributor" in roles:
                storage["tableData"] = True
        elif scope.kind == "queue":
            continue  # the work queue in the template's own storage account: host-rbac.bicep grants it
        elif scope.kind == "cosmos":
            cosmos = entry("cosmosAccounts", grant, scope.name)
            # `keys` (the key reader role) defaults to true in the template: say false when only
            # read-only keys are read; `rotate` (the key operator role) covers what `keys` grants.
            cosmos["keys"] = bool(cosmos.get("keys")) or bool({COSMOS_KEY_READER_NAME, COSMOS_KEY_OPERATOR_NAME} & roles)
            if COSMOS_KEY_OPERATOR_NAME in roles:
                cosmos["rotate"] = True
            if "Cosmos DB Account Reader Role" in roles and not cosmos["keys"]:
                cosmos["readOnlyKeys"] = True
        elif scope.kind == "site":
            entry("webApps", grant, scope.name)
        elif scope.kind == "sql":
            entry("sqlServers", grant, scope.name)
        elif scope.kind == "containerapp":
            entry("containerApps", grant, scope.name)
        else:  # every scope kind is handled above; a new one must be added here and in infra/
            warnings.append(f"not granted by the template: {', '.join(sorted(roles))} on {scope.describe()}")

    parameters: dict[str, Any] = {name: {"value": value} for name, value in AZD_PARAMETERS.items()}
    parameters["identityType"] = {"value": identity_type}
    parameters["additionalUserAssignedIdentityIds"] = {"value": extra_identities}
    api_audience = config.api.audience if config is not None else None
    parameters["apiAudience"] = {"value": api_audience or "${VAULTRELAY_API_AUDIENCE=}"}
    state = config.state if config is not None else None
    parameters["stateTablePrefix"] = {"value": state.table_prefix if state is not None else "vaultrelay"}
    for name in GRANT_LISTS:
        parameters[name] = {"value": list(lists[name].values())}
    return {"$schema": BICEP_PARAMETERS_SCHEMA, "contentVersion": "1.0.0.0", "parameters": parameters}, list(dict.fromkeys(warnings))


COSMOS_KEY_READER_NAME = "vaultrelay Cosmos DB Key Reader"
COSMOS_KEY_OPERATOR_NAME = "vaultrelay Cosmos DB Key Operator"


def _principal_of(identity: IdentityRef) -> str:
    if identity.object_id:
        return identity.object_id
    return f"<object id of {identity.description}>"
