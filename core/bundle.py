"""The result of resolving an env: values (redacted on display) and per-variable failures."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ResolvedValue:
    """One variable's value and its metadata.  `repr` never shows the value."""

    name: str
    value: Any  # core.values.SecretValue
    source: str  # e.g. "keyvault secret kv-source/db-password"
    store: str
    identity: str
    version: str | None = None
    expires_on: datetime | None = None
    content_type: str | None = None
    detail: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ResolvedValue(name={self.name!r}, value='***', source={self.source!r}, version={self.version!r})"

    @classmethod
    def literal(cls, name: str, value: str) -> ResolvedValue:
        """A value written in the config itself (no store, no identity)."""
        from core.values import SecretValue

        return cls(name=name, value=SecretValue(value), source="literal", store="", identity="")

    def fingerprint(self, key: bytes) -> str:
        """A keyed fingerprint of the value (HMAC-SHA256, hex, 32 chars): safe to store."""
        return hmac.new(key, _reveal(self.value).encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class ResolutionFailure:
    """Why one variable could not be resolved (never contains a value)."""

    name: str
    path: str  # YAML path of the reference, e.g. envs.production.DB.from
    reason: str  # not_found, access_denied, disabled, expired, not_yet_valid, throttled, network, identity, invalid
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        text = f"{self.path}: {self.reason}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


@dataclass
class Bundle:
    """An env's resolution: every variable is either in `values` or in `failures`."""

    env: str
    values: dict[str, ResolvedValue] = field(default_factory=dict)
    failures: dict[str, ResolutionFailure] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failures

    def as_plain_dict(self) -> dict[str, str]:
        """Name -> revealed value.  Only for handing values to their consumer (exec, fetch, push)."""
        return {name: _reveal(item.value) for name, item in sorted(self.values.items())}


def _reveal(value: Any) -> str:
    reveal = getattr(value, "reveal", None)
    return str(reveal()) if reveal is not None else str(value)
