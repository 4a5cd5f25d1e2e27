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
* certificates: import (PFX or PEM) and get; each version is backed by a secret of the same name
  and version (content type `application/x-pkcs12` or `application/x-pem-file`, `kid` set,
  `managed: true`) and a key;
* keys: create (RSA, EC), get (public JWK only), list.

Every request without a bearer token is answered with the 401 challenge first
(`WWW-Authenticate: Bearer authorization="<authority>/<tenant>", resource="https://vault.<suffix>"`),
so the SDK's challenge flow and its challenge-resource check run unmodified.  Authorization is
Azure RBAC on data actions; a denial is Azure's real 403 `ForbiddenByRbac` body.  A new secret,
certificate or key version is published as a Key Vault event.
"""

from __future__ import annotations

import base64
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


class KeyVaultService(Service):
    name = "keyvault"

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.delete_seconds = DEFAULT_DELETE_SECONDS
        self.recover_seconds = DEFAULT_RECOVER_SECONDS
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

        app.router.add_put("/keyvault/soft-delete", soft_delete)

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
    async def import_certificate(self, request: web.Request, ctx: CallContext, name: str) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/import/action", f"certificates/{name}")
        body = await read_json(request)
        raw_value = body.get("value")
        if not isinstance(raw_value, str):
            raise AzureError(400, "BadParameter", "Property 'value' is required.")
        policy = body.get("policy") or {}
        content_type = ((policy.get("secret_props") or {}).get("contentType") or "application/x-pkcs12").lower()
        key, cert, chain = _load_certificate_material(raw_value, body.get("pwd"))
        obj = _store(vault, "certificates").setdefault(name.lower(), VaultObject(name=name))
        version = self._new_version(obj)
        self._attributes_from(body, version)
        version.cer = _der(cert)
        version.policy = policy
        base = self._base(vault)
        kid = f"{base}/keys/{name}/{version.version}"
        self._store_key(vault, name, key, managed=True, version_id=version.version)
        secret_value = _pem_bundle(key, cert, chain) if content_type == "application/x-pem-file" else base64.b64encode(_pfx(name, key, cert, chain)).decode()
        secret_obj, secret_version = self.store_secret(
            vault, name, secret_value, content_type=content_type, kid=kid, managed=True,
            version_id=version.version, body={"attributes": {"enabled": version.enabled, "nbf": version.nbf, "exp": version.exp or int(cert.not_valid_after_utc.timestamp())}},
        )
        self._publish(vault, "Microsoft.KeyVault.CertificateNewVersionCreated", "Certificate", obj.name, version)
        self._publish(vault, "Microsoft.KeyVault.SecretNewVersionCreated", "Secret", secret_obj.name, secret_version)
        return json_response(self._certificate_bundle(vault, obj, version))

    def _certificate_bundle(self, vault: Resource, obj: VaultObject, version: ObjectVersion) -> dict[str, Any]:
        base = self._base(vault)
        cer = version.cer or b""
        bundle: dict[str, Any] = {
            "id": f"{base}/certificates/{obj.name}/{version.version}",
            "kid": f"{base}/keys/{obj.name}/{version.version}",
            "sid": f"{base}/secrets/{obj.name}/{version.version}",
            "x5t": base64.urlsafe_b64encode(hashlib.sha1(cer).digest()).rstrip(b"=").decode(),  # noqa: S324 (x5t is SHA-1 by definition)
            "cer": base64.b64encode(cer).decode(),
            "attributes": version.attributes(),
            "policy": {"id": f"{base}/certificates/{obj.name}/policy", **(version.policy or {})},
        }
        if version.tags:
            bundle["tags"] = dict(version.tags)
        return bundle

    async def get_certificate(self, request: web.Request, ctx: CallContext, name: str, version: str | None = None) -> web.Response:
        vault = self._vault(request)
        self._authorize(ctx, vault, "Microsoft.KeyVault/vaults/certificates/read", f"certificates/{name}")
        obj = _store(vault, "certificates").get(name.lower())
        found = (obj.versions.get(version.lower()) if version else obj.current()) if obj else None
        if obj is None or found is None:
            raise AzureError(404, "CertificateNotFound", f"A certificate with (name/id) {name} was not found in this key vault.")
        return json_response(self._certificate_bundle(vault, obj, found))


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


def _load_certificate_material(value: str, password: str | None) -> tuple[Any, Any, list[Any]]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12

    try:
        data = base64.b64decode(value, validate=False)
    except ValueError:
        data = value.encode()
    if b"-----BEGIN" not in data and value.lstrip().startswith("-----BEGIN"):
        data = value.encode()
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            match = re.search(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----.*?-----END (?:RSA |EC )?PRIVATE KEY-----", data, re.S)
            if match is None or not certs:
                raise ValueError("a PEM certificate import needs the private key and the certificate")
            pem_key = load_pem_private_key(match.group(0), password.encode() if password else None)
            return pem_key, certs[0], certs[1:]
        key, cert, extra = pkcs12.load_key_and_certificates(data, password.encode() if password else None)
    except ValueError as exc:
        raise AzureError(400, "BadParameter", f"The certificate could not be read: {exc}.") from None
    if key is None or cert is None:
        raise AzureError(400, "BadParameter", "The PFX must contain a private key and a certificate.")
    return key, cert, list(extra or [])


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.DER))


def _pem_bundle(key: Any, cert: Any, chain: list[Any]) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    parts = [key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), cert.public_bytes(Encoding.PEM)]
    parts += [c.public_bytes(Encoding.PEM) for c in chain]
    return b"".join(parts).decode()


def _pfx(name: str, key: Any, cert: Any, chain: list[Any]) -> bytes:
    from cryptography.hazmat.primitives.serialization import NoEncryption, pkcs12

    return bytes(pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain or None, NoEncryption()))
