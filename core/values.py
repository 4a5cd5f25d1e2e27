"""Secret values wrapped so that printing, logging or formatting them never shows them."""

from __future__ import annotations

from typing import Any


class SecretValue:
    """A resolved secret.  `str`, `repr` and `format` are redacted; `reveal()` gives the value.

    Equality compares values (so unchanged pushes can be skipped) without exposing them; the
    hash is of the value too, so a SecretValue is safe to keep in sets and dict keys.
    """

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if isinstance(value, SecretValue):
            value = value.reveal()
        object.__setattr__(self, "_value", str(value))

    def reveal(self) -> str:
        """The plain value.  Only for handing it to its consumer (exec, fetch, push)."""
        return self._value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("SecretValue is immutable")

    def __repr__(self) -> str:
        return "SecretValue('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SecretValue):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("SecretValue", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("SecretValue cannot be pickled")
