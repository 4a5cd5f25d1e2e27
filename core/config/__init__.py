"""The config: YAML -> typed model, `${VAR}` interpolation, static validation, JSON Schema."""

from core.config.cloud import CloudEndpoints, resolve_cloud
from core.config.loader import LoadedConfig, config_path, load_config, parse_config
from core.config.model import Config, KeyVaultStore, ManagedIdentityStore, Reference, Variable

__all__ = [
    "CloudEndpoints", "Config", "KeyVaultStore", "LoadedConfig", "ManagedIdentityStore", "Reference", "Variable",
    "config_path", "load_config", "parse_config", "resolve_cloud",
]
