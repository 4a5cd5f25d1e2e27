"""core/runtime.py: one Runtime per config version holds ONE state store.  Sync, rotation and the
fetch audit all write through it (the audit with the client factory's short retry budget per
call, not a client or store of its own), and the engines a use case builds share it."""

from __future__ import annotations

from core.app.sync import engine
from core.push import SyncEngine
from core.state.audit import FanOutAuditSink, LoggingAuditSink, TableAuditSink
from core.state.tables import audit_row
from tests.configs import body_yaml, keyvault_target
from tests.world import World


def test_the_fetch_audit_and_every_engine_write_through_the_runtimes_one_state_store(world: World) -> None:
    runtime = world.runtime(body_yaml(envs={"app": {"LOG_LEVEL": "info"}}, targets={"t": keyvault_target("app", prefix=f"rt-{world.tag}-")}))
    try:
        state = runtime.state
        assert engine(runtime).state is state and SyncEngine(runtime).state is state
        audited = runtime.audit_state()
        assert audited.store is state and audited.options == runtime.clients.short_retry()
        sink = runtime.audit_sink()
        assert isinstance(sink, FanOutAuditSink) and any(isinstance(s, TableAuditSink) for s in sink.sinks)

        before = state.writes
        sink.record("someone", "env.fetch", "app", {"outcome": "ok"})
        assert state.writes == before + 1  # the row went through the same store (its write counter)
        rows = [r for r in state.query("audit", audit_row("x", "y", "z", {}).partition) if r.fields.get("actor") == "someone"]
        assert [r.fields.get("action") for r in rows] == ["env.fetch"]
    finally:
        runtime.close()


def test_a_runtime_without_a_state_section_audits_to_the_log_only() -> None:
    from core.config import parse_config
    from core.runtime import Runtime

    loaded = parse_config("version: 1\nsecretStores:\n  azure: {type: azure.managed_identity}\nenvs:\n  app: {LOG_LEVEL: info}\n",
                          "nostate.yaml", environ={})
    runtime = Runtime(loaded, environ={})
    try:
        assert isinstance(runtime.audit_sink(), LoggingAuditSink)  # no table to write
    finally:
        runtime.close()
