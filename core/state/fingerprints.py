"""Keyed fingerprints of values: HMAC-SHA256, so a state row or a tag never allows offline
guessing of a low-entropy secret.  The key lives in Key Vault or an app setting, never in state."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any


class Fingerprinter:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a fingerprint key must have at least 16 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Fingerprinter(key='***')"

    def of(self, value: Any) -> str:
        """32 hex characters identifying `value` (a str or a SecretValue) under this key."""
        reveal = getattr(value, "reveal", None)
        text = reveal() if reveal is not None else str(value)
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:32]

    def derive(self, purpose: str) -> Fingerprinter:
        """A fingerprinter under a key of its own for `purpose` (e.g. one target), derived from this
        one's key: fingerprints made for one purpose say nothing about those of another, and the
        derived key does not give this one back."""
        return Fingerprinter(hmac.new(self._key, b"vaultrelay-derive\0" + purpose.encode(), hashlib.sha256).digest())

    def of_mapping(self, values: dict[str, Any]) -> str:
        """One fingerprint for a whole bundle (names and values)."""
        digest = hmac.new(self._key, digestmod=hashlib.sha256)
        for name in sorted(values):
            digest.update(name.encode() + b"\0" + self.of(values[name]).encode() + b"\0")
        return digest.hexdigest()[:32]
