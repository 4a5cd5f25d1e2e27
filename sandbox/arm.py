"""Azure Resource Manager stand-in.

Implements, with the request paths, bodies and status codes of the public REST specifications
(any date-style api-version is accepted; the installed SDKs send Microsoft.Storage 2026-09-01,
Microsoft.DocumentDB 2026-03-15, Microsoft.Web 2025-05-01 and Microsoft.Authorization
2022-04-01):

* Microsoft.Storage/storageAccounts: get, create (PUT), list (subscription, resource group),
  `listKeys`, `regenerateKey` (Azurite is restarted so the old key stops working);
* Microsoft.DocumentDB/databaseAccounts: get, create, list, `listKeys`, `readonlykeys`
  (POST and GET), `listConnectionStrings`, `regenerateKey` (a long-running operation with a
  `Location` header to poll);
* Microsoft.Web/sites (and `/slots/{slot}`): get, create, `config/appsettings/list`, PUT
  `config/appsettings`;
* Microsoft.KeyVault/vaults: get, create, list;
* resource groups: get, create;
* Microsoft.Authorization: role assignments (create, get, delete, list at any scope with
  `atScope()` / `principalId eq` filters) and role definitions (get, list, `roleName eq` filter).

Every call needs a bearer token for ARM (`https://management.azure.com`) and is authorized with
Azure RBAC; a denial is ARM's `AuthorizationFailed` body naming the action and scope.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from core.azure_roles import RoleDefinition
from sandbox.http import AzureError, CallContext, Service, json_response, read_json
from sandbox.runtime import Runtime
from sandbox.world import (
    COSMOS_TYPE,
    SITE_TYPE,
    STORAGE_TYPE,
    VAULT_TYPE,
    Resource,
    RoleAssignment,
    regenerate_storage_key,
    storage_keys,
)

ARM_AUDIENCES = {"https://management.azure.com", "https://management.core.windows.net"}
_API_VERSION = re.compile(r"^20\d\d-\d\d-\d\d(-preview)?$")
_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_TYPES = {
    "storage": (STORAGE_TYPE, r"Microsoft\.Storage/storageAccounts"),
    "cosmos": (COSMOS_TYPE, r"Microsoft\.DocumentDB/databaseAccounts"),
    "site": (SITE_TYPE, r"Microsoft\.Web/sites"),
    "vault": (VAULT_TYPE, r"Microsoft\.KeyVault/vaults"),
}
_COSMOS_KEYS = {
    "primary": "primaryMasterKey",
    "secondary": "secondaryMasterKey",
    "primaryReadonly": "primaryReadonlyMasterKey",
    "secondaryReadonly": "secondaryReadonlyMasterKey",
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _new_key() -> str:
    import base64
    import secrets

    return base64.b64encode(secrets.token_bytes(64)).decode()


def cosmos_keys(resource: Resource) -> dict[str, str]:
    """The four keys of a Cosmos DB account (created on first use)."""
    keys = resource.data.get("cosmos_keys")
    if keys is None:
        keys = resource.data["cosmos_keys"] = {name: _new_key() for name in _COSMOS_KEYS.values()}
    return keys  # type: ignore[no-any-return]


class ArmService(Service):
    name = "arm"
    case_insensitive_paths = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.operations: dict[str, int] = {}
        r = self.add_route
        # resource groups
        r("PUT", _RG, "PutResourceGroup", self.put_resource_group)
        r("GET", _RG, "GetResourceGroup", self.get_resource_group)
        # generic resources of the known types
        for kind, (_, pattern) in _TYPES.items():
            r("GET", rf"{_SUB}/providers/{pattern}", f"List{kind.title()}", self._lister(kind))
            r("GET", rf"{_RG}/providers/{pattern}", f"List{kind.title()}InGroup", self._lister(kind))
            r("GET", rf"{_RG}/providers/{pattern}/(?P<name>[^/]+)", f"Get{kind.title()}", self._getter(kind))
            r("PUT", rf"{_RG}/providers/{pattern}/(?P<name>[^/]+)", f"Put{kind.title()}", self._putter(kind))
        # storage keys
        st = rf"{_RG}/providers/Microsoft\.Storage/storageAccounts/(?P<name>[^/]+)"
        r("POST", st + "/listKeys", "StorageListKeys", self.storage_list_keys)
        r("POST", st + "/regenerateKey", "StorageRegenerateKey", self.storage_regenerate_key)
        # cosmos keys
        db = rf"{_RG}/providers/Microsoft\.DocumentDB/databaseAccounts/(?P<name>[^/]+)"
        r("POST", db + "/listKeys", "CosmosListKeys", self.cosmos_list_keys)
        r("POST", db + "/readonlykeys", "CosmosReadOnlyKeys", self.cosmos_readonly_keys)
        r("GET", db + "/readonlykeys", "CosmosReadOnlyKeys", self.cosmos_readonly_keys)
        r("POST", db + "/listConnectionStrings", "CosmosListConnectionStrings", self.cosmos_connection_strings)
        r("POST", db + "/regenerateKey", "CosmosRegenerateKey", self.cosmos_regenerate_key)
        r("GET", r"/providers/Microsoft\.DocumentDB/operationResults/(?P<op>[^/]+)", "CosmosOperationResult", self.operation_result)
        # app settings
        site = rf"{_RG}/providers/Microsoft\.Web/sites/(?P<name>[^/]+)(/slots/(?P<slot>[^/]+))?"
        r("POST", site + "/config/appsettings/list", "ListAppSettings", self.list_app_settings)
        r("PUT", site + "/config/appsettings", "UpdateAppSettings", self.update_app_settings)
        # authorization
        ra = r"(?P<scope>/subscriptions/.+?)/providers/Microsoft\.Authorization/roleAssignments"
        r("PUT", ra + r"/(?P<name>[^/]+)", "CreateRoleAssignment", self.create_role_assignment)
        r("GET", ra + r"/(?P<name>[^/]+)", "GetRoleAssignment", self.get_role_assignment)
        r("DELETE", ra + r"/(?P<name>[^/]+)", "DeleteRoleAssignment", self.delete_role_assignment)
        r("GET", ra, "ListRoleAssignments", self.list_role_assignments)
        rd = r"(?P<scope>(/subscriptions/.+?)?)/providers/Microsoft\.Authorization/roleDefinitions"
        r("GET", rd + r"/(?P<role_id>[^/]+)", "GetRoleDefinition", self.get_role_definition)
        r("GET", rd, "ListRoleDefinitions", self.list_role_definitions)

    # ---- service hooks ----------------------------------------------------------------------
    def target_of(self, request: web.Request, params: dict[str, str]) -> str | None:
        return params.get("name") or params.get("rg")

    def accepted_audiences(self, request: web.Request) -> set[str]:
        return set(ARM_AUDIENCES)

    def challenge(self, request: web.Request) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer authorization_uri="{self.runtime.authority}/{self.runtime.world.tenant_id}", '
                'error="invalid_token", error_description="The authentication failed because of missing \'Authorization\' header."'
            )
        }

    def unauthorized_message(self, reason: str | None) -> str:
        return reason or "Authentication failed. The 'Authorization' header is missing."

    def render_error(self, error: AzureError) -> web.Response:
        code = "AuthenticationFailed" if error.status == 401 else error.code
        return json_response({"error": {"code": code, "message": error.message}}, status=error.status, headers=error.headers)

    # ---- helpers ----------------------------------------------------------------------------
    def _check(self, request: web.Request, sub: str | None = None) -> None:
        api_version = request.query.get("api-version")
        if not api_version:
            raise AzureError(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
        if not _API_VERSION.match(api_version):
            raise AzureError(400, "InvalidApiVersionParameter", f"The api-version '{api_version}' is invalid.")
        if sub is not None and sub.lower() != self.runtime.world.subscription_id:
            raise AzureError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def _authorize(self, ctx: CallContext, action: str, scope: str) -> None:
        identity = ctx.identity
        assert identity is not None
        if not self.runtime.world.authorize(identity.object_id, action, scope, data=False):
            raise AzureError(403, "AuthorizationFailed", (
                f"The client '{identity.client_id}' with object id '{identity.object_id}' does not have authorization "
                f"to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently "
                "granted, please refresh your credentials."
            ))

    def _group(self, rg: str) -> str:
        group = self.runtime.world.resource_groups.get(rg.lower())
        if group is None:
            raise AzureError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return group

    def _resource(self, kind: str, rg: str, name: str) -> Resource:
        type_, _ = _TYPES[kind]
        self._group(rg)
        resource = self.runtime.world.find_resource(type_, name, resource_group=rg)
        if resource is None:
            raise AzureError(404, "ResourceNotFound", f"The Resource '{type_}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")
        return resource

    def _view(self, resource: Resource) -> dict[str, Any]:
        suffix = self.runtime.suffix
        properties: dict[str, Any] = {"provisioningState": "Succeeded", **resource.properties}
        body: dict[str, Any] = {
            "id": resource.id, "name": resource.name, "type": resource.type, "location": resource.location,
            "tags": dict(resource.tags),
        }
        if resource.type == STORAGE_TYPE:
            body.update({"kind": "StorageV2", "sku": {"name": "Standard_LRS", "tier": "Standard"}})
            properties["primaryEndpoints"] = {s: f"https://{resource.name}.{s}.{suffix}/" for s in ("blob", "queue", "table")}
            properties.setdefault("allowSharedKeyAccess", True)
        elif resource.type == COSMOS_TYPE:
            body["kind"] = "GlobalDocumentDB"
            properties.update({
                "documentEndpoint": f"https://{resource.name}.documents.{suffix}/",
                "databaseAccountOfferType": "Standard",
                "locations": [{"locationName": resource.location, "failoverPriority": 0}],
            })
        elif resource.type == SITE_TYPE:
            body["kind"] = "functionapp,linux"
            properties.update({"defaultHostName": f"{resource.name}.azurewebsites.net", "state": "Running"})
        elif resource.type == VAULT_TYPE:
            properties.update({
                "vaultUri": self.runtime.vault_url(resource.name) + "/", "tenantId": self.runtime.world.tenant_id,
                "sku": {"family": "A", "name": "standard"}, "enableRbacAuthorization": True,
                "enableSoftDelete": True, "softDeleteRetentionInDays": 90,
            })
        body["properties"] = properties
        return body

    # ---- resource groups and resources ------------------------------------------------------
    async def put_resource_group(self, request: web.Request, ctx: CallContext, sub: str, rg: str) -> web.Response:
        self._check(request, sub)
        scope = f"/subscriptions/{sub}/resourceGroups/{rg}"
        self._authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/write", scope)
        body = await read_json(request)
        existed = rg.lower() in self.runtime.world.resource_groups
        self.runtime.world.resource_groups.setdefault(rg.lower(), rg)
        return json_response({
            "id": f"/subscriptions/{self.runtime.world.subscription_id}/resourceGroups/{rg}", "name": rg,
            "type": "Microsoft.Resources/resourceGroups", "location": body.get("location", "eastus"),
            "properties": {"provisioningState": "Succeeded"},
        }, status=200 if existed else 201)

    async def get_resource_group(self, request: web.Request, ctx: CallContext, sub: str, rg: str) -> web.Response:
        self._check(request, sub)
        group = self._group(rg)
        scope = f"/subscriptions/{sub}/resourceGroups/{group}"
        self._authorize(ctx, "Microsoft.Resources/subscriptions/resourceGroups/read", scope)
        return json_response({"id": scope, "name": group, "type": "Microsoft.Resources/resourceGroups", "location": "eastus", "properties": {"provisioningState": "Succeeded"}})

    def _lister(self, kind: str) -> Any:
        type_, _ = _TYPES[kind]

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str | None = None) -> web.Response:
            self._check(request, sub)
            scope = f"/subscriptions/{sub}" + (f"/resourceGroups/{self._group(rg)}" if rg else "")
            self._authorize(ctx, f"{type_}/read", scope)
            found = [
                self._view(res) for res in self.runtime.world.resources_of(type_)
                if rg is None or res.resource_group.lower() == rg.lower()
            ]
            return json_response({"value": found})

        return handler

    def _getter(self, kind: str) -> Any:
        type_, _ = _TYPES[kind]

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
            self._check(request, sub)
            resource = self._resource(kind, rg, name)
            self._authorize(ctx, f"{type_}/read", resource.id)
            return json_response(self._view(resource))

        return handler

    def _putter(self, kind: str) -> Any:
        type_, _ = _TYPES[kind]

        async def handler(request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
            self._check(request, sub)
            group = self._group(rg)
            scope = f"/subscriptions/{sub}/resourceGroups/{group}/providers/{type_}/{name}"
            self._authorize(ctx, f"{type_}/write", scope)
            body = await read_json(request)
            existing = self.runtime.world.find_resource(type_, name)
            if existing is not None and existing.resource_group.lower() != group.lower():
                raise AzureError(409, "Conflict", f"The name '{name}' is already in use in another resource group.")
            resource = self.runtime.world.add_resource(
                type_, name, resource_group=group, location=str(body.get("location") or "eastus"),
                tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()},
            )
            if type_ == STORAGE_TYPE and self.runtime.azurite is not None:
                storage_keys(resource)
                await self.runtime.azurite.sync_accounts()
            return json_response(self._view(resource), status=200 if existing else 201)

        return handler

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
        return json_response(self._storage_keys_body(resource))

    async def storage_regenerate_key(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("storage", rg, name)
        self._authorize(ctx, "Microsoft.Storage/storageAccounts/regeneratekey/action", resource.id)
        body = await read_json(request)
        key_name = str(body.get("keyName", "")).lower()
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
        endpoint = f"https://{resource.name}.documents.{self.runtime.suffix}/"
        entries = []
        for kind, label in (("primary", "Primary"), ("secondary", "Secondary"), ("primaryReadonly", "Primary Read-Only"), ("secondaryReadonly", "Secondary Read-Only")):
            entries.append({
                "connectionString": f"AccountEndpoint={endpoint};AccountKey={keys[_COSMOS_KEYS[kind]]};",
                "description": f"{label} SQL Connection String",
                "keyKind": kind[0].upper() + kind[1:],
                "type": "Sql",
            })
        return json_response({"connectionStrings": entries})

    async def cosmos_regenerate_key(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        resource = self._resource("cosmos", rg, name)
        self._authorize(ctx, "Microsoft.DocumentDB/databaseAccounts/regenerateKey/action", resource.id)
        body = await read_json(request)
        kind = str(body.get("keyKind", ""))
        matched = next((k for k in _COSMOS_KEYS if k.lower() == kind.lower()), None)
        if matched is None:
            raise AzureError(400, "BadRequest", "keyKind must be one of primary, secondary, primaryReadonly, secondaryReadonly.")
        cosmos_keys(resource)[_COSMOS_KEYS[matched]] = _new_key()
        operation = uuid.uuid4().hex
        self.operations[operation] = 1  # answers "in progress" once, then done
        location = f"{self.runtime.arm_endpoint}/providers/Microsoft.DocumentDB/operationResults/{operation}?api-version={request.query['api-version']}"
        return web.Response(status=202, headers={"Location": location, "Retry-After": "0"})

    async def operation_result(self, request: web.Request, ctx: CallContext, op: str) -> web.Response:
        self._check(request)
        remaining = self.operations.get(op)
        if remaining is None:
            raise AzureError(404, "NotFound", f"Operation '{op}' was not found.")
        if remaining > 0:
            self.operations[op] = remaining - 1
            return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": "0"})
        return web.Response(status=204)

    # ---- app settings -----------------------------------------------------------------------
    def _settings_view(self, resource: Resource, slot: str | None, settings: dict[str, str]) -> dict[str, Any]:
        base = resource.id + (f"/slots/{slot}" if slot else "")
        return {"id": f"{base}/config/appsettings", "name": "appsettings", "type": "Microsoft.Web/sites/config", "location": resource.location, "properties": dict(settings)}

    def _settings(self, resource: Resource, slot: str | None) -> dict[str, str]:
        return resource.data.setdefault("appsettings", {}).setdefault((slot or "").lower(), {})  # type: ignore[no-any-return]

    async def list_app_settings(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        resource = self._resource("site", rg, name)
        action = "Microsoft.Web/sites/slots/config/list/action" if slot else "Microsoft.Web/sites/config/list/action"
        self._authorize(ctx, action, resource.id + (f"/slots/{slot}" if slot else ""))
        return json_response(self._settings_view(resource, slot, self._settings(resource, slot)))

    async def update_app_settings(self, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        resource = self._resource("site", rg, name)
        action = "Microsoft.Web/sites/slots/config/write" if slot else "Microsoft.Web/sites/config/write"
        self._authorize(ctx, action, resource.id + (f"/slots/{slot}" if slot else ""))
        body = await read_json(request)
        properties = body.get("properties")
        if not isinstance(properties, dict) or not all(isinstance(v, str) for v in properties.values()):
            raise AzureError(400, "BadRequest", "properties must be an object of string values.")
        settings = self._settings(resource, slot)
        settings.clear()
        settings.update(properties)  # PUT replaces the whole set, as in Azure
        return json_response(self._settings_view(resource, slot, settings))

    # ---- authorization ----------------------------------------------------------------------
    def _assignment_view(self, assignment: RoleAssignment) -> dict[str, Any]:
        return {
            "id": assignment.id, "name": assignment.name, "type": "Microsoft.Authorization/roleAssignments",
            "properties": {
                "roleDefinitionId": assignment.role_definition_id, "principalId": assignment.principal_id,
                "principalType": assignment.principal_type, "scope": assignment.scope,
                "createdOn": _iso(assignment.created_on), "updatedOn": _iso(assignment.created_on),
            },
        }

    def _check_scope(self, request: web.Request, scope: str) -> None:
        sub = scope.split("/")[2] if scope.count("/") >= 2 else ""
        self._check(request, sub)

    async def create_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/write", scope)
        body = await read_json(request)
        properties = body.get("properties") or {}
        role_id = str(properties.get("roleDefinitionId", "")).rstrip("/").rsplit("/", 1)[-1].lower()
        principal = str(properties.get("principalId", ""))
        if role_id not in self.runtime.world.roles:
            raise AzureError(400, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_id}' does not exist.")
        if self.runtime.world.find_identity(object_id=principal) is None:
            raise AzureError(400, "PrincipalNotFound", f"Principal {principal} does not exist in the directory {self.runtime.world.tenant_id}.")
        for existing in self.runtime.world.role_assignments.values():
            if (existing.scope.lower() == scope.lower() and existing.role_guid == role_id
                    and existing.principal_id.lower() == principal.lower() and existing.name.lower() != name.lower()):
                raise AzureError(409, "RoleAssignmentExists", "The role assignment already exists.")
        assignment = self.runtime.world.assign_role(
            scope, self.runtime.world.roles[role_id], principal, name=name,
            principal_type=str(properties.get("principalType") or "ServicePrincipal"),
        )
        return json_response(self._assignment_view(assignment), status=201)

    def _find_assignment(self, scope: str, name: str) -> RoleAssignment:
        for assignment in self.runtime.world.role_assignments.values():
            if assignment.name.lower() == name.lower() and assignment.scope.lower().rstrip("/") == scope.lower().rstrip("/"):
                return assignment
        raise AzureError(404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found.")

    async def get_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
        return json_response(self._assignment_view(self._find_assignment(scope, name)))

    async def delete_role_assignment(self, request: web.Request, ctx: CallContext, scope: str, name: str) -> web.Response:
        self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/delete", scope)
        assignment = self._find_assignment(scope, name)
        del self.runtime.world.role_assignments[assignment.id.lower()]
        return json_response(self._assignment_view(assignment))

    async def list_role_assignments(self, request: web.Request, ctx: CallContext, scope: str) -> web.Response:
        self._check_scope(request, scope)
        self._authorize(ctx, "Microsoft.Authorization/roleAssignments/read", scope)
        query = request.query.get("$filter", "")
        at_scope = "atscope()" in query.lower()
        principal = re.search(r"principalId\s+eq\s+'([^']+)'", query, re.IGNORECASE)
        wanted = scope.lower().rstrip("/")
        found = []
        for assignment in self.runtime.world.role_assignments.values():
            own = assignment.scope.lower().rstrip("/")
            above = wanted == own or wanted.startswith(own + "/")
            below = own.startswith(wanted + "/")
            if not (above or (below and not at_scope)):
                continue
            if principal and assignment.principal_id.lower() != principal.group(1).lower():
                continue
            found.append(self._assignment_view(assignment))
        return json_response({"value": found})

    def _role_view(self, role: RoleDefinition) -> dict[str, Any]:
        return {
            "id": f"/subscriptions/{self.runtime.world.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role.role_id}",
            "name": role.role_id, "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": role.name, "description": role.description, "type": "BuiltInRole",
                "permissions": [{
                    "actions": list(role.actions), "notActions": list(role.not_actions),
                    "dataActions": list(role.data_actions), "notDataActions": list(role.not_data_actions),
                }],
                "assignableScopes": ["/"],
            },
        }

    async def get_role_definition(self, request: web.Request, ctx: CallContext, scope: str, role_id: str) -> web.Response:
        self._check(request)
        role = self.runtime.world.roles.get(role_id.lower())
        if role is None:
            raise AzureError(404, "RoleDefinitionDoesNotExist", f"The specified role definition with ID '{role_id}' does not exist.")
        return json_response(self._role_view(role))

    async def list_role_definitions(self, request: web.Request, ctx: CallContext, scope: str) -> web.Response:
        self._check(request)
        name = re.search(r"roleName\s+eq\s+'([^']+)'", request.query.get("$filter", ""), re.IGNORECASE)
        roles = [r for r in self.runtime.world.roles.values() if name is None or r.name.lower() == name.group(1).lower()]
        return json_response({"value": [self._role_view(r) for r in roles]})
