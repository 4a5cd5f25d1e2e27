"""What each `from:` kind declares: its config keys and checks, its planning, the permissions it
needs and its features (in the manner of dapr's declared component features).

The config model, the planner and the permissions matrix read these declarations; the sources
(core.sources.*, registered in core.sources.registry) take their features from here.  Everything
else asks a source or these declarations (`kind_of(ref).features.minted`) instead of switching on
kind names.  Light on purpose: no SDK, no config import (the config model imports this module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from core.names import COSMOS_ACCOUNT, GUID, STORAGE_ACCOUNT

_GUID_RE = re.compile(GUID)


@dataclass(frozen=True)
class Features:
    """What a kind's references do, declared rather than guessed from the kind's name."""

    # vaultrelay makes the value (a SAS, an access token): it is kept in the state vault between
    # runs and made again before it expires, never fetched by a plain resolve.
    minted: bool = False
    # references to one account share per-run calls (listKeys, the delegation key, Cosmos DB keys).
    shares_account_call: bool = False
    # the value is a Key Vault object (`vault` and `secret` params): Key Vault events name it.
    reads_keyvault: bool = False
    # `rotate:` applies: vaultrelay alternates the account's two keys.
    rotatable: bool = False
    # how vaultrelay renews a value of this kind before it expires (None: it does not).
    renewal: str | None = None
    # a newly minted value is checked with one authorized call before it is kept or pushed.
    verify_minted: bool = False


class PermissionGrants(Protocol):
    """What a kind's permission declaration may ask of the permissions matrix (core.permissions.matrix)."""

    def store_vault(self, store_name: str) -> str | None: ...
    def scope(self, store_name: str, kind: str, name: str, *, subscription: str | None = None,
              resource_group: str | None = None) -> Any: ...
    def container(self, account_scope: Any, account: str, container: str | None) -> Any: ...
    def add(self, store_name: str, scope: Any, capability: str, path: str, *, container: Any = None) -> None: ...
    def locate(self, store_name: str, scope: Any, capability: str, path: str) -> None: ...
    def note(self, text: str) -> None: ...
    def describe_identity(self, store_name: str) -> str: ...
    def writes_blobs(self, permissions: str) -> bool: ...


def _here(key: str, message: str) -> str:
    """A message for the config loader to place at `key` of the reference (its own line)."""
    return f"@.{key}@ {message}"


class ReferenceKind:
    """One `from:` kind: which keys a reference of it takes, its checks, its plan and its needs."""

    name: ClassVar[str]
    label: ClassVar[str]  # "a SAS reference"
    keys: ClassVar[frozenset[str]]  # every key a reference of this kind may set
    features: ClassVar[Features] = Features()
    located: ClassVar[bool] = False  # an ARM resource found by subscription / resource group

    @property
    def planned(self) -> tuple[str, ...]:
        """The source kinds (core.sources.registry) its references are planned as."""
        return (self.name,)

    def selects(self, ref: Any) -> bool:
        """Whether `ref` (a config Reference) is of this kind."""
        raise NotImplementedError

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        """(missing keys, problems placed with `_here`) of a reference of this kind."""
        return [], []

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        """(planned source kind, params, description) of a reference of this kind; no values."""
        raise NotImplementedError

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        """Add what the store's identity needs to read `ref` (at YAML `path`) to `grants`."""


