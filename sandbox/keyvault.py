"""Key Vault data plane stand-in for any number of vaults.

Implements the Key Vault REST API 7.x surface (7.0-7.6, and the date-style versions newer SDKs
send, e.g. 2025-07-01 / 2026-04-01) as used by azure-keyvault-secrets/-keys/-certificates:

* secrets: set (new version), get latest / by version, list (paged with `nextLink`, honouring
  `maxresults`), list versions, update properties, delete (soft delete), deleted list/get,
  recover, purge.  Delete and recover are asynchronous as in Azure: for `delete_seconds` after a
  delete the secret is in neither collection and any write of its name is answered 409
  `ObjectIsBeingDeleted`; for `recover_seconds` after a recover it is not readable yet and a write
  is answered 409 `ObjectIsBeingRecovered`; a deleted (recoverable) name stays taken (409
  `ObjectIsDeletedButRecoverable`) until it is recovered or purged.  Both times are set through
  the control API (`PUT /keyvault/soft-delete`);
* certificates: import (PFX or PEM, read in the format the policy's content type names: PEM needs
  `application/x-pem-file`, as in Azure), get latest / by version, list, list versions, get policy;
  each version is backed by a key and a secret of the same name and version (content type, `kid`,
  `managed: true`, the certificate's `nbf`/`exp` and tags; without the private key when the policy's
  key is not exportable);
* Azure Policy (Deny effect, Microsoft.KeyVault.Data mode) on secret writes: per vault, set through
  the control API (`PUT /keyvault/policy/{vault}`), a set, update or certificate import that lacks an
  expiry, exceeds a maximum validity, lacks required tags or a content type is refused with 403
  `Forbidden` / innererror `ForbiddenByPolicy`;
* keys: create (RSA, EC), get (public JWK only), list.

Every request without a bearer token is answered with the 401 challenge first
(`WWW-Authenticate: Bearer authorization="<authority>/<tenant>", resource="https://vault.<suffix>"`),
so the SDK's challenge flow and its challenge-resource check run unmodified.  Authorization is
Azure RBAC on data actions; a denial is Azure's real 403 `ForbiddenByRbac` body.  A new secret,
certificate or key version is published as a Key Vault event.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from sandbox.http import AzureError, CallContext, Service, json_response, read_json
from sandbox.runtime import Runtime
from sandbox.world import VAULT_TYPE, Resource

T = TypeVar("T")

_API_VERSION = re.compile(r"^(7\.[0-6](-preview(\.\d+)?)?|20\d\d-\d\d-\d\d(-preview)?)$")
_NAME = r"(?P<name>[0-9a-zA-Z-]{1,127})"
_VERSION = r"(?P<version>[0-9a-fA-F]{32})"
DEFAULT_PAGE = 25
RECOVERABLE_DAYS = 90
# How long a deleted secret stays "being deleted" and a recovered one "being recovered".  Azure
# takes seconds (sometimes minutes); the defaults are short so tests stay quick, but never zero,
# so a client that does not wait them out fails here as it would in Azure.
DEFAULT_DELETE_SECONDS = 1.0
DEFAULT_RECOVER_SECONDS = 1.0
DELETING = "deleting"
RECOVERING = "recovering"


@dataclass
class ObjectVersion:
    """One version of a secret, key or certificate."""

    version: str
    created: int
    updated: int
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    tags: dict[str, str] | None = None
    content_type: str | None = None
    value: str | None = None  # secrets only
    kid: str | None = None  # secrets backing a certificate
    managed: bool = False
    jwk: dict[str, Any] | None = None  # keys: the public JWK
    cer: bytes | None = None  # certificates: DER
    policy: dict[str, Any] | None = None

    def attributes(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": self.enabled, "created": self.created, "updated": self.updated,
            "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": RECOVERABLE_DAYS,
        }
        if self.nbf is not None:
            attributes["nbf"] = self.nbf
        if self.exp is not None:
            attributes["exp"] = self.exp
        return attributes


@dataclass
class VaultObject:
    name: str
    versions: dict[str, ObjectVersion] = field(default_factory=dict)
    latest: str = ""
    deleted_date: int | None = None
    # An asynchronous delete or recover still running (DELETING / RECOVERING) and until when.
    transition: str | None = None
    transition_until: float = 0.0

    def current(self) -> ObjectVersion:
        return self.versions[self.latest]

    def in_transition(self) -> str | None:
        """DELETING or RECOVERING while that operation still runs, else None."""
        if self.transition is not None and time.monotonic() >= self.transition_until:
            self.transition = None
        return self.transition


def _store(vault: Resource, collection: str) -> dict[str, VaultObject]:
    return vault.data.setdefault(collection, {})  # type: ignore[no-any-return]


def _listing(vault: Resource, collection: str) -> list[VaultObject]:
    """The collection's objects in listing order (by lower-cased name); objects still being
    deleted or recovered are in no listing."""
    return [obj for _, obj in sorted(_store(vault, collection).items()) if obj.in_transition() is None]


def vault_secrets(vault: Resource) -> dict[str, VaultObject]:
    """Live secrets of a vault by lower-cased name (read-only use by other stand-ins)."""
    return {key: obj for key, obj in _store(vault, "secrets").items() if obj.in_transition() is None}


def _being_deleted(kind: str) -> AzureError:
    # Azure's body, e.g. azure-sdk-for-js keyvault recordings: 409 Conflict "Key is currently being
    # deleted." with innererror ObjectIsBeingDeleted.
    return AzureError(409, "Conflict", f"{kind} is currently being deleted.", inner_code="ObjectIsBeingDeleted")


def _being_recovered(kind: str, name: str) -> AzureError:
    # Azure's body, quoted in azure-sdk-for-net#31581.
    return AzureError(409, "Conflict", f"{kind} {name} is currently being recovered and cannot be re-created; retry later.",
                      inner_code="ObjectIsBeingRecovered")


# Built-in Azure Policy definitions (mode Microsoft.KeyVault.Data) the sandbox's rules stand for.
_DEFINITIONS = {
    "require_expiry": ("98728c90-32c7-4049-8429-847dc0f4fe37", "Key Vault secrets should have an expiration date"),
    "max_validity_days": ("342e8053-e12e-4c44-be01-c3c2f318400f", "Secrets should have the specified maximum validity period"),
    "content_type": ("75262d3e-ba4a-4f43-85f8-9f72c090e5e3", "Secrets should have content type set"),
    "required_tags": (None, "Secrets should have the required tags"),
}


@dataclass
class SecretWritePolicy:
    """Deny-effect rules on a vault's secret writes (set secret, update properties, certificate import),
    as Azure Policy assignments in the Microsoft.KeyVault.Data mode enforce them."""

    require_expiry: bool = False
    max_validity_days: int | None = None
    required_tags: dict[str, str | None] = field(default_factory=dict)  # name -> required value (None: any)
    content_type: bool | str = False  # True: must be set; a string: must be exactly that
    assignment: str = "sandbox-keyvault-policy"

    @classmethod
    def parse(cls, body: Any) -> SecretWritePolicy:
        """The policy a control API body describes.

        Raises:
            ValueError: a malformed body (the message says what is wrong).
        """
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - {"require_expiry", "max_validity_days", "required_tags", "content_type", "assignment"}
        if unknown:
            raise ValueError(f"unknown keys: {sorted(unknown)}")
        policy = cls()
        policy.require_expiry = bool(body.get("require_expiry", False))
        days = body.get("max_validity_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            raise ValueError("max_validity_days must be a whole number of days >= 1, or null")
        policy.max_validity_days = days
        tags = body.get("required_tags") or {}
        if isinstance(tags, list):
            tags = {str(name): None for name in tags}
        if not isinstance(tags, dict) or not all(v is None or isinstance(v, str) for v in tags.values()):
            raise ValueError("required_tags must be a list of names or an object of name -> value (or null for any value)")
        policy.required_tags = {str(k): v for k, v in tags.items()}
        content_type = body.get("content_type", False)
        if not isinstance(content_type, bool | str) or content_type == "":
            raise ValueError("content_type must be true (any), a content type, or false")
        policy.content_type = content_type
        policy.assignment = str(body.get("assignment") or policy.assignment)
        return policy

    def describe(self) -> dict[str, Any]:
        return {"require_expiry": self.require_expiry, "max_validity_days": self.max_validity_days,
                "required_tags": dict(self.required_tags), "content_type": self.content_type, "assignment": self.assignment}

    def violations(self, *, exp: int | None, created: int, tags: dict[str, str] | None, content_type: str | None) -> list[str]:
        """The display names of the rules a secret with these properties breaks (no values named)."""
        broken = []
        if self.require_expiry and exp is None:
            broken.append(_DEFINITIONS["require_expiry"][1])
        if self.max_validity_days is not None and (exp is None or exp > created + self.max_validity_days * 86400):
            broken.append(f"{_DEFINITIONS['max_validity_days'][1]} ({self.max_validity_days} days)")
        if self.content_type is True and not content_type:
            broken.append(_DEFINITIONS["content_type"][1])
        elif isinstance(self.content_type, str) and self.content_type is not True and (content_type or "").lower() != self.content_type.lower():
            broken.append(f"{_DEFINITIONS['content_type'][1]} ({self.content_type})")
        have = tags or {}
        missing = [n for n, v in self.required_tags.items() if n not in have or (v is not None and have[n] != v)]
        if missing:
            broken.append(f"{_DEFINITIONS['required_tags'][1]} ({', '.join(sorted(missing))})")
        return broken


class KeyVaultService(Service):
    name = "keyvault"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.delete_seconds = DEFAULT_DELETE_SECONDS
        self.recover_seconds = DEFAULT_RECOVER_SECONDS
        # Azure Policy deny rules on secret writes, per vault (lower-cased name); control API.
        self.policies: dict[str, SecretWritePolicy] = {}
        r = self.add_route
        r("PUT", rf"/secrets/{_NAME}", "SetSecret", self.set_secret)
        r("GET", r"/secrets", "GetSecrets", self.list_secrets)
        r("GET", rf"/secrets/{_NAME}/versions", "GetSecretVersions", self.list_secret_versions)
        r("GET", rf"/secrets/{_NAME}(/{_VERSION})?", "GetSecret", self.get_secret)
        r("PATCH", rf"/secrets/{_NAME}(/{_VERSION})?", "UpdateSecret", self.update_secret)
        r("DELETE", rf"/secrets/{_NAME}", "DeleteSecret", self.delete_secret)
        r("GET", r"/deletedsecrets", "GetDeletedSecrets", self.list_deleted_secrets)
        r("GET", rf"/deletedsecrets/{_NAME}", "GetDeletedSecret", self.get_deleted_secret)
        r("POST", rf"/deletedsecrets/{_NAME}/recover", "RecoverDeletedSecret", self.recover_deleted_secret)
        r("DELETE", rf"/deletedsecrets/{_NAME}", "PurgeDeletedSecret", self.purge_deleted_secret)
        r("POST", rf"/keys/{_NAME}/create", "CreateKey", self.create_key)
        r("GET", r"/keys", "GetKeys", self.list_keys)
        r("GET", rf"/keys/{_NAME}(/{_VERSION})?", "GetKey", self.get_key)
        r("POST", rf"/certificates/{_NAME}/import", "ImportCertificate", self.import_certificate)
        r("GET", r"/certificates", "GetCertificates", self.list_certificates)
        r("GET", rf"/certificates/{_NAME}/versions", "GetCertificateVersions", self.list_certificate_versions)
        r("GET", rf"/certificates/{_NAME}/policy", "GetCertificatePolicy", self.get_certificate_policy)
        r("GET", rf"/certificates/{_NAME}(/{_VERSION})?", "GetCertificate", self.get_certificate)

    # ---- control API ------------------------------------------------------------------------
    def control_routes(self, app: web.Application) -> None:
        async def soft_delete(request: web.Request) -> web.Response:
            # How long deletes and recovers stay in their transitional state; null = the default.
            body = await read_json(request)
            try:
                delete_s = body.get("delete_seconds")
                recover_s = body.get("recover_seconds")
                self.delete_seconds = DEFAULT_DELETE_SECONDS if delete_s is None else float(delete_s)
                self.recover_seconds = DEFAULT_RECOVER_SECONDS if recover_s is None else float(recover_s)
            except (TypeError, ValueError, AttributeError):
                return json_response({"error": "delete_seconds and recover_seconds must be numbers (or null)"}, status=400)
            if self.delete_seconds < 0 or self.recover_seconds < 0:
                return json_response({"error": "delete_seconds and recover_seconds must not be negative"}, status=400)
            return json_response({"delete_seconds": self.delete_seconds, "recover_seconds": self.recover_seconds})

        async def put_policy(request: web.Request) -> web.Response:
            # Deny-effect rules on the vault's secret writes (Azure Policy, Microsoft.KeyVault.Data mode).
            vault = request.match_info["vault"].lower()
            if self.runtime.world.find_resource(VAULT_TYPE, vault) is None:
                return json_response({"error": f"no vault {vault}"}, status=404)
            try:
                policy = SecretWritePolicy.parse(await read_json(request))
            except ValueError as exc:
                return json_response({"error": str(exc)}, status=400)
            self.policies[vault] = policy
            return json_response({"vault": vault, **policy.describe()})

        async def get_policy(request: web.Request) -> web.Response:
            vault = request.match_info["vault"].lower()
            policy = self.policies.get(vault)
            return json_response({"vault": vault, **(policy.describe() if policy else {}), "enforced": policy is not None})

        async def delete_policy(request: web.Request) -> web.Response:
            self.policies.pop(request.match_info["vault"].lower(), None)
            return web.Response(status=204)

        app.router.add_put("/keyvault/soft-delete", soft_delete)
        app.router.add_put("/keyvault/policy/{vault}", put_policy)
        app.router.add_get("/keyvault/policy/{vault}", get_policy)
        app.router.add_delete("/keyvault/policy/{vault}", delete_policy)

    def check_policy(
        self, vault: Resource, operation: str, kind: str, name: str, *, exp: int | None, created: int,
        tags: dict[str, str] | None, content_type: str | None,
    ) -> None:
        """Refuse a write the vault's deny rules forbid, as Key Vault does for an Azure Policy assignment
        with the Deny effect: 403 Forbidden, innererror ForbiddenByPolicy, the broken rules named."""
        policy = self.policies.get(vault.name.lower())
        if policy is None:
            return
        broken = policy.violations(exp=exp, created=created, tags=tags, content_type=content_type)
        if broken:
            raise AzureError(403, "Forbidden", (
                f"Operation '{operation}' on {kind} '{name}' in vault '{vault.name}' is not allowed by Azure Policy "
                f"assignment '{policy.assignment}' (Deny): {'; '.join(broken)}."
            ), inner_code="ForbiddenByPolicy")

    # ---- service hooks ----------------------------------------------------------------------
    def target_of(self, request: web.Request, params: dict[str, str]) -> str | None:
        return request.host.split(".", 1)[0].lower()

    def accepted_audiences(self, request: web.Request) -> set[str]:
        return {self.runtime.keyvault_audience}

    def challenge(self, request: web.Request) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                f'Bearer authorization="{self.runtime.authority}/{self.runtime.world.tenant_id}", '
                f'resource="{self.runtime.keyvault_audience}"'
            )
        }

    def unauthorized_message(self, reason: str | None) -> str:
        if reason is None:
            return "AKV10000: Request is missing a Bearer or PoP token."
        return f"AKV10032: Invalid token. {reason}"

    # ---- helpers ----------------------------------------------------------------------------
    def _vault(self, request: web.Request) -> Resource:
        name = request.host.split(".", 1)[0]
        api_version = request.query.get("api-version")
        if not api_version:
            raise AzureError(400, "BadParameter", "The request URI contains an invalid or missing api-version parameter.")
        if not _API_VERSION.match(api_version):
            raise AzureError(400, "BadParameter", f"The specified version ({api_version}) is not recognized. Consider using the latest supported version.")
        vault = self.runtime.world.find_resource(VAULT_TYPE, name)
        if vault is None:
            raise AzureError(404, "VaultNotFound", f"The vault '{name}' does not exist.")
        return vault

    def _authorize(self, ctx: CallContext, vault: Resource, action: str, object_path: str) -> None:
        identity = ctx.identity
        assert identity is not None
        resource_id = f"{vault.id}/{object_path}"
        if self.runtime.world.authorize(identity.object_id, action, resource_id, data=True):
            return
        message = (
            "Caller is not authorized to perform action on resource.\r\n"
            "If role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\n"
            f"Caller: appid={identity.client_id};oid={identity.object_id};iss={self.runtime.issuer.issuer}\r\n"
            f"Action: '{action}'\r\n"
            f"Resource: '{resource_id.lower()}'\r\n"
            "Assignment: (not found)\r\n"
            "DenyAssignmentId: null\r\n"
            "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            f"Vault: {vault.name};location={vault.location}\r\n"
        )
        raise AzureError(403, "Forbidden", message, inner_code="ForbiddenByRbac")

    def _base(self, vault: Resource) -> str:
        return self.runtime.vault_url(vault.name)

    @staticmethod
    def _now() -> int:
        return int(time.time())

    @staticmethod
    def _attributes_from(body: dict[str, Any], version: ObjectVersion) -> None:
        attributes = body.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise AzureError(400, "BadParameter", "attributes must be an object.")
        if "enabled" in attributes and attributes["enabled"] is not None:
            version.enabled = bool(attributes["enabled"])
        for key in ("nbf", "exp"):
            if key in attributes:
                value = attributes[key]
                if value is not None and not isinstance(value, int):
                    raise AzureError(400, "BadParameter", f"attributes.{key} must be a number of seconds since the epoch.")
                setattr(version, key, value)
        if "tags" in body:
            tags = body["tags"]
            if tags is not None and (not isinstance(tags, dict) or len(tags) > 15):
                raise AzureError(400, "BadParameter", "tags must be an object with at most 15 entries.")
            version.tags = {str(k): str(v) for k, v in (tags or {}).items()} or None

    def _new_version(self, obj: VaultObject) -> ObjectVersion:
        now = self._now()
        version = ObjectVersion(version=uuid.uuid4().hex, created=now, updated=now)
        obj.versions[version.version] = version
        obj.latest = version.version
        return version

    def _publish(self, vault: Resource, event: str, object_type: str, name: str, version: ObjectVersion) -> None:
        if self.runtime.events is not None:
            self.runtime.events.keyvault_event(
                vault, event, object_type=object_type, name=name, version=version.version,
                nbf=version.nbf, exp=version.exp,
            )

    def _page(self, request: web.Request, entries: Sequence[T], path: str, item: Callable[[T], dict[str, Any]]) -> web.Response:
        """One page of `entries` (in listing order); only the page's entries are turned into items,
        so paging through a vault of n objects costs O(n) per page for the sort, not for n items."""
        try:
            size = int(request.query.get("maxresults", DEFAULT_PAGE))
            skip = int(request.query.get("$skiptoken", "0"))
        except ValueError:
            raise AzureError(400, "BadParameter", "maxresults and $skiptoken must be integers.") from None
        if not 1 <= size <= 25:
            raise AzureError(400, "BadParameter", "maxresults must be between 1 and 25.")
        page = [item(entry) for entry in entries[skip: skip + size]]
        body: dict[str, Any] = {"value": page, "nextLink": None}
        if skip + size < len(entries):
            api_version = request.query.get("api-version", "")
            body["nextLink"] = f"{self._base(self._vault(request))}{path}?api-version={api_version}&$skiptoken={skip + size}&maxresults={size}"
        return json_response(body)

    # ---- secrets ----------------------------------------------------------------------------
    def _secret_not_found(self, name: str, version: str | None = None) -> AzureError:
        ident = f"{name}/{version}" if version else name
        return AzureError(404, "SecretNotFound", (
            f"A secret with (name/id) {ident} was not found in this key vault. If you recently deleted this secret "
            "you may be able to recover it using the correct recovery command. For help resolving this issue, "
            "please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ))

    def _secret_bundle(self, vault: Resource, obj: VaultObject, version: ObjectVersion, *, with_value: bool = True) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "id": f"{self._base(vault)}/secrets/{obj.name}/{version.version}",
            "attributes": version.attributes(),
        }
        if with_value:
            bundle["value"] = version.value
        if version.content_type is not None:
            bundle["contentType"] = version.content_type
        if version.tags:
            bundle["tags"] = dict(version.tags)
        if version.kid:
            bundle["kid"] = version.kid
        if version.managed:
            bundle["managed"] = True
        return bundle

    def _secret_item(self, vault: Resource, obj: VaultObject, version: ObjectVersion, *, versioned: bool) -> dict[str, Any]:
        item = self._secret_bundle(vault, obj, version, with_value=False)
        if not versioned:
            item["id"] = f"{self._base(vault)}/secrets/{obj.name}"
        return item

    def store_secret(
        self, vault: Resource, name: str, value: str, *, content_type: str | None = None,
        tags: dict[str, str] | None = None, kid: str | None = None, managed: bool = False,
        version_id: str | None = None, body: dict[str, Any] | None = None,
    ) -> tuple[VaultObject, ObjectVersion]:
        secrets = _store(vault, "secrets")
        deleted = _store(vault, "deleted_secrets").get(name.lower())
        if deleted is not None:
            if deleted.in_transition() == DELETING:
                raise _being_deleted("Secret")
            raise AzureError(409, "Conflict", (
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged."
            ), inner_code="ObjectIsDeletedButRecoverable")
        existing = secrets.get(name.lower())
        if existing is not None and existing.in_transition() == RECOVERING:
            raise _being_recovered("Secret", name)
        obj = secrets.setdefault(name.lower(), VaultObject(name=name))
        version = self._new_version(obj)
        if version_id:
            del obj.versions[version.version]
            version.version = version_id
            obj.versions[version_id] = version
            obj.latest = version_id
        version.value = value
        version.content_type = content_type
        version.tags = tags
        version.kid = kid
        version.managed = managed
        if body is not None:
            self._attributes_from(body, version)
        return obj, version

    async def set_secret(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/setSecret/action", f"secrets/{name}")
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise AzureError(400, "BadParameter", "Property 'value' is required and must be a string.")
        if len(body["value"].encode()) > 25 * 1024:
            raise AzureError(400, "BadParameter", "Secret value is too large: the maximum is 25 KB.")
        proposed = ObjectVersion(version="", created=self._now(), updated=self._now())
        self._attributes_from(body, proposed)
        self.check_policy(vault, "SetSecret", "secret", name, exp=proposed.exp, created=proposed.created,
                          tags=proposed.tags, content_type=body.get("contentType"))
        obj, version = self.store_secret(
            vault, name, body["value"], content_type=body.get("contentType"), body=body,
        )
        self._publish(vault, "Microsoft.KeyVault.SecretNewVersionCreated", "Secret", obj.name, version)
        return json_response(self._secret_bundle(vault, obj, version))

    def _find_secret(self, vault: Resource, name: str) -> VaultObject:
        obj = _store(vault, "secrets").get(name.lower())
        if obj is None or obj.in_transition() is not None:  # a secret being recovered cannot be read yet
            raise self._secret_not_found(name)
        return obj

    async def get_secret(self, request: web.Request, ctx: CallContext, name: str, version: str | None = None) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/getSecret/action", f"secrets/{name}")
        obj = self._find_secret(vault, name)
        found = obj.versions.get(version.lower()) if version else obj.current()
        if found is None:
            raise self._secret_not_found(name, version)
        if not found.enabled:
            raise AzureError(403, "Forbidden", "Operation get is not allowed on a disabled secret.", inner_code="SecretDisabled")
        return json_response(self._secret_bundle(vault, obj, found))

    async def update_secret(self, request: web.Request, ctx: CallContext, name: str, version: str | None = None) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/update/action", f"secrets/{name}")
        obj = self._find_secret(vault, name)
        found = obj.versions.get(version.lower()) if version else obj.current()
        if found is None:
            raise self._secret_not_found(name, version)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise AzureError(400, "BadParameter", "The request body must be an object.")
        proposed = dataclasses.replace(found, tags=dict(found.tags) if found.tags else None)
        if "contentType" in body:
            proposed.content_type = body["contentType"]
        self._attributes_from(body, proposed)
        # Azure Policy evaluates the secret as the update would leave it.
        self.check_policy(vault, "UpdateSecret", "secret", name, exp=proposed.exp, created=found.created,
                          tags=proposed.tags, content_type=proposed.content_type)
        if "contentType" in body:
            found.content_type = body["contentType"]
        self._attributes_from(body, found)
        found.updated = self._now()
        return json_response(self._secret_bundle(vault, obj, found, with_value=False))

    async def list_secrets(self, request: web.Request, ctx: CallContext) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/readMetadata/action", "secrets")
        return self._page(request, _listing(vault, "secrets"), "/secrets", lambda obj: self._secret_item(vault, obj, obj.current(), versioned=False))

    async def list_secret_versions(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/readMetadata/action", f"secrets/{name}")
        obj = self._find_secret(vault, name)
        return self._page(request, list(obj.versions.values()), f"/secrets/{obj.name}/versions",
                          lambda version: self._secret_item(vault, obj, version, versioned=True))

    def _deleted_bundle(self, vault: Resource, obj: VaultObject) -> dict[str, Any]:
        bundle = self._secret_bundle(vault, obj, obj.current(), with_value=False)
        deleted = obj.deleted_date or self._now()
        bundle.update({
            "recoveryId": f"{self._base(vault)}/deletedsecrets/{obj.name}",
            "deletedDate": deleted,
            "scheduledPurgeDate": deleted + RECOVERABLE_DAYS * 86400,
        })
        return bundle

    async def delete_secret(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/delete", f"secrets/{name}")
        live = _store(vault, "secrets").get(name.lower())
        if live is not None and live.in_transition() == RECOVERING:
            raise _being_recovered("Secret", name)
        obj = _store(vault, "secrets").pop(name.lower(), None)
        if obj is None:
            raise self._secret_not_found(name)
        obj.deleted_date = self._now()
        obj.transition, obj.transition_until = DELETING, time.monotonic() + self.delete_seconds
        _store(vault, "deleted_secrets")[name.lower()] = obj
        return json_response(self._deleted_bundle(vault, obj))

    def _find_deleted(self, vault: Resource, name: str, *, writing: bool = False) -> VaultObject:
        """The deleted secret `name`; while its deletion still runs it is not found (reads) or
        409 ObjectIsBeingDeleted (recover, purge)."""
        obj = _store(vault, "deleted_secrets").get(name.lower())
        if obj is not None and obj.in_transition() == DELETING:
            if writing:
                raise _being_deleted("Secret")
            obj = None
        if obj is None:
            raise AzureError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return obj

    async def list_deleted_secrets(self, request: web.Request, ctx: CallContext) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/readMetadata/action", "secrets")
        return self._page(request, _listing(vault, "deleted_secrets"), "/deletedsecrets", lambda obj: self._deleted_bundle(vault, obj))

    async def get_deleted_secret(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/readMetadata/action", f"secrets/{name}")
        return json_response(self._deleted_bundle(vault, self._find_deleted(vault, name)))

    async def recover_deleted_secret(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/recover/action", f"secrets/{name}")
        obj = self._find_deleted(vault, name, writing=True)
        del _store(vault, "deleted_secrets")[name.lower()]
        obj.deleted_date = None
        obj.transition, obj.transition_until = RECOVERING, time.monotonic() + self.recover_seconds
        _store(vault, "secrets")[name.lower()] = obj
        return json_response(self._secret_bundle(vault, obj, obj.current(), with_value=False))

    async def purge_deleted_secret(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/secrets/purge/action", f"secrets/{name}")
        self._find_deleted(vault, name, writing=True)
        del _store(vault, "deleted_secrets")[name.lower()]
        return web.Response(status=204)

    # ---- keys -------------------------------------------------------------------------------
    def _key_bundle(self, vault: Resource, obj: VaultObject, version: ObjectVersion) -> dict[str, Any]:
        jwk = dict(version.jwk or {})
        jwk["kid"] = f"{self._base(vault)}/keys/{obj.name}/{version.version}"
        bundle: dict[str, Any] = {"key": jwk, "attributes": version.attributes()}
        if version.tags:
            bundle["tags"] = dict(version.tags)
        if version.managed:
            bundle["managed"] = True
        return bundle

    def _store_key(self, vault: Resource, name: str, private_key: Any, *, managed: bool = False, body: dict[str, Any] | None = None, version_id: str | None = None) -> tuple[VaultObject, ObjectVersion]:
        obj = _store(vault, "keys").setdefault(name.lower(), VaultObject(name=name))
        version = self._new_version(obj)
        if version_id:
            del obj.versions[version.version]
            version.version = version_id
            obj.versions[version_id] = version
            obj.latest = version_id
        version.jwk = public_jwk(private_key, (body or {}).get("key_ops"))
        version.managed = managed
        if body is not None:
            self._attributes_from(body, version)
        return obj, version

    async def create_key(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/keys/create/action", f"keys/{name}")
        body = await read_json(request)
        kty = str(body.get("kty", "")).upper()
        if kty in ("RSA", "RSA-HSM"):
            size = int(body.get("key_size") or 2048)
            if size not in (2048, 3072, 4096):
                raise AzureError(400, "BadParameter", "key_size must be 2048, 3072 or 4096.")
            private_key: Any = rsa.generate_private_key(public_exponent=int.from_bytes(base64.urlsafe_b64decode(_pad(body["public_exponent"])), "big") if body.get("public_exponent") else 65537, key_size=size)
        elif kty in ("EC", "EC-HSM"):
            curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1(), "P-256K": ec.SECP256K1()}
            curve = curves.get(str(body.get("crv") or "P-256"))
            if curve is None:
                raise AzureError(400, "BadParameter", "crv must be one of P-256, P-384, P-521, P-256K.")
            private_key = ec.generate_private_key(curve)
        else:
            raise AzureError(400, "BadParameter", "kty must be RSA, RSA-HSM, EC or EC-HSM.")
        obj, version = self._store_key(vault, name, private_key, body=body)
        self._publish(vault, "Microsoft.KeyVault.KeyNewVersionCreated", "Key", obj.name, version)
        return json_response(self._key_bundle(vault, obj, version))

    async def get_key(self, request: web.Request, ctx: CallContext, name: str, version: str | None = None) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/keys/read", f"keys/{name}")
        obj = _store(vault, "keys").get(name.lower())
        found = (obj.versions.get(version.lower()) if version else obj.current()) if obj else None
        if obj is None or found is None:
            raise AzureError(404, "KeyNotFound", f"A key with (name/id) {name}{'/' + version if version else ''} was not found in this key vault.")
        return json_response(self._key_bundle(vault, obj, found))

    async def list_keys(self, request: web.Request, ctx: CallContext) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/keys/read", "keys")
        def key_item(obj: VaultObject) -> dict[str, Any]:
            item: dict[str, Any] = {"kid": f"{self._base(vault)}/keys/{obj.name}", "attributes": obj.current().attributes()}
            if obj.current().tags:
                item["tags"] = dict(obj.current().tags or {})
            if obj.current().managed:
                item["managed"] = True
            return item

        return self._page(request, _listing(vault, "keys"), "/keys", key_item)

    # ---- certificates -----------------------------------------------------------------------
    def _certificate_not_found(self, name: str, version: str | None = None) -> AzureError:
        ident = f"{name}/{version}" if version else name
        return AzureError(404, "CertificateNotFound", (
            f"A certificate with (name/id) {ident} was not found in this key vault. If you recently deleted this "
            "certificate you may be able to recover it using the correct recovery command. For help resolving this "
            "issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ))

    async def import_certificate(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        """Import a PFX or PEM certificate with its private key (ImportCertificate).

        As Key Vault does: the value is read in the format the policy's `secret_props.contentType` names
        (`application/x-pkcs12`, the default, or `application/x-pem-file`); the certificate's `nbf`/`exp`
        come from the X.509 certificate; a new version of the certificate, of its key and of its backing
        secret (same name and version, `kid` set, `managed: true`, the certificate's tags) is created;
        with `key_props.exportable: false` the backing secret holds the certificate without its key.
        """
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/import/action", f"certificates/{name}")
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("value"), str) or not body["value"]:
            raise AzureError(400, "BadParameter", "Property 'value' is required.")
        policy_in = body.get("policy") or {}
        if not isinstance(policy_in, dict):
            raise AzureError(400, "BadParameter", "Property policy has invalid value.")
        secret_props = policy_in.get("secret_props") or {}
        content_type = str(secret_props.get("contentType") or PKCS12).lower()
        if content_type not in (PKCS12, PEM):
            raise AzureError(400, "BadParameter", "Property policy.secret_props.contentType has invalid value.")
        key_props = policy_in.get("key_props") or {}
        exportable = key_props.get("exportable") is not False
        password = body.get("pwd")
        key, cert, chain = _load_certificate_material(body["value"], password if isinstance(password, str) else None, content_type)
        tags = _tags_of(body)
        attributes = body.get("attributes") or {}
        enabled = True if not isinstance(attributes, dict) or attributes.get("enabled") is None else bool(attributes["enabled"])
        nbf = int(cert.not_valid_before_utc.timestamp())
        exp = int(cert.not_valid_after_utc.timestamp())
        self.check_policy(vault, "ImportCertificate", "certificate", name, exp=exp, created=self._now(), tags=tags, content_type=content_type)
        self._check_secret_name_free(vault, name)

        obj = _store(vault, "certificates").setdefault(name.lower(), VaultObject(name=name))
        version = self._new_version(obj)
        version.enabled, version.nbf, version.exp, version.tags = enabled, nbf, exp, tags
        version.cer = _der(cert)
        version.policy = _certificate_policy(policy_in, key, cert, content_type, exportable, version.created)
        base = self._base(vault)
        kid = f"{base}/keys/{name}/{version.version}"
        key_obj, key_version = self._store_key(vault, name, key, managed=True, version_id=version.version)
        key_version.enabled, key_version.nbf, key_version.exp, key_version.tags = enabled, nbf, exp, dict(tags) if tags else None
        if content_type == PEM:
            secret_value = _pem_bundle(key if exportable else None, cert, chain)
        else:
            secret_value = base64.b64encode(_pfx(name, key if exportable else None, cert, chain)).decode()
        secret_obj, secret_version = self.store_secret(
            vault, name, secret_value, content_type=content_type, kid=kid, managed=True, tags=dict(tags) if tags else None,
            version_id=version.version, body={"attributes": {"enabled": enabled, "nbf": nbf, "exp": exp}},
        )
        self._publish(vault, "Microsoft.KeyVault.CertificateNewVersionCreated", "Certificate", obj.name, version)
        self._publish(vault, "Microsoft.KeyVault.KeyNewVersionCreated", "Key", key_obj.name, key_version)
        self._publish(vault, "Microsoft.KeyVault.SecretNewVersionCreated", "Secret", secret_obj.name, secret_version)
        return json_response(self._certificate_bundle(vault, obj, version))

    def _check_secret_name_free(self, vault: Resource, name: str) -> None:
        """A certificate import writes a secret of the same name: the same 409s as a set."""
        deleted = _store(vault, "deleted_secrets").get(name.lower())
        if deleted is not None:
            if deleted.in_transition() == DELETING:
                raise _being_deleted("Secret")
            raise AzureError(409, "Conflict", (
                f"Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; "
                "in this state, the secret can only be recovered or purged."
            ), inner_code="ObjectIsDeletedButRecoverable")

    def _certificate_bundle(self, vault: Resource, obj: VaultObject, version: ObjectVersion) -> dict[str, Any]:
        base = self._base(vault)
        cer = version.cer or b""
        bundle: dict[str, Any] = {
            "id": f"{base}/certificates/{obj.name}/{version.version}",
            "kid": f"{base}/keys/{obj.name}/{version.version}",
            "sid": f"{base}/secrets/{obj.name}/{version.version}",
            "x5t": _x5t(cer),
            "cer": base64.b64encode(cer).decode(),
            "attributes": version.attributes(),
            "policy": {"id": f"{base}/certificates/{obj.name}/policy", **(obj.current().policy or {})},
        }
        if version.tags:
            bundle["tags"] = dict(version.tags)
        return bundle

    def _certificate_item(self, vault: Resource, obj: VaultObject, version: ObjectVersion, *, versioned: bool) -> dict[str, Any]:
        path = f"{obj.name}/{version.version}" if versioned else obj.name
        item: dict[str, Any] = {
            "id": f"{self._base(vault)}/certificates/{path}", "x5t": _x5t(version.cer or b""),
            "attributes": version.attributes(),
        }
        if version.tags:
            item["tags"] = dict(version.tags)
        return item

    def _find_certificate(self, vault: Resource, name: str) -> VaultObject:
        obj = _store(vault, "certificates").get(name.lower())
        if obj is None:
            raise self._certificate_not_found(name)
        return obj

    async def get_certificate(self, request: web.Request, ctx: CallContext, name: str, version: str | None = None) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/read", f"certificates/{name}")
        obj = self._find_certificate(vault, name)
        found = obj.versions.get(version.lower()) if version else obj.current()
        if found is None:
            raise self._certificate_not_found(name, version)
        return json_response(self._certificate_bundle(vault, obj, found))

    async def list_certificates(self, request: web.Request, ctx: CallContext) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/read", "certificates")
        return self._page(request, _listing(vault, "certificates"), "/certificates",
                          lambda obj: self._certificate_item(vault, obj, obj.current(), versioned=False))

    async def list_certificate_versions(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/read", f"certificates/{name}")
        obj = self._find_certificate(vault, name)
        return self._page(request, list(obj.versions.values()), f"/certificates/{obj.name}/versions",
                          lambda version: self._certificate_item(vault, obj, version, versioned=True))

    async def get_certificate_policy(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/read", f"certificates/{name}")
        obj = self._find_certificate(vault, name)
        return json_response({"id": f"{self._base(vault)}/certificates/{obj.name}/policy", **(obj.current().policy or {})})


# ---- key material helpers ---------------------------------------------------------------------
def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def _b64url_int(number: int, length: int | None = None) -> str:
    raw = number.to_bytes(length or (number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(private_key: Any, key_ops: list[str] | None = None) -> dict[str, Any]:
    """The public JWK of an RSA or EC private key (no private parts)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {
            "kty": "RSA", "n": _b64url_int(numbers.n), "e": _b64url_int(numbers.e),
            "key_ops": key_ops or ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"],
        }
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        numbers_ec = private_key.public_key().public_numbers()
        size = (private_key.curve.key_size + 7) // 8
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "P-256K"}
        return {
            "kty": "EC", "crv": names[private_key.curve.name],
            "x": _b64url_int(numbers_ec.x, size), "y": _b64url_int(numbers_ec.y, size),
            "key_ops": key_ops or ["sign", "verify"],
        }
    raise AzureError(400, "BadParameter", "Unsupported key type.")


PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
# Key Vault's words for unreadable import material (as SDK users report them).
_PKCS12_UNREADABLE = ("The specified PKCS#12 X.509 certificate content can not be read. Please check if certificate "
                      "is in valid PKCS#12 format.")
_PEM_UNREADABLE = ("The specified PEM X.509 certificate content is in an unexpected format. Please check if "
                   "certificate is in valid PEM format.")
_PEM_NO_KEY = ("Private key is not specified in the specified X.509 PEM certificate content. Please specify private "
               "key in the X.509 PEM certificate content.")


def _load_certificate_material(value: str, password: str | None, content_type: str = PKCS12) -> tuple[Any, Any, list[Any]]:
    """(private key, certificate, chain) of an import's base64 `value`, read as `content_type` says.

    Raises:
        AzureError: 400 BadParameter when the material cannot be read in that format or has no key.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12

    try:
        data = base64.b64decode(value, validate=False)
    except ValueError:
        data = b""
    if content_type == PEM:
        if b"-----BEGIN" not in data and value.lstrip().startswith("-----BEGIN"):
            data = value.encode()  # PEM text sent as is (not base64): accepted
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise AzureError(400, "BadParameter", _PEM_UNREADABLE) from None
        match = re.search(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.*?-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----", data, re.S)
        if match is None:
            raise AzureError(400, "BadParameter", _PEM_NO_KEY)
        try:
            pem_key = load_pem_private_key(match.group(0), password.encode() if password else None)
        except (ValueError, TypeError):
            raise AzureError(400, "BadParameter", _PEM_UNREADABLE) from None
        return pem_key, certs[0], certs[1:]
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except (ValueError, TypeError):
        raise AzureError(400, "BadParameter", _PKCS12_UNREADABLE) from None
    if key is None or cert is None:
        raise AzureError(400, "BadParameter", _PKCS12_UNREADABLE)
    return key, cert, list(extra or [])


def _x5t(der: bytes) -> str:
    """The certificate's x5t: base64url of its SHA-1 thumbprint."""
    return base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=").decode()  # noqa: S324 (x5t is SHA-1 by definition)


