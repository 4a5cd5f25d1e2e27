"""The one registry of sources, filled in one place; duplicates are an error."""

from __future__ import annotations

from functools import cache

from core.sources.base import Source
from core.sources.cosmos import CosmosSource
from core.sources.keyvault import KeyVaultCertificateSource, KeyVaultKeySource, KeyVaultSecretSource
from core.sources.kinds import Features
from core.sources.sql import SqlSource
from core.sources.storage import SasSource, StorageKeySource
from core.sources.token import TokenSource


class SourceRegistry:
    def __init__(self) -> None:
        self._sources: dict[str, Source] = {}

    def register(self, source: Source) -> None:
        """Add `source` under its kind.

        Raises:
            ValueError: a source of that kind is already registered.
        """
        if source.kind in self._sources:
            raise ValueError(f"a source of kind {source.kind!r} is already registered")
        self._sources[source.kind] = source

    def get(self, kind: str) -> Source:
        """The source of `kind`.

        Raises:
            KeyError: no such kind.
        """
        return self._sources[kind]

    def kinds(self) -> list[str]:
        return sorted(self._sources)

    def features(self, kind: str) -> Features:
        """What references of `kind` declare (core.sources.kinds.Features).

        Raises:
            KeyError: no such kind.
        """
        return self._sources[kind].features


def default_registry() -> SourceRegistry:
    registry = SourceRegistry()
    for source in (
        KeyVaultSecretSource(), KeyVaultCertificateSource(), KeyVaultKeySource(),
        StorageKeySource(), SasSource(), CosmosSource(), SqlSource(), TokenSource(),
    ):
        registry.register(source)
    return registry


@cache
def sources() -> SourceRegistry:
    """This process's default registry (sources hold no state: one serves every run)."""
    return default_registry()