class KeyVaultReferences(ReferenceKind):
    name = "keyvault"
    label = "a Key Vault reference"
    keys = frozenset({"store", "vault", "secret", "version", "type", "format", "subscription", "resource_group", "property", "decode", "encode"})
    features = Features(reads_keyvault=True)
    planned_kinds: ClassVar[dict[str, str]] = {"secret": "keyvault_secret", "certificate": "keyvault_certificate", "key": "keyvault_key"}

    @property
    def planned(self) -> tuple[str, ...]:
        return tuple(self.planned_kinds.values())

    def selects(self, ref: Any) -> bool:
        return ref.operation != "get_token" and ref.resource_type is None

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        problems: list[str] = []
        need = [k for k in ("secret",) if not ref.secret]
        fmt_ok: dict[str | None, set[str | None]] = {None: {None}, "secret": {None}, "certificate": {None, "pem", "pfx"}, "key": {None, "jwk", "pem"}}
        if ref.format not in fmt_ok[ref.type]:
            problems.append(_here("format", f"format: {ref.format} does not apply to type: {ref.type or 'secret'}"
                                  + (f" (use {' or '.join(sorted(f for f in fmt_ok[ref.type] if f))})" if ref.type in ("certificate", "key") else "")))
        if ref.property_ is not None and ref.type == "certificate" and ref.format == "pfx":
            problems.append(_here("property", "property reads a JSON document; a PFX certificate is not one"))
        return need, problems

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        vault = ref.vault or getattr(store_config, "vault_name", None)
        object_type = ref.type or "secret"
        params: dict[str, Any] = {"vault": vault, "secret": ref.secret, "version": ref.version}
        if object_type != "secret":
            params["format"] = ref.format or ("pem" if object_type == "certificate" else "jwk")
        return self.planned_kinds[object_type], params, f"keyvault {object_type} {vault}/{ref.secret}@{ref.version or 'latest'}"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        vault = ref.vault or grants.store_vault(ref.store) or ""
        capability = "source:" + self.planned_kinds[ref.type or "secret"]
        grants.add(ref.store, grants.scope(ref.store, "vault", vault, subscription=ref.subscription), capability, path)


def _account_problems(ref: Any, pattern: str, what: str, rule: str) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    need = [k for k in ("account",) if not ref.account]
    if ref.account and not re.fullmatch(pattern, ref.account):
        problems.append(_here("account", f"account '{ref.account}' is not a valid {what} account name ({rule})"))
    return need, problems


def _rotate_problems(ref: Any) -> list[str]:
    if ref.rotate is not None and ref.key != "active":
        return [_here("rotate", "rotate needs key: active (vaultrelay alternates the two keys and publishes the active one)")]
    return []


def _where(ref: Any) -> dict[str, Any]:
    return {"subscription": ref.subscription, "resource_group": ref.resource_group}


class StorageKeyReferences(ReferenceKind):
    name = "storage_key"
    label = "a storage key reference"
    keys = frozenset({"store", "resource_type", "account", "key", "subscription", "resource_group", "rotate"})
    features = Features(shares_account_call=True, rotatable=True)
    located = True

    def selects(self, ref: Any) -> bool:
        return ref.operation != "get_token" and ref.resource_type == "storage" and ref.operation != "generate_sas"

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        need, problems = _account_problems(ref, STORAGE_ACCOUNT, "storage", "3-24 lowercase letters and digits")
        if ref.key not in (None, "key1", "key2", "active"):
            problems.append(_here("key", f"key: {ref.key} is not a storage key (use key1, key2 or active)"))
        return need, problems + _rotate_problems(ref)

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        params = {"account": ref.account, "key": ref.key or "key1", **_where(ref)}
        return "storage_key", params, f"storage key {ref.account}/{params['key']}"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        scope = grants.scope(ref.store, "storage", ref.account or "", subscription=ref.subscription, resource_group=ref.resource_group)
        grants.add(ref.store, scope, "source:storage_key", path)
        if ref.rotate is not None:
            grants.add(ref.store, scope, "rotate:storage_key", path)
        grants.locate(ref.store, scope, "locate:storage", path)


SAS_DEFAULTS = {"https_only": True}


