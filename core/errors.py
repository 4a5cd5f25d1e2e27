"""vaultrelay's small error hierarchy.  Messages name places and objects, never values."""

from __future__ import annotations

from dataclasses import dataclass


class VaultRelayError(Exception):
    """Base of every error vaultrelay raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a config file: where it is and what was expected."""

    file: str
    line: int | None
    path: str
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        location = f"{where}: {self.path}" if self.path else where
        prefix = "" if self.severity == "error" else "warning: "
        return f"{location}: {prefix}{self.message}"


class ConfigError(VaultRelayError):
    """A config file is invalid; `problems` lists every problem found, all at once."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        summary = f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in config"
        super().__init__(summary + "\n" + "\n".join(f"  {p}" for p in errors))


class ResolutionError(VaultRelayError):
    """An env could not be resolved completely and the caller does not accept partial bundles."""


class NotFoundError(VaultRelayError):
    """An env, store or target named by a caller does not exist in the config."""
