"""The one factory of Azure SDK clients.

Clients are built from a credential passed in (never built here), cached per (kind, endpoint,
credential) and share one HTTP connection pool sized for the configured concurrency.  SDK
modules are imported on first use so that importing vaultrelay stays cheap (Functions cold
starts pay for every import).  Every client gets vaultrelay's retry policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core.retry import RetrySettings


class CloudLike(Protocol):
    """What the client factory needs to know about the cloud it talks to."""

    arm_endpoint: str
    arm_audience: str
    vault_dns_suffix: str
    storage_suffix: str


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

    # ---- shared plumbing --------------------------------------------------------------------
    def _transport(self) -> Any:
        from azure.core.pipeline.transport import RequestsTransport

        with self._lock:
            if self._session is None:
                import requests
                from requests.adapters import HTTPAdapter

                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=32, pool_maxsize=self.pool_size, max_retries=0)
                session.mount("https://", adapter)
                session.mount("http://", adapter)
                self._session = session
        return RequestsTransport(session=self._session, session_owner=False)

    def _common(self) -> dict[str, Any]:
        return {"transport": self._transport(), "retry_policy": self.retry.policy()}

    def _storage_common(self) -> dict[str, Any]:
        # The storage SDKs have their own retry policy (secondary endpoints, storage error
        # codes); give it vaultrelay's budget instead of replacing it.
        return {"transport": self._transport(), "retry_total": self.retry.total}

    def _cached(self, kind: str, endpoint: str, credential: Any, build: Callable[[], Any]) -> Any:
        key = _Key(kind, endpoint.lower(), id(credential))
        client = self._clients.get(key)
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

    def storage_url(self, account: str, service: str) -> str:
        return f"https://{account}.{service}.{self.cloud.storage_suffix}"

    # ---- Key Vault --------------------------------------------------------------------------
    def secret_client(self, vault: str, credential: Any) -> Any:
        url = self.vault_url(vault)

        def build() -> Any:
            from azure.keyvault.secrets import SecretClient

            return SecretClient(url, credential, **self._common())

        return self._cached("secrets", url, credential, build)

    def certificate_client(self, vault: str, credential: Any) -> Any:
        url = self.vault_url(vault)

        def build() -> Any:
            from azure.keyvault.certificates import CertificateClient

            return CertificateClient(url, credential, **self._common())

        return self._cached("certificates", url, credential, build)

    def key_client(self, vault: str, credential: Any) -> Any:
        url = self.vault_url(vault)

        def build() -> Any:
            from azure.keyvault.keys import KeyClient

            return KeyClient(url, credential, **self._common())

        return self._cached("keys", url, credential, build)

    # ---- ARM --------------------------------------------------------------------------------
    def storage_management(self, subscription_id: str, credential: Any) -> Any:
        def build() -> Any:
            from azure.mgmt.storage import StorageManagementClient

            return StorageManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(),
            )

        return self._cached("mgmt-storage", subscription_id, credential, build)

    def cosmos_management(self, subscription_id: str, credential: Any) -> Any:
        def build() -> Any:
            from azure.mgmt.cosmosdb import CosmosDBManagementClient

            return CosmosDBManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(),
            )

        return self._cached("mgmt-cosmos", subscription_id, credential, build)

    def web_management(self, subscription_id: str, credential: Any) -> Any:
        def build() -> Any:
            from azure.mgmt.web import WebSiteManagementClient

            return WebSiteManagementClient(
                credential, subscription_id, base_url=self.cloud.arm_endpoint,
                credential_scopes=self._arm_scopes, **self._common(),
            )

        return self._cached("mgmt-web", subscription_id, credential, build)

    # ---- Storage data plane -----------------------------------------------------------------
    def blob_service(self, account: str, credential: Any) -> Any:
        url = self.storage_url(account, "blob")

        def build() -> Any:
            from azure.storage.blob import BlobServiceClient

            return BlobServiceClient(url, credential=credential, **self._storage_common())

        return self._cached("blob", url, credential, build)

    def table_service(self, account: str, credential: Any) -> Any:
        url = self.storage_url(account, "table")

        def build() -> Any:
            from azure.data.tables import TableServiceClient

            return TableServiceClient(endpoint=url, credential=credential, **self._storage_common())

        return self._cached("table", url, credential, build)

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
