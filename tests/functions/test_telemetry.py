"""Telemetry through what function_app.py registers: metrics (an in-memory OpenTelemetry reader)
for a sync and a fetch, the operation id and structured fields on log records of an invocation,
no secret value in any metric attribute or log record, and Application Insights configured with
an endpoint that does not answer: the functions still answer.  Through the engine (as the CLI
and Key Vault events run it): env and target on the log records of a push, rotations and SAS
re-mints counted once each."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import yaml
from azure.functions._abc import RetryContext, TraceContext
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from core import telemetry
from core.app.rotate import rotate
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from demo.seed import EXAMPLE_SECRETS
from sandbox.client import SandboxClient, SandboxProcess
from tests.configs import body_yaml, keyvault_target, ref, secret_ref
from tests.core.test_rotation_account_keys_sandbox import cosmos_body, fresh_cosmos_account
from tests.functions.apihelpers import AUDIENCE, ROOT, body_json, request, serving, write_config
from tests.world import World

SECRET_VALUES = list(EXAMPLE_SECRETS.values())
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class _Trace(TraceContext):
    def __init__(self, trace_parent: str) -> None:
        self._parent = trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _Retry(RetryContext):
    retry_count = 0  # type: ignore[assignment]
    max_retry_count = 0  # type: ignore[assignment]
    exception = None  # type: ignore[assignment]


class InvocationContext(func.Context):
    """What the worker passes as `context`: invocation id, function name and W3C trace context."""

    def __init__(self, function_name: str, trace_id: str = TRACE_ID) -> None:
        self._invocation_id = str(uuid.uuid4())
        self._function_name = function_name
        self._trace = _Trace(f"00-{trace_id}-00f067aa0ba902b7-01")

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return threading.local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return str(ROOT)

    @property
    def trace_context(self) -> TraceContext:
        return self._trace

    @property
    def retry_context(self) -> RetryContext:
        return _Retry()


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def api(seeded: SandboxClient, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    """The example config with its own state tables and one Key Vault target for an env that
    mints nothing (minted SAS tokens live in the shared state vault other modules count on)."""
    path = write_config(tmp_path_factory.mktemp("telemetry") / "vaultrelay.yaml", seeded)
    config = yaml.safe_load(path.read_text())
    config["state"]["table_prefix"] = f"m{tag}"
    config["envs"]["metrics"] = {k: config["envs"]["production"][k] for k in ("LOG_LEVEL", "DATABASE_PASSWORD", "API_KEY", "DATA_SECRET")}
    config["access"]["metrics"] = config["access"]["production"]
    config["targets"] = {"vault": {"type": "keyvault", "env": "metrics", "store": "azure", "vault": "kv-target", "prefix": f"tm-{tag}-"}}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink())
    with serving(api):
        yield api
    api.close()


@pytest.fixture()
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.use_meter_provider(provider)
    yield reader
    telemetry.use_meter_provider(None)
    provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> its data points."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def assert_no_values_in(text: str) -> None:
    for value in SECRET_VALUES:
        assert value not in text


def call(functions: dict[str, Any], name: str, req: func.HttpRequest, context: func.Context | None = None) -> func.HttpResponse:
    return functions[name].get_user_function()(req, context)


def bearer(sandbox: SandboxClient, identity: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {sandbox.issue_token(identity, AUDIENCE)}"}


def test_a_sync_records_push_counters_and_resolve_latency(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, reader: InMemoryMetricReader,
) -> None:
    response = call(functions, "sync_env", request("POST", "/api/sync/metrics", headers=bearer(seeded, "admin"),
                                                   route_params={"env": "metrics"}), InvocationContext("sync_env"))
    assert response.status_code == 200, response.get_body()
    metrics = points(reader)
    pushes = {(p.attributes["target.kind"], p.attributes["outcome"]): p.value for p in metrics["vaultrelay.pushes"]}
    assert pushes == {("keyvault", "pushed"): 1}
    [latency] = metrics["vaultrelay.resolve.duration"]
    assert latency.count >= 1 and latency.sum > 0 and dict(latency.attributes) == {"outcome": "ok"}

    # Again: nothing changed, so the push is counted as unchanged.
    call(functions, "sync_env", request("POST", "/api/sync/metrics", headers=bearer(seeded, "admin"), route_params={"env": "metrics"}))
    pushes = {(p.attributes["target.kind"], p.attributes["outcome"]): p.value for p in points(reader)["vaultrelay.pushes"]}
    assert pushes == {("keyvault", "pushed"): 1, ("keyvault", "unchanged"): 1}
    assert_no_values_in(reader.get_metrics_data().to_json())


def test_a_fetch_records_resolve_latency_and_failures_by_reason(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, reader: InMemoryMetricReader,
) -> None:
    ok = call(functions, "get_env", request("GET", "/api/envs/production", headers=bearer(seeded, "caller"), route_params={"env": "production"}))
    assert ok.status_code == 200
    broken = call(functions, "get_env", request("GET", "/api/envs/broken", headers=bearer(seeded, "caller"), route_params={"env": "broken"}))
    assert broken.status_code == 502
    metrics = points(reader)
    outcomes = {p.attributes["outcome"]: p.count for p in metrics["vaultrelay.resolve.duration"]}
    assert outcomes == {"ok": 1, "failed": 1}
    failures = {(p.attributes["reason"], p.attributes["stage"]): p.value for p in metrics["vaultrelay.failures"]}
    assert failures == {("not_found", "resolve"): 1}
    exported = reader.get_metrics_data().to_json()
    assert_no_values_in(exported)
    assert "MISSING_SECRET" not in exported  # variable names are not attributes either


def test_log_records_of_an_invocation_carry_the_operation_id_and_fields_and_no_values(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, caplog: pytest.LogCaptureFixture,
) -> None:
    context = InvocationContext("get_env")
    with caplog.at_level(logging.DEBUG):
        response = call(functions, "get_env", request("GET", "/api/envs/production", headers=bearer(seeded, "caller"),
                                                      route_params={"env": "production"}), context)
        logging.getLogger("vaultrelay.outside").info("after the invocation")
    assert response.status_code == 200
    values = body_json(response)
    ours = [r for r in caplog.records if r.name.startswith("vaultrelay") and r.name != "vaultrelay.outside"]
    assert ours, "the fetch logged nothing"
    for record in ours:
        assert getattr(record, "vaultrelay.operation_id") == TRACE_ID, record.getMessage()
        assert getattr(record, "vaultrelay.invocation_id") == context.invocation_id
        assert getattr(record, "vaultrelay.function") == "get_env"
        assert getattr(record, "vaultrelay.env") == "production"
    [answer] = [r for r in ours if r.getMessage() == "GET /api/envs/production: 200"]
    assert getattr(answer, "vaultrelay.outcome") == "200"
    [outside] = [r for r in caplog.records if r.name == "vaultrelay.outside"]
    assert not hasattr(outside, "vaultrelay.operation_id")  # the context ends with the invocation
    everything = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {json.dumps({k: str(v) for k, v in r.__dict__.items()})}"
                           for r in caplog.records)
    for name, value in values.items():
        if name != "LOG_LEVEL":
            assert value not in everything, name
    assert_no_values_in(everything)


def test_without_a_trace_context_the_invocation_id_is_the_operation_id(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, caplog: pytest.LogCaptureFixture,
) -> None:
    class NoTrace(InvocationContext):
        @property
        def trace_context(self) -> TraceContext:
            return _Trace("")

    context = NoTrace("status")
    with caplog.at_level(logging.DEBUG, logger="vaultrelay"):
        assert call(functions, "status", request("GET", "/api/status"), context).status_code == 401
        call(functions, "health", request("GET", "/api/health", params={"deep": "1"}), None)
    records = [r for r in caplog.records if getattr(r, "vaultrelay.function", None) == "status"]
    assert all(getattr(r, "vaultrelay.operation_id") == context.invocation_id for r in records)
    # Called without a context (as tests do), an invocation still gets an id of its own.
    health = [r for r in caplog.records if getattr(r, "vaultrelay.function", None) == "health"]
    assert all(len(getattr(r, "vaultrelay.operation_id")) == 32 for r in health)


def rotations(reader: InMemoryMetricReader) -> dict[tuple[str, str], int]:
    return {(p.attributes["rotation.kind"], p.attributes["outcome"]): p.value for p in points(reader).get("vaultrelay.rotations", [])}


def test_log_records_of_a_push_carry_the_env_and_the_target(seeded: SandboxClient, caplog: pytest.LogCaptureFixture) -> None:
    """Through the engine, outside any invocation (as the CLI runs it): the SDK's request records
    of the target carry env and target, those of resolving the env only the env."""
    world = World(seeded)
    secret = world.secret("logged", "logged-value-1")
    engine = world.engine(body_yaml(envs={"logged": {"LOGGED": secret_ref(secret)}},
                                    targets={"logged-vault": keyvault_target("logged", prefix="vr-TAG-")}))
    from core.logs import set_sdk_log_level

    sdk_levels = set_sdk_log_level(logging.INFO)  # as with VAULTRELAY_SDK_LOG_LEVEL=INFO (the app's default is WARNING)
    try:
        with caplog.at_level(logging.INFO):
            report = engine.sync("logged")
            logging.getLogger("vaultrelay.outside").info("after the sync")
    finally:
        for name, level in sdk_levels.items():
            logging.getLogger(name).setLevel(level)
    assert [t.outcome for t in report.targets] == ["pushed"], report
    requests = [r for r in caplog.records if r.getMessage().startswith("Request URL:")]
    written = [r for r in requests if f"/secrets/vr-{world.tag}-logged" in r.getMessage().lower() and "Request method: 'PUT'" in r.getMessage()]
    assert written, "no record of the target write"
    for record in written:
        assert getattr(record, "vaultrelay.target") == "logged-vault"
        assert getattr(record, "vaultrelay.env") == "logged"
    reads = [r for r in requests if f"/secrets/{secret}" in r.getMessage()]
    assert reads, "no record of the source read"
    for record in reads:
        assert getattr(record, "vaultrelay.env") == "logged" and not hasattr(record, "vaultrelay.target")
    [outside] = [r for r in caplog.records if r.name == "vaultrelay.outside"]
    assert not hasattr(outside, "vaultrelay.env") and not hasattr(outside, "vaultrelay.target")
    assert "logged-value-1" not in "\n".join(r.getMessage() for r in caplog.records)


def test_a_forced_rotation_through_the_engine_is_counted_once(seeded: SandboxClient, reader: InMemoryMetricReader) -> None:
    world = World(seeded)
    account = fresh_cosmos_account(seeded, world.tag)
    engine = world.engine(cosmos_body(account))
    [report] = rotate(engine.runtime, f"cosmos:{account}", force=True)
    assert report.outcome == "rotated" and report.repushed == ["app"], report
    assert rotations(reader) == {("cosmos", "rotated"): 1}
    # Not due: the check is counted with its outcome, the rotation is not counted again.
    [again] = rotate(world.runtime(cosmos_body(account)))
    assert again.outcome == "not_due"
    assert rotations(reader) == {("cosmos", "rotated"): 1, ("cosmos", "not_due"): 1}
    assert "vaultrelay.failures" not in points(reader)


def test_sas_mints_are_counted_as_rotations_of_kind_sas(seeded: SandboxClient, reader: InMemoryMetricReader) -> None:
    world = World(seeded)
    # A container of its own: the minted token's state-vault secret is this test's alone.
    engine = world.engine(body_yaml(envs={
        "app": {
            "READ_SAS": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", container="cTAG",
                            permissions="rl", expiry="1h"),
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-")}))
    assert engine.sync().minted == ["app/READ_SAS"]
    assert rotations(reader) == {("sas", "issued"): 1}
    assert engine.sync().minted == []  # served from the state vault: nothing minted, nothing counted
    assert rotations(reader) == {("sas", "issued"): 1}
    assert engine.sync(force_mint=True).minted == ["app/READ_SAS"]
    assert rotations(reader) == {("sas", "issued"): 1, ("sas", "rotated"): 1}


def test_metric_attributes_are_names_only() -> None:
    assert telemetry.safe_name("keyvault") == "keyvault"
    assert telemetry.safe_name("storage:sandboxstore") == "storage:sandboxstore"
    assert telemetry.safe_name("s3cr3t value with spaces") == "other"
    assert telemetry.safe_name("x" * 65) == "other"
    assert telemetry.safe_name("AccountKey=abc+/=") == "other"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_DEAD_ENDPOINT_SCRIPT = """
