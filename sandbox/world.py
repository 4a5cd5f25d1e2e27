"""The sandbox's model of an Azure tenant: identities, resources and role assignments.

Everything here is plain in-memory data owned by the sandbox's single event loop (no locks).
Stand-ins keep their own per-resource state in `Resource.data`.  Authorization follows Azure
RBAC: an assignment at a scope covers that scope and everything below it; a role grants an
action when one of its (data) actions matches and no not-action does.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.permissions.roles import BUILTIN_ROLES, CUSTOM_ROLES, RoleDefinition, role_by_name

_NAMESPACE = uuid.UUID("6f1f9d3e-8c55-4d0a-9a53-6e1c2b7d4a10")

VAULT_TYPE = "Microsoft.KeyVault/vaults"
STORAGE_TYPE = "Microsoft.Storage/storageAccounts"
COSMOS_TYPE = "Microsoft.DocumentDB/databaseAccounts"
SITE_TYPE = "Microsoft.Web/sites"
SQL_TYPE = "Microsoft.Sql/servers"
CONTAINER_APP_TYPE = "Microsoft.App/containerApps"


def stable_uuid(seed: str, *parts: str) -> str:
    """A UUID that is the same for the same seed and parts (reproducible sandboxes)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join((seed, *parts))))


@dataclass
class Identity:
    """A principal that can get tokens: managed identity or service principal."""

    name: str
    kind: str  # "system", "user" or "service_principal"
    client_id: str
    object_id: str
    resource_id: str | None = None
    client_secret: str | None = None


@dataclass
class Resource:
    """An ARM resource the sandbox serves."""

    type: str
    name: str
    subscription_id: str
    resource_group: str
    location: str = "eastus"
    properties: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{self.type}/{self.name}"
        )


@dataclass
class RoleAssignment:
    """A role assignment, as Microsoft.Authorization/roleAssignments stores it."""

    name: str
    scope: str
    role_definition_id: str  # full ARM id of the role definition
    principal_id: str
    principal_type: str = "ServicePrincipal"
    created_on: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return f"{self.scope.rstrip('/')}/providers/Microsoft.Authorization/roleAssignments/{self.name}"

    @property
    def role_guid(self) -> str:
        return self.role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


