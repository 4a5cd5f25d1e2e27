"""Use cases: plain functions over a runtime (the engine, its state and clients)."""