class SasReferences(ReferenceKind):
    name = "sas"
    label = "a SAS reference"
    keys = frozenset({"store", "resource_type", "account", "operation", "permissions", "expiry", "sas_type", "services",
                      "resource_types", "container", "blob", "table", "ip", "https_only", "subscription", "resource_group", "rotate_before"})
    features = Features(minted=True, shares_account_call=True, renewal="minted again before it expires", verify_minted=True)
    located = True

    def selects(self, ref: Any) -> bool:
        return ref.operation == "generate_sas" and ref.resource_type == "storage"

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        need, problems = _account_problems(ref, STORAGE_ACCOUNT, "storage", "3-24 lowercase letters and digits")
        need = need + [k for k in ("permissions", "expiry") if getattr(ref, k) is None]
        return need, problems + _sas_problems(ref) + _rotate_problems(ref)

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        params = {
            "account": ref.account, "sas_type": ref.effective_sas_type, "permissions": ref.permissions, "expiry_s": ref.expiry,
            "services": ref.services, "resource_types": ref.resource_types, "container": ref.container, "blob": ref.blob,
            "table": ref.table, "ip": ref.ip, "https_only": SAS_DEFAULTS["https_only"] if ref.https_only is None else ref.https_only,
            "rotate_before_s": ref.rotate_before, **_where(ref),
        }
        scope = "/".join(p for p in (ref.container, ref.blob, ref.table) if p)
        return "sas", params, f"{params['sas_type'].replace('_', ' ')} SAS {ref.account}{'/' + scope if scope else ''} ({ref.permissions})"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        account = ref.account or ""
        scope = grants.scope(ref.store, "storage", account, subscription=ref.subscription, resource_group=ref.resource_group)
        if ref.effective_sas_type == "user_delegation":
            # The delegation key is an account action, the data role belongs on the container
            # (a user delegation SAS grants at most what its signer may do there).
            write = grants.writes_blobs(ref.permissions or "")
            grants.add(ref.store, scope, "source:sas_user_delegation_write" if write else "source:sas_user_delegation_read", path,
                       container=grants.container(scope, account, ref.container))
            return
        grants.add(ref.store, scope, "source:sas_service" if ref.effective_sas_type == "service" else "source:sas_account", path)
        if ref.rotate is not None:
            grants.add(ref.store, scope, "rotate:storage_key", path)
        grants.locate(ref.store, scope, "locate:storage", path)


def _sas_problems(ref: Any) -> list[str]:
    problems: list[str] = []
    if ref.expiry is not None and ref.expiry <= 0:
        problems.append(_here("expiry", "expiry must be longer than 0 (a SAS minted with it would already be expired), e.g. 1h, 24h, 7d"))
    if ref.rotate_before is not None and ref.expiry is not None and ref.rotate_before >= ref.expiry:
        problems.append(_here("rotate_before", "rotate_before must be shorter than expiry"))
    sas_type = ref.effective_sas_type
    scope = [k for k in ("container", "blob", "table") if getattr(ref, k)]
    if ref.blob and not ref.container:
        problems.append(_here("blob", "blob needs container"))
    if ref.table and (ref.container or ref.blob):
        problems.append(_here("table", "table cannot be combined with container/blob"))
    if sas_type == "account":
        if scope:
            problems.append(_here(scope[0], f"an account SAS is account-wide; {scope[0]} needs sas_type: service or user_delegation"))
        letters = "rwdxylacuptfi"
    else:
        if ref.services or ref.resource_types:
            problems.append(_here("services" if ref.services else "resource_types", "services/resource_types apply to sas_type: account only"))
        if sas_type == "user_delegation":
            if not ref.container:
                problems.append(_here("sas_type", "a user delegation SAS is a Blob SAS: it needs container (and optionally blob)"))
            letters = "racwdxltmeop"
        else:
            if not scope:
                problems.append(_here("sas_type", "a service SAS needs container (optionally blob) or table"))
            letters = "raud" if ref.table else "racwdxltmeop"
    if ref.permissions is not None:
        bad = sorted(set(ref.permissions) - set(letters))
        if bad or not ref.permissions:
            label = sas_type.replace("_", " ")
            article = "an" if label.startswith("account") else "a"
            problems.append(_here("permissions", f"permissions '{ref.permissions}' contains {''.join(bad) or 'nothing'}: "
                                                 f"allowed letters for {article} {label} SAS are '{letters}'"))
    return problems


class CosmosReferences(ReferenceKind):
    name = "cosmos"
    label = "a cosmosdb reference"
    keys = frozenset({"store", "resource_type", "account", "key", "format", "subscription", "resource_group", "rotate"})
    features = Features(shares_account_call=True, rotatable=True)
    located = True

    def selects(self, ref: Any) -> bool:
        return ref.operation != "get_token" and ref.resource_type == "cosmosdb"

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        need, problems = _account_problems(ref, COSMOS_ACCOUNT, "Cosmos DB", "3-44 lowercase letters, digits and hyphens")
        if ref.key in ("key1", "key2"):
            problems.append(_here("key", f"key: {ref.key} is not a Cosmos DB key (use primary, secondary, primary_readonly, secondary_readonly or active)"))
        if ref.format not in (None, "key", "connection_string"):
            problems.append(_here("format", "format must be key or connection_string for cosmosdb"))
        return need, problems + _rotate_problems(ref)

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        params = {"account": ref.account, "key": ref.key or "primary", "format": "connection_string" if ref.format == "connection_string" else "key",
                  **_where(ref)}
        return "cosmos", params, f"cosmosdb {'connection string' if params['format'] == 'connection_string' else 'key'} {ref.account}/{params['key']}"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        scope = grants.scope(ref.store, "cosmos", ref.account or "", subscription=ref.subscription, resource_group=ref.resource_group)
        if ref.format == "connection_string":
            capability = "source:cosmos_connection_string"
        elif (ref.key or "").endswith("_readonly"):
            capability = "source:cosmos_readonly_key"
        else:
            capability = "source:cosmos_key"
        grants.add(ref.store, scope, capability, path)
        if ref.rotate is not None:
            grants.add(ref.store, scope, "rotate:cosmos_key", path)
        grants.locate(ref.store, scope, "locate:cosmos", path)


