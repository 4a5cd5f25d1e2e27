"""The target interface: read what a destination holds now, then push only what changed.

Each target kind implements `snapshot` (what is there: fingerprints or an ETag, and which names
are not ours) and `push` (ensure the desired state for the changed and removed names).  Pushes are
idempotent, so a run that dies half-way is completed by the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from core.state.fingerprints import Fingerprinter

MANAGED_BY = "managed-by"
MANAGED_BY_VALUE = "vaultrelay"
TAG_ENV = "vaultrelay-env"
TAG_TARGET = "vaultrelay-target"
TAG_FINGERPRINT = "vaultrelay-fingerprint"


@dataclass(frozen=True)
class DesiredItem:
    """One variable to publish (the value is a SecretValue; `repr` never shows it)."""

    name: str
    value: Any
    fingerprint: str
    expires_on: datetime | None = None
    content_type: str | None = None


@dataclass
class Snapshot:
    """What a target holds now, as far as vaultrelay can tell without reading values it does not need."""

    fingerprints: dict[str, str | None] = field(default_factory=dict)  # name -> fingerprint of current content
    etag: str | None = None
    foreign: set[str] = field(default_factory=set)  # names present but not owned by vaultrelay
    exists: bool = True
    # Whole-bundle targets: the bundle fingerprint vaultrelay stamped on what is there now (blob
    # metadata, bundle secret tag); equal to the desired one means the target already holds it.
    bundle_fingerprint: str | None = None


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
    etag: str | None = None
    writes: int = 0


class TargetError(Exception):
    """A target refused or failed a push; the message names the target and variable, never a value."""


class TargetWriter(Protocol):
    kind: str
    whole_bundle: bool  # True: any change rewrites everything (blob, bundle secret, webhook payload)
    # True: the target cannot mark what vaultrelay wrote (app settings have no tags), so the
    # engine records the names it is about to write before pushing them.
    ownership_in_state: bool

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        """Current state for `names` (desired plus last pushed); `recorded` are the names (and
        fingerprints) vaultrelay pushed or was about to push.

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
    clients: Any
    credential: Any
    fingerprinter: Fingerprinter
    subscription: str | None = None
    resolve_value: Any = None  # callable(Variable) -> str, for webhook signing keys
    # Shared by the writers of one sync run (e.g. a vault's listing, kept a short while).
    run_cache: dict[str, Any] = field(default_factory=dict)
