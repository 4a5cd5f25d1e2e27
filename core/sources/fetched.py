"""What a source returns, and the problems a source itself detects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Fetched:
    """A raw value and its metadata (the metadata never contains the value)."""

    value: str
    version: str | None = None
    expires_on: datetime | None = None
    content_type: str | None = None
    detail: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Fetched(value='***', version={self.version!r}, expires_on={self.expires_on!r})"


class SourceProblem(Exception):
    """A reference resolved to something unusable: disabled, expired, not a certificate, ...

    `kind` is a short machine-readable reason; the message names the object, never a value.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
