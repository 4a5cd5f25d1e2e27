"""The only place credentials are built.

One credential per distinct identity, shared by every client that uses it (azure-identity caches
tokens per credential instance and per scope).  `BufferedTokenCredential` adds the config's
`cache.token_cache`: a token is reused until `buffer` seconds before it expires, concurrent
requests for the same scope wait for one fetch (single flight), and the number of fetches is
counted for status and benchmarks.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential


@dataclass
class TokenCacheStats:
    requests: int = 0
    fetches: int = 0


PREFETCH_FAILURE_TTL_S = 30.0


class BufferedTokenCredential:
    """Wraps a TokenCredential; caches each scope's token until `buffer_s` before expiry.

    With `enabled=False` every call goes to the wrapped credential (which may still cache
    on its own, as azure-identity's credentials do).
    """

    def __init__(
        self, inner: TokenCredential, *, buffer_s: float = 300.0, enabled: bool = True,
        clock: Callable[[], float] = time.time, description: str = "",
    ) -> None:
        self.inner = inner
        self.buffer_s = buffer_s
        self.enabled = enabled
        self.description = description
        self._clock = clock
        self._tokens: dict[tuple[Any, ...], AccessToken] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._guard = threading.Lock()
        self._prefetch_failures: dict[tuple[Any, ...], tuple[Exception, float]] = {}
        self.stats = TokenCacheStats()

    def get_token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
        enable_cae: bool = False, **kwargs: Any,
    ) -> AccessToken:
        """A token for `scopes`, from the cache while it is fresh enough.

        Raises:
            azure.core.exceptions.ClientAuthenticationError: the identity could not get a token.
        """
        self.stats.requests += 1
        if not self.enabled or claims:
            # A claims challenge (CAE) always needs a fresh token.
            self.stats.fetches += 1
            return self.inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
        key = (scopes, tenant_id, enable_cae)
        token = self._fresh(key)
        if token is not None:
            return token
        untenanted = (scopes, None, enable_cae)
        if tenant_id is not None:
            token = self._from_home_tenant(untenanted, tenant_id)
            if token is not None:
                self._tokens[key] = token
                return token
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            token = self._fresh(key)
            if token is not None:
                return token
            self._raise_prefetch_failure(untenanted)
            self.stats.fetches += 1
            token = self.inner.get_token(*scopes, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
            self._tokens[key] = token
            return token

    def prefetch(self, scope: str) -> None:
        """Get `scope`'s token now, ahead of the request that will need it.

        Key Vault clients learn which token to ask for from the vault's 401 challenge, so a cold
        resolve pays the challenge round trip and then the token round trip before its first
        read.  Fetched here (on another thread, with the challenge in flight) the token is ready
        when the challenge comes back: the Key Vault policy then asks for it with the challenge's
        tenant, which `get_token` serves from this token when the token was issued in that tenant
        (its `tid`).  Never raises: the request that needs the token reports any failure.
        """
        if not self.enabled:
            return
        try:
            self.get_token(scope, enable_cae=True)
        except Exception as exc:
            # The request that needs the token gets this failure instead of a second attempt.
            self._prefetch_failures[((scope,), None, True)] = (exc, self._clock())
            log.debug("token prefetch for %s failed (%s)", scope, type(exc).__name__)

    def _raise_prefetch_failure(self, key: tuple[Any, ...]) -> None:
        """Raise (once) the failure of a prefetch of `key` that ended in the last half minute."""
        failure = self._prefetch_failures.pop(key, None)
        if failure is not None and self._clock() - failure[1] < PREFETCH_FAILURE_TTL_S:
            raise failure[0]

    def has_token(self, scope: str) -> bool:
        """Whether a fresh token for `scope` is cached (for any tenant), so no prefetch is needed."""
        return any(key[0] == (scope,) and self._fresh(key) is not None for key in list(self._tokens))

    def _from_home_tenant(self, key: tuple[Any, ...], tenant_id: str) -> AccessToken | None:
        """The token cached (or being fetched) under `key`, without a tenant, if it was issued in
        `tenant_id`: exactly the token a request for that tenant would get."""
        with self._guard:
            lock = self._locks.get(key)
        if lock is not None:
            with lock:  # a fetch in flight (a prefetch): wait for it rather than fetch twice
                pass
        token = self._fresh(key)
        if token is not None and str(_claims(token.token).get("tid", "")).lower() == tenant_id.lower():
            return token
        return None

    def _fresh(self, key: tuple[Any, ...]) -> AccessToken | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_on - self._clock() > self.buffer_s:
            return token
        return None

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


# ---- building credentials from the config ---------------------------------------------------
log = logging.getLogger("vaultrelay.identity")


class TracingCredential:
    """`debug.trace_identity`: logs which identity produced each token (claims, never the token)."""

    def __init__(self, inner: Any, description: str) -> None:
        self.inner = inner
        self.description = description

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token = self.inner.get_token(*scopes, **kwargs)
        claims = _claims(token.token)
        log.info(
            "token for %s from %s: oid=%s appid=%s tid=%s, expires in %ds", " ".join(scopes), self.description,
            claims.get("oid"), claims.get("appid") or claims.get("azp"), claims.get("tid"), int(token.expires_on - time.time()),
        )
        return token

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _claims(token: str) -> dict[str, Any]:
    import jwt

    try:
        return dict(jwt.decode(token, options={"verify_signature": False}))
    except jwt.PyJWTError:
        return {}


@dataclass(frozen=True)
class CredentialSpec:
    """What a store's credential is, as a hashable key: stores with equal specs share one."""

    chain: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = field(repr=False)  # may hold a client secret
    authority: str
    custom_cloud: bool
    buffer_s: float
    cache_enabled: bool
    trace: bool
    description: str


def credential_spec(store: Any, cloud: Any, *, skipped: frozenset[int] = frozenset(), environ: Mapping[str, str] | None = None) -> CredentialSpec:
    """The credential a config store asks for (`store` is a ManagedIdentityStore or KeyVaultStore).

    Fallback entries in `skipped` (unset variables) are left out; `environment` entries read their
    variables from `environ` now, so a missing variable leaves that entry out too.
    """
    environ = os.environ if environ is None else environ
    steps: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    described: list[str] = []
    if getattr(store, "type", "") == "azure.keyvault":
        auth = store.auth
        steps.append(("service_principal", (("client_id", auth.client_id), ("client_secret", auth.client_secret), ("tenant_id", auth.tenant_id))))
        described.append(f"service principal {auth.client_id}")
        cache, debug = store.cache, None
    else:
        cache, debug = store.cache, store.debug
        entries = store.fallback if store.fallback is not None else [None]
        for index, entry in enumerate(entries):
            if index in skipped:
                continue
            kind = "managed_identity" if entry is None else entry.type
            if kind == "managed_identity":
                identity = (entry.identity if entry is not None and entry.identity is not None else store.identity)
                selector = tuple((k, getattr(identity, k)) for k in ("client_id", "resource_id", "object_id") if getattr(identity, k))
                steps.append(("managed_identity", selector))
                described.append(identity.describe())
            elif kind == "azure_cli":
                steps.append(("azure_cli", (("tenant_id", entry.tenant_id),) if entry.tenant_id else ()))
                described.append("Azure CLI")
            elif kind == "service_principal":
                steps.append(("service_principal", (("client_id", entry.client_id), ("client_secret", entry.client_secret), ("tenant_id", entry.tenant_id))))
                described.append(f"service principal {entry.client_id}")
            elif kind == "environment":
                values = {k: environ.get(getattr(entry, f"{k}_env"), "") for k in ("client_id", "client_secret", "tenant_id")}
                if all(values.values()):
                    steps.append(("service_principal", tuple(values.items())))
                    described.append(f"service principal {values['client_id']} (from ${entry.client_id_env})")
            elif kind == "workload_identity":
                params = tuple((k, v) for k, v in (("client_id", entry.client_id), ("tenant_id", entry.tenant_id), ("token_file_path", entry.token_file)) if v)
                steps.append(("workload_identity", params))
                described.append("workload identity")
    return CredentialSpec(
        chain=tuple(steps), authority=cloud.authority, custom_cloud=not cloud.is_public,
        buffer_s=float(cache.token_cache.buffer), cache_enabled=bool(cache.token_cache.enabled),
        trace=bool(debug and debug.trace_identity), description=" -> ".join(described) or "no usable credential",
    )


class CredentialPool:
    """One credential per distinct spec, shared by every store and client that needs it."""

    def __init__(self) -> None:
        self._credentials: dict[CredentialSpec, BufferedTokenCredential] = {}
        self._lock = threading.Lock()

    def get(self, spec: CredentialSpec) -> BufferedTokenCredential:
        """The shared credential for `spec`.

        Raises:
            ValueError: the spec has no usable credential (every fallback was skipped).
        """
        with self._lock:
            credential = self._credentials.get(spec)
            if credential is None:
                credential = BufferedTokenCredential(
                    _build(spec), buffer_s=spec.buffer_s, enabled=spec.cache_enabled, description=spec.description,
                )
                self._credentials[spec] = credential
            return credential

    def close(self) -> None:
        with self._lock:
            for credential in self._credentials.values():
                credential.close()
            self._credentials.clear()


def _build(spec: CredentialSpec) -> Any:
    from azure.identity import ChainedTokenCredential

    if not spec.chain:
        raise ValueError("no usable credential: every fallback entry was skipped")
    common: dict[str, Any] = {"authority": spec.authority}
    if spec.custom_cloud:
        # A custom authority cannot be validated through login.microsoftonline.com's discovery.
        common["disable_instance_discovery"] = True
    parts: list[Any] = []
    unavailable: list[str] = []
    for kind, params in spec.chain:
        try:
            parts.append(_one(kind, dict(params), common))
        except ValueError as exc:
            # A workload_identity entry outside AKS (no client id, tenant or federated token
            # file): like an `environment` entry without its variables, the chain goes on.
            if kind != "workload_identity":
                raise
            log.info("fallback entry workload_identity is unavailable here: %s", exc)
            unavailable.append(f"workload_identity: {exc}")
    if not parts:
        raise ValueError(f"no usable credential: {'; '.join(unavailable)}")
    credential: Any = parts[0] if len(parts) == 1 else ChainedTokenCredential(*parts)
    return TracingCredential(credential, spec.description) if spec.trace else credential


def _one(kind: str, params: dict[str, str], common: dict[str, Any]) -> Any:
    from azure import identity

    if kind == "managed_identity":
        if "client_id" in params:
            return identity.ManagedIdentityCredential(client_id=params["client_id"])
        if params:
            return identity.ManagedIdentityCredential(identity_config=params)
        return identity.ManagedIdentityCredential()
    if kind == "azure_cli":
        return identity.AzureCliCredential(tenant_id=params.get("tenant_id", ""))
    if kind == "service_principal":
        return identity.ClientSecretCredential(params["tenant_id"], params["client_id"], params["client_secret"], **common)
    if kind == "workload_identity":
        return identity.WorkloadIdentityCredential(**params, **common)
    raise ValueError(f"unknown credential kind {kind!r}")


def app_credential(environ: Mapping[str, str] | None = None) -> Any:
    """The Function app's own managed identity, for what is read before any config says which
    identity to use (the config blob): the user-assigned identity whose client id is
    `$AZURE_CLIENT_ID` (the template sets it), else the system-assigned identity.  This is the
    identity the template's state store uses (`client_id: ${AZURE_CLIENT_ID}`).
    """
    from azure.identity import ManagedIdentityCredential

    environ = os.environ if environ is None else environ
    client_id = (environ.get("AZURE_CLIENT_ID") or "").strip()
    return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()


# ---- what a failed token request means --------------------------------------------------------
_MI_STATUS = re.compile(r"Token request error: \((?P<code>[^)]*)\) (?P<status>\d{3}), (?P<detail>[^\n]*)")
_AADSTS = re.compile(r"(AADSTS\d+):\s*([^\r\n]*)")
DEFAULT_IDENTITY_HINT = "check the store's identity settings and that the identity exists on this host"


def describe_identity_failure(text: str) -> tuple[str, str]:
    """(what happened, what to check) for the text of a failed token request.

    azure-identity words every failure of the App Service / Functions endpoint as "configuration
    not found in environment" and tucks the endpoint's answer in after "Token request error:";
    this says what the endpoint answered (its HTTP status and message) and what that means.
    """
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    if lines and lines[0].startswith("ChainedTokenCredential failed"):
        attempts = []
        hints = []
        for line in lines[1:]:
            name, sep, rest = line.partition(": ")
            if not sep or not name.endswith("Credential"):
                continue
            message, hint = describe_identity_failure(rest)
            attempts.append(f"{name}: {message}")
            hints.append(hint)
        if attempts:
            return f"every credential of the fallback chain failed ({'; '.join(attempts)})", hints[0]
    match = _MI_STATUS.search(text)
    if match:
        status = int(match.group("status"))
        detail = match.group("detail").strip().rstrip(".")
        message = f"the managed identity endpoint answered HTTP {status} ({detail})"
        if status in (400, 404):
            hint = ("check that this identity is assigned to the host (the store's client_id, resource_id or object_id) "
                    "and that the host has managed identity enabled")
        elif status in (401, 403):
            hint = "the host's identity endpoint refused the request: check the host's managed identity settings (IDENTITY_HEADER)"
        elif status == 429 or status >= 500:
            hint = "the host's identity endpoint is failing or throttled: retry later, and check the host's health"
        else:
            hint = DEFAULT_IDENTITY_HINT
        return message, hint
    match = _AADSTS.search(text)
    if match:
        return (f"Entra ID refused the token request ({match.group(1)}: {match.group(2).strip()[:200]})",
                "check the credential's client id, secret or certificate and tenant")
    joined = " ".join(lines)
    if "Azure CLI not found" in joined:
        return "the Azure CLI is not on PATH", "install the Azure CLI and run az login, or remove the azure_cli fallback"
    if "az login" in joined:
        return "the Azure CLI is not signed in", "run az login (with --tenant if the store names one)"
    if "IMDS" in joined or "configuration not found in environment" in joined or "no managed identity endpoint" in joined.lower():
        return ("no managed identity endpoint answered on this host",
                "not running in Azure? give the host a managed identity, or add a fallback (azure_cli, service_principal) for local runs")
    return (lines[0][:400] if lines else "no detail"), DEFAULT_IDENTITY_HINT


def identity_endpoint_hosts(environ: Mapping[str, str] | None = None) -> set[str]:
    """`host:port` of the managed identity endpoints this host would call (App Service/Functions'
    IDENTITY_ENDPOINT or MSI_ENDPOINT, and IMDS)."""
    from urllib.parse import urlsplit

    environ = os.environ if environ is None else environ
    hosts = {"169.254.169.254:80"}
    for key in ("IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
        parts = urlsplit(environ.get(key) or "")
        if parts.hostname:
            hosts.add(f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
    return hosts
