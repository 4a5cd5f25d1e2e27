"""The source interface, the per-store and per-run context, and SDK error translation."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from core.azure.clients import AzureClients
from core.identity import BufferedTokenCredential, describe_identity_failure, identity_endpoint_hosts
from core.permissions.matrix import denied_role_hint
from core.sources.fetched import Fetched, SourceProblem
from core.sources.kinds import Features
from core.value_cache import SingleFlight


@dataclass(frozen=True)
class PlannedRef:
    """One reference, normalized from the config: what to fetch, never a value.

    `params` holds the kind's parameters as a sorted tuple so identical references compare
    equal (deduplication) whatever their variable names.
    """

    name: str
    path: str
    store: str
    kind: str
    params: tuple[tuple[str, Any], ...]
    description: str
    # (transform, argument) applied to this variable's value after the fetch: decode, property,
    # encode (core.sources.transforms); not part of the dedup key.
    transforms: tuple[tuple[str, str], ...] = ()

    def param(self, key: str, default: Any = None) -> Any:
        for name, value in self.params:
            if name == key:
                return value
        return default

    @property
    def dedup_key(self) -> tuple[Any, ...]:
        return (self.store, self.kind, self.params)


@dataclass
class StoreRuntime:
    """Everything about one secretStore that sources need at run time."""

    name: str
    credential: BufferedTokenCredential | Any
    identity_description: str
    client_id: str | None = None
    user_assigned: bool = False
    max_concurrent: int = 10
    batch_size: int = 25
    secret_cache_ttl: float = 0.0
    default_subscription: str | None = None
    # (resource kind, name lower) -> (subscription, resource group or None)
    resource_overrides: dict[tuple[str, str], tuple[str | None, str | None]] = field(default_factory=dict)
    max_sas_expiry: timedelta = timedelta(days=7)
    preferred_regions: tuple[str, ...] = ()
    listed_keys_ttl: float = 300.0  # seconds a storage key listing is kept in the process (core.sources.listed_keys)
    semaphore: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        self.semaphore = threading.BoundedSemaphore(self.max_concurrent)

    def subscription_for(self, kind: str, name: str, explicit: str | None) -> str:
        """The subscription holding resource `name`: the reference's own, a `resources:` override,
        then `default_subscription`.

        Raises:
            SourceProblem: none is known.
        """
        if explicit:
            return explicit
        override = self.resource_overrides.get((kind, name.lower()))
        if override and override[0]:
            return override[0]
        if self.default_subscription:
            return self.default_subscription
        raise SourceProblem("invalid", f"no subscription known for {kind} '{name}': set default_subscription on store '{self.name}' or subscription on the reference")

    def resource_group_for(self, kind: str, name: str, explicit: str | None) -> str | None:
        if explicit:
            return explicit
        override = self.resource_overrides.get((kind, name.lower()))
        return override[1] if override else None


@dataclass
class RunContext:
    """State shared by every reference of one resolve run."""

    clients: AzureClients
    sql_suffix: str = "database.windows.net"
    flights: SingleFlight[Any] = field(default_factory=SingleFlight)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Reuse this process's recent storage key listings (core.sources.listed_keys); false lists
    # afresh (and refreshes what is kept).
    reuse_listings: bool = True

    def once(self, key: Any, fn: Callable[[], Any]) -> Any:
        """Run `fn` once per key in this run (shared listKeys, delegation keys, discovery)."""
        return self.flights.do(key, fn)


def constant(value: Any) -> Callable[[], Any]:
    """A function returning `value` (to seed `RunContext.once` with what was learnt on the way)."""
    return lambda: value


def resource_group_of(resource_id: str) -> str:
    """The resource group named in an ARM resource id (case-insensitive `resourceGroups` segment)."""
    parts = resource_id.split("/")
    return parts[[p.lower() for p in parts].index("resourcegroups") + 1]


def locate(
    ref: PlannedRef, store: StoreRuntime, run: RunContext, kind: str, name: str, label: str,
    list_resources: Callable[[str], Iterable[Any]],
) -> tuple[str, str]:
    """(subscription, resource group) of resource `name`: from the reference or a `resources:`
    entry, else found by listing the subscription's resources of that kind: once per run, and
    kept in the process like storage key listings (core.sources.listed_keys: the listing is
    throttled by ARM too).

    Raises:
        SourceProblem: no resource of that name in the subscription.
    """
    from core.sources.listed_keys import PROCESS_LISTED_KEYS

    subscription = store.subscription_for(kind, name, ref.param("subscription"))
    group = store.resource_group_for(kind, name, ref.param("resource_group"))
    if group:
        return subscription, group

    def discover() -> str:
        for item in list_resources(subscription):
            if item.name.lower() == name.lower():
                return resource_group_of(item.id)
        raise SourceProblem("not_found", f"{label} '{name}' not found in subscription {subscription}")

    def kept() -> str:
        key = (f"locate:{kind}", run.clients.cloud.arm_endpoint.lower(), subscription.lower(), name.lower(), store.identity_description)
        return str(PROCESS_LISTED_KEYS.get(key, store.listed_keys_ttl, discover, reuse=run.reuse_listings))

    return subscription, run.once(("locate", kind, subscription, name.lower(), store.name), kept)


STORAGE_SCOPE = "https://storage.azure.com/.default"


class Source(Protocol):
    """A `from:` kind: fetch one planned reference, and say what its references involve.

    `features` are declared (core.sources.kinds), never guessed from the kind's name: callers ask
    `registry.features(kind)` or the source's methods instead of switching on kinds.
    """

    kind: str
    features: Features

    def fetch(self, ref: PlannedRef, store: StoreRuntime, run: RunContext) -> Fetched:
        """The value of `ref`.

        Raises:
            SourceProblem: the referenced object is unusable.
            azure.core.exceptions.AzureError: from the SDK; the engine translates it.
        """
        ...

    def fetch_target(self, ref: PlannedRef) -> Hashable:
        """The service endpoint `ref`'s fetch talks to (a vault, an account): fetches of one
        target share its one-off round trips (challenge, token, listKeys)."""
        ...

    def keyvault_object(self, ref: PlannedRef) -> tuple[str, str] | None:
        """(vault, object name) that `ref` reads, as Key Vault events name them; None: not a Key Vault read."""
        ...

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        """The token scopes the store's credential needs to fetch `ref` (readiness checks them)."""
        ...

    def follows_active_key(self, ref: PlannedRef) -> tuple[str, str] | None:
        """(account kind, account) whose active key (account key rotation) `ref`'s value is made
        with: a rotation of that account must re-push it.  None: no account key involved."""
        ...

    def uses_delegation_key(self, ref: PlannedRef) -> bool:
        """Whether fetching `ref` needs a user delegation key (kept between runs in state.vault)."""
        ...

    def names(self, ref: PlannedRef) -> tuple[str, str]:
        """(what, where) of `ref` for people: `kv-source/db-password`, `kv-source`."""
        ...

    def minted_lifetime(self, ref: PlannedRef) -> timedelta | None:
        """The lifetime `ref` asks a minted value to have; None: the value's own (a token's)."""
        ...


