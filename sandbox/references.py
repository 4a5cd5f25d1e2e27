"""Key Vault references as App Service and Container Apps resolve them, and managed identities on
ARM resources (sites, container apps).

A reference names a secret (vault, name, optionally a version) and is resolved *by an identity*: the
resource's system-assigned identity or one of its user-assigned identities.  Resolution is what the
platform does when the app starts: the identity needs `secrets/getSecret/action` on the secret (RBAC,
checked before existence, as Key Vault does), then the secret (and version) must exist and be enabled.
The value is kept by the caller for the control API only; ARM answers never carry it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sandbox.http import AzureError
from sandbox.world import VAULT_TYPE, Identity, Resource, World

if TYPE_CHECKING:
    from sandbox.runtime import Runtime

# App Service's ResolveStatus values (azure-rest-api-specs Microsoft.Web `ResolveStatus`); Container
# Apps reports none over ARM, the sandbox uses the same words for it.
RESOLVED = "Resolved"
INVALID_SYNTAX = "InvalidSyntax"
MSI_NOT_ENABLED = "MSINotEnabled"
VAULT_NOT_FOUND = "VaultNotFound"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_VERSION_NOT_FOUND = "SecretVersionNotFound"
ACCESS_DENIED = "AccessToKeyVaultDenied"
OTHER_REASONS = "OtherReasons"

_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\((?P<body>.*)\)$", re.IGNORECASE | re.DOTALL)
_VERSION = re.compile(r"^[0-9a-fA-F]{32}$")
_OBJECT = re.compile(r"^[0-9a-zA-Z-]{1,127}$")


@dataclass(frozen=True)
class SecretRef:
    vault: str
    name: str
    version: str | None


@dataclass
class Resolution:
    """The outcome of resolving one reference (the value is for the control API only)."""

    status: str
    details: str
    ref: SecretRef | None = None
    active_version: str | None = None
    value: str | None = None


def is_reference(value: str) -> bool:
    return value.strip().lower().startswith("@microsoft.keyvault(")


def parse_secret_url(url: str, vault_dns_suffix: str) -> SecretRef | None:
    """`https://<vault>.<suffix>/secrets/<name>[/<version>]` (trailing slash allowed), or None."""
    parts = urlsplit(url.strip())
    host = parts.netloc.lower()
    if parts.scheme.lower() != "https" or not host.endswith("." + vault_dns_suffix.lower()):
        return None
    vault = host[: -len(vault_dns_suffix) - 1]
    segments = [s for s in parts.path.split("/") if s]
    if "." in vault or len(segments) not in (2, 3) or segments[0].lower() != "secrets" or not _OBJECT.match(segments[1]):
        return None
    version = segments[2] if len(segments) == 3 else None
    if version is not None and not _VERSION.match(version):
        return None
    return SecretRef(vault, segments[1], version.lower() if version else None)


def parse_app_service_reference(value: str, vault_dns_suffix: str) -> SecretRef | None:
    """An App Service reference, `@Microsoft.KeyVault(SecretUri=...)` or
    `@Microsoft.KeyVault(VaultName=...;SecretName=...[;SecretVersion=...])`; None when malformed."""
    found = _REFERENCE.match(value.strip())
    if found is None:
        return None
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in found.group("body").split(";"))):
        key, sep, item = part.partition("=")
        if not sep:
            return None
        fields[key.strip().lower()] = item.strip()
    if set(fields) == {"secreturi"}:
        return parse_secret_url(fields["secreturi"], vault_dns_suffix)
    if {"vaultname", "secretname"} <= set(fields) <= {"vaultname", "secretname", "secretversion"}:
        version = fields.get("secretversion") or None
        if not _OBJECT.match(fields["secretname"]) or (version is not None and not _VERSION.match(version)):
            return None
        return SecretRef(fields["vaultname"], fields["secretname"], version.lower() if version else None)
    return None


def resolve(runtime: Runtime, principal: Identity | None, ref: SecretRef) -> Resolution:
    """Resolve `ref` as `principal` would read it from Key Vault now."""
    from sandbox.keyvault import vault_secrets

    world = runtime.world
    if principal is None:
        return Resolution(MSI_NOT_ENABLED, "The identity configured to resolve the reference is not enabled or not assigned to the app.", ref)
    vault = world.find_resource(VAULT_TYPE, ref.vault)
    if vault is None:
        return Resolution(VAULT_NOT_FOUND, f"The Key Vault '{ref.vault}' could not be found.", ref)
    action = "Microsoft.KeyVault/vaults/secrets/getSecret/action"
    if not world.authorize(principal.object_id, action, f"{vault.id}/secrets/{ref.name}", data=True):
        return Resolution(ACCESS_DENIED, (
            f"The identity (object id {principal.object_id}) is not authorized to perform '{action}' on secret "
            f"'{ref.name}' of Key Vault '{vault.name}' (Key Vault Secrets User grants it)."
        ), ref)
    obj = vault_secrets(vault).get(ref.name.lower())
    if obj is None:
        return Resolution(SECRET_NOT_FOUND, f"The secret '{ref.name}' could not be found in Key Vault '{vault.name}'.", ref)
    found = obj.versions.get(ref.version) if ref.version else obj.current()
    if found is None:
        return Resolution(SECRET_VERSION_NOT_FOUND, f"The version '{ref.version}' of secret '{ref.name}' could not be found.", ref)
    if not found.enabled:
        return Resolution(OTHER_REASONS, f"The secret '{ref.name}' (version {found.version}) is disabled.", ref, found.version)
    return Resolution(RESOLVED, "The reference was resolved.", ref, found.version, found.value)


# ---- managed identities on ARM resources ------------------------------------------------------
SYSTEM = "SystemAssigned"
USER = "UserAssigned"


def parse_identity(world: World, body: Any) -> tuple[bool, list[str]]:
    """(system-assigned?, user-assigned resource ids) of an ARM `identity` object.

    Raises:
        AzureError: 400 for an unknown type or a user-assigned identity that does not exist.
    """
    if body is None:
        return False, []
    if not isinstance(body, dict):
        raise AzureError(400, "InvalidIdentity", "identity must be an object.")
    kinds = {k.strip().lower() for k in str(body.get("type") or "None").split(",")}
    if not kinds <= {"none", "systemassigned", "userassigned"} or ("none" in kinds and len(kinds) > 1):
        raise AzureError(400, "InvalidIdentityType", f"The identity type '{body.get('type')}' is not valid.")
    users = body.get("userAssignedIdentities") or {}
    if not isinstance(users, dict):
        raise AzureError(400, "InvalidIdentity", "identity.userAssignedIdentities must be an object.")
    if users and "userassigned" not in kinds:
        raise AzureError(400, "InvalidIdentity", "userAssignedIdentities may be given only with the type UserAssigned.")
    if "userassigned" in kinds and not users:
        raise AzureError(400, "InvalidIdentity", "The type UserAssigned needs at least one entry in userAssignedIdentities.")
    for resource_id in users:
        if world.find_identity(resource_id=resource_id) is None:
            raise AzureError(400, "InvalidUserAssignedIdentity", f"The user-assigned identity '{resource_id}' could not be found.")
    return "systemassigned" in kinds, [str(r) for r in users]


def apply_identity(world: World, resource: Resource, system: bool, users: list[str]) -> None:
    """Give `resource` the identities; a newly enabled system-assigned identity is a new principal."""
    state = resource.data.setdefault("identity", {"system": None, "user": []})
    if system and state["system"] is None:
        principal = world.add_identity(f"{resource.type}/{resource.name}/{uuid.uuid4().hex[:8]}", "resource_system")
        state["system"] = principal.name
    elif not system:
        state["system"] = None
    state["user"] = list(users)


def system_principal(world: World, resource: Resource) -> Identity | None:
    name = (resource.data.get("identity") or {}).get("system")
    return world.identities.get(name) if name else None


def user_principal(world: World, resource: Resource, resource_id: str) -> Identity | None:
    """The user-assigned identity `resource_id` if it is assigned to `resource`."""
    assigned = [r.lower() for r in (resource.data.get("identity") or {}).get("user", [])]
    if resource_id.lower() not in assigned:
        return None
    return world.find_identity(resource_id=resource_id)


def identity_view(world: World, resource: Resource, *, separator: str) -> dict[str, Any]:
    """The resource's `identity` as ARM returns it (`separator` joins the two types: App Service
    writes `"SystemAssigned, UserAssigned"`, Container Apps `"SystemAssigned,UserAssigned"`)."""
    system = system_principal(world, resource)
    users = (resource.data.get("identity") or {}).get("user", [])
    kinds = ([SYSTEM] if system else []) + ([USER] if users else [])
    view: dict[str, Any] = {"type": separator.join(kinds) or "None"}
    if system is not None:
        view.update({"principalId": system.object_id, "tenantId": world.tenant_id})
    if users:
        view["userAssignedIdentities"] = {}
        for resource_id in users:
            identity = world.find_identity(resource_id=resource_id)
            if identity is not None:
                view["userAssignedIdentities"][resource_id] = {"principalId": identity.object_id, "clientId": identity.client_id}
    return view
