"""A small builder for vaultrelay configs in tests: dictionaries in, YAML text out.

Tests used to type the same YAML inline again and again; these helpers write the repeated parts
(references, targets, the state block) once.  What a test cares about stays visible at the call:
`secret_ref("alpha-1234")`, `keyvault_target("app", prefix="vr-1234-")`.
"""

from __future__ import annotations

from typing import Any

import yaml


def secret_ref(secret: str, *, vault: str = "kv-source", store: str = "azure", **extra: Any) -> dict[str, Any]:
    """`{from: {store, vault, secret, ...}}`: a Key Vault reference."""
    return {"from": {"store": store, "vault": vault, "secret": secret, **extra}}


def ref(store: str = "azure", **fields: Any) -> dict[str, Any]:
    """`{from: {store, ...fields}}`: a reference of any kind."""
    return {"from": {"store": store, **fields}}


def keyvault_target(env: str, *, vault: str = "kv-target", store: str = "azure", **extra: Any) -> dict[str, Any]:
    return {"type": "keyvault", "env": env, "store": store, "vault": vault, **extra}


def blob_target(env: str, blob: str, *, account: str = "sandboxdata", container: str = "bundles", store: str = "azure",
                **extra: Any) -> dict[str, Any]:
    return {"type": "blob", "env": env, "store": store, "account": account, "container": container, "blob": blob, **extra}


def app_settings_target(env: str, *, site: str = "sandbox-web", store: str = "azure", **extra: Any) -> dict[str, Any]:
    return {"type": "app_settings", "env": env, "store": store, "site": site, **extra}


def container_app_target(env: str, app: str, *, store: str = "azure", **extra: Any) -> dict[str, Any]:
    return {"type": "container_app", "env": env, "store": store, "app": app, **extra}


def webhook_target(env: str, url: str, *, signing_key: str = "signing-key-0123456789", **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "env": env, "url": url, "signing_key": signing_key, **extra}


def state_block(table_prefix: str, *, store: str = "azure", account: str = "sandboxstore", vault: str = "kv-state") -> dict[str, Any]:
    """The state block every sandbox test uses (the state vault is never a target's)."""
    return {"store": store, "account": account, "vault": vault, "table_prefix": table_prefix}


def config_yaml(*, envs: dict[str, Any] | None = None, targets: dict[str, Any] | None = None,
                stores: dict[str, Any] | None = None, state: dict[str, Any] | None = None, **extra: Any) -> str:
    """A whole config as YAML text (`stores` defaults to one managed-identity store `azure`)."""
    document: dict[str, Any] = {"version": 1, "secretStores": stores or {"azure": {"type": "azure.managed_identity"}}}
    if state is not None:
        document["state"] = state
    if envs is not None:
        document["envs"] = envs
    if targets is not None:
        document["targets"] = targets
    document.update(extra)
    return yaml.safe_dump(document, sort_keys=False)


def body_yaml(*, envs: dict[str, Any] | None = None, targets: dict[str, Any] | None = None, **extra: Any) -> str:
    """The part of a config below `state:` (what `World.engine` takes)."""
    document: dict[str, Any] = {}
    if envs is not None:
        document["envs"] = envs
    if targets is not None:
        document["targets"] = targets
    document.update(extra)
    return yaml.safe_dump(document, sort_keys=False)


def identity_block(sandbox: Any, identity: str, selector: str = "client_id") -> dict[str, Any]:
    """A store's `identity:` for the sandbox identity `identity` ("system", or a user-assigned
    identity named by `selector`: client_id, object_id or resource_id)."""
    if identity == "system":
        return {"type": "system_assigned"}
    return {"type": "user_assigned", selector: getattr(sandbox.identities[identity], selector)}


def mi_store(identity: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A store of type `azure.managed_identity` (with `identity:` when given, then `extra`)."""
    store: dict[str, Any] = {"type": "azure.managed_identity"}
    if identity is not None:
        store["identity"] = identity
    return {**store, **extra}