class SourceDefaults:
    """What a source that declares nothing more does: no shared target, no Key Vault object,
    no account key, an ARM token."""

    kind: str
    features: Features = Features()

    def fetch_target(self, ref: PlannedRef) -> Hashable:
        return ("ref", ref.dedup_key)

    def keyvault_object(self, ref: PlannedRef) -> tuple[str, str] | None:
        return None

    def token_scopes(self, ref: PlannedRef, cloud: Any) -> set[str]:
        return {cloud.arm_scope}

    def follows_active_key(self, ref: PlannedRef) -> tuple[str, str] | None:
        return None

    def uses_delegation_key(self, ref: PlannedRef) -> bool:
        return False

    def names(self, ref: PlannedRef) -> tuple[str, str]:
        return ref.description, ref.description

    def minted_lifetime(self, ref: PlannedRef) -> timedelta | None:
        return None


_SIG = re.compile(r"(sig|signature|AccountKey|access_token)=([^&;\s'\"]+)", re.IGNORECASE)


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from an error message."""
    return _SIG.sub(lambda m: f"{m.group(1)}=***", text)


def translate_error(exc: BaseException) -> tuple[str, str, str | None]:
    """(reason, message, hint) for an exception raised while fetching; never includes values."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, SourceProblem):
        return exc.kind, scrub(str(exc)), None
    if isinstance(exc, ResourceNotFoundError):
        return "not_found", scrub(_first_line(exc)), None
    if (isinstance(exc, ClientAuthenticationError) and not isinstance(exc, HttpResponseError | ResourceNotFoundError)) or (
        isinstance(exc, ClientAuthenticationError) and getattr(exc, "status_code", None) in (None, 400, 401)
    ):
        message, hint = describe_identity_failure(str(getattr(exc, "message", None) or exc))
        return "identity", scrub(message), hint
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        text = scrub(str(exc.message or exc))
        if status == 403:
            return "access_denied", _first_line_text(text), denied_role_hint(exc)
        if status == 404:
            return "not_found", _first_line_text(text), None
        if status == 429:
            return "throttled", _first_line_text(text), "the service kept throttling past the retry deadline"
        return "error", f"HTTP {status}: {_first_line_text(text)}", None
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        text = _first_line(exc)
        # A token request that never reached the managed identity endpoint is an identity failure.
        if any(f"host='{h.rsplit(':', 1)[0]}', port={h.rsplit(':', 1)[1]}" in text for h in identity_endpoint_hosts()):
            return ("identity", f"the managed identity endpoint is unreachable ({scrub(text)})",
                    "check that the host has managed identity enabled (IDENTITY_ENDPOINT) and that the endpoint runs")
        return "network", scrub(text), None
    return "error", f"{type(exc).__name__}: {scrub(_first_line(exc))}", None


def _first_line(exc: BaseException) -> str:
    return _first_line_text(str(getattr(exc, "message", None) or exc))


def _first_line_text(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[0][:400] if lines else "no detail"
