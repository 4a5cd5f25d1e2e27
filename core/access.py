"""Who is calling the HTTP API and what they may do: Entra bearer tokens or App Service
Authentication headers, matched against the config's `access:` and `api:` sections.

Bearer mode (`api.auth_mode: bearer`, the default) validates the caller's access token itself:

* signature: RS256 with a key from the tenant's JWKS, found through OpenID discovery at
  `<authority>/<tenant>/v2.0/.well-known/openid-configuration` (the v1 document at
  `<authority>/<tenant>/.well-known/openid-configuration` is read for its issuer).  Keys are
  cached for `jwks_ttl_s`; a token signed with a key id not in the cache triggers one refetch
  (at most every `min_refresh_s`), which is how Entra's key rollover is picked up;
* issuer: `https://sts.windows.net/<tenant>/` (v1 tokens), `<authority>/<tenant>/v2.0` (v2
  tokens), and whatever the discovery documents name;
* audience: `api.audience`, else `$VAULTRELAY_API_AUDIENCE` (comma-separated values are all
  accepted, e.g. the App ID URI and the client id, which v2 tokens carry as `aud`);
* `exp` and `nbf` with `leeway_s` of clock skew.

App Service mode (`api.auth_mode: app_service`) trusts the `X-MS-CLIENT-PRINCIPAL` (base64 JSON
claims) and `X-MS-CLIENT-PRINCIPAL-ID` headers that App Service Authentication sets after it has
validated the caller (and strips from incoming requests).  Only use it with App Service
Authentication enabled and requiring authentication.  In bearer mode those headers are refused:
something in front of the app injected them, or the mode is misconfigured.

Authorization: an env's `access:` list holds object ids, app ids and group ids; a caller may
fetch the env when its `oid`, `appid`/`azp` or any of its `groups` is listed.  `api.admins`
(the same kinds of ids) or the `api.admin_role` app role make a caller an admin (sync, rotate,
status); being an admin does not grant fetching an env.

This module does not import `azure.functions`; `jwt` is imported on first validation.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("vaultrelay.access")

TENANT_VARIABLES = ("VAULTRELAY_TENANT_ID", "AZURE_TENANT_ID")
AUDIENCE_VARIABLE = "VAULTRELAY_API_AUDIENCE"
PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
MAX_TOKEN_LENGTH = 16_384
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

_OID_CLAIMS = ("oid", "http://schemas.microsoft.com/identity/claims/objectidentifier")
_APPID_CLAIMS = ("appid", "azp")
_TID_CLAIMS = ("tid", "http://schemas.microsoft.com/identity/claims/tenantid")
_GROUP_CLAIMS = ("groups", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups")
_ROLE_CLAIMS = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")


# ---- errors ------------------------------------------------------------------------------------
class AuthError(Exception):
    """The caller is not authenticated.  `status` is 401 (no or bad credentials) or 400 (a
    malformed request); `error` is the RFC 6750 error code (None when no credentials were
    given); `description` is safe to show the caller (it never contains token content)."""

    def __init__(self, status: int, error: str | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    @property
    def www_authenticate(self) -> str:
        challenge = 'Bearer realm="vaultrelay"'
        if self.error:
            challenge += f', error="{self.error}", error_description="{self.description}"'
        return challenge


class AuthUnavailable(Exception):
    """Tokens cannot be checked now (no audience or tenant configured, or the signing keys
    cannot be fetched): the server's problem, not the caller's."""


# ---- the caller --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    object_id: str | None
    app_id: str | None
    tenant_id: str | None = None
    groups: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    via: str = "bearer"  # or "app_service"

    @property
    def ids(self) -> frozenset[str]:
        """Every id that `access:` and `api.admins` entries are matched against (lowercase)."""
        ids = {i for i in (self.object_id, self.app_id) if i}
        ids.update(self.groups)
        return frozenset(i.lower() for i in ids)

    @property
    def actor(self) -> str:
        """How the audit trail names this caller."""
        if self.object_id:
            return f"oid:{self.object_id}"
        return f"appid:{self.app_id}"


def may_fetch(access: Mapping[str, Collection[str]], env: str, principal: Principal) -> bool:
    """Whether `principal` may fetch `env` (an env without an `access:` entry is closed).
    `access` holds normalized ids (`Config.access_ids`: trimmed and lowercase once at load)."""
    allowed = access.get(env)
    if not allowed:
        return False
    return not principal.ids.isdisjoint(allowed)


def is_admin(admins: Collection[str], admin_role: str | None, principal: Principal) -> bool:
    """Whether `principal` is listed in `api.admins` (normalized ids: `Api.admin_ids`) or carries
    the `api.admin_role` app role."""
    if not principal.ids.isdisjoint(admins):
        return True
    return bool(admin_role) and admin_role in principal.roles


# ---- signing keys ------------------------------------------------------------------------------
def _ca_file(environ: Mapping[str, str]) -> str | None:
    for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if environ.get(name):
            return environ[name]
    try:
        import certifi
    except ImportError:  # the system store then
        return None
    return str(certifi.where())


def https_get_json(url: str, *, timeout: float = 5.0, environ: Mapping[str, str] | None = None) -> Any:
    """GET `url` (https only) and decode its JSON body (at most 1 MB)."""
    if not url.startswith("https://"):
        raise ValueError("only https:// URLs are fetched")
    context = ssl.create_default_context(cafile=_ca_file(os.environ if environ is None else environ))
    request = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "vaultrelay"})  # noqa: S310 (https only)
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310 (https only, checked above)
        return json.loads(response.read(1_000_000))


@dataclass
class _KeySet:
    keys: dict[str, Any] = field(default_factory=dict)  # kid / x5t -> PyJWK
    issuers: set[str] = field(default_factory=set)
    fetched_at: float = 0.0


class SigningKeys:
    """The tenant's token signing keys and issuers, from OpenID discovery, cached."""

    def __init__(
        self, authority: str, tenant_id: str, *, jwks_ttl_s: float = 6 * 3600, min_refresh_s: float = 30.0,
        fetch: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.authority = authority.rstrip("/")
        self.tenant_id = tenant_id
        self.jwks_ttl_s = jwks_ttl_s
        self.min_refresh_s = min_refresh_s
        self._fetch = fetch or https_get_json
        self._clock = clock
        self._set = _KeySet()
        self._last_attempt: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    @property
    def discovery_url(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def default_issuers(self) -> set[str]:
        return {f"https://sts.windows.net/{self.tenant_id}/", f"{self.authority}/{self.tenant_id}/v2.0"}

    def issuers(self) -> set[str]:
        return self.default_issuers | self._set.issuers

    def key(self, kid: str) -> Any:
        """The key with id `kid`.

        Raises:
            AuthError: no such key, even after a refetch.
            AuthUnavailable: the keys could never be fetched.
        """
        with self._lock:
            now = self._clock()
            stale = not self._set.keys or now - self._set.fetched_at > self.jwks_ttl_s
            unknown = kid not in self._set.keys
            may_refresh = self._last_attempt is None or now - self._last_attempt >= self.min_refresh_s
            if (stale or unknown) and (may_refresh or not self._set.keys):
                self._refresh(now)
            found = self._set.keys.get(kid)
        if found is None:
            raise AuthError(401, "invalid_token", "the token is signed with an unknown key")
        return found

    def _refresh(self, now: float) -> None:
        self._last_attempt = now
        try:
            keyset = self._discover()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            if self._set.keys:
                log.warning("refreshing token signing keys failed (%s); keeping the cached keys", type(exc).__name__)
                return
            raise AuthUnavailable(f"cannot fetch token signing keys from {self.authority}: {type(exc).__name__}") from None
        keyset.fetched_at = now
        self._set = keyset
        self.fetches += 1

    def _discover(self) -> _KeySet:
        from jwt import PyJWK
        from jwt.exceptions import PyJWKError

        document = self._fetch(self.discovery_url)
        if not isinstance(document, dict) or not isinstance(document.get("jwks_uri"), str):
            raise ValueError("OpenID configuration without jwks_uri")
        keyset = _KeySet()
        if isinstance(document.get("issuer"), str):
            keyset.issuers.add(document["issuer"].replace("{tenantid}", self.tenant_id))
        try:
            v1 = self._fetch(f"{self.authority}/{self.tenant_id}/.well-known/openid-configuration")
            if isinstance(v1, dict) and isinstance(v1.get("issuer"), str):
                keyset.issuers.add(v1["issuer"].replace("{tenantid}", self.tenant_id))
        except (OSError, ValueError, urllib.error.URLError):
            pass  # the v1 issuer defaults to https://sts.windows.net/<tenant>/
        jwks = self._fetch(document["jwks_uri"])
        for jwk in jwks.get("keys", []) if isinstance(jwks, dict) else []:
            if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig":
                continue
            try:
                key = PyJWK(jwk, algorithm="RS256")
            except (PyJWKError, ValueError, TypeError):
                continue
            for key_id in (jwk.get("kid"), jwk.get("x5t")):
                if isinstance(key_id, str) and key_id:
                    keyset.keys[key_id] = key
        if not keyset.keys:
            raise ValueError("the JWKS has no usable RS256 signing key")
        return keyset


# ---- bearer tokens -----------------------------------------------------------------------------
class TokenValidator:
    """Validates Entra access tokens for one tenant and audience set."""

    def __init__(self, keys: SigningKeys, audiences: Iterable[str], *, leeway_s: float = 60.0) -> None:
        self.keys = keys
        self.audiences = _audience_forms(audiences)
        if not self.audiences:
            raise AuthUnavailable("no API audience configured (api.audience or $VAULTRELAY_API_AUDIENCE)")
        self.leeway_s = leeway_s

    def validate(self, token: str) -> Principal:
        """The caller a valid token names.

        Raises:
            AuthError: the token is malformed, badly signed, for another audience or issuer,
                expired or not yet valid, or names no principal.
            AuthUnavailable: the signing keys cannot be fetched.
        """
        import jwt

        if len(token) > MAX_TOKEN_LENGTH or not _JWT_SHAPE.match(token):
            raise AuthError(401, "invalid_token", "the token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthError(401, "invalid_token", "the token is not a JWT") from None
        if header.get("alg") != "RS256":
            raise AuthError(401, "invalid_token", "the token is not signed with RS256")
        kid = header.get("kid") or header.get("x5t")
        if not isinstance(kid, str) or not kid:
            raise AuthError(401, "invalid_token", "the token names no signing key")
        key = self.keys.key(kid)
        try:
            claims = jwt.decode(
                token, key, algorithms=["RS256"], audience=sorted(self.audiences), issuer=sorted(self.keys.issuers()),
                leeway=self.leeway_s, options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "invalid_token", "the token is expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "invalid_token", "the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "invalid_token", "the token is not for this API (audience)") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "invalid_token", "the token is not from this tenant (issuer)") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "invalid_token", "the token signature is invalid") from None
        except jwt.MissingRequiredClaimError:
            raise AuthError(401, "invalid_token", "the token lacks a required claim") from None
        except jwt.InvalidTokenError:
            raise AuthError(401, "invalid_token", "the token is invalid") from None
        tid = claims.get("tid")
        if tid is not None and str(tid).lower() != self.keys.tenant_id.lower():
            raise AuthError(401, "invalid_token", "the token is not from this tenant")
        return _principal(claims, via="bearer")


def _audience_forms(audiences: Iterable[str]) -> set[str]:
    forms: set[str] = set()
    for audience in audiences:
        for part in audience.split(","):
            part = part.strip()
            if part:
                forms.update({part, part.rstrip("/"), part.rstrip("/") + "/"})
    return forms


def _principal(claims: Mapping[str, Any], *, via: str) -> Principal:
    def first(names: Sequence[str]) -> str | None:
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                return value
        return None

    def many(names: Sequence[str]) -> frozenset[str]:
        found: set[str] = set()
        for name in names:
            value = claims.get(name)
            if isinstance(value, str) and value:
                found.add(value)
            elif isinstance(value, list):
                found.update(v for v in value if isinstance(v, str) and v)
        return frozenset(found)

    principal = Principal(
        object_id=first(_OID_CLAIMS), app_id=first(_APPID_CLAIMS), tenant_id=first(_TID_CLAIMS),
        groups=many(_GROUP_CLAIMS), roles=many(_ROLE_CLAIMS), via=via,
    )
    if not principal.object_id and not principal.app_id:
        raise AuthError(401, "invalid_token", "the token names no principal (oid or appid)")
    if "_claim_names" in claims and "groups" in str(claims.get("_claim_names")):
        log.warning("the caller's token has too many groups to carry them (group overage); groups are not matched")
    return principal


# ---- App Service Authentication ----------------------------------------------------------------
def principal_from_app_service(headers: Mapping[str, str], tenant_id: str | None) -> Principal:
    """The caller App Service Authentication validated, from its headers (lowercase names).

    Raises:
        AuthError: the headers are missing (401), malformed (400) or disagree (401).
    """
    encoded = headers.get(PRINCIPAL_HEADER)
    principal_id = headers.get(PRINCIPAL_ID_HEADER)
    if not encoded:
        raise AuthError(401, None, "no authenticated caller (App Service Authentication set no principal)")
    try:
        text = base64.b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4), validate=True)
        document = json.loads(text)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise AuthError(400, "invalid_request", "X-MS-CLIENT-PRINCIPAL is not base64 JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("claims"), list):
        raise AuthError(400, "invalid_request", "X-MS-CLIENT-PRINCIPAL has no claims list")
    role_type = document.get("role_typ") if isinstance(document.get("role_typ"), str) else None
    claims: dict[str, Any] = {}
    for claim in document["claims"]:
        if not isinstance(claim, dict) or not isinstance(claim.get("typ"), str) or not isinstance(claim.get("val"), str):
            raise AuthError(400, "invalid_request", "X-MS-CLIENT-PRINCIPAL has a malformed claim")
        typ = "roles" if role_type and claim["typ"] == role_type else claim["typ"]
        if typ in (*_GROUP_CLAIMS, *_ROLE_CLAIMS):
            claims.setdefault(typ, []).append(claim["val"])
        else:
            claims.setdefault(typ, claim["val"])
    oid = next((claims[n] for n in _OID_CLAIMS if isinstance(claims.get(n), str)), None)
    if principal_id:
        if oid and oid.lower() != principal_id.strip().lower():
            raise AuthError(401, "invalid_token", "X-MS-CLIENT-PRINCIPAL-ID does not match the principal's object id")
        if not oid:
            claims["oid"] = principal_id.strip()
    principal = _principal(claims, via="app_service")
    if tenant_id and principal.tenant_id and principal.tenant_id.lower() != tenant_id.lower():
        raise AuthError(401, "invalid_token", "the principal is not from this tenant")
    return principal


# ---- putting it together ----------------------------------------------------------------------
def tenant_from(environ: Mapping[str, str]) -> str | None:
    return next((environ[v] for v in TENANT_VARIABLES if environ.get(v)), None)


def audiences_from(configured: str | None, environ: Mapping[str, str]) -> list[str]:
    value = configured or environ.get(AUDIENCE_VARIABLE) or ""
    return [a.strip() for a in value.split(",") if a.strip()]


class Authenticator:
    """Authenticates a request by its headers, in the config's `api.auth_mode`."""

    def __init__(
        self, mode: str, *, authority: str, tenant_id: str | None, audiences: Sequence[str],
        keys: SigningKeys | None = None, leeway_s: float = 60.0,
    ) -> None:
        self.mode = mode
        self.tenant_id = tenant_id
        self._validator: TokenValidator | None = None
        self._problem: str | None = None
        if mode == "bearer":
            if not tenant_id:
                self._problem = "no tenant configured ($VAULTRELAY_TENANT_ID or $AZURE_TENANT_ID)"
            elif not audiences:
                self._problem = "no API audience configured (api.audience or $VAULTRELAY_API_AUDIENCE)"
            else:
                self._validator = TokenValidator(keys or SigningKeys(authority, tenant_id), audiences, leeway_s=leeway_s)

    @property
    def validator(self) -> TokenValidator | None:
        return self._validator

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller, from request `headers` (names lowercase).

        Raises:
            AuthError: not authenticated (401) or a malformed request (400).
            AuthUnavailable: bearer mode without audience/tenant, or keys unavailable.
        """
        if self.mode == "app_service":
            return principal_from_app_service(headers, self.tenant_id)
        if any(name.startswith(PRINCIPAL_HEADER) for name in headers):
            raise AuthError(400, "invalid_request", "X-MS-CLIENT-PRINCIPAL headers are only accepted with api.auth_mode: app_service")
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.strip().partition(" ")
        if not authorization.strip() or scheme.lower() != "bearer":
            raise AuthError(401, None, "a bearer token is required")
        token = token.strip()
        if not token or " " in token:
            raise AuthError(400, "invalid_request", "the Authorization header must be 'Bearer <token>'")
        if self._validator is None:
            raise AuthUnavailable(self._problem or "bearer authentication is not configured")
        return self._validator.validate(token)
