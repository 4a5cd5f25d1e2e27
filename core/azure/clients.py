"""The one factory of Azure SDK clients.

Clients are built from a credential passed in (never built here), cached per (kind, endpoint,
credential) and share one HTTP connection pool sized for the configured concurrency.  SDK
modules are imported on first use so that importing vaultrelay stays cheap (Functions cold
starts pay for every import).  Every client gets vaultrelay's retry policy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from azure.core.pipeline.policies import HTTPPolicy, SansIOHTTPPolicy

from core.azure.protocols import (
    BlobClientLike,
    BlobServiceClientLike,
    CertificateClientLike,
    ContainerAppsManagementLike,
    CosmosManagementLike,
    KeyClientLike,
    PipelineClientLike,
    QueueClientLike,
    SecretClientLike,
    StorageManagementLike,
    TableClientLike,
    TableServiceClientLike,
    WebManagementLike,
)
from core.azure.retry import RetrySettings, WaitRefused, wait_limit

if TYPE_CHECKING:
    from core.azure.arm_sql import SqlServers
    from core.azure.queue import StorageWorkQueue

_Client = TypeVar("_Client")

request_log = logging.getLogger("vaultrelay.requests")


CONTAINER_APP_POLL_S = 1.0  # seconds between polls of a container app update (long-running)

class RequestLogPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Logs method, host, path and status of each attempt; never the query (SAS), headers or body."""

    def on_request(self, request: Any) -> None:
        request.context["vaultrelay_started"] = time.monotonic()

    def on_response(self, request: Any, response: Any) -> None:
        started = request.context.get("vaultrelay_started", time.monotonic())
        http = request.http_request
        parts = urllib.parse.urlsplit(http.url)
        request_log.info("%s https://%s%s -> %s in %.0f ms", http.method, parts.netloc, parts.path,
                         response.http_response.status_code, (time.monotonic() - started) * 1000)


class ChallengeGate:
    """One Key Vault challenge per vault instead of one per concurrent first request.

    A Key Vault client learns a vault's authentication challenge from a first, unauthenticated
    request that the vault answers with 401 (the SDK then caches the challenge per host for the
    process).  A resolve starts up to `max_concurrent` requests to a vault at once, and each of them
    would pay that 401.  The gate (one per vault and SDK package) lets one request through and
    holds the others until a request to the vault goes out with a token (`seen`, a raw request
    hook, runs after the SDK's auth policy) or the first request ends; the held requests then go
    out with the cached challenge, together with the first one's authorized retry, so no round
    trip is lost.
    """

    def __init__(self, timeout_s: float) -> None:
        self._open = threading.Event()
        self._led = False
        self._lock = threading.Lock()
        self._timeout_s = timeout_s

    def seen(self, request: Any) -> None:
        if "Authorization" in request.http_request.headers:
            self._open.set()

    def policy(self) -> ChallengeGatePolicy:
        """A per-call policy for one client's pipeline (a policy instance must not be shared:
        the pipeline links it to the next policy)."""
        return ChallengeGatePolicy(self)

    def send(self, next_send: Callable[[], Any]) -> Any:
        if not self._open.is_set():
            with self._lock:
                lead, self._led = not self._led, True
            if lead:
                try:
                    return next_send()
                finally:
                    self._open.set()
            self._open.wait(self._timeout_s)
        return next_send()


class ChallengeGatePolicy(HTTPPolicy):  # type: ignore[type-arg]
    """Runs a client's requests through its vault's `ChallengeGate` (before the SDK's auth policy)."""

    def __init__(self, gate: ChallengeGate) -> None:
        super().__init__()
        self.gate = gate

    def send(self, request: Any) -> Any:
        return self.gate.send(lambda: self.next.send(request))


