"""The typed config: the dsops `azure.managed_identity` format, as vaultrelay implements it.

Every model forbids unknown keys (the loader turns those into "did you mean" errors).  Field
descriptions end up in the shipped JSON Schema, so editors show them.  Values are validated here;
whether the referenced objects exist is a run-time question.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from core.config.durations import parse_duration
from core.names import GUID, STORAGE_ACCOUNT
from core.ownership import MANAGED_BY
from core.sources.kinds import Features, ReferenceKind, kind_of

_GUID_RE = re.compile(GUID)
_IDENTITY_RESOURCE_ID = re.compile(
    r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.managedidentity/userassignedidentities/[^/]+$",
    re.IGNORECASE,
)
VAULT_NAME = r"^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$"
SECRET_NAME = r"^[0-9a-zA-Z-]{1,127}$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# Duration, written as a number or as `90s`, `30m`, `24h`, `7d`, `1w`.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$"}],
                    "description": "seconds, or a duration like 30m, 24h, 7d"}),
]


# ---- cloud -------------------------------------------------------------------------------------
class Cloud(Strict):
    """Which Azure cloud: a named one, or `custom` with its endpoints (a sovereign or local cloud).

    Written either as a name (`cloud: AzureChinaCloud`) or as a mapping.
    """

    name: Literal["AzureCloud", "AzureChinaCloud", "AzureUSGovernment", "custom"] = "AzureCloud"
    authority: str | None = Field(None, description="Entra authority host, e.g. https://login.microsoftonline.com")
    arm_endpoint: str | None = Field(None, description="Resource Manager endpoint, e.g. https://management.azure.com")
    arm_audience: str | None = Field(None, description="Resource Manager token audience")
    vault_dns_suffix: str | None = Field(None, description="Key Vault DNS suffix: vault v is at https://v.<suffix>")
    storage_suffix: str | None = Field(None, description="Storage suffix: account a's blobs are at https://a.blob.<suffix>")
    cosmos_suffix: str | None = Field(None, description="Cosmos DB endpoint suffix (documents.azure.com in AzureCloud)")
    sql_suffix: str | None = Field(None, description="SQL server suffix (database.windows.net in AzureCloud)")

    @model_validator(mode="before")
    @classmethod
    def _name_only(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _endpoints(self) -> Cloud:
        endpoints = ("authority", "arm_endpoint", "vault_dns_suffix", "storage_suffix")
        if self.name == "custom":
            missing = [k for k in endpoints if not getattr(self, k)]
            if missing:
                raise ValueError(f"a custom cloud needs {', '.join(missing)}")
            for key in ("authority", "arm_endpoint", "arm_audience"):
                value = getattr(self, key)
                if value and not value.startswith("https://"):
                    raise ValueError(f"{key} must be an https:// URL")
        else:
            given = [k for k in (*endpoints, "arm_audience", "cosmos_suffix", "sql_suffix") if getattr(self, k)]
            if given:
                raise ValueError(f"{', '.join(given)} can only be set with name: custom ({self.name} has fixed endpoints)")
        return self


# ---- stores ------------------------------------------------------------------------------------
class Identity(Strict):
    """Which managed identity of the host a store uses."""

    type: Literal["system_assigned", "user_assigned"] = "system_assigned"
    client_id: str | None = Field(None, description="user-assigned identity's client id")
    resource_id: str | None = Field(None, description="user-assigned identity's ARM resource id")
    object_id: str | None = Field(None, description="user-assigned identity's object (principal) id")

    @model_validator(mode="after")
    def _one_selector(self) -> Identity:
        given = [k for k in ("client_id", "resource_id", "object_id") if getattr(self, k)]
        if self.type == "system_assigned" and given:
            raise ValueError(f"a system_assigned identity takes no {given[0]}; use type: user_assigned")
        if self.type == "user_assigned":
            # Several selectors (the reference page's example shows client_id and, "or", a
            # resource_id) are accepted: the first of client_id, resource_id, object_id is used, as
            # azure-identity itself does, and the loader warns that the others are ignored.
            if not given:
                raise ValueError("a user_assigned identity needs one of client_id, resource_id, object_id")
            problems = []
            if self.client_id and not _GUID_RE.match(self.client_id):
                problems.append(_here("client_id", "client_id must be a GUID"))
            if self.object_id and not _GUID_RE.match(self.object_id):
                problems.append(_here("object_id", "object_id must be a GUID"))
            if self.resource_id and not _IDENTITY_RESOURCE_ID.match(self.resource_id):
                problems.append(_here("resource_id", "resource_id must look like /subscriptions/<id>/resourceGroups/<rg>/providers/"
                                                     "Microsoft.ManagedIdentity/userAssignedIdentities/<name>"))
            if problems:
                raise ValueError("\n".join(problems))
        return self

    @property
    def selectors(self) -> list[str]:
        """The selectors given, in the order azure-identity prefers them (the first is used)."""
        return [k for k in ("client_id", "resource_id", "object_id") if getattr(self, k)]

    def describe(self) -> str:
        if self.type == "system_assigned":
            return "system-assigned managed identity"
        selector = next(f"{k}={getattr(self, k)}" for k in ("client_id", "resource_id", "object_id") if getattr(self, k))
        return f"user-assigned managed identity ({selector})"


class ManagedIdentityFallback(Strict):
    type: Literal["managed_identity"]
    identity: Identity | None = Field(None, description="defaults to the store's identity")


class AzureCliFallback(Strict):
    type: Literal["azure_cli"]
    tenant_id: str | None = None


class ServicePrincipalFallback(Strict):
    type: Literal["service_principal"]
    client_id: str | None = None
    client_secret: str | None = Field(None, description="prefer ${VAR} interpolation to a literal")
    tenant_id: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ServicePrincipalFallback:
        missing = [k for k in ("client_id", "client_secret", "tenant_id") if not getattr(self, k)]
        if missing:
            raise ValueError(f"service_principal needs {', '.join(missing)}")
        return self


class EnvironmentFallback(Strict):
    """A service principal whose settings are read from environment variables at run time."""

    type: Literal["environment"]
    client_id_env: str = Field("AZURE_CLIENT_ID", pattern=ENV_VAR_NAME)
    client_secret_env: str = Field("AZURE_CLIENT_SECRET", pattern=ENV_VAR_NAME)
    tenant_id_env: str = Field("AZURE_TENANT_ID", pattern=ENV_VAR_NAME)


class WorkloadIdentityFallback(Strict):
    """AKS workload identity (federated token file); unset fields come from AZURE_* variables."""

    type: Literal["workload_identity"]
    client_id: str | None = None
    tenant_id: str | None = None
    token_file: str | None = None


Fallback = Annotated[
    ManagedIdentityFallback | AzureCliFallback | ServicePrincipalFallback | EnvironmentFallback | WorkloadIdentityFallback,
    Field(discriminator="type"),
]


class TokenCache(Strict):
    enabled: bool = True
    buffer: Duration = Field(300, description="refresh a token this many seconds before it expires")


class SecretCache(Strict):
    enabled: bool = False
    ttl: Duration = Field(600, description="keep resolved values this many seconds in one process")


class Cache(Strict):
    token_cache: TokenCache = TokenCache()
    secret_cache: SecretCache = SecretCache()


class Performance(Strict):
    max_concurrent: int = Field(10, ge=1, le=256, description="requests in flight at once for this store")
    batch_size: int = Field(25, ge=1, le=1000, description="references dispatched per wave")


class ResourceOverride(Strict):
    """Where a named resource lives when it is not in the store's default subscription."""

    type: Literal["keyvault", "storage", "cosmosdb", "sql"]
    name: str
    subscription: str | None = None
    resource_group: str | None = None

    @model_validator(mode="after")
    def _something(self) -> ResourceOverride:
        if not self.subscription and not self.resource_group:
            raise ValueError("a resources entry needs subscription or resource_group")
        return self