class SqlReferences(ReferenceKind):
    name = "sql"
    label = "a sql reference"
    keys = frozenset({"store", "resource_type", "server", "database", "format"})

    def selects(self, ref: Any) -> bool:
        return ref.operation != "get_token" and ref.resource_type == "sql"

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        problems: list[str] = []
        need = [k for k in ("server", "database") if not getattr(ref, k)]
        if ref.format not in (None, "connection_string", "ado", "odbc", "jdbc"):
            problems.append(_here("format", "format must be connection_string (ADO.NET), ado, odbc or jdbc for sql"))
        return need, problems

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        fmt = "ado" if ref.format in (None, "connection_string") else ref.format
        return "sql", {"server": ref.server, "database": ref.database, "format": fmt}, f"sql {fmt} connection string {ref.server}/{ref.database}"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        grants.note(f"{grants.describe_identity(ref.store)} needs a contained database user in {ref.server}/{ref.database} "
                    f"(CREATE USER [<identity name>] FROM EXTERNAL PROVIDER, plus database roles); Azure RBAC does not grant it ({path})")


class TokenReferences(ReferenceKind):
    name = "token"
    label = "a get_token reference"
    keys = frozenset({"store", "operation", "resource", "scope"})
    features = Features(minted=True, renewal="fetched again before it expires")

    def selects(self, ref: Any) -> bool:
        return bool(ref.operation == "get_token")

    def check(self, ref: Any) -> tuple[list[str], list[str]]:
        problems: list[str] = []
        if bool(ref.resource) == bool(ref.scope):
            problems.append("get_token needs exactly one of resource or scope")
        target = ref.resource or ref.scope or ""
        if target and not target.startswith(("https://", "api://")) and not _GUID_RE.match(target.split("/")[0]):
            problems.append(_here("resource" if ref.resource else "scope", "resource/scope must be an https:// or api:// URI or an application id"))
        return [], problems

    def plan(self, ref: Any, store_config: Any) -> tuple[str, dict[str, Any], str]:
        return "token", {"resource": ref.resource, "scope": ref.scope}, f"token for {ref.resource or ref.scope}"

    def permissions(self, ref: Any, path: str, grants: PermissionGrants) -> None:
        grants.note(f"{grants.describe_identity(ref.store)} gets tokens for {ref.resource or ref.scope}: whatever that resource "
                    f"authorizes (app roles, API permissions) is granted there, not by Azure RBAC ({path})")


KEYVAULT = KeyVaultReferences()
STORAGE_KEY = StorageKeyReferences()
SAS = SasReferences()
COSMOS = CosmosReferences()
SQL = SqlReferences()
TOKEN = TokenReferences()

# In the order a reference is matched: the first kind that selects it is its kind.
REFERENCE_KINDS: tuple[ReferenceKind, ...] = (TOKEN, SAS, STORAGE_KEY, SQL, COSMOS, KEYVAULT)
_BY_NAME = {k.name: k for k in REFERENCE_KINDS}
if len(_BY_NAME) != len(REFERENCE_KINDS):
    raise ValueError("two reference kinds share a name")


def kind_of(ref: Any) -> ReferenceKind:
    """The declaration of config Reference `ref`'s kind (`resource_type` / `operation` / vault)."""
    return next(k for k in REFERENCE_KINDS if k.selects(ref))


def reference_kind(name: str) -> ReferenceKind:
    """The declaration named `name`.

    Raises:
        KeyError: no such kind.
    """
    return _BY_NAME[name]
