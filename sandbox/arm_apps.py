# mypy: disable-error-code="misc"
# (mixin methods are typed with `self: ArmService`, the class they are mixed into: mypy calls that "misc")
"""ARM stand-ins for where apps read their secrets: App Service Key Vault references and Container Apps.

Mixed into `ArmService` (sandbox/arm.py), whose checks, RBAC and long-running operations they use.

**App Service Key Vault references** (Microsoft.Web 2025-05-01).  A site has managed identities
(`identity`: system-assigned and/or user-assigned, set by PUT or PATCH of the site) and
`properties.keyVaultReferenceIdentity` (`SystemAssigned`, the default, or a user-assigned identity's
resource id).  An app setting whose value is `@Microsoft.KeyVault(SecretUri=...)` or
`@Microsoft.KeyVault(VaultName=...;SecretName=...[;SecretVersion=...])` is resolved with that identity
(sandbox/references.py).  `GET .../config/configreferences/appsettings[/{name}]` (and under
`/slots/{slot}`) report each reference as App Service does (`ApiKVReference`: status, vaultName,
secretName, secretVersion, identityType, details, source, activeVersion), never the value.  As App
Service does, a resolved value is cached until the app restarts (any app-settings change) or the daily
refetch (`POST /arm/sites/{site}/references/refresh` on the control API); an unresolved one is tried
again at each read.  The app sees the resolved value, or the reference text when it does not resolve
(control API `GET /arm/sites/{site}/environment`).

**Container Apps** (Microsoft.App 2026-07-01, azure-mgmt-appcontainers).  `containerApps` get, list,
create or update (PUT; creation is a long-running operation: 201 + `Azure-AsyncOperation`), update
(PATCH: 202 + `Azure-AsyncOperation` and `Location`, applied when the operation completes: objects
merged, arrays replaced),
`listSecrets` (values; `listSecrets/action`), revisions list / get / restart.  Secrets live in
`properties.configuration.secrets` (`name` + `value`, or `keyVaultUrl` + `identity`: `system` or a
user-assigned identity's resource id assigned to the app); GET never returns values.  A change of
`properties.template` (revision scope) creates a new revision, which becomes the active one (single
revision mode); a change of `properties.configuration` (application scope: secrets included) creates
none, and running revisions keep the secrets they started with until they restart or a new revision
is created.  The control API counts revisions and restarts (`GET /arm/containerapps/{app}`) and shows
what the active revision's containers see (`GET /arm/containerapps/{app}/environment`).
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox import references as refs
from sandbox.http import AzureError, CallContext, json_response, read_json
from sandbox.world import CONTAINER_APP_TYPE, SITE_TYPE, Resource

if TYPE_CHECKING:
    from sandbox.arm import ArmService

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourceGroups/(?P<rg>[^/]+)"
_SITE = _RG + r"/providers/Microsoft\.Web/sites/(?P<name>[^/]+)(/slots/(?P<slot>[^/]+))?"
_APP = _RG + r"/providers/Microsoft\.App/containerApps/(?P<name>[^/]+)"
_SECRET_NAME = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
DEFAULT_TEMPLATE = {"containers": [{"name": "app", "image": "mcr.microsoft.com/k8se/quickstart:latest"}]}


def _iso(ts: float) -> str:
    from sandbox.arm import _iso as iso

    return iso(ts)


def _merge(base: Any, patch: Any) -> Any:
    """PATCH semantics of Container Apps: objects merged key by key, anything else (arrays) replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class AppsMixin:
    """App Service Key Vault references and Container Apps; mixed into ArmService."""

    def _register_app_routes(self: ArmService) -> None:
        r = self.add_route
        r("GET", _SITE + r"/config/configreferences/appsettings", "ListAppSettingKeyVaultReferences", self.list_kv_references)
        r("GET", _SITE + r"/config/configreferences/appsettings/(?P<key>[^/]+)", "GetAppSettingKeyVaultReference", self.get_kv_reference)
        r("PATCH", _RG + r"/providers/Microsoft\.Web/sites/(?P<name>[^/]+)", "PatchSite", self.site_patch)
        r("PUT", _APP, "PutContainerApp", self.container_app_put)
        r("PATCH", _APP, "PatchContainerApp", self.container_app_patch)
        r("POST", _APP + r"/listSecrets", "ContainerAppListSecrets", self.container_app_list_secrets)
        r("GET", _APP + r"/revisions", "ListContainerAppRevisions", self.container_app_revisions)
        r("GET", _APP + r"/revisions/(?P<revision>[^/]+)", "GetContainerAppRevision", self.container_app_revision)
        r("POST", _APP + r"/revisions/(?P<revision>[^/]+)/restart", "RestartContainerAppRevision", self.container_app_restart_revision)

    # ==== App Service: site identity ===========================================================
    def site_identity_update(self: ArmService, resource: Resource, body: dict[str, Any]) -> None:
        """Apply the `identity` and `properties.keyVaultReferenceIdentity` of a site PUT or PATCH."""
        world = self.runtime.world
        if "identity" in body:
            system, users = refs.parse_identity(world, body["identity"])
            refs.apply_identity(world, resource, system, users)
        properties = body.get("properties") if isinstance(body.get("properties"), dict) else {}
        if properties and "keyVaultReferenceIdentity" in properties:
            chosen = properties["keyVaultReferenceIdentity"]
            if chosen is not None and not isinstance(chosen, str):
                raise AzureError(400, "BadRequest", "keyVaultReferenceIdentity must be 'SystemAssigned' or a user-assigned identity's resource id.")
            if chosen and chosen.lower() != "systemassigned" and world.find_identity(resource_id=chosen) is None:
                raise AzureError(400, "BadRequest", f"The user-assigned identity '{chosen}' could not be found.")
            resource.data["kv_reference_identity"] = chosen or "SystemAssigned"
        resource.data.pop("kvref_cache", None)  # an identity change is a configuration change

    def site_view_extra(self: ArmService, resource: Resource, body: dict[str, Any]) -> None:
        body["identity"] = refs.identity_view(self.runtime.world, resource, separator=", ")
        body["properties"]["keyVaultReferenceIdentity"] = resource.data.get("kv_reference_identity", "SystemAssigned")

    async def site_patch(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        """Web Apps - Update (PATCH): identity, keyVaultReferenceIdentity, tags."""
        self._check(request, sub)
        resource = self._resource("site", rg, name)
        self._authorize(ctx, "Microsoft.Web/sites/write", resource.id)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise AzureError(400, "BadRequest", "The request content must be a JSON object.")
        self.site_identity_update(resource, body)
        if isinstance(body.get("tags"), dict):
            resource.tags = {str(k): str(v) for k, v in body["tags"].items()}
        return json_response(self._view(resource))

    # ==== App Service: Key Vault references =====================================================
    def _site_reference_principal(self: ArmService, site: Resource) -> tuple[Any, dict[str, Any]]:
        """(the identity references resolve with, its `identityType` view)."""
        world = self.runtime.world
        chosen = str(site.data.get("kv_reference_identity") or "SystemAssigned")
        if chosen.lower() == "systemassigned":
            return refs.system_principal(world, site), {"type": refs.SYSTEM}
        principal = refs.user_principal(world, site, chosen)
        view: dict[str, Any] = {"type": refs.USER, "userAssignedIdentities": {chosen: {}}}
        if principal is not None:
            view["userAssignedIdentities"][chosen] = {"principalId": principal.object_id, "clientId": principal.client_id}
        return principal, view

    def site_references(self: ArmService, site: Resource, slot: str | None) -> dict[str, refs.Resolution]:
        """Every Key Vault reference among the slot's app settings, resolved (resolved values cached
        until the next restart or refresh, as App Service caches them)."""
        settings = self._settings(site, slot)
        cache: dict[str, refs.Resolution] = site.data.setdefault("kvref_cache", {}).setdefault((slot or "").lower(), {})
        principal, _ = self._site_reference_principal(site)
        found: dict[str, refs.Resolution] = {}
        for key, value in settings.items():
            if not refs.is_reference(value):
                continue
            cached = cache.get(key)
            if cached is not None and cached.status == refs.RESOLVED and cached.details == value:
                found[key] = cached
                continue
            ref = refs.parse_app_service_reference(value, self.runtime.vault_dns_suffix)
            if ref is None:
                found[key] = refs.Resolution(refs.INVALID_SYNTAX, "The reference is not valid Key Vault reference syntax.")
                continue
            resolution = refs.resolve(self.runtime, principal, ref)
            found[key] = resolution
            if resolution.status == refs.RESOLVED:
                # `details` doubles as the cache key: the setting's text when it was resolved.
                cache[key] = refs.Resolution(resolution.status, value, ref, resolution.active_version, resolution.value)
        return found

    def _reference_view(self: ArmService, site: Resource, slot: str | None, key: str, resolution: refs.Resolution) -> dict[str, Any]:
        base = site.id + (f"/slots/{slot}" if slot else "")
        _, identity_type = self._site_reference_principal(site)
        properties: dict[str, Any] = {
            "reference": self._settings(site, slot)[key], "status": resolution.status,
            "details": "The reference was resolved." if resolution.status == refs.RESOLVED else resolution.details,
            "source": "KeyVault", "identityType": identity_type,
        }
        if resolution.ref is not None:
            properties.update({"vaultName": resolution.ref.vault, "secretName": resolution.ref.name})
            if resolution.ref.version:
                properties["secretVersion"] = resolution.ref.version
        if resolution.status == refs.RESOLVED and resolution.active_version:
            properties["activeVersion"] = resolution.active_version
        return {
            "id": f"{base}/config/configreferences/appsettings/{key}", "name": key,
            "type": "Microsoft.Web/sites/slots/config/configreferences" if slot else "Microsoft.Web/sites/config/configreferences",
            "location": site.location, "properties": properties,
        }

    def _site_for_references(self: ArmService, ctx: CallContext, rg: str, name: str, slot: str | None) -> Resource:
        site = self._resource("site", rg, name)
        prefix = "Microsoft.Web/sites/slots" if slot else "Microsoft.Web/sites"
        self._authorize(ctx, f"{prefix}/config/read", site.id + (f"/slots/{slot}" if slot else ""))
        return site

    async def list_kv_references(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        site = self._site_for_references(ctx, rg, name, slot)
        found = self.site_references(site, slot)
        return json_response({"value": [self._reference_view(site, slot, k, v) for k, v in sorted(found.items())], "nextLink": None})

    async def get_kv_reference(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, key: str, slot: str | None = None) -> web.Response:
        self._check(request, sub)
        site = self._site_for_references(ctx, rg, name, slot)
        found = self.site_references(site, slot)
        if key not in found:
            raise AzureError(404, "NotFound", f"No Key Vault reference is configured for app setting '{key}'.")
        return json_response(self._reference_view(site, slot, key, found[key]))

    def site_environment(self, site: Resource, slot: str | None) -> dict[str, Any]:
        """What the app's process sees: settings, with references resolved (or their text when not)."""
        arm: ArmService = self  # type: ignore[assignment]
        found = arm.site_references(site, slot)
        environment = {}
        for key, value in arm._settings(site, slot).items():
            resolution = found.get(key)
            environment[key] = resolution.value if resolution is not None and resolution.status == refs.RESOLVED and resolution.value is not None else value
        statuses = {k: {"status": v.status, "active_version": v.active_version} for k, v in found.items()}
        return {"site": site.name, "slot": slot or "production", "settings": environment, "references": statuses}

    # ==== Container Apps =========================================================================
    def _app_state(self: ArmService, app: Resource) -> dict[str, Any]:
        """The app's state (created with defaults for an app made through the control API)."""
        state = app.data.setdefault("containerapp", {})
        if "template" not in state:
            state.update({"configuration": {"activeRevisionsMode": "Single", "secrets": []}, "template": copy.deepcopy(DEFAULT_TEMPLATE),
                          "environment_id": f"{self.runtime.world.subscription_scope}/resourceGroups/{app.resource_group}/providers/Microsoft.App/managedEnvironments/sandbox-env",
                          "revisions": []})
            self._new_revision(app, state)
        return state  # type: ignore[no-any-return]

    def _validate_app(self: ArmService, app: Resource, configuration: dict[str, Any], template: Any, identity: tuple[bool, list[str]]) -> None:
        """Check an app's configuration as it would be after a write (secrets, identities, template).

        Raises:
            AzureError: 400 ContainerAppSecretInvalid / InvalidRequestContent.
        """
        if not isinstance(template, dict) or not isinstance(template.get("containers"), list) or not template["containers"]:
            raise AzureError(400, "InvalidRequestContent", "properties.template.containers must hold at least one container.")
        given = configuration.get("secrets") or []
        if not isinstance(given, list):
            raise AzureError(400, "InvalidRequestContent", "properties.configuration.secrets must be an array.")
        import re

        bad: list[str] = []
        names: set[str] = set()
        system, users = identity
        for secret in given:
            if not isinstance(secret, dict) or not isinstance(secret.get("name"), str) or not re.match(_SECRET_NAME, secret["name"]):
                raise AzureError(400, "ContainerAppSecretInvalid", (
                    "Invalid Request: a secret name must consist of lower case alphanumeric characters, '-' or '.', "
                    "and must start and end with an alphanumeric character."))
            if secret["name"] in names:
                raise AzureError(400, "ContainerAppSecretInvalid", f"Invalid Request: the secret name '{secret['name']}' is given twice.")
            names.add(secret["name"])
            has_value = isinstance(secret.get("value"), str)
            url = secret.get("keyVaultUrl")
            if has_value == bool(url):
                bad.append(secret["name"])
                continue
            if url:
                if refs.parse_secret_url(str(url), self.runtime.vault_dns_suffix) is None:
                    bad.append(secret["name"])
                    continue
                chosen = str(secret.get("identity") or "")
                if not ((chosen.lower() == "system" and system) or chosen.lower() in {u.lower() for u in users}):
                    bad.append(secret["name"])
        if bad:
            raise AzureError(400, "ContainerAppSecretInvalid", (
                f"Invalid Request: Container app secret(s) with name(s) '{', '.join(bad)}' are invalid: value, or keyVaultUrl "
                "and an identity assigned to the app ('system' or a user-assigned identity's resource id), should be provided."))

    def _new_revision(self: ArmService, app: Resource, state: dict[str, Any]) -> dict[str, Any]:
        suffix = str(state["template"].get("revisionSuffix") or "") or "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(7))
        name = f"{app.name}--{suffix}"
        if any(r["name"] == name for r in state["revisions"]):
            raise AzureError(400, "InvalidRequestContent", f"The revision suffix '{suffix}' is already used by a revision of this app.")
        for revision in state["revisions"]:
            revision["active"] = False  # single revision mode: the new revision takes all traffic
        now = time.time()
        revision = {"name": name, "created": now, "template": copy.deepcopy(state["template"]), "active": True,
                    "restarts": 0, "started": now}
        revision["environment"] = self._revision_environment(app, state, revision)
        state["revisions"].append(revision)
        return revision

    def _revision_environment(self: ArmService, app: Resource, state: dict[str, Any], revision: dict[str, Any]) -> dict[str, Any]:
        """What a revision's containers see from the moment it starts: secrets (Key Vault references
        resolved with the app's identity then) and environment variables (`secretRef` or `value`)."""
        world = self.runtime.world
        seen: dict[str, dict[str, Any]] = {}
        for secret in state["configuration"].get("secrets") or []:
            if "keyVaultUrl" in secret and secret.get("keyVaultUrl"):
                ref = refs.parse_secret_url(secret["keyVaultUrl"], self.runtime.vault_dns_suffix)
                chosen = str(secret.get("identity") or "")
                principal = refs.system_principal(world, app) if chosen.lower() == "system" else refs.user_principal(world, app, chosen)
                if ref is None:
                    seen[secret["name"]] = {"status": refs.INVALID_SYNTAX}
                    continue
                resolution = refs.resolve(self.runtime, principal, ref)
                seen[secret["name"]] = {"status": resolution.status, "value": resolution.value, "active_version": resolution.active_version}
            else:
                seen[secret["name"]] = {"status": refs.RESOLVED, "value": secret.get("value")}
        env: dict[str, str | None] = {}
        for container in revision["template"].get("containers") or []:
            for variable in container.get("env") or []:
                if "secretRef" in variable:
                    env[variable["name"]] = (seen.get(variable["secretRef"]) or {}).get("value")
                else:
                    env[variable["name"]] = variable.get("value")
        return {"secrets": seen, "env": env}

    def _container_app_view(self: ArmService, app: Resource) -> dict[str, Any]:
        state = self._app_state(app)
        configuration = copy.deepcopy(state["configuration"])
        configuration["secrets"] = [{k: v for k, v in s.items() if k != "value"} for s in configuration.get("secrets") or []]
        latest = state["revisions"][-1]["name"] if state["revisions"] else None
        fqdn = f"{app.name}.sandbox-env.{app.location}.azurecontainerapps.io"
        body: dict[str, Any] = {
            "id": app.id, "name": app.name, "type": CONTAINER_APP_TYPE, "location": app.location, "tags": dict(app.tags),
            "identity": refs.identity_view(self.runtime.world, app, separator=","),
            "properties": {
                "provisioningState": app.data.get("provisioning_state", "Succeeded"), "runningStatus": "Running",
                "managedEnvironmentId": state["environment_id"], "environmentId": state["environment_id"],
                "latestRevisionName": latest, "latestReadyRevisionName": latest, "latestRevisionFqdn": f"{latest}.{fqdn}" if latest else None,
                "outboundIpAddresses": ["127.0.0.1"], "configuration": configuration, "template": copy.deepcopy(state["template"]),
            },
        }
        return body

    def _container_app_body(self: ArmService, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("properties", {}), dict):
            raise AzureError(400, "InvalidRequestContent", "The request content must be a JSON object with an object 'properties'.")
        return body

    def _apply_app(self: ArmService, app: Resource, configuration: dict[str, Any], template: dict[str, Any],
                   identity: tuple[bool, list[str]] | None, tags: Any, environment_id: str | None) -> None:
        """Make the app so; a changed template (revision scope) creates a revision, a changed
        configuration (application scope) does not."""
        state = self._app_state(app)
        if identity is not None:
            refs.apply_identity(self.runtime.world, app, *identity)
        if isinstance(tags, dict):
            app.tags = {str(k): str(v) for k, v in tags.items()}
        if environment_id:
            state["environment_id"] = environment_id
        template_changed = _canonical(template) != _canonical(state["template"])
        state["configuration"] = copy.deepcopy(configuration)
        state["template"] = copy.deepcopy(template)
        if template_changed:
            self._new_revision(app, state)

    def _current_identity(self: ArmService, app: Resource) -> tuple[bool, list[str]]:
        state = app.data.get("identity") or {}
        return bool(state.get("system")), list(state.get("user") or [])

    async def container_app_put(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        group = self._group(rg)
        world = self.runtime.world
        spec = self.kind_spec("containerapp")
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/write", f"{world.subscription_scope}/resourceGroups/{group}/providers/{CONTAINER_APP_TYPE}/{name}")
        body = self._container_app_body(await read_json(request))
        if not spec.name_rule.match(name) or "--" in name:
            raise AzureError(400, spec.name_error, (
                f"Invalid ContainerApp name: '{name}'. A name must consist of lower case alphanumeric characters or '-', start with "
                "an alphabetic character, and end with an alphanumeric character and cannot have '--'. The length must not be more than 32 characters."))
        properties = body.get("properties") or {}
        existing = world.find_resource(CONTAINER_APP_TYPE, name, resource_group=group)
        if existing is None and not body.get("location"):
            raise AzureError(400, "LocationRequired", "The location property is required for this definition.")
        identity = refs.parse_identity(world, body["identity"]) if "identity" in body else (self._current_identity(existing) if existing else (False, []))
        configuration = properties.get("configuration") or {"activeRevisionsMode": "Single"}
        template = properties.get("template") or copy.deepcopy(DEFAULT_TEMPLATE)
        if not isinstance(configuration, dict):
            raise AzureError(400, "InvalidRequestContent", "properties.configuration must be an object.")
        configuration.setdefault("activeRevisionsMode", "Single")
        configuration.setdefault("secrets", [])
        self._validate_app(existing or Resource(CONTAINER_APP_TYPE, name, world.subscription_id, group), configuration, template, identity)
        environment_id = properties.get("managedEnvironmentId") or properties.get("environmentId")
        if existing is not None:
            self._apply_app(existing, configuration, template, identity, body.get("tags"), environment_id)
            return json_response(self._container_app_view(existing))
        app = world.add_resource(CONTAINER_APP_TYPE, name, resource_group=group, location=str(body["location"]))
        app.data["containerapp"] = {"configuration": {}, "template": None, "revisions": [],
                                    "environment_id": environment_id or f"{world.subscription_scope}/resourceGroups/{group}/providers/Microsoft.App/managedEnvironments/sandbox-env"}
        refs.apply_identity(world, app, *identity)
        app.tags = {str(k): str(v) for k, v in (body.get("tags") or {}).items()}
        state = app.data["containerapp"]
        state["configuration"], state["template"] = copy.deepcopy(configuration), copy.deepcopy(template)
        self._new_revision(app, state)
        app.data["provisioning_state"] = "InProgress"

        def succeeded() -> None:
            app.data["provisioning_state"] = "Succeeded"

        operation = self._start_operation(ctx, "Microsoft.App", app.location, request.query["api-version"], finish=succeeded,
                                          resource=app.id, kind="createContainerApp")
        return json_response(self._container_app_view(app), status=201, headers={"Azure-AsyncOperation": operation.status_url, "Retry-After": self._retry_after()})

    async def container_app_patch(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        """Container Apps - Update: 202 + Location; the change is applied when the operation completes."""
        self._check(request, sub)
        app = self._resource("containerapp", rg, name)
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/write", app.id)
        body = self._container_app_body(await read_json(request))
        state = self._app_state(app)
        properties = body.get("properties") or {}
        identity = refs.parse_identity(self.runtime.world, body["identity"]) if "identity" in body else self._current_identity(app)
        configuration = _merge(state["configuration"], properties["configuration"]) if "configuration" in properties else copy.deepcopy(state["configuration"])
        template = _merge(state["template"], properties["template"]) if "template" in properties else copy.deepcopy(state["template"])
        self._validate_app(app, configuration, template, identity)
        tags = body.get("tags")

        def apply() -> None:
            self._apply_app(app, configuration, template, identity if "identity" in body else None, tags, None)

        operation = self._start_operation(ctx, "Microsoft.App", app.location, request.query["api-version"], finish=apply,
                                          result=lambda: self._container_app_view(app), resource=app.id, kind="updateContainerApp")
        # The spec's example answers 202 with Azure-AsyncOperation; the generated SDK reads Location: both.
        return web.Response(status=202, headers={"Azure-AsyncOperation": operation.status_url, "Location": operation.result_url, "Retry-After": self._retry_after()})

    async def container_app_list_secrets(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        app = self._resource("containerapp", rg, name)
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/listSecrets/action", app.id)
        listed = []
        for secret in self._app_state(app)["configuration"].get("secrets") or []:
            entry = {"name": secret["name"]}
            if secret.get("keyVaultUrl"):
                entry.update({"keyVaultUrl": secret["keyVaultUrl"], "identity": secret.get("identity")})
            else:
                entry["value"] = secret.get("value")
            listed.append(entry)
        return json_response({"value": listed})

    def _revision_view(self: ArmService, app: Resource, revision: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f"{app.id}/revisions/{revision['name']}", "name": revision["name"], "type": f"{CONTAINER_APP_TYPE}/revisions",
            "properties": {
                "createdTime": _iso(revision["created"]), "lastActiveTime": _iso(revision["started"]),
                "fqdn": f"{revision['name']}.sandbox-env.{app.location}.azurecontainerapps.io",
                "template": copy.deepcopy(revision["template"]), "active": revision["active"],
                "replicas": 1 if revision["active"] else 0, "trafficWeight": 100 if revision["active"] else 0,
                "healthState": "Healthy", "provisioningState": "Provisioned",
                "runningState": "Running" if revision["active"] else "Stopped",
            },
        }

    def _find_revision(self: ArmService, app: Resource, name: str) -> dict[str, Any]:
        for revision in self._app_state(app)["revisions"]:
            if revision["name"].lower() == name.lower():
                return revision  # type: ignore[no-any-return]
        raise AzureError(404, "ContainerAppRevisionNotFound", f"Revision '{name}' of container app '{app.name}' was not found.")

    async def container_app_revisions(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str) -> web.Response:
        self._check(request, sub)
        app = self._resource("containerapp", rg, name)
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/revisions/read", app.id)
        return json_response({"value": [self._revision_view(app, r) for r in self._app_state(app)["revisions"]]})

    async def container_app_revision(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, revision: str) -> web.Response:
        self._check(request, sub)
        app = self._resource("containerapp", rg, name)
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/revisions/read", app.id)
        return json_response(self._revision_view(app, self._find_revision(app, revision)))

    async def container_app_restart_revision(self: ArmService, request: web.Request, ctx: CallContext, sub: str, rg: str, name: str, revision: str) -> web.Response:
        """Restart a revision: its containers start again and read the app's secrets as they are now."""
        self._check(request, sub)
        app = self._resource("containerapp", rg, name)
        self._authorize(ctx, f"{CONTAINER_APP_TYPE}/revisions/restart/action", app.id)
        found = self._find_revision(app, revision)
        found["restarts"] += 1
        found["started"] = time.time()
        found["environment"] = self._revision_environment(app, self._app_state(app), found)
        return web.Response(status=200)

    def container_app_counters(self, app: Resource) -> dict[str, Any]:
        arm: ArmService = self  # type: ignore[assignment]
        state = arm._app_state(app)
        active = next((r["name"] for r in reversed(state["revisions"]) if r["active"]), None)
        return {"app": app.name, "revisions": len(state["revisions"]), "latest_revision": state["revisions"][-1]["name"] if state["revisions"] else None,
                "active_revision": active, "restarts": {r["name"]: r["restarts"] for r in state["revisions"]}}

    def container_app_environment(self, app: Resource) -> dict[str, Any]:
        arm: ArmService = self  # type: ignore[assignment]
        state = arm._app_state(app)
        active = next((r for r in reversed(state["revisions"]) if r["active"]), None)
        if active is None:
            return {"app": app.name, "revision": None, "secrets": {}, "env": {}}
        return {"app": app.name, "revision": active["name"], **copy.deepcopy(active["environment"])}

    def apps_control_routes(self, app: web.Application) -> None:
        def find(kind_type: str, name: str) -> Resource | None:
            arm: ArmService = self  # type: ignore[assignment]
            return arm.runtime.world.find_resource(kind_type, name)

        async def site_environment(request: web.Request) -> web.Response:
            site = find(SITE_TYPE, request.match_info["site"])
            if site is None:
                return json_response({"error": "no such site"}, status=404)
            return json_response(self.site_environment(site, request.query.get("slot") or None))

        async def refresh_references(request: web.Request) -> web.Response:
            # App Service refetches referenced secrets every 24 hours: this is that refetch, now.
            site = find(SITE_TYPE, request.match_info["site"])
            if site is None:
                return json_response({"error": "no such site"}, status=404)
            site.data.pop("kvref_cache", None)
            return web.Response(status=204)

        async def app_counters(request: web.Request) -> web.Response:
            found = find(CONTAINER_APP_TYPE, request.match_info["app"])
            if found is None:
                return json_response({"error": "no such container app"}, status=404)
            return json_response(self.container_app_counters(found))

        async def app_environment(request: web.Request) -> web.Response:
            found = find(CONTAINER_APP_TYPE, request.match_info["app"])
            if found is None:
                return json_response({"error": "no such container app"}, status=404)
            return json_response(self.container_app_environment(found))

        app.router.add_get("/arm/sites/{site}/environment", site_environment)
        app.router.add_post("/arm/sites/{site}/references/refresh", refresh_references)
        app.router.add_get("/arm/containerapps/{app}", app_counters)
        app.router.add_get("/arm/containerapps/{app}/environment", app_environment)
