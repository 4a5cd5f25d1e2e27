"""Resilience scenarios against the sandbox: faults, load, crashes and bad input.

Each scenario module exposes `run(ctx: ScenarioContext) -> ScenarioResult`.  The short form
(`ctx.scale == "short"`) runs inside the test suite and its invariants are asserted there; the
long form runs from `bench/soak.py`, which prints every scenario's figures as one table.
"""