class Debug(Strict):
    enabled: bool = False
    log_tokens: bool = Field(False, description="refused when true: vaultrelay never logs tokens")
    log_requests: bool = Field(False, description="log each Azure request's method, host, path and status")
    trace_identity: bool = Field(False, description="log which identity and credential produced each token")

    @field_validator("log_tokens")
    @classmethod
    def _never(cls, value: bool) -> bool:
        if value:
            raise ValueError("log_tokens: true is refused: vaultrelay never logs tokens or secret values")
        return value


class ManagedIdentityStore(Strict):
    """`type: azure.managed_identity`: the host's managed identity, with optional fallbacks."""

    type: Literal["azure.managed_identity"]
    identity: Identity = Identity()
    fallback: list[Fallback] | None = Field(None, description="credentials tried in order (replaces the plain identity)")
    cache: Cache = Cache()
    performance: Performance = Performance()
    default_subscription: str | None = None
    resources: list[ResourceOverride] = []
    preferred_regions: list[str] = Field([], description="Azure regions in order of preference (Cosmos DB connection metadata)")
    debug: Debug = Debug()
    max_sas_expiry: Duration = Field(7 * 86400, description="cap on any SAS this store mints (default 7d)")

    @field_validator("preferred_regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if not re.fullmatch(r"[a-z][a-z0-9]+", region):
                raise ValueError(f"'{region}' is not an Azure region name (lowercase, no spaces, e.g. eastus)")
        return value


class ServicePrincipalAuth(Strict):
    client_id: str
    client_secret: str
    tenant_id: str


class KeyVaultStore(Strict):
    """`type: azure.keyvault`: the legacy service-principal store (see the migration guide)."""

    type: Literal["azure.keyvault"]
    vault_name: str = Field(pattern=VAULT_NAME)
    auth: ServicePrincipalAuth
    cache: Cache = Cache()
    performance: Performance = Performance()


Store = Annotated[ManagedIdentityStore | KeyVaultStore, Field(discriminator="type")]


# ---- references --------------------------------------------------------------------------------
class Rotate(Strict):
    """Dual-key rotation of a storage or Cosmos DB account (vaultrelay extension)."""

    every: Duration = Field(description="rotate when the active key is older than this, e.g. 30d")

    @field_validator("every")
    @classmethod
    def _at_least_an_hour(cls, value: float) -> float:
        if value < 3600:
            raise ValueError("rotate.every must be at least 1h")
        return value


class Reference(Strict):
    """A `from:` block.  Which keys apply depends on the kind (resource_type / operation / vault)."""

    store: str = Field(description="name of a secretStores entry")
    resource_type: Literal["storage", "sql", "cosmosdb"] | None = None
    operation: Literal["generate_sas", "get_token"] | None = None
    # Key Vault
    vault: str | None = Field(None, pattern=VAULT_NAME)
    secret: str | None = Field(None, pattern=SECRET_NAME, description="secret, certificate or key name")
    version: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    type: Literal["secret", "certificate", "key"] | None = None
    format: Literal["pem", "pfx", "jwk", "connection_string", "ado", "odbc", "jdbc", "key"] | None = None
    # storage / cosmos
    account: str | None = None
    key: Literal["key1", "key2", "active", "primary", "secondary", "primary_readonly", "secondary_readonly"] | None = Field(
        None, description="storage: key1, key2 or active (the one rotation keeps in use); cosmosdb: primary, secondary, "
                          "primary_readonly, secondary_readonly or active")
    permissions: str | None = None
    expiry: Duration | None = Field(None, description="SAS lifetime: 30m, 24h, 7d or seconds")
    sas_type: Literal["user_delegation", "service", "account"] | None = None
    services: str | None = Field(None, pattern=r"^[bqtf]+$", description="account SAS services: b q t f")
    resource_types: str | None = Field(None, pattern=r"^[sco]+$", description="account SAS resource types: s c o")
    container: str | None = None
    blob: str | None = None
    table: str | None = None
    ip: str | None = Field(None, pattern=r"^\d{1,3}(\.\d{1,3}){3}(-\d{1,3}(\.\d{1,3}){3})?$")
    https_only: bool | None = None
    # sql
    server: str | None = None
    database: str | None = None
    # token
    resource: str | None = None
    scope: str | None = None
    # where
    subscription: str | None = None
    resource_group: str | None = None
    # rotation (vaultrelay extension)
    rotate_before: Duration | None = Field(None, description="SAS: re-mint when less than this lifetime remains (default a third of expiry)")
    rotate: Rotate | None = Field(None, description="storage/cosmos `key: active`: regenerate the inactive key and switch on this schedule")
    # transforms of the fetched value (Key Vault references), applied in this order
    decode: Literal["base64"] | None = Field(None, description="decode the value first: base64 (the result must be UTF-8 text)")
    property_: str | None = Field(None, alias="property", pattern=r"^[^.\s]+(\.[^.\s]+)*$",
                                 description="the value is a JSON document: take this key (a.b.c walks nested objects; a number indexes a list)")
    encode: Literal["base64"] | None = Field(None, description="encode the (extracted) value last: base64")

    @property
    def declaration(self) -> ReferenceKind:
        """What this reference's kind declares (core.sources.kinds): keys, checks, plan, features."""
        return kind_of(self)

    @property
    def kind(self) -> str:
        return kind_of(self).name

    @property
    def features(self) -> Features:
        return kind_of(self).features

    @model_validator(mode="after")
    def _per_kind(self) -> Reference:
        """Every problem of the reference at once, each placed at its own key."""
        declaration = kind_of(self)
        problems: list[str] = []
        given = {type(self).model_fields[k].alias or k for k in self.model_fields_set if getattr(self, k) is not None}
        extra = sorted(given - declaration.keys)
        allowed = ", ".join(sorted(declaration.keys - {"store"}))
        problems.extend(_here(key, f"{key} does not apply to {declaration.label} (allowed: {allowed})") for key in extra)
        if self.operation == "generate_sas" and self.resource_type != "storage":
            problems.append(_here("operation", "operation: generate_sas needs resource_type: storage"))
        need, found = declaration.check(self)
        problems.extend(found)
        if need:
            problems.insert(0, f"{declaration.label} needs {', '.join(need)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def effective_sas_type(self) -> str:
        """`sas_type`, or the default: user delegation for a Blob container scope (no account key
        is touched, Microsoft's recommendation), a service SAS for a table, else an account SAS."""
        if self.sas_type:
            return self.sas_type
        if self.table:
            return "service"
        if self.container:
            return "user_delegation"
        return "account"


class Variable(Strict):
    """One variable of an env: a literal `value`, a `from:` reference, or a `template` over the
    env's other variables."""

    value: str | None = None
    from_: Reference | None = Field(None, alias="from")
    template: str | None = Field(None, description="a composed value: a Jinja2 template over the env's other variables, e.g. "
                                                   "\"postgresql://app:{{ DATABASE_PASSWORD | urlencode }}@db:5432/app\"; filters: "
                                                   "urlencode, b64encode, b64decode, json, tojson, default, trim")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> Any:
        # In YAML a literal is written as a plain scalar (`LOG_LEVEL: info`).
        mapping = handler(core_schema)
        return {"anyOf": [{"type": ["string", "number", "boolean"], "description": "a literal value"}, mapping]}

    @model_validator(mode="before")
    @classmethod
    def _literal(cls, data: Any) -> Any:
        if isinstance(data, str | int | float | bool):
            return {"value": str(data).lower() if isinstance(data, bool) else str(data)}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Variable:
        if [self.value, self.from_, self.template].count(None) != 2:
            raise ValueError("a variable is a literal string, or a mapping with one of from: or template:")
        return self


# ---- vaultrelay extensions: targets, state, HTTP access ------------------------------------------
class TargetBase(Strict):
    env: str = Field(description="the env whose bundle this target receives")
    drift_policy: Literal["report", "repair"] = Field("report", description="when the target was changed by someone else")


class KeyVaultTarget(TargetBase):
    """Push to a Key Vault: one secret per variable, or one JSON secret for the bundle."""

    type: Literal["keyvault"]
    store: str = Field(description="the store whose identity writes (needs Key Vault Secrets Officer)")
    vault: str = Field(pattern=VAULT_NAME)
    mode: Literal["per_variable", "bundle"] = "per_variable"
    name_style: Literal["kebab", "exact", "lower"] = Field("kebab", description="DATABASE_PASSWORD -> database-password (kebab)")
    prefix: str = Field("", pattern=r"^[0-9a-zA-Z-]*$", description="prepended to every secret name")
    secret_name: str | None = Field(None, pattern=SECRET_NAME, description="bundle mode: the secret's name (default <env>-bundle)")
    deletion_policy: Literal["delete", "keep"] = Field("keep", description="variables removed from the env: delete their (owned) secrets or keep them")
    content_type: str | None = Field(None, min_length=1, max_length=255,
                                     description="content type of the secrets written whose value has none of its own "
                                                 "(certificates, keys and the JSON bundle keep theirs)")
    tags: dict[str, str] = Field({}, description="static tags on every secret written, next to vaultrelay's own "
                                                  f"({MANAGED_BY} and vaultrelay-*, which cannot be set here)")
    expires: Annotated[Literal["follow"] | Duration, WithJsonSchema({"anyOf": [
        {"const": "follow", "description": "the value's own expiry (SAS, token, certificate; a copied secret's exp); "
                                            "a value without one is refused"},
        {"type": "number", "minimum": 3600},
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[smhdw]?\s*$"}]})] | None = Field(
        None, description="expiry of the secrets written: follow, or a duration (at least 1h; rewritten with a third left). "
                          "Unset: the value's own expiry when it has one")
    certificates: Literal["secret", "certificate"] = Field(
        "secret", description="certificate references: written as a PEM/PFX secret, or imported as a certificate (with its key)")

    @model_validator(mode="before")
    @classmethod
    def _expires_follow(cls, data: Any) -> Any:
        # `follow` is a word; anything else is a duration (parsed by Duration).
        if isinstance(data, dict) and isinstance(data.get("expires"), str) and data["expires"].strip() == "follow":
            data = {**data, "expires": "follow"}
        return data

    @model_validator(mode="after")
    def _modes(self) -> KeyVaultTarget:
        problems: list[str] = []
        if self.secret_name and self.mode != "bundle":
            problems.append(_here("secret_name", "secret_name applies to mode: bundle only"))
        if self.certificates == "certificate" and self.mode == "bundle":
            problems.append(_here("certificates", "certificates: certificate applies to mode: per_variable (a bundle is one JSON secret)"))
        if isinstance(self.expires, float) and self.expires < 3600:
            problems.append(_here("expires", "expires must be follow or a duration of at least 1h"))
        reserved = sorted(k for k in self.tags if k.lower() == MANAGED_BY or k.lower().startswith("vaultrelay-"))
        if reserved:
            problems.append(_here("tags", f"tag {', '.join(reserved)} is vaultrelay's own ({MANAGED_BY}, vaultrelay-*): it cannot be set here"))
        if len(self.tags) > 11:
            problems.append(_here("tags", f"{len(self.tags)} tags: Key Vault allows 15 per secret and vaultrelay writes 4"))
        for key, value in self.tags.items():
            if not key or len(key) > 512 or len(value) > 256:
                problems.append(_here("tags", f"tag '{key[:40]}': Key Vault tag names are 1-512 characters and values at most 256"))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def secret_for(self, variable: str) -> str:
        """The secret that holds `variable` in per_variable mode."""
        return secret_name_for(variable, self.name_style, self.prefix)

    @property
    def bundle_secret(self) -> str:
        """The secret that holds the bundle in bundle mode."""
        return self.secret_name or f"{self.env}-bundle"

    def secrets(self, variables: Iterable[str]) -> dict[str, list[str]]:
        """Secret name -> the variables (of `variables`) this target writes to it.  Key Vault
        names are case-insensitive, so names differing in case are one secret."""
        if self.mode == "bundle":
            return {self.bundle_secret: sorted(variables)}
        spelled: dict[str, str] = {}
        names: dict[str, list[str]] = {}
        for variable in sorted(variables):
            secret = self.secret_for(variable)
            names.setdefault(spelled.setdefault(secret.lower(), secret), []).append(variable)
        return names


def secret_name_for(variable: str, style: str, prefix: str = "") -> str:
    """`DATABASE_PASSWORD` -> `database-password` (kebab), `DATABASE-PASSWORD` (exact), ..."""
    if style == "kebab":
        name = re.sub(r"[^0-9a-zA-Z]+", "-", variable).strip("-").lower()
    elif style == "lower":
        name = variable.replace("_", "-").lower()
    else:
        name = variable.replace("_", "-")
    return f"{prefix}{name}"


class BlobTarget(TargetBase):
    """Write the bundle as one blob (dotenv or JSON), with an ETag condition."""

    type: Literal["blob"]
    store: str
    account: str = Field(pattern=STORAGE_ACCOUNT)
    container: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    blob: str | None = Field(None, description="default <env>.env (dotenv) or <env>.json")
    format: Literal["dotenv", "json"] = "dotenv"


class KeyVaultReferenceValues:
    """`values: keyvault_reference` of a target that holds Key Vault references (App Service app
    settings, Container Apps secrets): the values are pushed to `vault`, one secret per variable
    named as a Key Vault target names them, and the target holds references pinned to versions.

    A mixin of behaviour only: each target declares the fields (their documentation speaks of
    that target, and the fields keep their place in the target's schema and error order).
    """

    if TYPE_CHECKING:
        values: Literal["value", "keyvault_reference"]
        vault: str | None
        name_style: Literal["kebab", "exact", "lower"]
        prefix: str

    @model_validator(mode="after")
    def _reference_vault(self) -> Self:
        if self.values == "keyvault_reference" and not self.vault:
            raise ValueError("values: keyvault_reference needs vault (the vault that holds the pushed values)")
        if self.values == "value" and self.vault:
            raise ValueError("vault applies to values: keyvault_reference only")
        return self

    @property
    def references(self) -> bool:
        return self.values == "keyvault_reference"

    def secret_for(self, variable: str) -> str:
        """keyvault_reference: the secret of `vault` that holds `variable`."""
        return secret_name_for(variable, self.name_style, self.prefix)

    def secrets(self, variables: Iterable[str]) -> dict[str, list[str]]:
        """Secret name -> the variables written to it (names differing in case are one secret)."""
        spelled: dict[str, str] = {}
        names: dict[str, list[str]] = {}
        for variable in sorted(variables):
            secret = self.secret_for(variable)
            names.setdefault(spelled.setdefault(secret.lower(), secret), []).append(variable)
        return names


class AppSettingsTarget(TargetBase, KeyVaultReferenceValues):
    """Merge the bundle into an App Service / Functions app's settings (others are kept)."""

    type: Literal["app_settings"]
    store: str
    site: str
    resource_group: str | None = None
    subscription: str | None = None
    slot: str | None = None
    deletion_policy: Literal["delete", "keep"] = "keep"
    slot_setting: bool = Field(False, description="make the pushed names slot-sticky (the site's slotConfigNames), so a slot swap "
                               "does not carry them to the other slot; names are added, never removed")
    values: Literal["value", "keyvault_reference"] = Field(
        "value", description="value: the settings hold the values; keyvault_reference: the values are pushed to `vault` (as a Key "
                             "Vault target does, with ownership tags) and each setting is a Key Vault reference pinned to the "
                             "secret's version, so a new value changes the setting and App Service reads it at once")
    vault: str | None = Field(None, pattern=VAULT_NAME, description="keyvault_reference: the vault that holds the pushed values "
                                                                    "(the store's identity writes there: Key Vault Secrets Officer; "
                                                                    "the site's identity reads: Key Vault Secrets User)")
    name_style: Literal["kebab", "exact", "lower"] = Field("kebab", description="keyvault_reference: secret names in `vault`, as for a Key Vault target")
    prefix: str = Field("", pattern=r"^[0-9a-zA-Z-]*$", description="keyvault_reference: prepended to every secret name in `vault`")
    site_principal_id: str | None = Field(None, description="keyvault_reference: the object id of the identity the site resolves "
                                                            "references with (for the Bicep parameters' Key Vault Secrets User grant)")

    mode: ClassVar[str] = "per_variable"


class ContainerAppTarget(TargetBase, KeyVaultReferenceValues):
    """Write the env's variables as a Container App's secrets (values, or Key Vault references
    pinned to versions and read with the app's identity)."""

    type: Literal["container_app"]
    store: str = Field(description="the store whose identity writes (needs Container Apps Contributor on the app)")
    app: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$", description="the container app's name")
    resource_group: str | None = None
    subscription: str | None = None
    secret_prefix: str = Field("", pattern=r"^[a-z0-9][-a-z0-9.]*$|^$", description="prepended to every app secret name "
                                                                                   "(DB_PASSWORD -> <prefix>db-password)")
    deletion_policy: Literal["delete", "keep"] = Field("keep", description="variables removed from the env: remove their (owned) secrets or keep them")
    restart: bool = Field(True, description="restart the active revision after a change, so running containers read the new "
                                           "secrets (a secrets change creates no revision)")
    values: Literal["value", "keyvault_reference"] = Field(
        "value", description="value: the app's secrets hold the values; keyvault_reference: the values are pushed to `vault` and "
                             "each secret is a keyVaultUrl pinned to the version, read with `identity`")
    vault: str | None = Field(None, pattern=VAULT_NAME, description="keyvault_reference: the vault that holds the pushed values")
    identity: str = Field("system", description="keyvault_reference: the app's identity that reads the vault: system, or the "
                                                "resource id of a user-assigned identity assigned to the app")
    name_style: Literal["kebab", "exact", "lower"] = Field("kebab", description="keyvault_reference: secret names in `vault`")
    prefix: str = Field("", pattern=r"^[0-9a-zA-Z-]*$", description="keyvault_reference: prepended to every secret name in `vault`")

    mode: ClassVar[str] = "per_variable"

    def app_secret_for(self, variable: str) -> str:
        """The app secret holding `variable`: DB_PASSWORD -> <secret_prefix>db-password."""
        return self.secret_prefix + re.sub(r"[^0-9a-z]+", "-", variable.lower()).strip("-")


class WebhookTarget(TargetBase):
    """POST the bundle (or the changed names only) to an HTTPS endpoint, signed with HMAC-SHA256."""

    type: Literal["webhook"]
    url: str
    payload: Literal["bundle", "changed_names"] = "bundle"
    signing_key: Variable = Field(description="a literal or a from: reference: the HMAC key")
    timeout: Duration = Field(10, description="seconds each attempt may take in all: connect, send, status and headers, body "
                                              "(at most 64 KiB of the answer is read)")
    retries: int = Field(4, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("a webhook url must be https://")
        return value


Target = Annotated[KeyVaultTarget | BlobTarget | AppSettingsTarget | ContainerAppTarget | WebhookTarget, Field(discriminator="type")]


NotifyEvent = Literal["push_failed", "drift_found", "rotation_done", "rotation_failed", "expiring"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("push_failed", "drift_found", "rotation_done", "rotation_failed", "expiring")


class Notify(Strict):
    """Signed JSON notifications (signed as the webhook target signs): names and times, never values."""

    url: str = Field(description="https:// endpoint receiving one POST per event")
    signing_key: Variable = Field(description="a literal or a from: reference: the HMAC key (X-VaultRelay-Signature)")
    format: Literal["json", "teams", "slack"] = Field("json", description="json: vaultrelay's event document; teams / slack: a "
                                                                          "message card / text payload for an incoming webhook")
    events: list[NotifyEvent] = Field(
        list(NOTIFY_EVENTS), description="which events are sent (default all)")
    expiring_within: Duration = Field(30 * 86400, description="expiring: something vaultrelay cannot renew expires within this (seconds or 30d)")
    timeout: Duration = Field(10, description="seconds each attempt may take in all")
    retries: int = Field(2, ge=0, le=10)

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("a notify url must be https://")
        return value


class State(Strict):
    """Where vaultrelay keeps its records (Table Storage) and the values it mints (Key Vault)."""

    store: str = Field(description="the store whose identity reads and writes state")
    account: str | None = Field(None, pattern=STORAGE_ACCOUNT, description="storage account of the state tables (default $VAULTRELAY_STATE_ACCOUNT)")
    table_endpoint: str | None = Field(None, description="full table endpoint instead of account")
    table_prefix: str = Field("vaultrelay", pattern=r"^[A-Za-z][A-Za-z0-9]{2,40}$")
    vault: str | None = Field(None, pattern=VAULT_NAME, description="vault that keeps minted SAS tokens between runs (needed for SAS rotation)")
    fingerprint_key: Variable | None = Field(None, description="HMAC key for fingerprints: a from: reference or ${VAR} (default $VAULTRELAY_FINGERPRINT_KEY)")


# `type:` of a rotated account -> (its ARM resource type, the kind core.rotation.tagged_secrets calls it)
ROTATED_RESOURCE_TYPES = {
    "storage": ("Microsoft.Storage/storageAccounts", "storage"),
    "cosmosdb": ("Microsoft.DocumentDB/databaseAccounts", "cosmos"),
    "sql": ("Microsoft.Sql/servers", "sql"),
}
_ROTATED_RESOURCE_ID = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/"
    r"(?P<type>Microsoft\.Storage/storageAccounts|Microsoft\.DocumentDB/databaseAccounts|Microsoft\.Sql/servers)/(?P<name>[^/]+)$",
    re.IGNORECASE,
)


class RotatedAccount(Strict):
    """A storage account, Cosmos DB account or SQL server that the tagged secrets of one vault may
    name in `ProviderAddress`: an ARM resource id (`id`, or the entry written as that string), or
    `type`, `name` and `resource_group`.  Matched exactly (case-insensitive) against the whole id."""

    id: str | None = Field(None, description="the account's ARM resource id: /subscriptions/<id>/resourceGroups/<group>/providers/"
                                             "Microsoft.Storage/storageAccounts/<name> (or Microsoft.DocumentDB/databaseAccounts, "
                                             "Microsoft.Sql/servers)")
    type: Literal["storage", "cosmosdb", "sql"] | None = None
    name: str | None = None
    resource_group: str | None = None
    subscription: str | None = Field(None, description="default: the store's default_subscription, else $VAULTRELAY_SUBSCRIPTION_ID")
    secrets: list[Annotated[str, Field(pattern=SECRET_NAME)]] | None = Field(
        None, min_length=1, description="only these secrets of the vault may name this account (default: any tagged secret of the vault)")

    @model_validator(mode="before")
    @classmethod
    def _id_only(cls, data: Any) -> Any:
        return {"id": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_form(self) -> RotatedAccount:
        parts = [k for k in ("type", "name", "resource_group", "subscription") if getattr(self, k)]
        if self.id is not None:
            if parts:
                raise ValueError(f"give either id or type/name/resource_group, not both (got id and {', '.join(parts)})")
            if not _ROTATED_RESOURCE_ID.match(self.id):
                raise ValueError(f"{self.id[:200]!r} is not the ARM resource id of a storage account, Cosmos DB account or SQL server "
                                 "(/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Storage/storageAccounts/<name>)")
            return self
        missing = [k for k in ("type", "name", "resource_group") if not getattr(self, k)]
        if missing:
            raise ValueError(f"an accounts entry is a resource id or has type, name and resource_group (missing {', '.join(missing)})")
        for key in ("name", "resource_group", "subscription"):
            value = getattr(self, key)
            if value is not None and ("/" in value or not value.strip()):
                raise ValueError(f"{key} {value!r} is a name, not a path")
        return self

    def where(self) -> tuple[str, str | None, str, str]:
        """(kind, subscription or None when the entry names none, resource group, name), as written;
        kind is `storage`, `cosmos` or `sql`, as core.rotation.tagged_secrets names a `ProviderAddress`."""
        if self.id is not None:
            found = _ROTATED_RESOURCE_ID.match(self.id)
            assert found is not None  # checked above
            kind = next(k for t, k in ROTATED_RESOURCE_TYPES.values() if t.lower() == found["type"].lower())
            return kind, found["subscription"], found["group"], found["name"]
        assert self.type is not None and self.name is not None and self.resource_group is not None
        return ROTATED_RESOURCE_TYPES[self.type][1], self.subscription, self.resource_group, self.name

    def resource_key(self, default_subscription: str | None) -> tuple[str, str, str, str] | None:
        """(kind, subscription, resource group, name), lower case, to compare with a `ProviderAddress`;
        None when no subscription is known for an entry that names none (it then matches nothing)."""
        kind, subscription, group, name = self.where()
        subscription = subscription or default_subscription
        if not subscription:
            return None
        return kind, subscription.lower(), group.lower(), name.lower()

    def admits(self, secret: str) -> bool:
        """Whether the vault's secret `secret` may name this account (Key Vault names ignore case)."""
        return self.secrets is None or secret.lower() in {s.lower() for s in self.secrets}

    def describe(self) -> str:
        if self.id is not None:
            return self.id
        return f"{self.type} {self.name} (resource group {self.resource_group}" + (f", subscription {self.subscription})" if self.subscription else ")")


class TaggedSecrets(Strict):
    """A vault whose secrets tagged like Microsoft's rotation samples (`CredentialId`,
    `ProviderAddress`, `ValidityPeriodDays`) vaultrelay rotates: the alternate key of the storage or
    Cosmos DB account is regenerated (or the SQL server's password set) and written as the secret's
    new version, for the accounts listed under `accounts` only."""

    vault: str = Field(pattern=VAULT_NAME)
    store: str = Field(description="the store whose identity reads and writes the secrets (Key Vault Secrets Officer) and lists and "
                                   "regenerates the accounts' keys (Storage Account Key Operator Service Role, vaultrelay Cosmos DB Key "
                                   "Operator, SQL Server Contributor)")
    accounts: list[RotatedAccount] = Field(
        min_length=1, json_schema_extra=lambda schema: _string_or_mapping(schema, "the account's ARM resource id"), description="the storage accounts, Cosmos DB accounts and SQL servers this vault's secrets may name in ProviderAddress: "
                                  "a secret naming any other is not rotated (a status warning names it) and the account is not touched")
    rotate_before: Duration = Field(30 * 86400, gt=0, description="rotate when less than this is left before the secret expires (capped at half "
                                                                  "of ValidityPeriodDays); default 30d, Key Vault's near-expiry notice")


class Rotation(Strict):
    """Rotation beyond `rotate:` references."""

    tagged_secrets: list[TaggedSecrets] = Field([], description="vaults whose secrets tagged like Microsoft's rotation samples are rotated")
    regenerate_wait: Duration = Field(60, le=600, description="how long one run waits for a key regeneration that takes time (Cosmos DB: minutes "
                                      "to hours); a later run follows the same operation up")


class Api(Strict):
    """The HTTP API: how callers authenticate."""

    audience: str | None = Field(None, description="token audience, e.g. api://vaultrelay (default $VAULTRELAY_API_AUDIENCE)")
    auth_mode: Literal["bearer", "app_service"] = "bearer"
    admins: list[str] = Field([], description="who may sync, rotate and read status: object ids (users, service principals, "
                                              "managed identities), group ids, or app (client) ids, which match app-only tokens only")
    admin_role: str = Field("VaultRelay.Admin", description="an app role claim that also grants admin access")

    @field_validator("admins")
    @classmethod
    def _normalized_admins(cls, admins: list[str]) -> list[str]:
        return normalized_ids(admins)

    @cached_property
    def admin_ids(self) -> frozenset[str]:
        """`admins` as a set (normalized at load; built once per config, not per request)."""
        return frozenset(self.admins)


class Config(Strict):
    """A vaultrelay config file."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, title="vaultrelay config")

    version: Literal[1] = Field(1, description="the config format's version: 1 (optional; the reference page omits it)")
    cloud: Cloud | None = Field(
        None, description="defaults to $VAULTRELAY_CLOUD, then AzureCloud")
    secretStores: dict[str, Store]
    envs: dict[str, dict[str, Variable]] = {}
    targets: dict[str, Target] = Field({}, description="vaultrelay extension: where envs are pushed")
    state: State | None = Field(None, description="vaultrelay extension: Table Storage state for sync and rotation")
    access: dict[str, list[str]] = Field({}, description="vaultrelay extension: env -> who may fetch it: object ids (users, service "
                                               "principals, managed identities), group ids, or app (client) ids, which match app-only tokens only")
    rotation: Rotation = Field(Rotation(), description="vaultrelay extension: Key Vault secrets tagged like Microsoft's rotation samples")
    api: Api = Api()
    notify: Notify | None = Field(None, description="vaultrelay extension: signed notifications on push failures, drift, rotations "
                                                    "and expiries vaultrelay cannot renew; each event sent once across instances")

    @field_validator("envs")
    @classmethod
    def _names(cls, envs: dict[str, dict[str, Variable]]) -> dict[str, dict[str, Variable]]:
        bad = [_located(f"envs.{env}.{name}", f"'{name}' is not a valid environment variable name "
                                                "(letters, digits and _, not starting with a digit)")
               for env, variables in envs.items() for name in variables if not re.fullmatch(ENV_VAR_NAME, name)]
        if bad:
            raise ValueError("\n".join(bad))
        return envs

    @field_validator("access")
    @classmethod
    def _normalized_access(cls, access: dict[str, list[str]]) -> dict[str, list[str]]:
        return {env: normalized_ids(ids) for env, ids in access.items()}

    @cached_property
    def access_ids(self) -> dict[str, frozenset[str]]:
        """`access` as sets (normalized at load; built once per config, not per request)."""
        return {env: frozenset(ids) for env, ids in self.access.items()}

    @model_validator(mode="after")
    def _stores_exist(self) -> Config:
        problems: list[str] = []
        for env, variables in self.envs.items():
            for name, variable in variables.items():
                ref = variable.from_
                if ref is None:
                    continue
                store = self.secretStores.get(ref.store)
                where = f"envs.{env}.{name}.from"
                if store is None:
                    problems.append(_located(f"{where}.store", f"unknown store '{ref.store}' (stores: {', '.join(sorted(self.secretStores)) or 'none'})"))
                elif isinstance(store, KeyVaultStore) and not ref.features.reads_keyvault:
                    problems.append(_located(where, f"store '{ref.store}' is type azure.keyvault: it reads Key Vault objects only"))
                elif isinstance(store, ManagedIdentityStore) and ref.features.reads_keyvault and not ref.vault:
                    problems.append(_located(where, f"{ref.declaration.label} needs vault"))
        for name, target in self.targets.items():
            where = f"targets.{name}"
            if target.env not in self.envs:
                problems.append(_located(f"{where}.env", f"unknown env '{target.env}' (envs: {', '.join(sorted(self.envs)) or 'none'})"))
            store_name = getattr(target, "store", None)
            if store_name is not None and store_name not in self.secretStores:
                problems.append(_located(f"{where}.store", f"unknown store '{store_name}'"))
            key = getattr(target, "signing_key", None)
            if key is not None and key.from_ is not None and key.from_.store not in self.secretStores:
                problems.append(_located(f"{where}.signing_key.from.store", f"unknown store '{key.from_.store}'"))
        problems.extend(self._templates())
        if self.notify is not None:
            key = self.notify.signing_key.from_
            if key is not None and key.store not in self.secretStores:
                problems.append(_located("notify.signing_key.from.store", f"unknown store '{key.store}'"))
            if self.state is None:
                problems.append(_located("notify", "notify needs a state: section (each event is sent once, recorded in the state tables)"))
        problems.extend(self._keyvault_target_names())
        problems.extend(self._state_exposure())
        if self.state is not None and self.state.store not in self.secretStores:
            problems.append(_located("state.store", f"unknown store '{self.state.store}'"))
        for env in self.access:
            if env not in self.envs:
                problems.append(_located(f"access.{env}", f"unknown env '{env}'"))
        for i, tagged in enumerate(self.rotation.tagged_secrets):
            store = self.secretStores.get(tagged.store)
            if store is None:
                problems.append(_located(f"rotation.tagged_secrets.{i}.store", f"unknown store '{tagged.store}'"))
            elif not isinstance(store, ManagedIdentityStore):
                problems.append(_located(f"rotation.tagged_secrets.{i}.store", f"store '{tagged.store}' is type azure.keyvault: it cannot regenerate account keys"))
            if [t.vault.lower() for t in self.rotation.tagged_secrets].index(tagged.vault.lower()) != i:
                problems.append(_located(f"rotation.tagged_secrets.{i}.vault", f"vault '{tagged.vault}' is listed twice"))
        if self.state is None and (self.targets or self._rotated() or self.rotation.tagged_secrets):
            where = "targets" if self.targets else ("envs" if self._rotated() else "rotation")
            problems.append(_located(where, "targets and rotation need a state: section (Table Storage)"))
        if self.state is not None and self.state.vault is None and self._minted_sas_with_targets():
            problems.append(_located("state", "state.vault is needed: SAS and access tokens pushed to targets are kept there between runs"))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _templates(self) -> list[str]:
        """Composed values: each template parses, reads only its env's variables, and no templates
        read each other in a cycle."""
        from core.compose import template_problems

        problems: list[str] = []
        for env, variables in self.envs.items():
            templates = {name: v.template for name, v in variables.items() if v.template is not None}
            if templates:
                problems.extend(_located(path, message) for path, message in template_problems(env, templates, variables))
        return problems

    def _keyvault_target_names(self) -> list[str]:
        """Each Key Vault secret is written by one target for one variable: two variables that
        name_style maps to one secret, or two targets writing one secret of a vault, would
        overwrite each other on every sync.  Names must also fit Key Vault's 127 characters."""
        problems: list[str] = []
        claimed: dict[tuple[str, str], str] = {}
        for name, target in self.targets.items():
            if isinstance(target, ContainerAppTarget) and target.env in self.envs:
                problems.extend(self._app_secret_names(name, target))
            referencing = isinstance(target, AppSettingsTarget | ContainerAppTarget) and target.references
            if not (isinstance(target, KeyVaultTarget) or referencing) or target.env not in self.envs:
                continue
            assert isinstance(target, KeyVaultTarget | AppSettingsTarget | ContainerAppTarget) and target.vault is not None
            for secret, variables in target.secrets(self.envs[target.env]).items():
                if target.mode == "per_variable" and len(variables) > 1:
                    exact_apart = len({secret_name_for(v, "exact").lower() for v in variables}) == len(variables)
                    remedy = "rename one or use name_style: exact" if exact_apart else "rename one (Key Vault names ignore case)"
                    problems.append(_located(
                        f"targets.{name}.name_style",
                        f"variables {', '.join(variables)} of env '{target.env}' all become secret '{secret}' "
                        f"(name_style {target.name_style}); {remedy}"))
                if not re.fullmatch(SECRET_NAME, secret):
                    problems.append(_located(f"targets.{name}", f"secret name '{secret}' for {variables[0] if target.mode == 'per_variable' else 'the bundle'} "
                                                                f"is not a Key Vault secret name (1-127 letters, digits and hyphens)"))
                first = claimed.setdefault((target.vault.lower(), secret.lower()), name)
                if first != name:
                    problems.append(_located(f"targets.{name}", f"writes secret '{secret}' of vault {target.vault}, which target '{first}' writes too"))
        return problems

    def _app_secret_names(self, name: str, target: ContainerAppTarget) -> list[str]:
        """Container Apps secret names: lower case letters, digits, '-' and '.', at most 253; one per variable."""
        problems: list[str] = []
        seen: dict[str, str] = {}
        for variable in sorted(self.envs[target.env]):
            secret = target.app_secret_for(variable)
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", secret):
                problems.append(_located(f"targets.{name}", f"variable {variable} becomes app secret '{secret}', which is not a "
                                                            "Container Apps secret name (lower case letters, digits, '-', '.')"))
            first = seen.setdefault(secret, variable)
            if first != variable:
                problems.append(_located(f"targets.{name}", f"variables {first} and {variable} of env '{target.env}' both become app "
                                                            f"secret '{secret}'; rename one"))
        return problems

    def _state_exposure(self) -> list[str]:
        """Places the config hands to others must not hold vaultrelay's state.

        `state.vault` keeps the user delegation keys (anyone who reads one signs SAS tokens for
        every container the delegating identity may reach), the fingerprint key (which turns the
        fingerprint tags on targets into a dictionary oracle) and every minted SAS: it is
        vaultrelay's alone.  So it may not be a Key Vault target's vault (readers of a target need
        Key Vault Secrets User there), a vault env variables read (envs reach HTTP callers and every
        target), or a vault under tagged rotation (its secrets' writers and consumers work there).
        The fingerprint key, wherever it is kept, may not be in a target's vault either, nor be
        read by an env.
        """
        if self.state is None:
            return []
        problems: list[str] = []
        for where, vault, secret in self._vaults_read_by_envs():
            if self.state.vault and vault.lower() == self.state.vault.lower():
                problems.append(_located(where, f"vault {vault} is state.vault, which keeps user delegation keys, the fingerprint key and "
                                                f"minted SAS tokens: an env reading it hands them to whoever fetches the env or reads its "
                                                f"targets; keep state in a vault of its own"))
            key = self.state.fingerprint_key.from_ if self.state.fingerprint_key is not None else None
            if key is not None and key.features.reads_keyvault and self._vault_of(key).lower() == vault.lower() and (key.secret or "").lower() == secret.lower():
                problems.append(_located(where, "this is the fingerprint key (state.fingerprint_key): an env must not read it"))
        exposed: dict[str, str] = {}  # vault (lower case) -> the first YAML path that hands it to others
        for where, vault, what in self._vaults_shared():
            exposed.setdefault(vault.lower(), where)
            if self.state.vault and vault.lower() == self.state.vault.lower():
                problems.append(_located(where, f"vault {vault} is state.vault (user delegation keys, the fingerprint key, minted SAS "
                                                f"tokens) and {what}: keep state in a vault of its own, readable by vaultrelay's identity only"))
        key = self.state.fingerprint_key.from_ if self.state.fingerprint_key is not None else None
        if key is not None and key.features.reads_keyvault and self._vault_of(key).lower() in exposed:
            problems.append(_located("state.fingerprint_key.from.vault",
                                     f"the fingerprint key is kept in vault {self._vault_of(key)}, which {exposed[self._vault_of(key).lower()]} "
                                     f"exposes: its readers could test guesses against the fingerprint tags; keep it in state.vault or "
                                     f"another vault only vaultrelay reads"))
        return problems

    def _vaults_shared(self) -> Iterable[tuple[str, str, str]]:
        """(YAML path, vault, why others work there) of every vault the config writes for others."""
        for name, target in sorted(self.targets.items()):
            if isinstance(target, KeyVaultTarget):
                yield f"targets.{name}.vault", target.vault, "a Key Vault target's vault, which the target's readers may read"
            elif isinstance(target, AppSettingsTarget | ContainerAppTarget) and target.vault:
                yield f"targets.{name}.vault", target.vault, "the vault of an app_settings target's Key Vault references, which the site reads"
        for i, tagged in enumerate(self.rotation.tagged_secrets):
            yield (f"rotation.tagged_secrets.{i}.vault", tagged.vault,
                   "a vault under tagged rotation, whose secrets' writers and consumers work there")

    def _vaults_read_by_envs(self) -> Iterable[tuple[str, str, str]]:
        """(YAML path, vault, secret) of every Key Vault reference of every env."""
        for env, variables in self.envs.items():
            for name, variable in variables.items():
                ref = variable.from_
                if ref is not None and ref.features.reads_keyvault and ref.store in self.secretStores:
                    yield f"envs.{env}.{name}.from.vault", self._vault_of(ref), ref.secret or ""

    def _vault_of(self, ref: Reference) -> str:
        store = self.secretStores.get(ref.store)
        return ref.vault or (store.vault_name if isinstance(store, KeyVaultStore) else "") or ""

    def _rotated(self) -> bool:
        return any(v.from_ is not None and v.from_.rotate is not None for vs in self.envs.values() for v in vs.values())

    def _minted_sas_with_targets(self) -> bool:
        envs = {t.env for t in self.targets.values()}
        return any(v.from_ is not None and v.from_.features.minted for e in envs for v in self.envs.get(e, {}).values())


def _string_or_mapping(schema: dict[str, Any], string_description: str) -> None:
    """JSON Schema of a list whose items may also be written as a string (a `mode="before"`
    validator turns the string into the mapping): editors accept both forms."""
    items = schema.get("items")
    if isinstance(items, dict):
        schema["items"] = {"anyOf": [{"type": "string", "description": string_description}, items]}


def normalized_ids(ids: Iterable[str]) -> list[str]:
    """Access and admin entries as they are matched: trimmed, lowercase (ids are GUIDs, which Entra
    writes in either case), without blanks and repeats, in their order."""
    seen: dict[str, None] = {}
    for entry in ids:
        normalized = entry.strip().lower()
        if normalized:
            seen.setdefault(normalized)
    return list(seen)


def _located(path: str, message: str) -> str:
    """A message for the loader to place at `path` (the model validator sees the whole file)."""
    return f"@{path}@ {message}"


def _here(key: str, message: str) -> str:
    """A message for the loader to place at `key` of the model that raised it (its own line)."""
    return f"@.{key}@ {message}"
