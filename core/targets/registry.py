"""The one registry of target kinds, filled in one place; duplicates are an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.targets.app_settings import AppSettingsTargetWriter
from core.targets.base import TargetContext, TargetWriter
from core.targets.blob import BlobTargetWriter
from core.targets.container_app import ContainerAppTargetWriter
from core.targets.keyvault import KeyVaultTargetWriter
from core.targets.webhook import WebhookTargetWriter

Factory = Callable[[Any, TargetContext], TargetWriter]


class TargetRegistry:
    def __init__(self) -> None:
        self._factories: dict[str, Factory] = {}

    def register(self, kind: str, factory: Factory) -> None:
        """Raises: ValueError: `kind` is already registered."""
        if kind in self._factories:
            raise ValueError(f"a target of kind {kind!r} is already registered")
        self._factories[kind] = factory

    def build(self, config: Any, ctx: TargetContext) -> TargetWriter:
        """Raises: KeyError: unknown kind."""
        return self._factories[config.type](config, ctx)

    def kinds(self) -> list[str]:
        return sorted(self._factories)


def default_targets() -> TargetRegistry:
    registry = TargetRegistry()
    registry.register("keyvault", KeyVaultTargetWriter)
    registry.register("blob", BlobTargetWriter)
    registry.register("app_settings", AppSettingsTargetWriter)
    registry.register("container_app", ContainerAppTargetWriter)
    registry.register("webhook", WebhookTargetWriter)
    return registry
