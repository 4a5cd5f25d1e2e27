"""Use case: readiness (`GET /api/health?deep=1`).  Ready when the config loads (a blob config
that cannot be re-read leaves the last good version serving, but not ready), callers can be
authenticated in the config's `api.auth_mode`, and every store's identity gets a token for each
audience the config needs from it.  The detail (config source, stores, audiences, what failed) is
for admins; the HTTP edge shows anonymous callers only `{"status": ...}`.  Never tokens or values.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from core.runtime import Runtime

log = logging.getLogger("vaultrelay.api")


def readiness(runtime: Runtime, source_status: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(ready, detail) of `runtime`; `source_status` is the config source's health
    (core.runtime.LiveRuntime.source_status)."""
    connections = runtime.connections
    stores: dict[str, Any] = {}
    ready = True
    for store, scopes in sorted(store_scopes(connections).items()):
        checks: dict[str, str] = {}
        try:
            credential = connections.store(store).credential
        except Exception as exc:  # an unusable store makes the app not ready
            log.warning("readiness: store %s has no usable credential: %s", store, exc)
            stores[store] = {"ok": False, "error": "no usable credential"}
            ready = False
            continue
        for scope in sorted(scopes):
            try:
                credential.get_token(scope)
                checks[scope] = "ok"
            except Exception as exc:  # reported by kind only
                log.warning("readiness: store %s cannot get a token for %s: %s", store, scope, type(exc).__name__)
                checks[scope] = token_failure(exc)
        ok = all(v == "ok" for v in checks.values())
        ready = ready and ok
        stores[store] = {"ok": ok, "scopes": checks}
    ready = ready and bool(source_status.get("ok"))
    # A mode that can authenticate no one (App Service Authentication off, no tenant or
    # audience) makes every request answer 503: not ready either.
    authenticator = runtime.authenticator()
    auth: dict[str, Any] = {"mode": authenticator.mode, "ok": authenticator.problem is None}
    if authenticator.problem:
        auth["problem"] = authenticator.problem
        ready = False
    return ready, {
        "status": "ok" if ready else "unavailable", "config": "ok" if source_status.get("ok") else "stale",
        "config_source": dict(source_status), "stores": stores, "auth": auth,
    }


def store_scopes(broker: Any) -> dict[str, set[str]]:
    """Store -> the token scopes it needs: for every env's references, the targets it writes and
    the state it keeps."""
    from core.sources.base import STORAGE_SCOPE
    from core.sources.registry import sources

    loaded, cloud = broker.loaded, broker.cloud
    vault_scope = f"https://{cloud.vault_dns_suffix}/.default"
    arm_scope = cloud.arm_scope
    storage_scope = STORAGE_SCOPE
    needs: dict[str, set[str]] = {}
    for env in loaded.config.envs:
        for ref in broker.env_plan(env).refs:
            needs.setdefault(ref.store, set()).update(sources().get(ref.kind).token_scopes(ref, cloud))
    config = loaded.config
    for target in config.targets.values():
        store = getattr(target, "store", None)
        if store is not None:
            scope = {"keyvault": vault_scope, "blob": storage_scope, "app_settings": arm_scope}.get(target.type)
            if scope:
                needs.setdefault(store, set()).add(scope)
    if config.state is not None:
        needs.setdefault(config.state.store, set()).add(storage_scope)
        if config.state.vault:
            needs[config.state.store].add(vault_scope)
    return needs


def token_failure(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Authentication" in name or "Credential" in name:
        return "identity"
    if "Service" in name or isinstance(exc, OSError):
        return "network"
    return "error"
