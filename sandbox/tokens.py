"""Entra ID for the sandbox: token issuing, the managed identity endpoint and OpenID metadata.

* Managed identity endpoint, App Service protocol, api-version 2019-08-01
  (`GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=...[&client_id|mi_res_id|object_id]`
  with header `X-IDENTITY-HEADER`), served over plain HTTP on loopback as App Service does.
* `login.<domain>`: OpenID configuration (v1 and v2.0), JWKS and the v2.0 token endpoint for the
  client-credentials grant of service principals.

Tokens are RS256 JWTs with v1 claims (`iss` = `https://sts.windows.net/<tenant>/`, `aud`,
`oid`, `tid`, `appid`, `iat`, `nbf`, `exp`, `sub`, `idtyp`), which is also what Azurite's
`--oauth basic` mode accepts.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.http import AzureError, CallContext, Service, json_response
from sandbox.world import Identity, World

VERIFIED_TOKENS_KEPT = 4096  # validated tokens remembered (a sandbox run issues a few hundred)

MI_API_VERSION = "2019-08-01"


def normalize_audience(value: str) -> str:
    """`https://x/.default` or `https://x/` -> `https://x` (audience comparison form)."""
    value = value.strip()
    if value.endswith("/.default"):
        value = value[: -len("/.default")]
    return value.rstrip("/")


def _b64url_uint(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class InvalidToken(Exception):
    """A presented bearer token is unusable; the message says why (no token content)."""


class TokenIssuer:
    """Signs and validates the sandbox's access tokens."""

    def __init__(self, world: World, *, lifetime_s: int = 24 * 3600) -> None:
        self.world = world
        self.lifetime_s = lifetime_s
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self._key.public_key().public_numbers()
        self.kid = hashlib.sha256(str(public.n).encode()).hexdigest()[:27]
        self._jwk = {
            "kty": "RSA", "use": "sig", "kid": self.kid, "x5t": self.kid, "alg": "RS256",
            "n": _b64url_uint(public.n), "e": _b64url_uint(public.e),
        }
        self.issued = 0
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.world.tenant_id}/"

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self._jwk)]}

    def issue(
        self, identity: Identity, resource: str, *, lifetime_s: int | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        """A token for `identity` with audience `resource`; returns (token, expires_on)."""
        now = int(time.time())
        expires_on = now + (lifetime_s if lifetime_s is not None else self.lifetime_s)
        claims: dict[str, Any] = {
            "aud": resource.removesuffix("/.default"),
            "iss": self.issuer,
            "iat": now, "nbf": now, "exp": expires_on,
            "aio": uuid.uuid4().hex,
            "appid": identity.client_id,
            "appidacr": "2",
            "idp": self.issuer,
            "idtyp": "app",
            "oid": identity.object_id,
            "rh": "0.sandbox",
            "sub": identity.object_id,
            "tid": self.world.tenant_id,
            "uti": uuid.uuid4().hex[:22],
            "ver": "1.0",
        }
        if identity.resource_id:
            claims["xms_mirid"] = identity.resource_id
        if extra_claims:
            claims.update(extra_claims)
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})
        self.issued += 1
        return token, expires_on

    def validate(self, token: str, audiences: set[str]) -> tuple[Identity, dict[str, Any]]:
        """The identity and claims of a valid token for one of `audiences`.

        Raises:
            InvalidToken: bad signature, wrong issuer or audience, expired, not yet valid,
                or an unknown principal.
        """
        issuer = self.issuer
        claims = self._verified.get((token, issuer))
        if claims is not None:
            # Verified before (signature, issuer, claim types): only the time window can change.
            now = time.time()
            if claims["exp"] <= now:
                raise InvalidToken("The token is expired.")
            if claims["nbf"] > now:
                raise InvalidToken("The token is not yet valid.")
        else:
            claims = self._verify(token, issuer)
        if audiences and normalize_audience(str(claims["aud"])) not in {normalize_audience(a) for a in audiences}:
            raise InvalidToken("The audience of the token is not valid for this resource.")
        identity = self.world.find_identity(object_id=str(claims["oid"]))
        if identity is None:
            raise InvalidToken("The token's principal does not exist in this tenant.")
        return identity, claims

    def _verify(self, token: str, issuer: str) -> dict[str, Any]:
        """Full validation (RS256 signature, issuer, required claims, time window), remembered per
        token: a signature check costs more CPU than the rest of a Key Vault answer, and real Azure
        does not make one client's requests wait for another's token checks.
        """
        try:
            claims = jwt.decode(
                token, self._key.public_key(), algorithms=["RS256"],
                options={"verify_aud": False, "require": ["exp", "nbf", "iss", "aud", "oid"]},
                issuer=issuer, leeway=0,
            )
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("The token is expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise InvalidToken("The token is not yet valid.") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidToken("The token issuer is not trusted.") from exc
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"The token is invalid: {type(exc).__name__}.") from exc
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[(token, issuer)] = claims
        return claims


