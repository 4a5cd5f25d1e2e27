"""Push targets, one module per kind, one registry (`core.targets.registry`)."""
