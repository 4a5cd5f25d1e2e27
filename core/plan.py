"""From a validated config to planned references (no network, no values).

Pure: no clients, no credentials, no values (the connections to the stores live in
`core.connections`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from core.compose import Composition, dependencies
from core.config import LoadedConfig, Reference
from core.errors import NotFoundError
from core.sources.base import PlannedRef

log = logging.getLogger("vaultrelay.plan")

@dataclass(frozen=True)
class EnvPlan:
    """What resolving an env involves: literals (not secret) and references."""

    env: str
    literals: dict[str, str]
    refs: list[PlannedRef]
    stores: dict[str, str] = field(default_factory=dict)  # store -> identity description
    composed: dict[str, Composition] = field(default_factory=dict)  # variables written as templates (core.compose)


def plan_reference(name: str, path: str, ref: Reference, store_config: Any) -> PlannedRef:
    """The normalized, hashable form of one `from:` block; its kind plans its params
    (core.sources.kinds)."""
    kind, params, description = ref.declaration.plan(ref, store_config)
    clean = tuple(sorted((k, v) for k, v in params.items() if v is not None))
    # Transforms shape one variable's value; the fetch (and its deduplication) is the source's.
    transforms = tuple((k, v) for k, v in (("decode", ref.decode), ("property", ref.property_), ("encode", ref.encode)) if v is not None)
    if transforms:
        description += " | " + " | ".join(f"{k} {v}" for k, v in transforms)
    return PlannedRef(name=name, path=path, store=ref.store, kind=kind, params=clean, description=description, transforms=transforms)


def plan_env(loaded: LoadedConfig, env: str) -> EnvPlan:
    """The plan of `env`.

    Raises:
        NotFoundError: no such env.
    """
    config = loaded.config
    if env not in config.envs:
        raise NotFoundError(f"no env '{env}' in {loaded.file} (envs: {', '.join(sorted(config.envs)) or 'none'})")
    literals: dict[str, str] = {}
    refs: list[PlannedRef] = []
    composed: dict[str, Composition] = {}
    for name, variable in config.envs[env].items():
        if variable.template is not None:
            composed[name] = Composition(name, f"envs.{env}.{name}.template", variable.template,
                                         tuple(sorted(dependencies(variable.template))))
        elif variable.from_ is None:
            assert variable.value is not None
            literals[name] = variable.value
        else:
            refs.append(plan_reference(name, f"envs.{env}.{name}.from", variable.from_, config.secretStores[variable.from_.store]))
    return EnvPlan(env=env, literals=literals, refs=refs, composed=composed)