class VaultPacer:
    """One vault's shared backoff: after a 429, no request to the vault goes out before its
    `Retry-After`, and fewer go out at once.

    Without it, every worker that was throttled sleeps and retries on its own, and the workers
    that were not yet throttled keep sending into an empty budget: each such request is a 429
    more.  With it, a 429 closes the vault to every attempt (first tries and retries, of every
    Key Vault client of this process) until its `Retry-After` has passed, and halves the number
    of requests the vault may have in flight (what is in flight when the budget runs out comes
    back 429).  The limit grows back by one per round of successful requests (additive increase,
    so it settles where the budget is used without overshooting), and is lifted altogether once
    it is back above what the store would send anyway.
    """

    def __init__(self, *, ceiling: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._ceiling = ceiling
        self._blocked_until = 0.0
        self._limit = float("inf")
        self._in_flight = 0
        self.throttled = 0

    def acquire(self) -> None:
        """Wait until a request may go out.

        Raises:
            WaitRefused: the vault is closed for longer than the caller's `waits_at_most`.
        """
        with self._cond:
            while True:
                wait = self._blocked_until - self._clock()
                if wait > 0:
                    limit = wait_limit()
                    if limit is not None and wait > limit.max_s:
                        limit.refuse(wait)
                        raise WaitRefused(wait, "the vault")
                    self._cond.wait(wait)
                elif self._in_flight >= self._limit:
                    self._cond.wait(1.0)
                else:
                    break
            self._in_flight += 1

    def release(self, status: int | None, retry_after: float | None) -> None:
        with self._cond:
            in_flight = self._in_flight
            self._in_flight -= 1
            if status == 429:
                self.throttled += 1
                self._limit = max(1.0, float(min(self._limit, in_flight) // 2))
                self._blocked_until = max(self._blocked_until, self._clock() + max(retry_after or 1.0, 0.0))
            elif status is not None and status < 400 and self._limit != float("inf"):
                self._limit += 1.0 / self._limit
                if self._limit >= self._ceiling:
                    self._limit = float("inf")
            self._cond.notify_all()


class VaultPacerPolicy(HTTPPolicy):  # type: ignore[type-arg]
    """Runs every attempt (a per-retry policy) of a Key Vault client through its vault's pacer."""

    def __init__(self, pacer: VaultPacer) -> None:
        super().__init__()
        self.pacer = pacer

    def send(self, request: Any) -> Any:
        from azure.core.pipeline.policies._utils import get_retry_after

        self.pacer.acquire()
        status: int | None = None
        retry_after: float | None = None
        try:
            response = self.next.send(request)
            status = response.http_response.status_code
            if status == 429:
                retry_after = get_retry_after(response)
            return response
        finally:
            self.pacer.release(status, retry_after)


_TRUST_CONTEXTS: dict[tuple[str, int, int], Any] = {}
_TRUST_LOCK = threading.Lock()


def _trust_context(location: str) -> Any:
    """A client SSL context that trusts the CA bundle (file or directory) at `location`.

    Parsing a bundle takes ~30 ms of CPU under the GIL (certifi's ~150 certificates), and every
    `AzureClients` (one per broker: per invocation, sync run or CLI command) would pay it again
    before its first request.  So contexts are shared by the whole process, keyed by the bundle's
    path, modification time and size: a bundle replaced on disk is loaded afresh.  An SSL context
    is safe to share between threads; verification settings are those urllib3 itself uses.
    """
    import ssl

    from urllib3.util.ssl_ import create_urllib3_context

    stat = os.stat(location)
    key = (location, stat.st_mtime_ns, stat.st_size)
    with _TRUST_LOCK:
        context = _TRUST_CONTEXTS.get(key)
        if context is None:
            context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
            if os.path.isdir(location):
                context.load_verify_locations(capath=location)
            else:
                context.load_verify_locations(cafile=location)
            _TRUST_CONTEXTS[key] = context
        return context


def _shared_trust_adapter(**kwargs: Any) -> Any:
    """A requests `HTTPAdapter` that parses each CA bundle once, not once per new connection.

    requests hands urllib3 the bundle's path (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE` or certifi),
    and urllib3 then loads the whole bundle into a new SSL context for every TLS connection: about
    10 ms of CPU under the GIL each.  A resolve opens up to `max_concurrent` connections per host
    at once, so a cold resolve spent most of its time there.  This adapter gives every pool one
    SSL context per bundle, loaded once; verification is unchanged (same bundle, certificate and
    hostname checked).  A client certificate or `verify=False` keeps requests' own behaviour.
    The contexts themselves are shared by every adapter of the process (`_trust_context`).
    """
    import ssl

    from requests.adapters import HTTPAdapter
    from requests.utils import DEFAULT_CA_BUNDLE_PATH

    class SharedTrustAdapter(HTTPAdapter):
        def __init__(self, **kw: Any) -> None:
            self._contexts: dict[str, ssl.SSLContext] = {}
            self._contexts_lock = threading.Lock()
            super().__init__(**kw)

        def _context(self, location: str) -> ssl.SSLContext:
            with self._contexts_lock:
                context = self._contexts.get(location)
                if context is None:
                    context = self._contexts[location] = _trust_context(location)
                return context

        def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
            if verify is False or cert is not None:
                return super().build_connection_pool_key_attributes(request, verify, cert)
            # verify=True here: a path would cost a stat() per request and is replaced anyway.
            host_params, pool_kwargs = super().build_connection_pool_key_attributes(request, True, cert)
            if host_params.get("scheme") != "https":
                return super().build_connection_pool_key_attributes(request, verify, cert)
            location = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = self._context(location)
            return host_params, pool_kwargs

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            if verify and cert is None and url[:5].lower() == "https" and self._owns(conn):
                # The bundle was checked when the context was built: no stat() per request.
                conn.cert_reqs = "CERT_REQUIRED"
                conn.ca_certs = None
                conn.ca_cert_dir = None
                return
            super().cert_verify(conn, url, verify, cert)
            # The pool's context already trusts the bundle; a path here would reload it per connection.
            if self._owns(conn):
                conn.ca_certs = None
                conn.ca_cert_dir = None

        def _owns(self, conn: Any) -> bool:
            context = getattr(conn, "conn_kw", {}).get("ssl_context")
            return context is not None and any(context is c for c in self._contexts.values())

    return SharedTrustAdapter(**kwargs)


def _environment_once_session() -> Any:
    """A requests `Session` that reads the environment once, not on every request.

    With `trust_env`, requests re-reads the proxy variables (twice: proxies and no_proxy), the CA
    bundle variables and looks for ~/.netrc on every request: a few hundred environment lookups
    and stat() calls, about a third of a Key Vault GET's client CPU, all under the GIL.  This
    session reads `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` when it is built and the proxy settings
    once per origin (scheme and host), honouring `no_proxy` as requests does.  It never reads
    ~/.netrc: every Azure call carries its own bearer token or SAS.  Environment changes made
    after the session was built apply to the next session (one per `AzureClients`).
    """
    import requests
    from requests.utils import get_environ_proxies

    class EnvironmentOnceSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self.trust_env = False
            self.ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            self._proxies_by_origin: dict[str, dict[str, str]] = {}

        def environment_proxies(self, url: str) -> dict[str, str]:
            """The environment's proxies for `url` (honouring no_proxy), read once per origin."""
            parts = urllib.parse.urlsplit(url)
            origin = f"{parts.scheme}://{parts.netloc}"
            found = self._proxies_by_origin.get(origin)
            if found is None:
                found = self._proxies_by_origin.setdefault(origin, get_environ_proxies(url, no_proxy=None))
            return found

        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
            if proxies is not None:
                found = get_environ_proxies(url, no_proxy=proxies["no_proxy"]) if proxies.get("no_proxy") else self.environment_proxies(url)
                for key, value in (found or {}).items():
                    proxies.setdefault(key, value)
            if (verify is True or verify is None) and self.ca_bundle:
                verify = self.ca_bundle
            return super().merge_environment_settings(url, proxies, stream, verify, cert)

    return EnvironmentOnceSession()


def _pooled_session(pool_size: int) -> Any:
    """The requests session under every client: environment read once, CA bundle parsed once,
    one pool of `pool_size` connections per host, no urllib3 retries (azure-core retries)."""
    session = _environment_once_session()
    adapter = _shared_trust_adapter(pool_connections=32, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


CONFIG_BLOB_CONNECT_S = 5.0
CONFIG_BLOB_READ_S = 10.0


def config_blob_client(account_url: str, container: str, blob: str, credential: Any) -> BlobClientLike:
    """The client of the blob holding the config (`$VAULTRELAY_CONFIG` as a blob URL).

    The config is read before there is a config, and so before there is an `AzureClients` (its
    cloud, pool size and retry budget come from the config).  This client gets the factory's
    transport (the same session setup: environment read once, CA bundle parsed once) over a
    session of its own, closed with the client.  The read is on a request's path: short timeouts
    and a few quick retries, then the config read earlier keeps serving.
    """
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobClient, LinearRetry

    transport = RequestsTransport(session=_pooled_session(1), session_owner=True,
                                  connection_timeout=CONFIG_BLOB_CONNECT_S, read_timeout=CONFIG_BLOB_READ_S)
    return BlobClient(account_url, container, blob, credential=credential, transport=transport,
                      retry_policy=LinearRetry(backoff=1, random_jitter_range=0, retry_total=2))


class CloudLike(Protocol):
    """What the client factory needs to know about the cloud it talks to."""

    @property
    def arm_endpoint(self) -> str: ...
    @property
    def arm_audience(self) -> str: ...
    @property
    def vault_dns_suffix(self) -> str: ...
    @property
    def storage_suffix(self) -> str: ...


@dataclass(frozen=True)
class _Key:
    kind: str
    endpoint: str
    credential_id: int


class AzureClients:
    """Builds and caches SDK clients for one cloud."""

    def __init__(self, cloud: CloudLike, *, retry: RetrySettings | None = None, pool_size: int = 16) -> None:
        self.cloud = cloud
        self.retry = retry or RetrySettings()
        self.pool_size = max(10, pool_size)
        self._clients: dict[_Key, Any] = {}
        self._lock = threading.Lock()
        self._session: Any = None
        self._pool: Any = None  # urllib3.PoolManager of the Key Vault clients' transport
        self._logged: set[int] = set()
        self._gates: dict[str, ChallengeGate] = {}
        self._pacers: dict[str, VaultPacer] = {}

    # ---- shared plumbing --------------------------------------------------------------------
    def _transport(self) -> Any:
        from azure.core.pipeline.transport import RequestsTransport

        with self._lock:
            if self._session is None:
                self._session = _pooled_session(self.pool_size)
        return RequestsTransport(session=self._session, session_owner=False)

    def _keyvault_transport(self) -> Any:
        """`core.azure.transport.Urllib3Transport` over this factory's urllib3 pool, falling back to the
        requests transport for what it does not handle (proxies, uploads, client certificates)."""
        from core.azure.transport import Urllib3Transport

        fallback = self._transport()  # builds the session: its CA bundle and proxy settings serve both
        with self._lock:
            if self._pool is None:
                import urllib3
                from requests.utils import DEFAULT_CA_BUNDLE_PATH

                self._pool = urllib3.PoolManager(num_pools=32, maxsize=self.pool_size, block=False, retries=False,
                                                 ssl_context=_trust_context(self._session.ca_bundle or DEFAULT_CA_BUNDLE_PATH))
            return Urllib3Transport(self._pool, fallback, self._session.environment_proxies)

    def transport(self) -> Any:
        """A transport over the shared connection pool (for vaultrelay's own pipelines)."""
        return self._transport()

    def https_context(self) -> Any:
        """The client SSL context of vaultrelay's own HTTPS requests (core.azure.bounded_http): the
        SDK clients' trust (`REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`, else certifi's bundle)."""
        from requests.utils import DEFAULT_CA_BUNDLE_PATH

        self._transport()  # builds the session, which reads the CA bundle settings once
        return _trust_context(self._session.ca_bundle or DEFAULT_CA_BUNDLE_PATH)

    def _common(self, credential: Any = None) -> dict[str, Any]:
        return {"transport": self._transport(), "retry_policy": self.retry.policy(), **self._logging(credential)}

    def _keyvault_common(self, kind: str, url: str, credential: Any) -> dict[str, Any]:
        # One gate per SDK package and vault: each Key Vault package keeps its own challenge cache.
        with self._lock:
            gate = self._gates.setdefault(f"{kind} {url.lower()}", ChallengeGate(self.retry.deadline_s))
            # One pacer per vault: the budget is the vault's, whatever the client or identity.
            pacer = self._pacers.setdefault(url.lower(), VaultPacer())
        options = self._common(credential)
        options["transport"] = self._keyvault_transport()
        options["per_call_policies"] = [gate.policy()]
        options["per_retry_policies"] = [*options.get("per_retry_policies", []), VaultPacerPolicy(pacer)]
        options["raw_request_hook"] = gate.seen
        return options

    def _storage_common(self, credential: Any = None) -> dict[str, Any]:
        # The storage SDKs have their own retry policies (secondary endpoints, storage error
        # codes); give them vaultrelay's budget instead of replacing them.  Their default waits
        # (blob: 15 s then 15 + 3^n s; tables: 0.8 x 2^n s up to 120 s) would hold one failing
        # call for minutes.
        return {"transport": self._transport(), "retry_total": self.retry.total, **self._logging(credential)}

    def _blob_options(self, credential: Any) -> dict[str, Any]:
        return {**self._storage_common(credential), "retry_policy": self.retry.storage_policy()}

    def _table_options(self, credential: Any) -> dict[str, Any]:
        options = self._storage_common(credential)
        options.update(retry_backoff_factor=self.retry.backoff_factor, retry_backoff_max=self.retry.backoff_max,
                       retry_status=self.retry.per_kind, retry_connect=self.retry.per_kind, retry_read=self.retry.per_kind)
        return options

    def log_requests_for(self, credential: Any) -> None:
        """`debug.log_requests`: clients built for `credential` log every request (no query, no body)."""
        self._logged.add(id(credential))

    def _logging(self, credential: Any) -> dict[str, Any]:
        if credential is not None and id(credential) in self._logged:
            return {"per_retry_policies": [RequestLogPolicy()]}
        return {}

    def _cached(self, kind: str, endpoint: str, credential: Any, build: Callable[[], _Client]) -> _Client:
        key = _Key(kind, endpoint.lower(), id(credential))
        client: _Client | None = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
            if client is None:
                client = build()
                with self._lock:
                    client = self._clients.setdefault(key, client)
        return client

    @property
    def _arm_scopes(self) -> list[str]:
        return [self.cloud.arm_audience.rstrip("/") + "/.default"]

    # ---- endpoints --------------------------------------------------------------------------
    def vault_url(self, vault: str) -> str:
        """`https://<vault>.<vault DNS suffix>`; a full https URL is taken as it is."""
        if vault.startswith("https://"):
            return vault.rstrip("/")
        return f"https://{vault}.{self.cloud.vault_dns_suffix}"

    def keyvault_scope(self, vault: str) -> str | None:
        """The token scope a vault's challenge will name (`https://<vault DNS suffix>/.default`),
        or None for a vault URL outside the cloud's vault domain (its challenge alone tells)."""
        netloc = urllib.parse.urlsplit(self.vault_url(vault)).netloc.lower()
        suffix = self.cloud.vault_dns_suffix.lower()
        return f"https://{suffix}/.default" if netloc.endswith("." + suffix) else None

    def storage_url(self, account: str, service: str) -> str:
        """`https://<account>.<service>.<suffix>`; a full https URL is taken as it is."""
        if account.startswith("https://"):
            return account.rstrip("/")
        return f"https://{account}.{service}.{self.cloud.storage_suffix}"

    def account_key_blob_service(self, account: str, key: str, *, retry_total: int) -> BlobServiceClientLike:
        """A blob service client signed with an account key, for one check call (verifying a new
        key, telling whether Shared Key is allowed); not cached, the key is its credential."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.storage_url(account, "blob"), credential={"account_name": account, "account_key": key},
                                 transport=self._transport(), retry_total=retry_total)

    def sas_blob_service(self, account: str, token: str) -> BlobServiceClientLike:
        """A blob service client signed with a SAS token, for verifying a token just minted."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.storage_url(account, "blob"), credential=token, transport=self._transport(), retry_total=1)

    def sas_table_client(self, account: str, table: str, token: str) -> TableClientLike:
        """A table client signed with a SAS token, for verifying a token just minted."""
        from azure.core.credentials import AzureSasCredential
        from azure.data.tables import TableClient

        return TableClient(self.storage_url(account, "table"), table, credential=AzureSasCredential(token), transport=self._transport())

    @staticmethod
    def short_retry() -> dict[str, Any]:
        """Per-call options for a call on a caller's path (the fetch audit's table writes): a short
        retry budget, better a quick 503 than the caller waiting out storage's long backoff.
        Passed to the calls of the same clients (azure-core's RetryPolicy reads them per operation)."""
        return {"retry_total": 2, "retry_backoff_factor": 0.2, "retry_backoff_max": 2}

    # ---- Key Vault --------------------------------------------------------------------------
    def secret_client(self, vault: str, credential: Any) -> SecretClientLike:
        url = self.vault_url(vault)

        def build() -> SecretClientLike:
            from azure.keyvault.secrets import SecretClient

            return SecretClient(url, credential, **self._keyvault_common("secrets", url, credential))

        return self._cached("secrets", url, credential, build)

    def certificate_client(self, vault: str, credential: Any) -> CertificateClientLike:
        url = self.vault_url(vault)

        def build() -> CertificateClientLike:
            from azure.keyvault.certificates import CertificateClient

            return CertificateClient(url, credential, **self._keyvault_common("certificates", url, credential))

        return self._cached("certificates", url, credential, build)

    def key_client(self, vault: str, credential: Any) -> KeyClientLike:
        url = self.vault_url(vault)

        def build() -> KeyClientLike:
            from azure.keyvault.keys import KeyClient

            return KeyClient(url, credential, **self._keyvault_common("keys", url, credential))

        return self._cached("keys", url, credential, build)

    # ---- ARM --------------------------------------------------------------------------------
    def storage_management(self, subscription_id: str, credential: Any) -> StorageManagementLike:
        def build() -> StorageManagementLike:
            from azure.mgmt.storage import StorageManagementClient

            return StorageManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(credential),
            )

        return self._cached("mgmt-storage", subscription_id, credential, build)

    def cosmos_management(self, subscription_id: str, credential: Any) -> CosmosManagementLike:
        def build() -> CosmosManagementLike:
            from azure.mgmt.cosmosdb import CosmosDBManagementClient

            return CosmosDBManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(credential),
            )

        return self._cached("mgmt-cosmos", subscription_id, credential, build)

    def web_management(self, subscription_id: str, credential: Any) -> WebManagementLike:
        def build() -> WebManagementLike:
            from azure.mgmt.web import WebSiteManagementClient

            return WebSiteManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(credential),
            )

        return self._cached("mgmt-web", subscription_id, credential, build)

    def container_apps(self, subscription_id: str, credential: Any) -> ContainerAppsManagementLike:
        def build() -> ContainerAppsManagementLike:
            from azure.mgmt.appcontainers import ContainerAppsAPIClient

            # A secrets-only PATCH completes in seconds; azure-core polls every 30 s unless the
            # answer's Retry-After says otherwise (and it reads Retry-After: 0 as "not given").
            return ContainerAppsAPIClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint, polling_interval=CONTAINER_APP_POLL_S,
                credential_scopes=self._arm_scopes, **self._common(credential),
            )

        return self._cached("mgmt-containerapps", subscription_id, credential, build)

    def sql_servers(self, subscription_id: str, credential: Any) -> SqlServers:
        """`core.azure.arm_sql.SqlServers` over an ARM pipeline (no SQL SDK: two REST calls).  No
        body-logging policy is in the pipeline: a PATCH body carries a password."""
        def build() -> SqlServers:
            from azure.core.pipeline import policies
            from azure.mgmt.core import ARMPipelineClient
            from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

            from core.azure.arm_sql import SqlServers

            common = self._common(credential)
            pipeline = [
                policies.RequestIdPolicy(), policies.HeadersPolicy(), policies.UserAgentPolicy(sdk_moniker="vaultrelay-sql"),
                policies.ProxyPolicy(), policies.ContentDecodePolicy(), policies.RedirectPolicy(), common["retry_policy"],
                ARMChallengeAuthenticationPolicy(credential, *self._arm_scopes), *common.get("per_retry_policies", []),
                ARMHttpLoggingPolicy(),
            ]
            client: PipelineClientLike = ARMPipelineClient(base_url=self.cloud.arm_endpoint, policies=pipeline, transport=common["transport"])
            return SqlServers(client, subscription_id)

        return self._cached("mgmt-sql", subscription_id, credential, build)

    # ---- Storage data plane -----------------------------------------------------------------
    def blob_service(self, account: str, credential: Any) -> BlobServiceClientLike:
        url = self.storage_url(account, "blob")

        def build() -> BlobServiceClientLike:
            from azure.storage.blob import BlobServiceClient

            return BlobServiceClient(url, credential=credential, **self._blob_options(credential))

        return self._cached("blob", url, credential, build)

    def table_service(self, account: str, credential: Any) -> TableServiceClientLike:
        url = self.storage_url(account, "table")

        def build() -> TableServiceClientLike:
            from azure.data.tables import TableServiceClient

            return TableServiceClient(endpoint=url, credential=credential, **self._table_options(credential))

        return self._cached("table", url, credential, build)

    def work_queue(self, service_url: str, name: str, credential: Any) -> StorageWorkQueue:
        """The work queue `name` and its `<name>-poison` at `service_url` (core.azure.queue), with
        base64 messages as the Functions queue extension expects them."""
        def build() -> StorageWorkQueue:
            from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

            from core.azure.queue import StorageWorkQueue

            def client(queue: str) -> QueueClientLike:
                return QueueClient(service_url, queue, credential=credential, message_encode_policy=TextBase64EncodePolicy(),
                                   message_decode_policy=TextBase64DecodePolicy(), **self._storage_common(credential))

            return StorageWorkQueue(client(name), client(f"{name}-poison"))

        return self._cached("queue", f"{service_url}/{name}", credential, build)

    def close(self) -> None:
        for client in list(self._clients.values()):
            close = getattr(client, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: S110 (closing is best effort)
                    pass
        self._clients.clear()
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._pool is not None:
            self._pool.clear()
            self._pool = None
