"""Azure Functions blueprints, one per trigger kind: thin shells over `core`."""
