"""Use cases: what a trigger or the CLI asks of the core, as plain functions and objects over the config."""