def _tags_of(body: dict[str, Any]) -> dict[str, str] | None:
    tags = body.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict) or len(tags) > 15:
        raise AzureError(400, "BadParameter", "tags must be an object with at most 15 entries.")
    return {str(k): str(v) for k, v in tags.items()} or None


def _certificate_policy(given: dict[str, Any], key: Any, cert: Any, content_type: str, exportable: bool, created: int) -> dict[str, Any]:
    """The policy Key Vault keeps for an imported certificate: what the import gave, completed from the
    certificate itself (key type and size, subject, SANs, validity) with issuer `Unknown`."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key_props: dict[str, Any] = {"exportable": exportable, "reuse_key": bool((given.get("key_props") or {}).get("reuse_key", False))}
    if isinstance(key, rsa.RSAPrivateKey):
        key_props.update({"kty": "RSA", "key_size": key.key_size})
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp256k1": "P-256K"}
        key_props.update({"kty": "EC", "crv": names.get(key.curve.name, key.curve.name), "key_size": key.curve.key_size})
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    x509_props: dict[str, Any] = {"subject": cert.subject.rfc4514_string(), "validity_months": max(1, round(days / 30.44))}
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        x509_props["sans"] = {"dns_names": sans.get_values_for_type(x509.DNSName)}
    except x509.ExtensionNotFound:
        pass
    return {
        "key_props": key_props,
        "secret_props": {"contentType": content_type},
        "x509_props": x509_props,
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}],
        "issuer": {"name": "Unknown"},
        "attributes": {"enabled": True, "created": created, "updated": created},
    }


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.DER))


def _pem_bundle(key: Any, cert: Any, chain: list[Any]) -> str:
    """PEM: the private key (unless None: a non-exportable key), the certificate, the chain."""
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    parts = [key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())] if key is not None else []
    parts.append(cert.public_bytes(Encoding.PEM))
    parts += [c.public_bytes(Encoding.PEM) for c in chain]
    return b"".join(parts).decode()


def _pfx(name: str, key: Any, cert: Any, chain: list[Any]) -> bytes:
    from cryptography.hazmat.primitives.serialization import NoEncryption, pkcs12

    return bytes(pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain or None, NoEncryption()))