class World:
    """Tenant, subscription, identities, resources and RBAC of one sandbox."""

    def __init__(self, *, seed: str = "vaultrelay", domain: str = "vaultrelay.test") -> None:
        self.seed = seed
        self.domain = domain
        self.tenant_id = stable_uuid(seed, "tenant")
        self.subscription_id = stable_uuid(seed, "subscription")
        self.resource_group = "vaultrelay-sandbox"
        self.resource_groups: dict[str, str] = {self.resource_group.lower(): self.resource_group}
        self.identities: dict[str, Identity] = {}
        self.resources: dict[str, Resource] = {}
        self.role_assignments: dict[str, RoleAssignment] = {}
        # vaultrelay's custom roles count as defined (infra/ defines them in a real tenant).
        self.roles: dict[str, RoleDefinition] = {**BUILTIN_ROLES, **CUSTOM_ROLES}
        self._resource_listeners: list[Callable[[Resource], None]] = []

    # ---- identities -------------------------------------------------------------------------
    def add_identity(self, name: str, kind: str) -> Identity:
        """Create an identity named `name` ("system", "user" or "service_principal")."""
        resource_id = None
        if kind == "user":
            resource_id = (
                f"/subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
                f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            )
        identity = Identity(
            name=name,
            kind=kind,
            client_id=stable_uuid(self.seed, "client", name),
            object_id=stable_uuid(self.seed, "object", name),
            resource_id=resource_id,
            client_secret=secrets.token_urlsafe(24) if kind == "service_principal" else None,
        )
        self.identities[name] = identity
        return identity

    @property
    def system_identity(self) -> Identity:
        return next(i for i in self.identities.values() if i.kind == "system")

    def find_identity(
        self, *, client_id: str | None = None, object_id: str | None = None,
        resource_id: str | None = None,
    ) -> Identity | None:
        """The identity matching any one given selector, or None."""
        for identity in self.identities.values():
            if client_id and identity.client_id.lower() == client_id.lower():
                return identity
            if object_id and identity.object_id.lower() == object_id.lower():
                return identity
            if (
                resource_id and identity.resource_id
                and identity.resource_id.lower() == resource_id.lower()
            ):
                return identity
        return None

    # ---- resources --------------------------------------------------------------------------
    def on_resource_created(self, listener: Callable[[Resource], None]) -> None:
        """Call `listener` for every resource created from now on."""
        self._resource_listeners.append(listener)

    def add_resource(
        self, type_: str, name: str, *, resource_group: str | None = None,
        location: str = "eastus", properties: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Resource:
        """Create (or return the existing) resource of `type_` called `name`."""
        existing = self.find_resource(type_, name)
        if existing is not None:
            return existing
        rg = resource_group or self.resource_group
        self.resource_groups.setdefault(rg.lower(), rg)
        resource = Resource(
            type=type_, name=name, subscription_id=self.subscription_id,
            resource_group=rg, location=location,
            properties=dict(properties or {}), tags=dict(tags or {}),
        )
        self.resources[resource.id.lower()] = resource
        for listener in self._resource_listeners:
            listener(resource)
        return resource

    def find_resource(self, type_: str, name: str, resource_group: str | None = None) -> Resource | None:
        """The resource of `type_` called `name` (names are unique per type here)."""
        for resource in self.resources.values():
            if resource.type.lower() == type_.lower() and resource.name.lower() == name.lower():
                if resource_group is None or resource.resource_group.lower() == resource_group.lower():
                    return resource
        return None

    def resources_of(self, type_: str) -> list[Resource]:
        return [r for r in self.resources.values() if r.type.lower() == type_.lower()]

    # ---- RBAC -------------------------------------------------------------------------------
    def assign_role(
        self, scope: str, role: RoleDefinition | str, principal_id: str, *,
        name: str | None = None, principal_type: str = "ServicePrincipal",
    ) -> RoleAssignment:
        """Grant `role` (definition or role name) to `principal_id` at `scope`."""
        definition = role if isinstance(role, RoleDefinition) else role_by_name(role)
        assignment = RoleAssignment(
            name=name or stable_uuid(self.seed, "ra", scope.lower(), definition.role_id, principal_id),
            scope=scope,
            role_definition_id=(
                f"/subscriptions/{self.subscription_id}/providers/Microsoft.Authorization"
                f"/roleDefinitions/{definition.role_id}"
            ),
            principal_id=principal_id,
            principal_type=principal_type,
        )
        self.role_assignments[assignment.id.lower()] = assignment
        return assignment

    @property
    def subscription_scope(self) -> str:
        return f"/subscriptions/{self.subscription_id}"

    def assignments_covering(self, principal_id: str, resource_id: str) -> list[RoleAssignment]:
        """Assignments of `principal_id` at `resource_id` or any scope above it."""
        rid = resource_id.lower().rstrip("/")
        found = []
        for assignment in self.role_assignments.values():
            if assignment.principal_id.lower() != principal_id.lower():
                continue
            scope = assignment.scope.lower().rstrip("/")
            if rid == scope or rid.startswith(scope + "/"):
                found.append(assignment)
        return found

    def authorize(self, principal_id: str, action: str, resource_id: str, *, data: bool) -> bool:
        """Whether `principal_id` may perform `action` on `resource_id` (RBAC)."""
        for assignment in self.assignments_covering(principal_id, resource_id):
            role = self.roles.get(assignment.role_guid)
            if role is not None and role.allows(action, data=data):
                return True
        return False


def _new_storage_key() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(64)).decode()


def storage_keys(resource: Resource) -> dict[str, str]:
    """The account keys `{"key1": ..., "key2": ...}` of a storage account (created on first use).

    These are the keys ARM lists and the keys Azurite checks.
    """
    keys = resource.data.get("keys")
    if keys is None:
        keys = resource.data["keys"] = {"key1": _new_storage_key(), "key2": _new_storage_key()}
        resource.data["key_created"] = {"key1": time.time(), "key2": time.time()}
    return keys


def regenerate_storage_key(resource: Resource, key_name: str) -> dict[str, str]:
    """Replace `key1` or `key2` of a storage account; callers then resync Azurite.

    Raises:
        KeyError: `key_name` is not key1 or key2.
    """
    keys = storage_keys(resource)
    if key_name not in keys:
        raise KeyError(key_name)
    keys[key_name] = _new_storage_key()
    resource.data["key_created"][key_name] = time.time()
    return keys
