"""From a validated config to planned references (no network, no values).

Pure: no clients, no credentials, no values (the connections to the stores live in
`core.connections`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from core.compose import Composition, dependencies
from core.config import LoadedConfig, Reference
from core.errors import NotFoundError
from core.sources.base import PlannedRef

log = logging.getLogger("vaultrelay.plan")

SAS_DEFAULTS = {"https_only": True}


@dataclass(frozen=True)
class EnvPlan:
    """What resolving an env involves: literals (not secret) and references."""

    env: str
    literals: dict[str, str]
    refs: list[PlannedRef]
    stores: dict[str, str] = field(default_factory=dict)  # store -> identity description
    composed: dict[str, Composition] = field(default_factory=dict)  # variables written as templates (core.compose)


def plan_reference(name: str, path: str, ref: Reference, store_config: Any) -> PlannedRef:
    """The normalized, hashable form of one `from:` block."""
    kind = ref.kind
    params: dict[str, Any]
    if kind == "keyvault":
        vault = ref.vault or getattr(store_config, "vault_name", None)
        object_type = ref.type or "secret"
        kind = {"secret": "keyvault_secret", "certificate": "keyvault_certificate", "key": "keyvault_key"}[object_type]
        params = {"vault": vault, "secret": ref.secret, "version": ref.version}
        if object_type != "secret":
            params["format"] = ref.format or ("pem" if object_type == "certificate" else "jwk")
        description = f"keyvault {object_type} {vault}/{ref.secret}@{ref.version or 'latest'}"
    elif kind == "storage_key":
        params = {"account": ref.account, "key": ref.key or "key1"}
        description = f"storage key {ref.account}/{params['key']}"
    elif kind == "sas":
        params = {
            "account": ref.account, "sas_type": ref.effective_sas_type, "permissions": ref.permissions, "expiry_s": ref.expiry,
            "services": ref.services, "resource_types": ref.resource_types, "container": ref.container, "blob": ref.blob,
            "table": ref.table, "ip": ref.ip, "https_only": SAS_DEFAULTS["https_only"] if ref.https_only is None else ref.https_only,
            "rotate_before_s": ref.rotate_before,
        }
        scope = "/".join(p for p in (ref.container, ref.blob, ref.table) if p)
        description = f"{params['sas_type'].replace('_', ' ')} SAS {ref.account}{'/' + scope if scope else ''} ({ref.permissions})"
    elif kind == "cosmos":
        params = {"account": ref.account, "key": ref.key or "primary", "format": "connection_string" if ref.format == "connection_string" else "key"}
        description = f"cosmosdb {'connection string' if params['format'] == 'connection_string' else 'key'} {ref.account}/{params['key']}"
    elif kind == "sql":
        fmt = "ado" if ref.format in (None, "connection_string") else ref.format
        params = {"server": ref.server, "database": ref.database, "format": fmt}
        description = f"sql {fmt} connection string {ref.server}/{ref.database}"
    else:
        params = {"resource": ref.resource, "scope": ref.scope}
        description = f"token for {ref.resource or ref.scope}"
    if kind in ("storage_key", "sas", "cosmos"):
        params["subscription"] = ref.subscription
        params["resource_group"] = ref.resource_group
    clean = tuple(sorted((k, v) for k, v in params.items() if v is not None))
    # Transforms shape one variable's value; the fetch (and its deduplication) is the source's.
    transforms = tuple((k, v) for k, v in (("decode", ref.decode), ("property", ref.property_), ("encode", ref.encode)) if v is not None)
    if transforms:
        description += " | " + " | ".join(f"{k} {v}" for k, v in transforms)
    return PlannedRef(name=name, path=path, store=ref.store, kind=kind, params=clean, description=description, transforms=transforms)


def plan_env(loaded: LoadedConfig, env: str) -> EnvPlan:
    """The plan of `env`.

    Raises:
        NotFoundError: no such env.
    """
    config = loaded.config
    if env not in config.envs:
        raise NotFoundError(f"no env '{env}' in {loaded.file} (envs: {', '.join(sorted(config.envs)) or 'none'})")
    literals: dict[str, str] = {}
    refs: list[PlannedRef] = []
    composed: dict[str, Composition] = {}
    for name, variable in config.envs[env].items():
        if variable.template is not None:
            composed[name] = Composition(name, f"envs.{env}.{name}.template", variable.template,
                                         tuple(sorted(dependencies(variable.template))))
        elif variable.from_ is None:
            assert variable.value is not None
            literals[name] = variable.value
        else:
            refs.append(plan_reference(name, f"envs.{env}.{name}.from", variable.from_, config.secretStores[variable.from_.store]))
    return EnvPlan(env=env, literals=literals, refs=refs, composed=composed)