import json, os, sys, time
import logging
logging.basicConfig(level=logging.WARNING)
import function_app
from core import telemetry
from tests.functions.apihelpers import request
fns = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
began = time.monotonic()
live = fns["health"](request("GET", "/api/health"), None)
fetch = fns["get_env"](request("GET", "/api/envs/production", headers={"Authorization": "Bearer " + os.environ["TEST_TOKEN"]},
                              route_params={"env": "production"}), None)
elapsed = time.monotonic() - began
from opentelemetry import metrics
flushed = metrics.get_meter_provider().force_flush(timeout_millis=5000)
print(json.dumps({"live": live.status_code, "fetch": fetch.status_code, "elapsed": elapsed, "status": telemetry.status()}))
"""


def test_an_unreachable_application_insights_endpoint_never_breaks_a_request(
    seeded: SandboxClient, sandbox_process: SandboxProcess, tmp_path: Path,
) -> None:
    port = _closed_port()
    config = write_config(tmp_path / "vaultrelay.yaml", seeded)
    env = {**os.environ, **sandbox_process.subprocess_env(), "VAULTRELAY_CONFIG": str(config), "TEST_TOKEN": seeded.issue_token("caller", AUDIENCE), "TMPDIR": str(tmp_path),
           "APPLICATIONINSIGHTS_CONNECTION_STRING": (f"InstrumentationKey={uuid.uuid4()};IngestionEndpoint=http://127.0.0.1:{port}/;"
                                                     f"LiveEndpoint=http://127.0.0.1:{port}/")}
    env.pop("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))  # + the sandbox's name resolution
    result = subprocess.run([sys.executable, "-c", _DEAD_ENDPOINT_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["status"] == {"azure_monitor": True, "reason": "configured"}
    assert outcome["live"] == 200 and outcome["fetch"] == 200, result.stderr[-4000:]
    assert outcome["elapsed"] < 30
    assert_no_values_in(result.stderr)
