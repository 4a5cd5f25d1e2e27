"""Azure Resource Manager stand-in.

Serves `https://management.<domain>` with the request paths, bodies, status codes and
long-running-operation headers of the public REST specifications, so the unmodified management
SDKs work against it.  Implemented api-versions (the ones the installed SDKs send; any older
date-style version, `-preview` included, is accepted too, a newer one is refused with ARM's
`NoRegisteredProviderFound`, a missing one with `MissingApiVersionParameter`):

* Microsoft.Storage 2026-09-01 (azure-mgmt-storage): storage accounts get, create (PUT; a
  long-running operation: 202 + `Location`), update (PATCH, synchronous), list (subscription,
  resource group), `listKeys`, `regenerateKey` (Azurite is resynced so it accepts the new key and
  rejects the old one); `allowSharedKeyAccess` is set by PUT/PATCH (the storage proxy then refuses
  key-based requests, sandbox/azurite.py), and every call is charged to the storage resource
  provider's limits per subscription and region (sandbox/arm_limits.py: 429 + `Retry-After`);
* Microsoft.DocumentDB 2026-03-15 (azure-mgmt-cosmosdb): database accounts get, create or update
  (PUT; 200 with `provisioningState: Creating` + `Azure-AsyncOperation`; `disableLocalAuth` is
  set by it), list, `listKeys`, `readonlykeys`
  (POST and GET), `listConnectionStrings`, `regenerateKey` (202 + `Azure-AsyncOperation` +
  `Location`; the key changes when the operation completes; another regenerateKey while one runs
  is 412 `PreconditionFailed` with the Cosmos DB resource provider's body; the control API
  `PUT /arm/cosmos/regenerate` keeps new operations in progress for as long as a test says,
  `POST /arm/operations/finish` ends them (Succeeded, or Failed: the key stays), `GET /arm/operations`
  lists them);
* Microsoft.Web 2025-05-01 (azure-mgmt-web): sites get, create, list; `config/appsettings/list`
  (POST) and `config/appsettings` (PUT: replaces the whole set, no ETag), also under
  `/slots/{slot}`; `config/slotConfigNames` (GET, PUT: the site's slot-sticky names, replaced as a
  whole).  A PUT that changes a slot's settings restarts that slot, one that changes the sticky
  names restarts the site (production slot); an identical PUT changes nothing and restarts
  nothing.  Restarts are counted per site and slot (control API `GET /arm/sites/{site}/restarts`);
* Microsoft.Sql 2025-01-01 (the REST shape of azure-mgmt-sql; vaultrelay sends 2021-11-01): servers
  get, list, create or update (PUT, synchronous here), update (PATCH: 202 + `Azure-AsyncOperation`
  + `Location`; a new `administratorLoginPassword` takes effect when the operation completes).
  `administratorLoginPassword` is write-only (never returned, as in Azure) and must meet Azure
  SQL's complexity rules (8-128 characters of three of: upper, lower, digit, symbol; not containing
  the login); there is no SQL endpoint, so the control API's `POST /sql/logins/check` says whether a
  login/password pair would currently sign in;
* Microsoft.Authorization 2022-04-01 (azure-mgmt-authorization; up to 2022-05-01-preview):
  role assignments (create, get, delete, list at any scope with `atScope()`,
  `principalId eq '{id}'` and `assignedTo('{id}')` filters) at subscription, resource group,
  resource and sub-resource scopes; role definitions (get, list, `roleName eq` and `type eq`
  filters);
* Microsoft.KeyVault (vaults get, create, list) and Microsoft.Resources (resource groups get,
  create, list): no SDK is installed for them, any date-style api-version is accepted.

Long-running operations answer "in progress" to the first poll and complete on the next one (or
on their own after `OPERATION_DEADLINE_S`), at
`/subscriptions/{sub}/providers/{namespace}/locations/{location}/{operationsStatus|operationResults|asyncoperations}/{id}`.

Every call needs a bearer token for ARM (`https://management.azure.com` or
`https://management.core.windows.net`) and is authorized with Azure RBAC
(`World.authorize(..., data=False)`); a denial is ARM's `AuthorizationFailed` body naming the
action and scope.  Built-in role definitions at the tenant root (`/providers/...`) are readable
by any authenticated principal, as in Azure.  Paths are case-insensitive.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from core.permissions.roles import BUILTIN_ROLES, RoleDefinition
from sandbox import references as refs
from sandbox.arm_apps import AppsMixin
from sandbox.arm_limits import StorageProviderLimits
from sandbox.http import AzureError, CallContext, Service, json_response, read_json
from sandbox.runtime import ARM_RETRY_AFTER_S, Runtime
from sandbox.world import (
    CONTAINER_APP_TYPE,
    COSMOS_TYPE,
    SITE_TYPE,
    SQL_TYPE,
    STORAGE_TYPE,
    VAULT_TYPE,
    Resource,
    RoleAssignment,
    regenerate_storage_key,
    storage_keys,
)

ARM_AUDIENCES = {"https://management.azure.com", "https://management.core.windows.net"}
OPERATION_DEADLINE_S = 30.0
"""A long-running operation nobody polls completes on its own after this long."""

# Newest api-version (date part) per resource provider namespace; older ones are accepted.
NEWEST_API_VERSIONS = {
    "microsoft.storage": "2026-09-01",
    "microsoft.documentdb": "2026-03-15",
    "microsoft.web": "2025-05-01",
    "microsoft.sql": "2025-01-01",
    "microsoft.authorization": "2022-05-01",
    "microsoft.app": "2026-07-01",
}
_API_VERSION = re.compile(r"^(?P<date>20\d\d-\d\d-\d\d)(-preview)?$")
_LAST_NAMESPACE = re.compile(r".*/providers/(?P<ns>[^/]+)", re.IGNORECASE)

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_AUTHZ = r"/providers/Microsoft\.Authorization"


@dataclass(frozen=True)
class _Kind:
    type: str
    pattern: str
    name_rule: re.Pattern[str]
    name_error: str


_KINDS = {
    "storage": _Kind(
        STORAGE_TYPE, r"Microsoft\.Storage/storageAccounts", re.compile(r"^[a-z0-9]{3,24}$"),
        "AccountNameInvalid",
    ),
    "cosmos": _Kind(
        COSMOS_TYPE, r"Microsoft\.DocumentDB/databaseAccounts",
        re.compile(r"^[a-z0-9][a-z0-9-]{1,42}[a-z0-9]$"), "InvalidResourceName",
    ),
    "site": _Kind(
        SITE_TYPE, r"Microsoft\.Web/sites", re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,58}[A-Za-z0-9]$"),
        "InvalidResourceName",
    ),
    "sql": _Kind(
        SQL_TYPE, r"Microsoft\.Sql/servers", re.compile(r"^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$"), "InvalidServerName",
    ),
    "containerapp": _Kind(
        CONTAINER_APP_TYPE, r"Microsoft\.App/containerApps", re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"),
        "ContainerAppInvalidName",
    ),
    "vault": _Kind(
        VAULT_TYPE, r"Microsoft\.KeyVault/vaults", re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$"),
        "VaultNameNotValid",
    ),
}
_KIND_BY_TYPE = {kind.type.lower(): name for name, kind in _KINDS.items()}

# keyKind of regenerateKey -> the field of listKeys, and the connection string labels.
_COSMOS_KEYS = {
    "primary": "primaryMasterKey",
    "secondary": "secondaryMasterKey",
    "primaryReadonly": "primaryReadonlyMasterKey",
    "secondaryReadonly": "secondaryReadonlyMasterKey",
}
_COSMOS_LABELS = {
    "primary": ("Primary", "Primary SQL Connection String"),
    "secondary": ("Secondary", "Secondary SQL Connection String"),
    "primaryReadonly": ("PrimaryReadonly", "Primary Read-Only SQL Connection String"),
    "secondaryReadonly": ("SecondaryReadonly", "Secondary Read-Only SQL Connection String"),
}
_PRINCIPAL_TYPES = {"user", "group", "serviceprincipal", "foreigngroup", "device"}
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)

# ARM's 401 codes, by the start of the message `unauthorized_message` renders.
_AUTH_MISSING = "Authentication failed. The 'Authorization' header is missing."
_AUTH_EXPIRED = "The access token has expired."
_AUTH_AUDIENCE = "The access token has been obtained for wrong audience or resource."
_AUTH_INVALID = "The access token is invalid."
_AUTH_CODES = (
    (_AUTH_MISSING, "AuthenticationFailed"),
    (_AUTH_EXPIRED, "ExpiredAuthenticationToken"),
    (_AUTH_AUDIENCE, "InvalidAuthenticationTokenAudience"),
    (_AUTH_INVALID, "InvalidAuthenticationToken"),
)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(64)).decode()


def cosmos_keys(resource: Resource) -> dict[str, str]:
    """The four keys of a Cosmos DB account, by listKeys field name (created on first use)."""
    keys = resource.data.get("cosmos_keys")
    if keys is None:
        keys = resource.data["cosmos_keys"] = {name: _new_key() for name in _COSMOS_KEYS.values()}
    return keys  # type: ignore[no-any-return]


@dataclass
class _Operation:
    """A long-running operation: in progress for `polls_left` polls, then done."""

    id: str
    principal_id: str
    status_url: str
    result_url: str
    finish: Callable[[], None] | None = None
    result: Callable[[], dict[str, Any]] | None = None
    polls_left: int = 1
    started: float = 0.0
    ended: float | None = None
    hold_until: float | None = None  # in progress until then, however often it is polled (control API)
    failed: bool = False  # ended Failed (control API): its effect (`finish`) never happened
    resource: str = ""  # the resource the operation works on (for the control API)
    kind: str = ""  # what it does, e.g. regenerateKey

    def complete(self, *, failed: bool = False) -> None:
        if self.ended is None:
            self.ended = time.time()
            self.failed = failed
            if self.finish is not None and not failed:
                self.finish()

    def poll(self) -> bool:
        """One poll: whether the operation is done now."""
        if self.ended is None and self.hold_until is not None and time.time() < self.hold_until:
            return False
        if self.ended is None and self.polls_left > 0:
            self.polls_left -= 1
            return False
        self.complete()
        return True


class ArmService(AppsMixin, Service):
    name = "arm"
    case_insensitive_paths = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.operations: dict[str, _Operation] = {}
        self._group_locations: dict[str, str] = {}
        self.limits = StorageProviderLimits()  # the storage resource provider's limits (sandbox/arm_limits.py)
        # Cosmos DB regenerateKey operations started from now on stay in progress this long
        # (seconds; None: one poll, as other operations).  Set through the control API.
        self.cosmos_regenerate_s: float | None = None
        r = self.add_route
        # resource groups
        r("GET", _SUB + "/resourceGroups", "ListResourceGroups", self.list_resource_groups)
        r("PUT", _RG, "PutResourceGroup", self.put_resource_group)
        r("GET", _RG, "GetResourceGroup", self.get_resource_group)
        # resources of the known types
        for kind, spec in _KINDS.items():
            title = kind.title()
            r("GET", rf"{_SUB}/providers/{spec.pattern}", f"List{title}", self._lister(kind))
            r("GET", rf"{_RG}/providers/{spec.pattern}", f"List{title}InGroup", self._lister(kind))
            r("GET", rf"{_RG}/providers/{spec.pattern}/(?P<name>[^/]+)", f"Get{title}", self._getter(kind))
            if kind not in ("sql", "containerapp"):
                r("PUT", rf"{_RG}/providers/{spec.pattern}/(?P<name>[^/]+)", f"Put{title}", self._putter(kind))
        # long-running operations
        r("GET", _SUB + r"/providers/(?P<ns>[^/]+)/locations/(?P<loc>[^/]+)/(?P<kind>operationsStatus|operationResults|asyncoperations)/(?P<op>[^/]+)",
          "GetOperation", self.get_operation)
        # storage keys
        st = rf"{_RG}/providers/Microsoft\.Storage/storageAccounts/(?P<name>[^/]+)"
        r("PATCH", st, "PatchStorage", self.storage_patch)
        r("POST", st + "/listKeys", "StorageListKeys", self.storage_list_keys)
        r("POST", st + "/regenerateKey", "StorageRegenerateKey", self.storage_regenerate_key)
        # cosmos keys
        db = rf"{_RG}/providers/Microsoft\.DocumentDB/databaseAccounts/(?P<name>[^/]+)"
        r("POST", db + "/listKeys", "CosmosListKeys", self.cosmos_list_keys)
        r("POST", db + "/readonlykeys", "CosmosReadOnlyKeys", self.cosmos_readonly_keys)
        r("GET", db + "/readonlykeys", "CosmosReadOnlyKeys", self.cosmos_readonly_keys)
        r("POST", db + "/listConnectionStrings", "CosmosListConnectionStrings", self.cosmos_connection_strings)
        r("POST", db + "/regenerateKey", "CosmosRegenerateKey", self.cosmos_regenerate_key)
        # SQL servers (administrator password is write-only)
        sql = rf"{_RG}/providers/Microsoft\.Sql/servers/(?P<name>[^/]+)"
        r("PUT", sql, "PutSql", self.sql_put)
        r("PATCH", sql, "PatchSql", self.sql_patch)
        # app settings
        site = rf"{_RG}/providers/Microsoft\.Web/sites/(?P<name>[^/]+)(/slots/(?P<slot>[^/]+))?"
        r("POST", site + "/config/appsettings/list", "ListAppSettings", self.list_app_settings)
        r("PUT", site + "/config/appsettings", "UpdateAppSettings", self.update_app_settings)
        site_only = rf"{_RG}/providers/Microsoft\.Web/sites/(?P<name>[^/]+)"
        r("GET", site_only + "/config/slotConfigNames", "ListSlotConfigNames", self.list_slot_config_names)
        r("PUT", site_only + "/config/slotConfigNames", "UpdateSlotConfigNames", self.update_slot_config_names)
        # authorization
        ra = rf"(?P<scope>/subscriptions/.+?){_AUTHZ}/roleAssignments"
        r("PUT", ra + r"/(?P<name>[^/]+)", "CreateRoleAssignment", self.create_role_assignment)
        r("GET", ra + r"/(?P<name>[^/]+)", "GetRoleAssignment", self.get_role_assignment)
        r("DELETE", ra + r"/(?P<name>[^/]+)", "DeleteRoleAssignment", self.delete_role_assignment)
        r("GET", ra, "ListRoleAssignments", self.list_role_assignments)
        rd = rf"(?P<scope>(/subscriptions/.+?)?){_AUTHZ}/roleDefinitions"
        r("GET", rd + r"/(?P<role_id>[^/]+)", "GetRoleDefinition", self.get_role_definition)
        r("GET", rd, "ListRoleDefinitions", self.list_role_definitions)
        # App Service Key Vault references, site PATCH, Container Apps (sandbox/arm_apps.py)
        self._register_app_routes()

    @staticmethod
    def kind_spec(kind: str) -> _Kind:
        return _KINDS[kind]

    # ---- service hooks ----------------------------------------------------------------------
    def target_of(self, request: web.Request, params: dict[str, str]) -> str | None:
        return params.get("name") or params.get("rg")

    def accepted_audiences(self, request: web.Request) -> set[str]:
        return set(ARM_AUDIENCES)

    def challenge(self, request: web.Request) -> dict[str, str]:
        if "Authorization" in request.headers:
            description = "The access token is invalid."
        else:
            description = "The authentication failed because of missing 'Authorization' header."
        return {
            "WWW-Authenticate": (
                f'Bearer authorization_uri="{self.runtime.authority}/{self.runtime.world.tenant_id}", '
                f'error="invalid_token", error_description="{description}"'
            )
        }

    def unauthorized_message(self, reason: str | None) -> str:
        if reason is None:
            return _AUTH_MISSING
        if "expired" in reason.lower():
            return _AUTH_EXPIRED
        if "audience" in reason.lower():
            allowed = ",".join(f"'{a}'" for a in sorted(ARM_AUDIENCES))
            return f"{_AUTH_AUDIENCE} It should exactly match with one of the allowed audiences {allowed}."
        return f"{_AUTH_INVALID} {reason}"

    def render_error(self, error: AzureError) -> web.Response:
        code = error.code
        if error.status == 401:
            code = next((c for prefix, c in _AUTH_CODES if error.message.startswith(prefix)), "AuthenticationFailed")
        return json_response({"error": {"code": code, "message": error.message}}, status=error.status, headers=error.headers)

    # ---- checks -----------------------------------------------------------------------------
    def _check(self, request: web.Request, sub: str | None = None) -> None:
        """The api-version (present, well-formed, not newer than the provider's) and subscription."""
        api_version = request.query.get("api-version")
        if not api_version:
            raise AzureError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
        found = _API_VERSION.match(api_version)
        if found is None:
            raise AzureError(400, "InvalidApiVersionParameter", f"The api-version '{api_version}' is invalid. The supported versions are date-style, such as '2022-04-01'.")
        namespace_match = _LAST_NAMESPACE.match(request.path)
        namespace = namespace_match.group("ns") if namespace_match else "Microsoft.Resources"
        newest = NEWEST_API_VERSIONS.get(namespace.lower())
        if newest is not None and found.group("date") > newest:
            raise AzureError(400, "NoRegisteredProviderFound", (
                f"No registered resource provider found for API version '{api_version}' of namespace "
                f"'{namespace}'. The newest supported api-version is '{newest}'."
            ))
        if sub is not None and sub.lower() != self.runtime.world.subscription_id.lower():
            raise AzureError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def _authorize(self, ctx: CallContext, action: str, scope: str) -> None:
        identity = ctx.identity
        assert identity is not None, "every ARM route requires a token"
        if not self.runtime.world.authorize(identity.object_id, action, scope, data=False):
            raise AzureError(403, "AuthorizationFailed", (
                f"The client '{identity.client_id}' with object id '{identity.object_id}' does not have authorization "
                f"to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials."
            ))

    def _storage_limit(self, kind: str, operation: str, region: str) -> None:
        """Charge a storage resource provider request to its subscription's and region's budget."""
        if kind != "storage":
            return
        try:
            self.limits.charge(self.runtime.world.subscription_id, region, operation)
        except AzureError:
            self.runtime.faults.throttled += 1
            raise

    def _group(self, rg: str) -> str:
        group = self.runtime.world.resource_groups.get(rg.lower())
        if group is None:
            raise AzureError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def _resource(self, kind: str, rg: str, name: str) -> Resource:
        type_ = _KINDS[kind].type
        self._group(rg)
        resource = self.runtime.world.find_resource(type_, name, resource_group=rg)
        if resource is None:
            raise AzureError(404, "ResourceNotFound", (
                f"The Resource '{type_}/{name}' under resource group '{rg}' was not found. "
                "For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ))
        return resource

    def _check_scope(self, request: web.Request, scope: str) -> str:
        """Validate a role assignment/definition scope: subscription, existing group, existing resource.

        Returns the scope without a trailing slash.
        """
        scope = scope.rstrip("/")
        parts = scope.strip("/").split("/")
        if len(parts) < 2 or parts[0].lower() != "subscriptions":
            raise AzureError(400, "InvalidScope", f"The scope '{scope}' is not valid.")
        self._check(request, parts[1])
        if len(parts) >= 4 and parts[2].lower() == "resourcegroups":
            self._group(parts[3])
            if len(parts) >= 8 and parts[4].lower() == "providers":
                kind = _KIND_BY_TYPE.get(f"{parts[5]}/{parts[6]}".lower())
                if kind is not None:
                    self._resource(kind, parts[3], parts[7])
        elif len(parts) > 2:
            raise AzureError(400, "InvalidScope", f"The scope '{scope}' is not valid.")
        return scope

    # ---- long-running operations ------------------------------------------------------------
    def _start_operation(
        self, ctx: CallContext, namespace: str, location: str, api_version: str, *,
        finish: Callable[[], None] | None = None, result: Callable[[], dict[str, Any]] | None = None,
        result_kind: str = "operationResults", hold_s: float | None = None, resource: str = "", kind: str = "",
    ) -> _Operation:
        assert ctx.identity is not None
        self._forget_old_operations()
        op_id = str(uuid.uuid4())
        base = f"{self.runtime.arm_endpoint}/subscriptions/{self.runtime.world.subscription_id}/providers/{namespace}/locations/{location}"
        operation = _Operation(
            id=op_id, principal_id=ctx.identity.object_id,
            status_url=f"{base}/operationsStatus/{op_id}?api-version={api_version}",
            result_url=f"{base}/{result_kind}/{op_id}?api-version={api_version}",
            finish=finish, result=result, started=time.time(), resource=resource, kind=kind,
        )
        if hold_s is not None:
            operation.hold_until = operation.started + hold_s
        self.operations[op_id] = operation
        asyncio.get_running_loop().call_later(OPERATION_DEADLINE_S if hold_s is None else max(hold_s, 0.0), operation.complete)
        return operation

    def _retry_after(self) -> str:
        """The `Retry-After` of an operation still running (seconds, sandbox setting)."""
        return str(self.runtime.arm_retry_after_s)

    def _forget_old_operations(self) -> None:
        cutoff = time.time() - 600
        for op_id in [k for k, op in self.operations.items() if op.ended is not None and op.ended < cutoff]:
            del self.operations[op_id]

    async def get_operation(
        self, request: web.Request, ctx: CallContext, sub: str, ns: str, loc: str, kind: str, op: str,
    ) -> web.Response:
        self._check(request, sub)
        operation = self.operations.get(op)
        assert ctx.identity is not None
        # An operation URL belongs to the principal that started the operation.
        if operation is None or operation.principal_id != ctx.identity.object_id:
            raise AzureError(404, "OperationNotFound", f"The operation '{op}' was not found.")
        done = operation.poll()
        if kind.lower() == "operationsstatus":
            body: dict[str, Any] = {
                "id": request.path, "name": operation.id, "status": self._status(operation) if done else "InProgress",
                "startTime": _iso(operation.started),
            }
            if operation.ended is not None:
                body["endTime"] = _iso(operation.ended)
            if operation.failed:
                body["error"] = {"code": "InternalServerError", "message": "The operation failed."}
            return json_response(body, headers=None if done else {"Retry-After": self._retry_after()})
        if not done:
            return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": self._retry_after()})
        if operation.failed:
            raise AzureError(500, "InternalServerError", "The operation failed.")
        if operation.result is not None:
            return json_response(operation.result())
        return web.Response(status=204)

    # ---- views ------------------------------------------------------------------------------
    def _view(self, resource: Resource) -> dict[str, Any]:
        suffix = self.runtime.suffix
        properties: dict[str, Any] = {
            **resource.properties, "provisioningState": resource.data.get("provisioning_state", "Succeeded"),
        }
        body: dict[str, Any] = {
            "id": resource.id, "name": resource.name, "type": resource.type, "location": resource.location,
            "tags": dict(resource.tags),
        }
        if resource.type == STORAGE_TYPE:
            body["kind"] = resource.data.get("kind", "StorageV2")
            sku = resource.data.get("sku", "Standard_LRS")
            body["sku"] = {"name": sku, "tier": "Premium" if sku.startswith("Premium") else "Standard"}
            properties["primaryEndpoints"] = {s: f"https://{resource.name}.{s}.{suffix}/" for s in ("blob", "queue", "table")}
            properties.setdefault("allowSharedKeyAccess", True)
            created = resource.data.get("key_created", {})
            if created:
                properties["keyCreationTime"] = {name: _iso(ts) for name, ts in created.items()}
        elif resource.type == COSMOS_TYPE:
            body["kind"] = resource.data.get("kind", "GlobalDocumentDB")
            properties.setdefault("disableLocalAuth", False)
            properties.update({
                "documentEndpoint": f"https://{resource.name}.documents.{suffix}/",
                "databaseAccountOfferType": "Standard",
                "locations": [{"locationName": resource.location, "failoverPriority": 0}],
            })
        elif resource.type == SITE_TYPE:
            body["kind"] = resource.data.get("kind", "functionapp,linux")
            properties.update({"defaultHostName": f"{resource.name}.azurewebsites.net", "state": "Running"})
            body["properties"] = properties
            self.site_view_extra(resource, body)
        elif resource.type == CONTAINER_APP_TYPE:
            return self._container_app_view(resource)
        elif resource.type == SQL_TYPE:
            body["kind"] = "v12.0"
            properties.update({
                "version": "12.0", "state": "Ready", "publicNetworkAccess": "Enabled", "minimalTlsVersion": "1.2",
                "fullyQualifiedDomainName": f"{resource.name}.database.windows.net",
            })
            properties.pop("administratorLoginPassword", None)  # write-only: never stored in properties, never returned
        elif resource.type == VAULT_TYPE:
            properties.update({
                "vaultUri": self.runtime.vault_url(resource.name) + "/", "tenantId": self.runtime.world.tenant_id,
                "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": True,
                "enableSoftDelete": True, "softDeleteRetentionInDays": 90,
            })
        body["properties"] = properties
        return body

    def _group_view(self, group: str) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.runtime.world.subscription_id}/resourceGroups/{group}", "name": group,
            "type": "Microsoft.Resources/resourceGroups", "location": self._group_locations.get(group.lower(), "eastus"),
            "properties": {"provisioningState": "Succeeded"},
        }

    # ---- resource groups --------------------------------------------------------------------
    async def list_resource_groups(self, request: web.Request, ctx: CallContext, sub: str) -> web.Response:
        self._check(request, sub)
        self._authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/read", self.runtime.world.subscription_scope)
        return json_response({"value": [self._group_view(g) for g in self.runtime.world.resource_groups.values()]})

    async def put_resource_group(self, request: web.Request, ctx: CallContext, sub: str, rg: str) -> web.Response:
        self._check(request, sub)
        existing = self.runtime.world.resource_groups.get(rg.lower())
        self._authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/write", f"/subscriptions/{sub}/resourceGroups/{existing or rg}")
        body = await read_json(request)
        if not isinstance(body, dict) or not body.get("location"):
            raise AzureError(400, "LocationRequired", "The location property is required for this definition.")
        if existing is None:
            self.runtime.world.resource_groups[rg.lower()] = rg
            self._group_locations[rg.lower()] = str(body["location"])
        return json_response(self._group_view(existing or rg), status=200 if existing else 201)

    async def get_resource_group(self, request: web.Request, ctx: CallContext, sub: str, rg: str) -> web.Response:
        self._check(request, sub)
        group = self._group(rg)
        self._authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/read", f"/subscriptions/{sub}/resourceGroups/{group}")
        return json_response(self._group_view(group))

    # ---- resources --------------------------------------------------------------------------
    def _lister(self, kind: str) -> Callable[..., Awaitable[web.Response]]:
        type_ = _KINDS[kind].type

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str | None = None) -> web.Response:
            self._check(request, sub)
            scope = self.runtime.world.subscription_scope + (f"/resourceGroups/{self._group(rg)}" if rg else "")
            self._authorize(ctx, f"{type_}/read", scope)
            self._storage_limit(kind, "list", "*")
            found = [
                self._view(res) for res in self.runtime.world.resources_of(type_)
                if rg is None or res.resource_group.lower() == rg.lower()
            ]
            return json_response({"value": found})

        return handler

    def _getter(self, kind: str) -> Callable[..., Awaitable[web.Response]]:
        type_ = _KINDS[kind].type

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
            self._check(request, sub)
            resource = self._resource(kind, rg, name)
            self._authorize(ctx, f"{type_}/read", resource.id)
            self._storage_limit(kind, "read", resource.location)
            return json_response(self._view(resource))

        return handler

    def _putter(self, kind: str) -> Callable[..., Awaitable[web.Response]]:
        spec = _KINDS[kind]

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
            self._check(request, sub)
            group = self._group(rg)
            world = self.runtime.world
            scope = f"{world.subscription_scope}/resourceGroups/{group}/providers/{spec.type}/{name}"
            self._authorize(ctx, f"{spec.type}/write", scope)
            body = await read_json(request)
            if not isinstance(body, dict):
                raise AzureError(400, "InvalidRequestContent", "The request content must be a JSON object.")
            if not spec.name_rule.match(name):
                raise AzureError(400, spec.name_error, f"'{name}' is not a valid {spec.type} name.")
            existing = world.find_resource(spec.type, name)
            if existing is not None and existing.resource_group.lower() != group.lower():
                code = "StorageAccountAlreadyTaken" if kind == "storage" else "Conflict"
                raise AzureError(409, code, f"The name '{name}' is already taken by a {spec.type} in another resource group.")
            if existing is None and not body.get("location"):
                raise AzureError(400, "LocationRequired", "The location property is required for this definition.")
            self._storage_limit(kind, "write", str(existing.location if existing is not None else body["location"]))
            tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
            settable = _settable_properties(kind, body)
            if kind == "site" and "identity" in body:
                refs.parse_identity(world, body["identity"])  # refused before anything is created
            if existing is not None:
                existing.tags = tags or existing.tags
                existing.properties.update(settable)
                if kind == "site":
                    self.site_identity_update(existing, body)
                return json_response(self._view(existing))
            resource = world.add_resource(spec.type, name, resource_group=group, location=str(body["location"]), tags=tags,
                                          properties=settable)
            if kind == "site":
                self.site_identity_update(resource, body)
            if body.get("kind"):
                resource.data["kind"] = str(body["kind"])
            return await self._created(request, ctx, kind, resource, body)

        return handler

    async def _created(self, request: web.Request, ctx: CallContext, kind: str, resource: Resource, body: dict[str, Any]) -> web.Response:
        """The answer to the PUT that created `resource`, with its long-running operation if any."""
        api_version = request.query["api-version"]

        def succeeded() -> None:
            resource.data["provisioning_state"] = "Succeeded"

        if kind == "storage":
            sku = body.get("sku")
            if isinstance(sku, dict) and sku.get("name"):
                resource.data["sku"] = str(sku["name"])
            storage_keys(resource)
            resource.data["provisioning_state"] = "Creating"
            if self.runtime.azurite is not None:
                await self.runtime.azurite.sync_accounts()
            operation = self._start_operation(
                ctx, "Microsoft.Storage", resource.location, api_version, finish=succeeded,
                result=lambda: self._view(resource), result_kind="asyncoperations",
            )
            return web.Response(status=202, headers={"Location": operation.result_url, "Retry-After": self._retry_after()})
        if kind == "cosmos":
            cosmos_keys(resource)
            resource.data["provisioning_state"] = "Creating"
            operation = self._start_operation(ctx, "Microsoft.DocumentDB", resource.location, api_version, finish=succeeded)
            return json_response(self._view(resource), headers={"Azure-AsyncOperation": operation.status_url, "Retry-After": self._retry_after()})
        return json_response(self._view(resource), status=201 if kind == "vault" else 200)

    # ---- storage ----------------------------------------------------------------------------
    def _storage_keys_body(self, resource: Resource) -> dict[str, Any]:
        keys = storage_keys(resource)
        created = resource.data.get("key_created", {})
        return {"keys": [
            {"keyName": name, "value": value, "permissions": "FULL", "creationTime": _iso(created.get(name, time.time()))}
            for name, value in keys.items()
        ]}

    async def storage_list_keys(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("storage", rg, name)
        self._authorize(ctx, "Microsoft.Storage/storageAccounts/listkeys/action", resource.id)
        self._storage_limit("storage", "list", resource.location)
        return json_response(self._storage_keys_body(resource))

    async def storage_patch(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        """Storage Accounts - Update (PATCH, synchronous): tags and the settable properties."""
        self._check(request, sub)
        resource = self._resource("storage", rg, name)
        self._authorize(ctx, f"{STORAGE_TYPE}/write", resource.id)
        self._storage_limit("storage", "write", resource.location)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise AzureError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        settable = _settable_properties("storage", body)
        if isinstance(body.get("tags"), dict):
            resource.tags = {str(k): str(v) for k, v in body["tags"].items()}
        resource.properties.update(settable)
        return json_response(self._view(resource))

    async def storage_regenerate_key(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("storage", rg, name)
        self._authorize(ctx, "Microsoft.Storage/storageAccounts/regeneratekey/action", resource.id)
        self._storage_limit("storage", "write", resource.location)
        body = await read_json(request)
        key_name = str(body.get("keyName", "") if isinstance(body, dict) else "").lower()
        try:
            regenerate_storage_key(resource, key_name)
        except KeyError:
            raise AzureError(400, "InvalidValuesForRequestParameters", "Values for request parameters are invalid: keyName.") from None
        if self.runtime.azurite is not None:
            await self.runtime.azurite.sync_accounts()
        return json_response(self._storage_keys_body(resource))

    # ---- cosmos -----------------------------------------------------------------------------
    async def cosmos_list_keys(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("cosmos", rg, name)
        self._authorize(ctx, "Microsoft.DocumentDB/databaseAccounts/listKeys/action", resource.id)
        return json_response(dict(cosmos_keys(resource)))

    async def cosmos_readonly_keys(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("cosmos", rg, name)
        self._authorize(ctx, "Microsoft.DocumentDB/databaseAccounts/readonlykeys/action", resource.id)
        keys = cosmos_keys(resource)
        return json_response({k: keys[k] for k in ("primaryReadonlyMasterKey", "secondaryReadonlyMasterKey")})

    async def cosmos_connection_strings(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("cosmos", rg, name)
        self._authorize(ctx, "Microsoft.DocumentDB/databaseAccounts/listConnectionStrings/action", resource.id)
        keys = cosmos_keys(resource)
        # Azure writes the port (`:443/`); the sandbox's HTTPS port is part of its suffix already.
        endpoint = f"https://{resource.name}.documents.{self.runtime.suffix}/"
        entries = [
            {
                "connectionString": f"AccountEndpoint={endpoint};AccountKey={keys[field]};",
                "description": _COSMOS_LABELS[kind][1], "keyKind": _COSMOS_LABELS[kind][0], "type": "Sql",
            }
            for kind, field in _COSMOS_KEYS.items()
        ]
        return json_response({"connectionStrings": entries})

    async def cosmos_regenerate_key(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("cosmos", rg, name)
        self._authorize(ctx, "Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", resource.id)
        body = await read_json(request)
        requested = str(body.get("keyKind", "") if isinstance(body, dict) else "")
        key_kind = next((k for k in _COSMOS_KEYS if k.lower() == requested.lower()), None)
        if key_kind is None:
            raise AzureError(400, "BadRequest", f"Invalid keyKind '{requested}'; expected one of {', '.join(_COSMOS_KEYS)}.")
        pending = resource.data.get("pending_operation")
        if pending in self.operations and self.operations[pending].ended is None:
            # The Cosmos DB resource provider's own error body ({code, message}, not ARM's
            # {"error": {...}}), as it answers any operation that needs the account's lock.
            return json_response({"code": "PreconditionFailed", "message": (
                "There is already an operation in progress which requires exclusive lock on this service. "
                f"Please retry the operation after sometime.\r\nActivityId: {uuid.uuid4()}, Microsoft.Azure.Documents.Common/2.14.0"
            )}, status=412)

        def regenerate() -> None:
            cosmos_keys(resource)[_COSMOS_KEYS[key_kind]] = _new_key()

        operation = self._start_operation(ctx, "Microsoft.DocumentDB", resource.location, request.query["api-version"], finish=regenerate,
                                          hold_s=self.cosmos_regenerate_s, resource=resource.id, kind=f"regenerateKey:{key_kind}")
        resource.data["pending_operation"] = operation.id
        return json_response({"status": "Dequeued"}, status=202, headers={
            "Azure-AsyncOperation": operation.status_url, "Location": operation.result_url, "Retry-After": self._retry_after(),
        })

    # ---- SQL servers ------------------------------------------------------------------------
    def _sql_body(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            raise AzureError(400, "InvalidRequestContent", "The request content must be a JSON object with an object 'properties'.")
        return body

    @staticmethod
    def _check_sql_password(password: Any, login: str) -> str:
        """Azure SQL's password policy; the error never repeats the password."""
        value = password if isinstance(password, str) else ""
        classes = sum(any(test(c) for c in value) for test in (str.isupper, str.islower, str.isdigit, lambda c: not c.isalnum()))
        if not 8 <= len(value) <= 128 or classes < 3 or (login and login.lower() in value.lower()):
            raise AzureError(400, "PasswordNotComplex", (
                "Password validation failed. The password does not meet policy requirements because it is not complex enough."
            ))
        return value

    async def sql_put(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        group = self._group(rg)
        world = self.runtime.world
        spec = _KINDS["sql"]
        self._authorize(ctx, f"{SQL_TYPE}/write", f"{world.subscription_scope}/resourceGroups/{group}/providers/{SQL_TYPE}/{name}")
        body = self._sql_body(await read_json(request))
        properties = body.get("properties") or {}
        if not spec.name_rule.match(name):
            raise AzureError(400, spec.name_error, f"Invalid value given for parameter ServerName: '{name}'.")
        existing = world.find_resource(SQL_TYPE, name)
        if existing is not None and existing.resource_group.lower() != group.lower():
            raise AzureError(409, "ServerAlreadyExists", f"The server name '{name}' is already in use.")
        if existing is None:
            login = str(properties.get("administratorLogin") or "")
            if not body.get("location"):
                raise AzureError(400, "LocationRequired", "The location property is required for this definition.")
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,127}", login) or login.lower() in ("admin", "administrator", "sa", "root", "guest"):
                raise AzureError(400, "InvalidLoginName", f"Invalid administrator login name '{login}'.")
            password = self._check_sql_password(properties.get("administratorLoginPassword"), login)
            tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
            resource = world.add_resource(SQL_TYPE, name, resource_group=group, location=str(body["location"]), tags=tags,
                                          properties={"administratorLogin": login})
            resource.data["sql_password"] = password
            return json_response(self._view(resource), status=201)
        self._update_sql(existing, body, properties)()
        return json_response(self._view(existing))

    def _update_sql(self, resource: Resource, body: dict[str, Any], properties: dict[str, Any]) -> Callable[[], None]:
        """Validate an update and return what applies it (the password changes when it runs)."""
        login = str(resource.properties.get("administratorLogin") or "")
        requested = properties.get("administratorLogin")
        if requested is not None and str(requested) != login:
            raise AzureError(400, "InvalidParameterValue", "The administrator login of a server cannot be changed.")
        password = None
        if "administratorLoginPassword" in properties:
            password = self._check_sql_password(properties.get("administratorLoginPassword"), login)
        tags = body.get("tags")

        def apply() -> None:
            if password is not None:
                resource.data["sql_password"] = password
            if isinstance(tags, dict):
                resource.tags = {str(k): str(v) for k, v in tags.items()}

        return apply

    async def sql_patch(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("sql", rg, name)
        self._authorize(ctx, f"{SQL_TYPE}/write", resource.id)
        body = self._sql_body(await read_json(request))
        apply = self._update_sql(resource, body, body.get("properties") or {})
        pending = resource.data.get("pending_operation")
        if pending in self.operations and self.operations[pending].ended is None:
            raise AzureError(409, "ConflictingServerOperation", "An ongoing operation is already in progress on this server. Please retry later.")
        operation = self._start_operation(ctx, "Microsoft.Sql", resource.location, request.query["api-version"], finish=apply,
                                          result=lambda: self._view(resource))
        resource.data["pending_operation"] = operation.id
        return web.Response(status=202, headers={
            "Azure-AsyncOperation": operation.status_url, "Location": operation.result_url, "Retry-After": self._retry_after(),
        })

    def control_routes(self, app: web.Application) -> None:
        async def check_login(request: web.Request) -> web.Response:
            # Stands in for a SQL sign-in (there is no SQL endpoint): whether the pair works now.
            body = await read_json(request)
            if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("server", "login", "password")):
                return json_response({"error": "server, login and password (strings) are required"}, status=400)
            server = self.runtime.world.find_resource(SQL_TYPE, body["server"])
            if server is None:
                return json_response({"error": "no such SQL server"}, status=404)
            login = str(server.properties.get("administratorLogin") or "")
            current = str(server.data.get("sql_password") or "")
            valid = bool(current) and body["login"].lower() == login.lower() and secrets.compare_digest(body["password"].encode(), current.encode())
            return json_response({"valid": valid})

        async def check_cosmos_key(request: web.Request) -> web.Response:
            # Stands in for a Cosmos DB data-plane request signed with a key (there is no data
            # plane): whether the key would authorize now, and Azure's refusal when it would not.
            body = await read_json(request)
            if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("account", "key")):
                return json_response({"error": "account and key (strings) are required"}, status=400)
            account = self.runtime.world.find_resource(COSMOS_TYPE, body["account"])
            if account is None:
                return json_response({"error": "no such Cosmos DB account"}, status=404)
            if account.properties.get("disableLocalAuth") is True:
                return json_response({"valid": False, "status": 401, "substatus": 5202,
                                      "message": "Local Authorization is disabled. Use an AAD token to authorize all requests."})
            known = any(secrets.compare_digest(body["key"].encode(), key.encode()) for key in cosmos_keys(account).values())
            return json_response({"valid": known, "status": 200 if known else 401})

        app.router.add_post("/sql/logins/check", check_login)
        app.router.add_post("/cosmos/keys/check", check_cosmos_key)
        self.limits.control_routes(app)
        async def cosmos_regenerate(request: web.Request) -> web.Response:
            # How long Cosmos DB regenerateKey operations started from now on stay in progress.
            body = await read_json(request)
            value = body.get("in_progress_s") if isinstance(body, dict) else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                return json_response({"error": "in_progress_s must be a number of seconds >= 0, or null"}, status=400)
            self.cosmos_regenerate_s = None if value is None else float(value)
            return json_response({"in_progress_s": self.cosmos_regenerate_s})

        async def retry_after(request: web.Request) -> web.Response:
            # The Retry-After of operations still running (seconds; null: the default).
            body = await read_json(request)
            value = body.get("seconds") if isinstance(body, dict) else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 600):
                return json_response({"error": "seconds must be a whole number of seconds 0-600, or null"}, status=400)
            self.runtime.arm_retry_after_s = ARM_RETRY_AFTER_S if value is None else value
            return json_response({"seconds": self.runtime.arm_retry_after_s})

        async def list_operations(request: web.Request) -> web.Response:
            return json_response({"value": [self._operation_view(op) for op in self.operations.values()]})

        async def finish_operations(request: web.Request) -> web.Response:
            # Ends running operations now (as if their time had come): all, or those on one resource
            # name; with "status": "Failed" they fail instead (nothing they would do happens).
            body = await read_json(request)
            name = str(body.get("resource") or "").lower() if isinstance(body, dict) else ""
            status = str(body.get("status") or "Succeeded") if isinstance(body, dict) else "Succeeded"
            if status not in ("Succeeded", "Failed"):
                return json_response({"error": "status must be Succeeded or Failed"}, status=400)
            finished = []
            for op in self.operations.values():
                if op.ended is None and (not name or op.resource.lower().rpartition("/")[2] == name):
                    op.complete(failed=status == "Failed")
                    finished.append(self._operation_view(op))
            return json_response({"value": finished})

        async def site_restarts(request: web.Request) -> web.Response:
            site = self.runtime.world.find_resource(SITE_TYPE, request.match_info["site"])
            if site is None:
                return json_response({"error": "no such site"}, status=404)
            counted = site.data.get("restarts", {})
            return json_response({"site": site.name, "restarts": {slot or "production": n for slot, n in sorted(counted.items())}})

        app.router.add_put("/arm/cosmos/regenerate", cosmos_regenerate)
        app.router.add_get("/arm/operations", list_operations)
        app.router.add_put("/arm/operations/retry-after", retry_after)
        app.router.add_post("/arm/operations/finish", finish_operations)
        app.router.add_get("/arm/sites/{site}/restarts", site_restarts)
        self.apps_control_routes(app)

    @staticmethod
    def _status(op: _Operation) -> str:
        if op.ended is None:
            return "InProgress"
        return "Failed" if op.failed else "Succeeded"

    def _operation_view(self, op: _Operation) -> dict[str, Any]:
        return {"id": op.id, "resource": op.resource, "kind": op.kind, "status": self._status(op),
                "started": _iso(op.started), "status_url": op.status_url}

    # ---- app settings -----------------------------------------------------------------------
    def _settings(self, resource: Resource, slot: str | None) -> dict[str, str]:
        return resource.data.setdefault("appsettings", {}).setdefault((slot or "").lower(), {})  # type: ignore[no-any-return]

    def _settings_view(self, resource: Resource, slot: str | None) -> dict[str, Any]:
        base = resource.id + (f"/slots/{slot}" if slot else "")
        return {
            "id": f"{base}/config/appsettings", "name": "appsettings",
            "type": "Microsoft.Web/sites/slots/config" if slot else "Microsoft.Web/sites/config",
            "location": resource.location, "properties": dict(self._settings(resource, slot)),
        }

    def _site_for_settings(self, ctx: CallContext, rg: str, name: str, slot: str | None, verb: str) -> Resource:
        resource = self._resource("site", rg, name)
        prefix = "Microsoft.Web/sites/slots" if slot else "Microsoft.Web/sites"
        self._authorize(ctx, f"{prefix}/config/{verb}", resource.id + (f"/slots/{slot}" if slot else ""))
        return resource

    async def list_app_settings(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        resource = self._site_for_settings(ctx, rg, name, slot, "list/action")
        return json_response(self._settings_view(resource, slot))

    async def update_app_settings(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        resource = self._site_for_settings(ctx, rg, name, slot, "write")
        body = await read_json(request)
        properties = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(properties, dict) or not all(isinstance(v, str) for v in properties.values()):
            raise AzureError(400, "BadRequest", "properties must be an object of string values.")
        settings = self._settings(resource, slot)
        changed = settings != properties
        settings.clear()
        settings.update(properties)  # PUT replaces the whole set, as in Azure (no ETag: last writer wins)
        if changed:
            self._restart(resource, slot)  # adding, removing or editing app settings restarts the app
        return json_response(self._settings_view(resource, slot))

    @staticmethod
    def _restart(resource: Resource, slot: str | None) -> None:
        restarts = resource.data.setdefault("restarts", {})
        key = (slot or "").lower()
        restarts[key] = restarts.get(key, 0) + 1
        # A restarted app reads its Key Vault references again (App Service refetches on any change).
        resource.data.get("kvref_cache", {}).pop(key, None)

    # ---- slot-sticky setting names (site level, shared by every slot) ------------------------
    _SLOT_CONFIG_LISTS = ("appSettingNames", "connectionStringNames", "azureStorageConfigNames")

    def _slot_config_view(self, resource: Resource) -> dict[str, Any]:
        names = resource.data.get("slot_config_names") or {}
        return {
            "id": f"{resource.id}/config/slotConfigNames", "name": "slotConfigNames", "type": "Microsoft.Web/sites/config",
            "location": resource.location, "properties": {key: list(names.get(key) or []) for key in self._SLOT_CONFIG_LISTS},
        }

    async def list_slot_config_names(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("site", rg, name)
        self._authorize(ctx, "Microsoft.Web/sites/config/read", resource.id)
        return json_response(self._slot_config_view(resource))

    async def update_slot_config_names(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("site", rg, name)
        self._authorize(ctx, "Microsoft.Web/sites/config/write", resource.id)
        body = await read_json(request)
        properties = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(properties, dict) or not all(
                properties.get(key) is None or (isinstance(properties[key], list) and all(isinstance(v, str) for v in properties[key]))
                for key in self._SLOT_CONFIG_LISTS):
            raise AzureError(400, "BadRequest", "properties must hold lists of names (appSettingNames, connectionStringNames, azureStorageConfigNames).")
        new = {key: list(properties.get(key) or []) for key in self._SLOT_CONFIG_LISTS}
        old = {key: list((resource.data.get("slot_config_names") or {}).get(key) or []) for key in self._SLOT_CONFIG_LISTS}
        resource.data["slot_config_names"] = new  # PUT replaces every list, as in Azure
        if {k: sorted(v) for k, v in new.items()} != {k: sorted(v) for k, v in old.items()}:
            self._restart(resource, None)  # a configuration change of the site
        return json_response(self._slot_config_view(resource))

    # ---- role assignments -------------------------------------------------------------------
    def _assignment_view(self, assignment: RoleAssignment) -> dict[str, Any]:
        return {
            "id": assignment.id, "name": assignment.name, "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": assignment.role_definition_id, "principalId": assignment.principal_id,
                "principalType": assignment.principal_type, "scope": assignment.scope,
                "createdOn": _iso(assignment.created_on), "updatedOn": _iso(assignment.created_on),
            },
        }

    def _role_from_id(self, role_definition_id: str) -> RoleDefinition:
        """The role a roleDefinitionId (`[/subscriptions/{sub}]/providers/.../roleDefinitions/{guid}`) names."""
        found = re.match(
            r"^(/subscriptions/(?P<sub>[^/]+))?/providers/Microsoft\.Authorization/roleDefinitions/(?P<guid>[^/]+)/?$",
            role_definition_id, re.IGNORECASE,
        )
        role = self.runtime.world.roles.get(found.group("guid").lower()) if found else None
        if found is None or role is None or (found.group("sub") or self.runtime.world.subscription_id).lower() != self.runtime.world.subscription_id.lower():
            raise AzureError(400, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_definition_id}' does not exist.")
        return role

    def _find_assignment(self, scope: str, name: str) -> RoleAssignment | None:
        for assignment in self.runtime.world.role_assignments.values():
            if assignment.name.lower() == name.lower() and assignment.scope.lower().rstrip("/") == scope.lower():
                return assignment
        return None

    async def create_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        scope = self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/write", scope)
        if not _GUID.match(name):
            raise AzureError(400, "InvalidRoleAssignmentId", f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.")
        body = await read_json(request)
        properties = (body.get("properties") if isinstance(body, dict) else None) or {}
        role = self._role_from_id(str(properties.get("roleDefinitionId", "")))
        principal = str(properties.get("principalId", ""))
        world = self.runtime.world
        if world.find_identity(object_id=principal) is None:
            raise AzureError(400, "PrincipalNotFound", f"Principal {principal.replace('-', '')} does not exist in the directory {world.tenant_id}. Check that you have the correct principal ID.")
        principal_type = str(properties.get("principalType") or "ServicePrincipal")
        if principal_type.lower() not in _PRINCIPAL_TYPES:
            raise AzureError(400, "InvalidPrincipalType", f"The principal type '{principal_type}' is not valid.")
        same_name = self._find_assignment(scope, name)
        for existing in world.role_assignments.values():
            if (existing.scope.lower().rstrip("/") == scope.lower() and existing.role_guid == role.role_id
                    and existing.principal_id.lower() == principal.lower() and existing is not same_name):
                raise AzureError(409, "RoleAssignmentExists", "The role assignment already exists.")
        if same_name is not None:
            if same_name.role_guid != role.role_id or same_name.principal_id.lower() != principal.lower():
                raise AzureError(409, "RoleAssignmentUpdateNotPermitted", "Tenant ID, application ID, principal ID, and scope are not allowed to be updated.")
            return json_response(self._assignment_view(same_name), status=201)
        assignment = world.assign_role(scope, role, principal, name=name.lower(), principal_type=principal_type)
        return json_response(self._assignment_view(assignment), status=201)

    async def get_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        scope = self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
        assignment = self._find_assignment(scope, name)
        if assignment is None:
            raise AzureError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")
        return json_response(self._assignment_view(assignment))

    async def delete_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        scope = self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/delete", scope)
        assignment = self._find_assignment(scope, name)
        if assignment is None:
            return web.Response(status=204)  # deleting what is not there succeeds, as in ARM
        del self.runtime.world.role_assignments[assignment.id.lower()]
        return json_response(self._assignment_view(assignment))

    async def list_role_assignments(self, request: web.Request, ctx: CallContext, scope: str) -> web.Response:
        scope = self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
        at_scope, principal = _assignment_filter(request.query.get("$filter", ""))
        wanted = scope.lower()
        found = []
        for assignment in self.runtime.world.role_assignments.values():
            own = assignment.scope.lower().rstrip("/")
            at_or_above = wanted == own or wanted.startswith(own + "/")
            below = own.startswith(wanted + "/")
            if not (at_or_above or (below and not at_scope)):
                continue
            if principal is not None and assignment.principal_id.lower() != principal:
                continue
            found.append(self._assignment_view(assignment))
        return json_response({"value": found})

    # ---- role definitions -------------------------------------------------------------------
    def _role_view(self, role: RoleDefinition, scope: str) -> dict[str, Any]:
        sub = self.runtime.world.subscription_scope if scope else ""
        return {
            "id": f"{sub}/providers/Microsoft.Authorization/roleDefinitions/{role.role_id}",
            "name": role.role_id, "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": role.name, "description": role.description,
                "type": "BuiltInRole" if role.role_id in BUILTIN_ROLES else "CustomRole",
                "permissions": [{
                    "actions": list(role.actions), "notActions": list(role.not_actions),
                    "dataActions": list(role.data_actions), "notDataActions": list(role.not_data_actions),
                }],
                "assignableScopes": ["/"] if role.role_id in BUILTIN_ROLES else [self.runtime.world.subscription_scope],
            },
        }

    def _role_scope(self, request: web.Request, ctx: CallContext, scope: str) -> str:
        """Check a role definition read at `scope` ("" = the tenant root, readable by everyone)."""
        if not scope.strip("/"):
            self._check(request)
            return ""
        scope = self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleDefinitions/read", scope)
        return scope

    async def get_role_definition(self, request: web.Request, ctx: CallContext, scope: str, role_id: str) -> web.Response:
        scope = self._role_scope(request, ctx, scope)
        role = self.runtime.world.roles.get(role_id.lower())
        if role is None:
            raise AzureError(404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_id}' does not exist.")
        return json_response(self._role_view(role, scope))

    async def list_role_definitions(self, request: web.Request, ctx: CallContext, scope: str) -> web.Response:
        scope = self._role_scope(request, ctx, scope)
        query = request.query.get("$filter", "")
        name = re.search(r"roleName\s+eq\s+'([^']+)'", query, re.IGNORECASE)
        kind = re.search(r"type\s+eq\s+'([^']+)'", query, re.IGNORECASE)
        views = [self._role_view(r, scope) for r in self.runtime.world.roles.values()]
        found = [
            v for v in views
            if (name is None or v["properties"]["roleName"].lower() == name.group(1).lower())
            and (kind is None or v["properties"]["type"].lower() == kind.group(1).lower())
        ]
        return json_response({"value": found})


def _assignment_filter(query: str) -> tuple[bool, str | None]:
    """`(at_scope, principal_id)` of a role assignment `$filter`.

    Raises:
        AzureError: a filter the role assignment API does not support.
    """
    at_scope = False
    principal: str | None = None
    for clause in filter(None, (c.strip() for c in re.split(r"\s+and\s+", query.strip(), flags=re.IGNORECASE))):
        if clause.lower() == "atscope()":
            at_scope = True
            continue
        found = re.fullmatch(r"principalId\s+eq\s+'([^']+)'|assignedTo\('([^']+)'\)", clause, re.IGNORECASE)
        if found is None:
            raise AzureError(400, "UnsupportedQuery", f"The filter '{query}' is not supported. Supported filters: atScope(), principalId eq '{{id}}', assignedTo('{{id}}').")
        principal = (found.group(1) or found.group(2)).lower()
    return at_scope, principal


# Properties a PUT (create or update) or PATCH may set, per resource kind: what vaultrelay
# depends on.  Storage `allowSharedKeyAccess` (null = true) and Cosmos DB `disableLocalAuth`.
_SETTABLE = {"storage": ("allowSharedKeyAccess",), "cosmos": ("disableLocalAuth",)}


def _settable_properties(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The settable properties a request body sets (a null value resets to Azure's default).

    Raises:
        AzureError: 400 when a value is not a boolean.
    """
    properties = body.get("properties") or {}
    if not isinstance(properties, dict):
        raise AzureError(400, "InvalidRequestContent", "properties must be a JSON object.")
    found: dict[str, Any] = {}
    for name in _SETTABLE.get(kind, ()):
        if name not in properties:
            continue
        value = properties[name]
        if value is not None and not isinstance(value, bool):
            raise AzureError(400, "InvalidRequestContent", f"The value of property '{name}' must be a boolean.")
        found[name] = value
    return found
