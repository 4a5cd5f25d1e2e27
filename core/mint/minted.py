"""Values vaultrelay mints (SAS tokens and Entra access tokens), kept between runs in the state
vault and renewed before expiry.

A minted reference in an env with targets is not re-minted on every run (that would change the
bundle every time).  The current token lives in `state.vault` as a secret named after the
reference's parameters, with `expires_on` and tags (`signed-with`, `issued`).  It is re-minted when
less than `rotate_before` of its lifetime remains (default a third), when the key that signed it
is no longer the active key, or on `--force`.  The old token is not revoked: it stays valid until
its own expiry, which is the consumers' overlap window.  A new token is verified with one cheap
authorized call before it is stored or pushed anywhere.  User delegation keys that sign SAS are
kept in the same vault between runs (`core.mint.sas.StoredDelegationKeys`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from core import telemetry
from core.azure.protocols import SecretClientLike
from core.bundle import Bundle, ResolutionFailure, ResolvedValue
from core.mint.sas import StoredDelegationKeys
from core.ownership import MANAGED_BY, MANAGED_BY_VALUE
from core.permissions.matrix import denied_note, user_delegation_sas_hint
from core.sources.base import PlannedRef
from core.sources.registry import sources
from core.values import SecretValue

log = logging.getLogger("vaultrelay.minted")

TAG_SIGNED_WITH = "signed-with"
TAG_ISSUED = "issued"
TAG_REFERENCE = "vaultrelay-reference"


def minted_secret_name(ref: PlannedRef) -> str:
    digest = hashlib.sha256(repr((ref.store, ref.params)).encode()).hexdigest()[:24]
    return f"vr-{ref.kind}-{digest}"


@dataclass(frozen=True)
class MintOutcome:
    name: str  # variable
    secret: str
    minted: bool
    reason: str
    expires_on: datetime | None


class MintedValues:
    """Serves minted references (SAS and access tokens) from the state vault, minting when due and
    verifying a new SAS before it is stored."""

    def __init__(
        self, broker: Any, vault_client: SecretClientLike, *, active_key: Callable[[str, str], str],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC), on_mint: Callable[[PlannedRef, MintOutcome], None] | None = None,
    ) -> None:
        self.broker = broker
        self.vault = vault_client
        self.active_key = active_key
        self.clock = clock
        self.on_mint = on_mint
        self.outcomes: list[MintOutcome] = []
        # User delegation keys live next to the tokens they sign, reused across runs and instances.
        self.delegation_keys = StoredDelegationKeys(vault_client, clock=clock)

    def fill(self, env: str, refs: list[PlannedRef], bundle: Bundle, *, force: bool = False, dry_run: bool = False) -> None:
        """Put the current token of every minted reference in `bundle` (values or failures)."""
        from azure.core.exceptions import ResourceNotFoundError

        for ref in refs:
            secret = minted_secret_name(ref)
            try:
                current = self.vault.get_secret(secret)
            except ResourceNotFoundError:
                current = None
            except Exception as exc:
                denied = denied_note(exc, "state:vault")
                bundle.failures[ref.name] = ResolutionFailure(ref.name, ref.path, "access_denied" if denied else "state",
                                                              f"cannot read minted SAS {secret}: {type(exc).__name__}", denied[2:] or None)
                continue
            reason = self._due(ref, current, force)
            if reason is None:
                assert current is not None
                bundle.values[ref.name] = ResolvedValue(
                    name=ref.name, value=SecretValue(current.value), source=ref.description, store=ref.store, identity="minted",
                    version=current.properties.version, expires_on=current.properties.expires_on, content_type=current.properties.content_type,
                    detail={"kind": ref.kind, "signed_with": (current.properties.tags or {}).get(TAG_SIGNED_WITH, "")},
                )
                continue
            if dry_run:
                bundle.failures[ref.name] = ResolutionFailure(ref.name, ref.path, "would_mint", f"a new SAS would be minted ({reason})")
                continue
            # Counted here, whoever syncs: rotation.kind sas (or token), issued / rotated / error.
            try:
                self._mint(env, ref, secret, reason, bundle)
            except Exception:
                telemetry.record_rotation(ref.kind, "error")
                raise
            outcome = "error" if ref.name in bundle.failures else "issued" if reason == "first issue" else "rotated"
            telemetry.record_rotation(ref.kind, outcome)

    def _due(self, ref: PlannedRef, current: Any, force: bool) -> str | None:
        if force:
            return "forced"
        if current is None or not current.value:
            return "first issue"
        props = current.properties
        if props.expires_on is None:
            return "no expiry recorded"
        now = self.clock()
        source = sources().get(ref.kind)
        lifetime = source.minted_lifetime(ref)
        if lifetime is None:  # e.g. an access token: its own lifetime, from when it was stored
            created = props.created_on or now
            lifetime = max(props.expires_on - created, timedelta(minutes=5))
        rotate_before = timedelta(seconds=float(ref.param("rotate_before_s") or lifetime.total_seconds() / 3))
        if props.expires_on - now <= rotate_before:
            return f"less than {rotate_before} left"
        signed_with = (props.tags or {}).get(TAG_SIGNED_WITH)
        follows = source.follows_active_key(ref)  # signed with an account key: the active one?
        if follows is not None and signed_with != self.active_key(*follows):
            return f"signed with {signed_with}, active key is {self.active_key(*follows)}"
        return None

    def _mint(self, env: str, ref: PlannedRef, secret: str, reason: str, bundle: Bundle) -> None:
        minted = self.broker.resolve_refs(env, [ref], active_key=self.active_key, fresh=True, delegation_keys=self.delegation_keys)
        if ref.name in minted.failures:
            bundle.failures[ref.name] = minted.failures[ref.name]
            return
        item = minted.values[ref.name]
        problem = verify_sas(self.broker, ref, item.value.reveal()) if sources().features(ref.kind).verify_minted else None
        if problem:
            if ref.param("sas_type") != "user_delegation":
                # The key that signed it was refused: the listing this process kept is stale.
                from core.sources.listed_keys import forget_listed_keys

                forget_listed_keys(ref.param("account"))
            # A user delegation SAS works only as far as its signer's data role goes: say which one.
            denied = ref.param("sas_type") == "user_delegation" and "AuthorizationPermissionMismatch" in problem
            hint = user_delegation_sas_hint(ref.param("account"), ref.param("container"), str(ref.param("permissions"))) if denied else None
            bundle.failures[ref.name] = ResolutionFailure(ref.name, ref.path, "access_denied" if denied else "verification_failed",
                                                          f"the new SAS did not work: {problem}; not published", hint)
            return
        signed_with = item.detail.get("signed_with", "")
        stored = self.vault.set_secret(
            secret, item.value.reveal(), content_type=item.content_type or "application/x-sas-token", expires_on=item.expires_on,
            tags={MANAGED_BY: MANAGED_BY_VALUE, TAG_SIGNED_WITH: signed_with, TAG_ISSUED: self.clock().isoformat(timespec="seconds"),
                  TAG_REFERENCE: ref.description[:250]},
        )
        bundle.values[ref.name] = ResolvedValue(
            name=ref.name, value=item.value, source=ref.description, store=ref.store, identity=item.identity,
            version=stored.properties.version, expires_on=item.expires_on, content_type=item.content_type,
            detail={"kind": ref.kind, "signed_with": signed_with},
        )
        outcome = MintOutcome(ref.name, secret, True, reason, item.expires_on)
        self.outcomes.append(outcome)
        log.info("minted SAS for %s (%s), expires %s", ref.name, reason, item.expires_on)
        if self.on_mint is not None:
            self.on_mint(ref, outcome)


def verify_sas(broker: Any, ref: PlannedRef, token: str) -> str | None:
    """One cheap authorized call with the new token; None when it works (or cannot be checked
    without writing), else why it failed.  A 404 proves authorization passed."""
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    account = ref.param("account")
    permissions = str(ref.param("permissions"))
    try:
        if ref.param("table"):
            if "r" not in permissions:
                return None
            table = broker.clients.sas_table_client(account, ref.param("table"), token)
            next(iter(table.query_entities("PartitionKey eq 'vaultrelay-verify'", results_per_page=1)), None)
            return None
        service = broker.clients.sas_blob_service(account, token)
        container = ref.param("container")
        if container and ref.param("blob"):
            if "r" not in permissions:
                return None
            service.get_blob_client(container, ref.param("blob")).get_blob_properties()
        elif container:
            if "l" in permissions:
                next(iter(service.get_container_client(container).list_blobs(results_per_page=1)), None)
            elif "r" in permissions:
                service.get_container_client(container).get_blob_client("vaultrelay-verify").get_blob_properties()
            else:
                return None
        else:
            services = str(ref.param("services") or "b")
            if "b" not in services or "l" not in permissions or "s" not in str(ref.param("resource_types") or "sco"):
                return None
            next(iter(service.list_containers(results_per_page=1)), None)
    except ResourceNotFoundError:
        return None
    except HttpResponseError as exc:
        return f"HTTP {exc.status_code} {getattr(exc, 'error_code', None) or ''}".strip()
    return None