class ManagedIdentityEndpoint:
    """The App Service managed identity endpoint (plain HTTP, loopback only)."""

    def __init__(self, world: World, issuer: TokenIssuer, header_secret: str) -> None:
        self.world = world
        self.issuer = issuer
        self.header_secret = header_secret

    async def handle(self, request: web.Request, ctx: CallContext) -> web.Response:
        ctx.operation = "GetManagedIdentityToken"
        if request.method != "GET":
            return _mi_error(405, "Only GET is supported.")
        if request.headers.get("X-IDENTITY-HEADER") != self.header_secret:
            return _mi_error(401, "The X-IDENTITY-HEADER header is missing or wrong.")
        query = request.query
        if query.get("api-version") != MI_API_VERSION:
            return _mi_error(400, f"api-version must be {MI_API_VERSION}.")
        resource = query.get("resource")
        if not resource:
            return _mi_error(400, "The resource parameter is required.")
        selectors = {k: query[k] for k in ("client_id", "mi_res_id", "object_id", "principal_id") if query.get(k)}
        if len(selectors) > 1:
            return _mi_error(400, "Only one of client_id, mi_res_id and object_id may be given.")
        if selectors:
            identity = self.world.find_identity(
                client_id=query.get("client_id"), resource_id=query.get("mi_res_id"),
                object_id=query.get("object_id") or query.get("principal_id"),
            )
            if identity is None or identity.kind != "user":
                return _mi_error(400, "Unable to load the proper Managed Identity.")
        else:
            identity = self.world.system_identity
        ctx.identity = identity
        ctx.target = identity.name
        token, expires_on = self.issuer.issue(identity, resource)
        return json_response({
            "access_token": token,
            "expires_on": str(expires_on),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        })


def _mi_error(status: int, message: str) -> web.Response:
    return json_response({"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}, status=status)


class LoginService(Service):
    """`login.<domain>`: OpenID metadata, JWKS and the client-credentials token endpoint."""

    name = "login"

    def __init__(self, world: World, issuer: TokenIssuer, authority: str) -> None:
        super().__init__()
        self.world = world
        self.issuer = issuer
        self.authority = authority.rstrip("/")
        self.add_route("GET", r"/(?P<tenant>[^/]+)/\.well-known/openid-configuration", "OpenIdConfigurationV1", self.openid_v1, auth=False)
        self.add_route("GET", r"/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration", "OpenIdConfigurationV2", self.openid_v2, auth=False)
        self.add_route("GET", r"/(?P<tenant>[^/]+)/discovery/(v2\.0/)?keys", "Jwks", self.keys, auth=False)
        self.add_route("GET", r"/common/discovery/instance", "InstanceDiscovery", self.instance_discovery, auth=False)
        self.add_route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", "ClientCredentialsToken", self.token, auth=False)

    def _tenant(self, tenant: str) -> str:
        if tenant.lower() not in {self.world.tenant_id, "common", "organizations"}:
            raise AzureError(400, "invalid_tenant", f"Tenant '{tenant}' not found.")
        return self.world.tenant_id

    async def openid_v1(self, request: web.Request, ctx: CallContext, tenant: str) -> web.Response:
        tid = self._tenant(tenant)
        return json_response({
            "issuer": self.issuer.issuer,
            "jwks_uri": f"{self.authority}/common/discovery/keys",
            "token_endpoint": f"{self.authority}/{tid}/oauth2/token",
            "authorization_endpoint": f"{self.authority}/{tid}/oauth2/authorize",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": "NA",
        })

    async def openid_v2(self, request: web.Request, ctx: CallContext, tenant: str) -> web.Response:
        tid = self._tenant(tenant)
        return json_response({
            "issuer": f"{self.authority}/{tid}/v2.0",
            "jwks_uri": f"{self.authority}/{tid}/discovery/v2.0/keys",
            "token_endpoint": f"{self.authority}/{tid}/oauth2/v2.0/token",
            "authorization_endpoint": f"{self.authority}/{tid}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{self.authority}/{tid}/oauth2/v2.0/devicecode",
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "subject_types_supported": ["pairwise"],
            "tenant_region_scope": "NA",
        })

    async def keys(self, request: web.Request, ctx: CallContext, tenant: str) -> web.Response:
        return json_response(self.issuer.jwks())

    async def instance_discovery(self, request: web.Request, ctx: CallContext) -> web.Response:
        host = self.authority.split("://", 1)[-1]
        return json_response({
            "tenant_discovery_endpoint": f"{self.authority}/{self.world.tenant_id}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        })

    async def token(self, request: web.Request, ctx: CallContext, tenant: str) -> web.Response:
        self._tenant(tenant)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type", "error_description": "AADSTS70003: only client_credentials is supported by the sandbox."}, status=400)
        client_id = str(form.get("client_id", ""))
        identity = self.world.find_identity(client_id=client_id)
        if identity is None or identity.kind != "service_principal":
            return json_response({"error": "unauthorized_client", "error_description": f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory."}, status=400)
        if form.get("client_secret") != identity.client_secret:
            return json_response({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}, status=401)
        scope = str(form.get("scope", "")).split()
        resource_scopes = [s for s in scope if s not in {"offline_access", "openid", "profile"}]
        if len(resource_scopes) != 1 or not resource_scopes[0].endswith("/.default"):
            return json_response({"error": "invalid_scope", "error_description": "AADSTS1002012: The provided value for scope is not valid; client credential flows must have a scope value with /.default suffixed to the resource identifier."}, status=400)
        ctx.identity = identity
        token, expires_on = self.issuer.issue(identity, resource_scopes[0])
        expires_in = expires_on - int(time.time())
        return json_response({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token})
