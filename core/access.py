"""Who is calling the HTTP API and what they may do: Entra bearer tokens or App Service
Authentication headers, matched against the config's `access:` and `api:` sections.

Bearer mode (`api.auth_mode: bearer`, the default) validates the caller's access token itself:

* signature: RS256 with a key from the tenant's JWKS, found through OpenID discovery at
  `<authority>/<tenant>/v2.0/.well-known/openid-configuration` (the v1 document at
  `<authority>/<tenant>/.well-known/openid-configuration` is read for its issuer).  Keys are
  cached for `jwks_ttl_s`; a token signed with a key id not in the cache triggers one refetch
  (at most every `min_refresh_s`), which is how Entra's key rollover is picked up.  Fetches are
  single-flight, bounded and backed off (`SigningKeys`), so tokens with made-up key ids or a
  hanging authority cannot make requests queue behind fetches;
* issuer: `https://sts.windows.net/<tenant>/` (v1 tokens), `<authority>/<tenant>/v2.0` (v2
  tokens), and whatever the discovery documents name;
* audience: `api.audience`, else `$VAULTRELAY_API_AUDIENCE` (comma-separated values are all
  accepted, e.g. the App ID URI and the client id, which v2 tokens carry as `aud`);
* `exp` and `nbf` with `leeway_s` of clock skew.

App Service mode (`api.auth_mode: app_service`) trusts the `X-MS-CLIENT-PRINCIPAL` (base64 JSON
claims) and `X-MS-CLIENT-PRINCIPAL-ID` headers that App Service Authentication sets after it has
validated the caller (and strips from incoming requests).  Without App Service Authentication
anyone could send those headers, so the mode refuses every request (AuthUnavailable: 503 naming
the setting) unless the platform says the module is on: `WEBSITE_AUTH_ENABLED` is `True`, which
App Service injects into the app when authentication is enabled (Learn: "Environment variables
and app settings in Azure App Service", authentication section).  It should also be set to
require authentication.  In bearer mode those headers are refused: something in front of the
app injected them, or the mode is misconfigured.

Authorization: an env's `access:` list holds object ids (users, service principals, managed
identities), group ids and app (client) ids; a caller may fetch the env when its `oid` or any of
its `groups` is listed, or, for an app-only token only, its `appid` (v1) / `azp` (v2).  A
delegated token (a user signed in through an app) is matched by the user's object id and groups,
never by the app's id: anyone who can sign in to that app could get one (Microsoft's "Secure
applications and APIs by validating claims": authorize by `appid`/`azp` only tokens whose
`idtyp` is `app`).  App-only: `idtyp` is `app` when the token carries `idtyp` (an optional claim);
without it, no `scp` and `oid` equal to `sub`.  `api.admins` (the same kinds of ids, matched the
same way) or the `api.admin_role` app role make a caller an admin (sync, rotate, status); being an
admin does not grant fetching an env.

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
APP_SERVICE_AUTH_SETTING = "WEBSITE_AUTH_ENABLED"
AUDIENCE_VARIABLE = "VAULTRELAY_API_AUDIENCE"
PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
MAX_TOKEN_LENGTH = 16_384
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

_OID_CLAIMS = ("oid", "http://schemas.microsoft.com/identity/claims/objectidentifier")
_APPID_CLAIMS = ("appid", "azp")
_TID_CLAIMS = ("tid", "http://schemas.microsoft.com/identity/claims/tenantid")
_GROUP_CLAIMS = ("groups", "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups")
_SCOPE_CLAIMS = ("scp", "http://schemas.microsoft.com/identity/claims/scope")
_SUB_CLAIMS = ("sub", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier")
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
    """Tokens cannot be checked now (no audience or tenant configured, App Service
    Authentication off in app_service mode, or the signing keys cannot be fetched): the server's
    problem, not the caller's.  `public` is what callers are told (it names settings, never a
    value); the message is for the log."""

    def __init__(self, message: str, *, public: str = "caller authentication is not available") -> None:
        super().__init__(message)
        self.public = public


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
    app_only: bool = False  # an application acting as itself (no user)

    @property
    def ids(self) -> frozenset[str]:
        """Every id that `access:` and `api.admins` entries are matched against (lowercase): the
        object id and groups, and the app id only for an app-only token."""
        ids = {i for i in (self.object_id, self.app_id if self.app_only else None) if i}
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


def https_get_json(url: str, *, timeout: float = 3.0, environ: Mapping[str, str] | None = None) -> Any:
    """GET `url` (https only) and decode its JSON body (at most 1 MB), all within `timeout` seconds.

    Raises:
        ValueError: not https, not a 200 answer, or not JSON.
        OSError: no complete answer in time, or no connection (core.azure.bounded_http.BoundedHttpError).
    """
    from core.azure.bounded_http import request

    if not url.startswith("https://"):
        raise ValueError("only https:// URLs are fetched")
    context = ssl.create_default_context(cafile=_ca_file(os.environ if environ is None else environ))
    answer = request("GET", url, headers={"Accept": "application/json", "User-Agent": "vaultrelay"},
                     deadline_s=timeout, max_bytes=1_000_000, ssl_context=context)
    if answer.status != 200 or answer.truncated:
        raise ValueError(f"HTTP {answer.status}" if answer.status != 200 else "answer over 1 MB")
    return json.loads(answer.body)


@dataclass
class _KeySet:
    keys: dict[str, Any] = field(default_factory=dict)  # kid / x5t -> PyJWK
    issuers: set[str] = field(default_factory=set)
    fetched_at: float = 0.0


class SigningKeys:
    """The tenant's token signing keys and issuers, from OpenID discovery, cached.

    * One fetch serves every request that needs it (single flight): it runs on its own thread,
      and each request waits for it at most `wait_s` (then AuthUnavailable: 503).
    * A request whose key is cached never waits: keys older than `jwks_ttl_s` are refreshed in
      the background while they keep serving.
    * A key id not in the cache triggers at most one refresh per `min_refresh_s` (how Entra's key
      rollover is picked up); other unknown key ids in between are refused at once (401).
    * A failed fetch backs off `failure_backoff_s`, doubling up to `max_backoff_s`, whether or
      not keys are cached; in between, a request that needs a fetch is answered at once.
    * Each document has `fetch_timeout_s` in all (connect to last byte, core.azure.bounded_http).
    """

    def __init__(
        self, authority: str, tenant_id: str, *, jwks_ttl_s: float = 6 * 3600, min_refresh_s: float = 30.0,
        fetch: Callable[[str], Any] | None = None, clock: Callable[[], float] = time.monotonic,
        fetch_timeout_s: float = 3.0, wait_s: float = 5.0, failure_backoff_s: float = 5.0, max_backoff_s: float = 60.0,
    ) -> None:
        self.authority = authority.rstrip("/")
        self.tenant_id = tenant_id
        self.jwks_ttl_s = jwks_ttl_s
        self.min_refresh_s = min_refresh_s
        self.fetch_timeout_s = fetch_timeout_s
        self.wait_s = wait_s
        self.failure_backoff_s = failure_backoff_s
        self.max_backoff_s = max_backoff_s
        self._fetch = fetch or (lambda url: https_get_json(url, timeout=self.fetch_timeout_s))
        self._clock = clock
        self._set = _KeySet()
        self._lock = threading.Lock()
        self._flight: threading.Event | None = None
        self._next_refresh = float("-inf")  # no refresh starts before this (interval or back-off)
        self._failures = 0
        self.fetches = 0  # refreshes that succeeded
        self.attempts = 0  # refreshes started

    @property
    def discovery_url(self) -> str:
        return f"{self.authority}/{self.tenant_id}/v2.0/.well-known/openid-configuration"

    @property
    def default_issuers(self) -> set[str]:
        return {f"https://sts.windows.net/{self.tenant_id}/", f"{self.authority}/{self.tenant_id}/v2.0"}

    @property
    def fetching(self) -> bool:
        """Whether a refresh is in flight."""
        with self._lock:
            return self._flight is not None

    def issuers(self) -> set[str]:
        return self.default_issuers | self._set.issuers

    def wait_for_fetch(self, timeout: float) -> bool:
        """Wait until no refresh is in flight; False if one still is after `timeout` seconds."""
        with self._lock:
            flight = self._flight
        return flight is None or flight.wait(timeout)

    def key(self, kid: str) -> Any:
        """The key with id `kid`.

        Raises:
            AuthError: no such key, even after a refresh (or within the refresh interval).
            AuthUnavailable: no keys could be fetched (now, or in the back-off after a failure).
        """
        with self._lock:
            now = self._clock()
            found = self._set.keys.get(kid)
            if found is not None:
                if now - self._set.fetched_at > self.jwks_ttl_s:
                    self._start(now)  # in the background; the cached key serves meanwhile
                return found
            flight = self._start(now)
            if flight is None:
                if self._set.keys:
                    raise AuthError(401, "invalid_token", "the token is signed with an unknown key")
                raise AuthUnavailable(f"cannot fetch token signing keys from {self.authority} (backing off after a failure)")
        if not flight.wait(self.wait_s):
            raise AuthUnavailable(f"token signing keys are still being fetched from {self.authority}")
        with self._lock:
            found, cached = self._set.keys.get(kid), bool(self._set.keys)
        if found is not None:
            return found
        if not cached:
            raise AuthUnavailable(f"cannot fetch token signing keys from {self.authority}")
        raise AuthError(401, "invalid_token", "the token is signed with an unknown key")

    def _start(self, now: float) -> threading.Event | None:
        """The refresh in flight, a new one, or None when none may start now (lock held)."""
        if self._flight is not None:
            return self._flight
        if now < self._next_refresh:
            return None
        flight = self._flight = threading.Event()
        self._next_refresh = now + self.min_refresh_s
        self.attempts += 1
        threading.Thread(target=self._refresh, args=(flight, now), name="vaultrelay-signing-keys", daemon=True).start()
        return flight

    def _refresh(self, flight: threading.Event, started: float) -> None:
        try:
            keyset: _KeySet | None = self._discover()
        except Exception as exc:  # any failure of the authority backs off; logged by kind only
            keyset = None
            problem = type(exc).__name__
        with self._lock:
            now = self._clock()
            if keyset is None:
                self._failures += 1
                backoff = min(self.max_backoff_s, self.failure_backoff_s * 2 ** (self._failures - 1))
                # With keys cached, unknown kids keep their interval; with none, only the back-off.
                interval_ends = started + self.min_refresh_s if self._set.keys else now
                self._next_refresh = max(interval_ends, now + backoff)
                kept = "keeping the cached keys" if self._set.keys else "no keys cached"
            else:
                keyset.fetched_at = now
                self._set = keyset
                self._failures = 0
                self.fetches += 1
            self._flight = None
        flight.set()
        if keyset is None:
            log.warning("fetching token signing keys from %s failed (%s); %s; next try in %.0f s at the earliest",
                        self.authority, problem, kept, backoff)

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

    object_id = first(_OID_CLAIMS)
    idtyp = claims.get("idtyp")
    if isinstance(idtyp, str) and idtyp:
        app_only = idtyp.lower() == "app"
    else:
        scoped = any(claims.get(name) for name in _SCOPE_CLAIMS)
        app_only = not scoped and object_id is not None and object_id == first(_SUB_CLAIMS)
    principal = Principal(
        object_id=object_id, app_id=first(_APPID_CLAIMS), tenant_id=first(_TID_CLAIMS),
        groups=many(_GROUP_CLAIMS), roles=many(_ROLE_CLAIMS), via=via, app_only=app_only,
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
        keys: SigningKeys | None = None, leeway_s: float = 60.0, environ: Mapping[str, str] | None = None,
    ) -> None:
        self.mode = mode
        self.tenant_id = tenant_id
        self._validator: TokenValidator | None = None
        self._problem: str | None = None
        self._public: str | None = None
        environ = os.environ if environ is None else environ
        if mode == "app_service" and environ.get("WEBSITE_AUTH_ENABLED", "").strip().lower() != "true":
            self._problem = self._public = (
                f"api.auth_mode is app_service but App Service Authentication is not enabled ({APP_SERVICE_AUTH_SETTING} is not True): "
                "every request is refused until it is"
            )
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

    @property
    def problem(self) -> str | None:
        """Why no caller can be authenticated (a configuration problem), or None."""
        return self._problem

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The caller, from request `headers` (names lowercase).

        Raises:
            AuthError: not authenticated (401) or a malformed request (400).
            AuthUnavailable: bearer mode without audience/tenant, or keys unavailable.
        """
        if self.mode == "app_service":
            if self._problem:
                raise AuthUnavailable(self._problem, public=self._public or "caller authentication is not available")
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
