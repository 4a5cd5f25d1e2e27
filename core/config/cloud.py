"""Azure clouds: the named ones and custom endpoints (sovereign clouds, a local Azure).

The cloud comes from the config's `cloud:`; without one, from `VAULTRELAY_CLOUD` (a cloud name,
or `custom` with the `VAULTRELAY_*` endpoint variables), else AzureCloud.  So one config file runs
unchanged wherever the environment says which cloud it is in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from core.config.model import Cloud
from core.errors import ConfigError, ConfigProblem


@dataclass(frozen=True)
class CloudEndpoints:
    name: str
    authority: str
    arm_endpoint: str
    arm_audience: str
    vault_dns_suffix: str
    storage_suffix: str
    cosmos_suffix: str
    sql_suffix: str

    @property
    def arm_scope(self) -> str:
        return self.arm_audience.rstrip("/") + "/.default"

    @property
    def is_public(self) -> bool:
        return self.name != "custom"


NAMED_CLOUDS = {
    "AzureCloud": CloudEndpoints(
        "AzureCloud", "https://login.microsoftonline.com", "https://management.azure.com", "https://management.azure.com/",
        "vault.azure.net", "core.windows.net", "documents.azure.com", "database.windows.net"),
    "AzureChinaCloud": CloudEndpoints(
        "AzureChinaCloud", "https://login.chinacloudapi.cn", "https://management.chinacloudapi.cn", "https://management.chinacloudapi.cn/",
        "vault.azure.cn", "core.chinacloudapi.cn", "documents.azure.cn", "database.chinacloudapi.cn"),
    "AzureUSGovernment": CloudEndpoints(
        "AzureUSGovernment", "https://login.microsoftonline.us", "https://management.usgovcloudapi.net", "https://management.usgovcloudapi.net/",
        "vault.usgovcloudapi.net", "core.usgovcloudapi.net", "documents.azure.us", "database.usgovcloudapi.net"),
}

_ENV_KEYS = {
    "authority": "VAULTRELAY_AUTHORITY_HOST", "arm_endpoint": "VAULTRELAY_ARM_ENDPOINT", "arm_audience": "VAULTRELAY_ARM_AUDIENCE",
    "vault_dns_suffix": "VAULTRELAY_VAULT_DNS_SUFFIX", "storage_suffix": "VAULTRELAY_STORAGE_SUFFIX",
    "cosmos_suffix": "VAULTRELAY_COSMOS_SUFFIX", "sql_suffix": "VAULTRELAY_SQL_SUFFIX",
}


def resolve_cloud(cloud: Cloud | None, environ: Mapping[str, str] | None = None) -> CloudEndpoints:
    """The endpoints of the config's cloud, or of the environment's.

    Raises:
        ConfigError: VAULTRELAY_CLOUD names an unknown cloud or a custom cloud lacks endpoints.
    """
    environ = os.environ if environ is None else environ
    if cloud is None:
        name = environ.get("VAULTRELAY_CLOUD") or "AzureCloud"
        if name == "custom":
            values = {k: environ.get(v) for k, v in _ENV_KEYS.items()}
            try:
                cloud = Cloud.model_validate({"name": "custom", **{k: v for k, v in values.items() if v}})
            except ValueError as exc:
                raise ConfigError([ConfigProblem("environment", None, "VAULTRELAY_CLOUD",
                                                 f"custom cloud from VAULTRELAY_* variables is incomplete: {_first(exc)}")]) from None
        elif name in NAMED_CLOUDS:
            return NAMED_CLOUDS[name]
        else:
            raise ConfigError([ConfigProblem("environment", None, "VAULTRELAY_CLOUD",
                                             f"unknown cloud '{name}' (expected {', '.join(NAMED_CLOUDS)} or custom)")])
    if cloud.name != "custom":
        return NAMED_CLOUDS[cloud.name]
    assert cloud.authority and cloud.arm_endpoint and cloud.vault_dns_suffix and cloud.storage_suffix
    return CloudEndpoints(
        "custom", cloud.authority.rstrip("/"), cloud.arm_endpoint.rstrip("/"), cloud.arm_audience or "https://management.azure.com/",
        cloud.vault_dns_suffix.strip("."), cloud.storage_suffix.strip("."),
        cloud.cosmos_suffix or f"documents.{cloud.storage_suffix.strip('.')}", cloud.sql_suffix or "database.windows.net",
    )


def _first(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in errors())
    return str(exc)
