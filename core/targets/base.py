"""The target interface: read what a destination holds now, then push only what changed.

Each target kind implements `snapshot` (what is there: a stamp per name or an ETag for the whole
target, and which names are not ours) and `push` (ensure the desired state for the changed and
removed names).  Pushes are idempotent, so a run that dies half-way is completed by the next one.

Stamps are what drift is judged by: what identifies the content a target holds now, taken from
the read a sync makes anyway (a Key Vault listing gives each secret's latest version's created and
updated times; a blob has its ETag).  The engine records the stamp of each write; a different one
later means someone changed the target since.  A writer that can look at content more closely
(`holds`, one read per name) tells whether a changed target nevertheless holds exactly what
vaultrelay would write now: only asked when stamps do not settle it, never on an unchanged sync.

What vaultrelay writes on a target besides the values is in docs/config.md ("What a reader of
each place learns"): ownership marks, and on Key Vault secrets a fingerprint keyed for that
target and secret alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from core.ownership import MANAGED_BY, MANAGED_BY_VALUE
from core.state.fingerprints import Fingerprinter

if TYPE_CHECKING:
    from core.azure.clients import AzureClients

TAG_ENV = "vaultrelay-env"
TAG_TARGET = "vaultrelay-target"
# A fingerprint of the value under a key derived for this target and secret (Key Vault targets).
# Earlier versions wrote one under the state's own key; it is recognised, never written again.
TAG_FINGERPRINT = "vaultrelay-fingerprint"


@dataclass(frozen=True)
class DesiredItem:
    """One variable to publish (the value is a SecretValue; `repr` never shows it)."""

    name: str
    value: Any
    fingerprint: str
    expires_on: datetime | None = None
    content_type: str | None = None
    kind: str | None = None  # the source's kind of object (secret, certificate, key, template), for writers that care
    version: str | None = None  # the source object's version (a certificate's, for writers that import it)


@dataclass
class Snapshot:
    """What a target holds now, as far as vaultrelay can tell without reading values it does not need."""

    # name -> fingerprint of the current content, when the target gives it cheaply (app settings,
    # read whole); None: the name is absent.
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    # name -> stamp of the current content (`stamped` writers); None: the name is absent.
    stamps: dict[str, str | None] = field(default_factory=dict)
    etag: str | None = None  # whole-bundle targets: the stamp of the whole target (None: absent)
    foreign: set[str] = field(default_factory=set)  # names present but not owned by vaultrelay
    exists: bool = True


@dataclass(frozen=True)
class Change:
    adds: frozenset[str] = frozenset()
    updates: frozenset[str] = frozenset()
    removals: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.adds or self.updates or self.removals)

    @property
    def writes(self) -> frozenset[str]:
        return self.adds | self.updates


@dataclass(frozen=True)
class PushResult:
    etag: str | None = None  # whole-bundle targets: the stamp of what was written
    writes: int = 0
    stamps: dict[str, str] = field(default_factory=dict)  # per-variable `stamped` targets: name -> stamp written


class TargetError(Exception):
    """A target refused or failed a push; the message names the target and variable, never a value."""


class TargetWriter(Protocol):
    kind: str
    whole_bundle: bool  # True: any change rewrites everything (blob, bundle secret, webhook payload)
    # True: the target cannot mark what vaultrelay wrote (app settings have no tags), so the
    # engine records the names it is about to write before pushing them.
    ownership_in_state: bool
    # Optional `stamped: bool` (per-variable writers): True when `snapshot.stamps` and
    # `PushResult.stamps` are filled; otherwise drift is judged by `snapshot.fingerprints`.
    # Optional `holds(desired, names) -> set[str]`: of `names` (present and ours), those whose
    # content is exactly what vaultrelay would write now (value and its marks); whole-bundle
    # writers answer set(desired) or set().  May read each name once.

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        """Current state for `names` (desired plus last pushed); `recorded` are the names (and
        fingerprints) vaultrelay pushed or was about to push: they are vaultrelay's whatever the
        target's own marks say now.

        Raises:
            TargetError: the target cannot be read.
        """
        ...

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        """Make the target hold `desired` for the changed names and drop the removed ones.

        Raises:
            TargetError: nothing was written, or (per-variable targets) the next run completes it.
        """
        ...


@dataclass
class TargetContext:
    """What writers need: SDK clients, the writing identity, fingerprints, the cloud."""

    name: str
    clients: AzureClients
    credential: Any
    fingerprinter: Fingerprinter
    subscription: str | None = None
    resolve_value: Any = None  # callable(Variable) -> str, for webhook signing keys
    # Shared by the writers of one sync run (e.g. a vault's listing, kept a short while; RUN_ENVS:
    # how many envs the run syncs, so a writer can read a few names instead of a whole listing).
    run_cache: dict[str, Any] = field(default_factory=dict)
    # What the push record says vaultrelay's last write left: name -> stamp (per-variable), and
    # the whole target's stamp.  A deleted secret whose stamp is one of these is vaultrelay's.
    recorded_stamps: dict[str, str] = field(default_factory=dict)
    recorded_etag: str | None = None

    def subscription_for(self, subscription: str | None, what: str) -> str:
        """The ARM subscription of a resource the target writes: its own `subscription`, else
        the writing store's default.

        Raises:
            TargetError: neither is known (names the target and `what`, e.g. "site app1").
        """
        found = subscription or self.subscription
        if not found:
            raise TargetError(f"target {self.name}: no subscription known for {what}")
        return found


RUN_ENVS = "run envs"


def owned_by(tags: dict[str, str] | None, target: str) -> bool:
    """True when `tags` mark an object as vaultrelay's for target `target`."""
    tags = tags or {}
    return tags.get(MANAGED_BY) == MANAGED_BY_VALUE and tags.get(TAG_TARGET) == target


def ownership_tags(env: str, target: str) -> dict[str, str]:
    """The tags vaultrelay writes on every Key Vault secret it pushes: marks, never values."""
    return {MANAGED_BY: MANAGED_BY_VALUE, TAG_ENV: env, TAG_TARGET: target}


def same_marks(tags: dict[str, str] | None, env: str, target: str, fingerprint: str, static: dict[str, str] | None = None) -> bool:
    """True when `tags` are exactly the tags vaultrelay would write (with this fingerprint and the
    target's static `tags`)."""
    return dict(tags or {}) == {**(static or {}), **ownership_tags(env, target), TAG_FINGERPRINT: fingerprint}
