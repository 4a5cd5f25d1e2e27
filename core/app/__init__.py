"""Use cases: plain functions over the engine, called by the CLI and the Function triggers."""
