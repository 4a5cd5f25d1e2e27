"""Sync under injected failures, against the sandbox: the state Table service, a Key Vault target
failing half-way, a blob target (503 and a real 412 from a concurrent writer), the app settings
PUT, a webhook answering 500.

Each time: the report (and `status`, where state can still be written) names the env, the target
and the cause, never a value; the target is fully updated or left exactly as it was (a per-variable
Key Vault target may hold the secrets written before the failure, each complete and tagged, and the
push record does not claim them); after the fault is cleared the next sync writes exactly what is
missing, counted with the sandbox's counters.

Clients are built without retries, so an injected fault is the final answer of one request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.mgmt.web import WebSiteManagementClient
from azure.mgmt.web.models import StringDictionary
from azure.storage.blob import ContainerClient

from core.azure.clients import AzureClients
from core.azure.retry import RetrySettings
from core.config.cloud import resolve_cloud
from core.connections import StoreConnections
from core.push import SyncEngine
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext
from core.targets.blob import BlobTargetWriter
from core.targets.registry import TargetRegistry, default_targets
from sandbox.client import SandboxClient
from sandbox.receiver import serve_https
from tests.configs import app_settings_target, blob_target, body_yaml, keyvault_target, secret_ref, webhook_target
from tests.world import World, is_write, target_writes

STATE = "sandboxstore"  # the state tables' account in World's config
SITE = "sandbox-web"


class FaultWorld(World):
    def engine(self, body: str, registry: TargetRegistry | None = None, **kwargs: Any) -> SyncEngine:
        loaded = self.config(body, **kwargs)
        clients = AzureClients(resolve_cloud(loaded.config.cloud, os.environ), retry=RetrySettings(total=0))
        engine = SyncEngine(StoreConnections(loaded, clients=clients), registry=registry)
        assert engine.fingerprinter is not None  # key read and vault challenge cached before faults go in
        engine.state.ensure_tables()
        return engine


@pytest.fixture()
def world(seeded: SandboxClient, clean_faults: SandboxClient) -> FaultWorld:
    return FaultWorld(seeded)


def counted(sandbox: SandboxClient, prefix: str, status: str | None = None) -> int:
    """Requests counted under endpoints starting with `prefix` (optionally with that status)."""
    return sum(n for k, n in sandbox.counters()["by_endpoint_status"].items()
               if k.startswith(prefix) and (status is None or k.rsplit(":", 1)[1] == status))


def seed_where(rate: float, outcomes: list[bool]) -> int:
    """A fault seed whose successive draws fail (True) or pass (False) in the order given."""
    for seed in range(10_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in outcomes] == outcomes:
            return seed
    raise AssertionError("no seed found")


def kv_body(world: World, *values: str) -> str:
    names = [world.secret(n, v) for n, v in zip(("alpha", "beta", "gamma"), values, strict=True)]
    return body_yaml(envs={"app": {n.split("-")[0].upper(): secret_ref(n) for n in names}},
                     targets={"vault": keyvault_target("app", prefix="vr-TAG-")})


def pushed(world: World, variable: str) -> str | None:
    try:
        return str(world.target.get_secret(f"vr-{world.tag}-{variable.lower()}").value)
    except ResourceNotFoundError:
        return None


def status_of(engine: SyncEngine, target: str) -> dict[str, Any]:
    return next(row for row in engine.status() if row["target"] == target)


def assert_clear(error: str | None, *needles: str, secrets: tuple[str, ...] = ()) -> None:
    assert error, "no error reported"
    for needle in needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    for secret in secrets:
        assert secret not in error


# ---- the state Table service --------------------------------------------------------------------
@pytest.mark.parametrize("fault", [{"error_rate": 1.0, "error_status": 503}, {"drop_rate": 1.0}], ids=["503", "dropped"])
def test_state_reads_failing_push_nothing_and_say_so(world: FaultWorld, fault: dict[str, Any]) -> None:
    body = kv_body(world, "a-1", "b-1", "g-1")
    assert world.engine(body).sync().ok
    world.source.set_secret(f"alpha-{world.tag}", "a-2")
    engine = world.engine(body)
    world.sandbox.set_faults([{"service": "storage", "target": STATE, "operation": "table:GET", **fault}])
    world.sandbox.reset_counters()
    report = engine.sync()
    (target,) = report.targets
    assert not report.ok and target.outcome == "error" and target.writes == 0
    cause = "HTTP 503" if "error_rate" in fault else "Service"
    assert_clear(target.error, f"state table t{world.tag}pushes unavailable (reading)", cause,
                 "nothing pushed", secrets=("a-1", "a-2"))
    assert (target.env, target.target) == ("app", "vault")
    assert target_writes(world.sandbox) == {} and pushed(world, "alpha") == "a-1"

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    again = world.engine(body).sync()
    assert again.ok and (again.targets[0].updates, again.targets[0].writes) == (["ALPHA"], 1)
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 1} and pushed(world, "alpha") == "a-2"
    assert status_of(world.engine(body), "vault")["last_error"] == ""


def test_state_writes_failing_before_the_push_push_nothing(world: FaultWorld) -> None:
    body = kv_body(world, "a-1", "b-1", "g-1")
    assert world.engine(body).sync().ok
    world.source.set_secret(f"beta-{world.tag}", "b-2")
    engine = world.engine(body)
    world.sandbox.set_faults([{"service": "storage", "target": STATE, "operation": op, "error_rate": 1.0, "error_status": 503}
                              for op in ("table:POST", "table:PUT", "table:DELETE")])
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert target.outcome == "error" and target.writes == 0
    assert_clear(target.error, f"state table t{world.tag}leases unavailable (writing): HTTP 503", "nothing pushed", secrets=("b-2",))
    assert target_writes(world.sandbox) == {} and pushed(world, "beta") == "b-1"

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.updates, again.writes) == ("pushed", ["BETA"], 1)
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 1} and pushed(world, "beta") == "b-2"


def test_state_write_failing_after_the_push_is_reported_and_recorded_next_run_without_rewriting(world: FaultWorld) -> None:
    body = kv_body(world, "a-1", "b-1", "g-1")
    assert world.engine(body).sync().ok
    world.source.set_secret(f"alpha-{world.tag}", "a-2")
    engine = world.engine(body)
    # The lease is created (POST) and released (DELETE); the push record update (PUT) fails.
    world.sandbox.set_faults([{"service": "storage", "target": STATE, "operation": "table:PUT", "error_rate": 1.0, "error_status": 503}])
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert (target.outcome, target.writes) == ("error", 1)
    assert_clear(target.error, "pushed (1 writes) but the push record was not written", f"t{world.tag}pushes", "HTTP 503", secrets=("a-2",))
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 1} and pushed(world, "alpha") == "a-2"
    record = status_of(world.engine(body), "vault")
    assert record["outcome"] == "ok" and record["last_error"] == ""  # the old record: it claims nothing new

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.writes, again.drift) == ("recorded", 0, [])  # in place: not rewritten, not drift
    assert target_writes(world.sandbox) == {}
    assert counted(world.sandbox, "storage:table:PUT", "204") == 1  # the push record, once
    engine = world.engine(body)
    writes_before = engine.state.writes
    world.sandbox.reset_counters()
    (settled,) = engine.sync().targets
    assert settled.outcome == "unchanged" and engine.state.writes == writes_before
    assert {k: v for k, v in world.sandbox.counters()["by_endpoint"].items() if is_write(k)} == {}


# ---- Key Vault target failing half-way ------------------------------------------------------------
def test_keyvault_target_failing_half_way_is_not_recorded_and_the_next_run_writes_only_the_rest(world: FaultWorld) -> None:
    """Secrets are written concurrently: one that fails does not stop the others; the target is
    reported with the failing secret and the count written, not recorded, and the next run
    writes only what is missing (what was written is neither rewritten nor taken for drift)."""
    body = kv_body(world, "a-1", "b-1", "g-1")
    engine = world.engine(body)
    beta_fails = {"service": "keyvault", "target": "kv-target", "operation": "SetSecret",
                  "path_prefix": f"/secrets/vr-{world.tag}-beta", "error_rate": 1.0, "error_status": 503}
    world.sandbox.set_faults([beta_fails])
    world.sandbox.reset_counters()
    (first,) = engine.sync().targets
    assert (first.outcome, first.writes) == ("error", 0)
    assert_clear(first.error, "target vault", f"vr-{world.tag}-beta", "kv-target", "HTTP 503", "2 of 3 writes done", secrets=("b-1",))
    assert counted(world.sandbox, "keyvault:SetSecret:200") == 2 and counted(world.sandbox, "keyvault:SetSecret:503") >= 1
    assert (pushed(world, "alpha"), pushed(world, "beta"), pushed(world, "gamma")) == ("a-1", None, "g-1")
    status = status_of(world.engine(body), "vault")
    assert (status["outcome"], status["variables"]) == ("error", 0) and "2 of 3 writes done" in status["last_error"]

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (second,) = world.engine(body).sync().targets
    assert (second.outcome, second.adds, second.writes, second.drift) == ("pushed", ["BETA"], 1, [])
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 1}
    assert (pushed(world, "alpha"), pushed(world, "beta"), pushed(world, "gamma")) == ("a-1", "b-1", "g-1")
    status = status_of(world.engine(body), "vault")
    assert (status["outcome"], status["variables"], status["last_error"], status["drift"]) == ("ok", 3, "", "")

    # An update of all three where two fail: both are named in the error; the next run writes
    # those two only.
    for name, value in (("alpha", "a-2"), ("beta", "b-2"), ("gamma", "g-2")):
        world.source.set_secret(f"{name}-{world.tag}", value)
    engine = world.engine(body)
    gamma_fails = {**beta_fails, "path_prefix": f"/secrets/vr-{world.tag}-gamma"}
    world.sandbox.set_faults([beta_fails, gamma_fails])
    (third,) = engine.sync().targets
    assert third.outcome == "error" and "(and 1 more; 1 of 3 writes done" in (third.error or "")
    assert (pushed(world, "alpha"), pushed(world, "beta"), pushed(world, "gamma")) == ("a-2", "b-1", "g-1")
    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (fourth,) = world.engine(body).sync().targets
    assert (fourth.outcome, fourth.updates, fourth.writes, fourth.drift) == ("pushed", ["BETA", "GAMMA"], 2, [])
    assert target_writes(world.sandbox) == {"keyvault:SetSecret": 2}
    assert (pushed(world, "alpha"), pushed(world, "beta"), pushed(world, "gamma")) == ("a-2", "b-2", "g-2")


# ---- blob target ----------------------------------------------------------------------------------
def blob_body(world: World, value: str) -> str:
    name = world.secret("blobby", value)
    return body_yaml(envs={"app": {"BLOBBY": secret_ref(name)}}, targets={"blob": blob_target("app", "fail-TAG.env")})


def blob_client(world: World) -> Any:
    return ContainerClient(world.sandbox.storage_endpoint("sandboxdata"), "bundles", credential=world.admin).get_blob_client(f"fail-{world.tag}.env")


def test_blob_write_failing_leaves_the_blob_as_it_was(world: FaultWorld) -> None:
    body = blob_body(world, "v-1")
    assert world.engine(body).sync().ok
    blob = blob_client(world)
    before = (blob.download_blob().readall(), blob.get_blob_properties().etag)
    world.source.set_secret(f"blobby-{world.tag}", "v-2")
    engine = world.engine(body)
    world.sandbox.set_faults([{"service": "storage", "target": "sandboxdata", "operation": "blob:PUT", "error_rate": 1.0, "error_status": 503}])
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert (target.outcome, target.writes) == ("error", 0)
    assert_clear(target.error, "target blob", "bundles/fail-", "HTTP 503", secrets=("v-1", "v-2"))
    assert (blob.download_blob().readall(), blob.get_blob_properties().etag) == before
    assert "HTTP 503" in status_of(world.engine(body), "blob")["last_error"]

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.writes, again.drift) == ("pushed", 1, [])
    assert target_writes(world.sandbox) == {"storage:blob:PUT": 1}
    assert blob.download_blob().readall() == b"BLOBBY=v-2\n"
    assert status_of(world.engine(body), "blob")["last_error"] == ""


class ConcurrentBlobWriter:
    """The blob writer, with another instance pushing the same bundle between our snapshot and
    our write (what a second vaultrelay instance whose lease expired would do)."""

    kind = "blob"
    whole_bundle = True
    ownership_in_state = False

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.inner = BlobTargetWriter(config, ctx)
        self.other = BlobTargetWriter(config, ctx)

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        return self.inner.snapshot(names, recorded)

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        self.other.push(env, desired, change, self.other.snapshot(set(desired), {}))
        return self.inner.push(env, desired, change, snapshot)


def test_blob_etag_conflict_from_a_concurrent_writer_is_an_error_and_the_next_run_records_without_rewriting(world: FaultWorld) -> None:
    body = blob_body(world, "v-1")
    assert world.engine(body).sync().ok
    world.source.set_secret(f"blobby-{world.tag}", "v-2")
    registry = TargetRegistry()
    registry.register("blob", ConcurrentBlobWriter)
    world.sandbox.reset_counters()
    (target,) = world.engine(body, registry=registry).sync().targets
    assert target.outcome == "error"
    assert_clear(target.error, "target blob", "changed during the push", secrets=("v-2",))
    assert counted(world.sandbox, "storage:blob:PUT", "412") == 1 and counted(world.sandbox, "storage:blob:PUT", "201") == 1
    blob = blob_client(world)
    assert blob.download_blob().readall() == b"BLOBBY=v-2\n"  # the other instance's complete write

    world.sandbox.reset_counters()
    (again,) = world.engine(body, registry=default_targets()).sync().targets
    assert (again.outcome, again.writes, again.drift) == ("recorded", 0, [])
    assert target_writes(world.sandbox) == {}
    status = status_of(world.engine(body), "blob")
    assert (status["outcome"], status["last_error"], status["drift"]) == ("ok", "", "")
    (settled,) = world.engine(body).sync().targets
    assert settled.outcome == "unchanged"


# ---- app settings ---------------------------------------------------------------------------------
def settings_body(world: World, *, delta: bool) -> str:
    gamma = f"gamma-{world.tag}"
    env = {f"GAMMA_{world.tag}": secret_ref(gamma), **({f"DELTA_{world.tag}": "delta-literal"} if delta else {})}
    return body_yaml(envs={"app": env}, targets={"settings": app_settings_target("app", site=SITE)})


def web(world: World) -> Any:
    return WebSiteManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint)


def settings(world: World) -> dict[str, str]:
    return dict(web(world).web_apps.list_application_settings(world.sandbox.resource_group, SITE).properties or {})


@pytest.fixture()
def site(world: FaultWorld) -> Iterator[None]:
    client = web(world)
    current = settings(world)
    client.web_apps.update_application_settings(world.sandbox.resource_group, SITE, StringDictionary(properties={**current, f"KEEP_{world.tag}": "theirs"}))
    world.secret("gamma", "g-1")
    yield


def test_app_settings_put_failing_leaves_every_setting_as_it_was(world: FaultWorld, site: None) -> None:
    assert world.engine(settings_body(world, delta=False)).sync().ok
    world.source.set_secret(f"gamma-{world.tag}", "g-2")
    body = settings_body(world, delta=True)
    engine = world.engine(body)
    before = settings(world)
    world.sandbox.set_faults([{"service": "arm", "operation": "UpdateAppSettings", "error_rate": 1.0, "error_status": 503}])
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert (target.outcome, target.writes) == ("error", 0)
    assert_clear(target.error, "target settings", f"app settings of {SITE}", "HTTP 503", secrets=("g-1", "g-2", "delta-literal"))
    assert settings(world) == before

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.adds, again.updates, again.writes) == ("pushed", [f"DELTA_{world.tag}"], [f"GAMMA_{world.tag}"], 1)
    assert target_writes(world.sandbox) == {"arm:UpdateAppSettings": 1}
    now = settings(world)
    assert (now[f"GAMMA_{world.tag}"], now[f"DELTA_{world.tag}"], now[f"KEEP_{world.tag}"]) == ("g-2", "delta-literal", "theirs")


def test_app_settings_added_then_record_lost_are_still_vaultrelays_next_run(world: FaultWorld, site: None) -> None:
    assert world.engine(settings_body(world, delta=False)).sync().ok
    body = settings_body(world, delta=True)
    engine = world.engine(body)
    # Two PUTs of the push record: the names about to be written (passes), the push itself (fails).
    world.sandbox.set_faults([{"service": "storage", "target": STATE, "operation": "table:PUT", "error_rate": 0.5, "error_status": 503}],
                             seed=seed_where(0.5, [False, True]))
    world.sandbox.reset_counters()
    (target,) = engine.sync().targets
    assert (target.outcome, target.writes) == ("error", 1) and "push record was not written" in (target.error or "")
    assert settings(world)[f"DELTA_{world.tag}"] == "delta-literal"

    world.sandbox.clear_faults()
    world.sandbox.reset_counters()
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.writes, again.error) == ("recorded", 0, None)  # not refused as "not managed by vaultrelay"
    assert target_writes(world.sandbox) == {}
    status = status_of(world.engine(body), "settings")
    assert (status["outcome"], status["variables"], status["last_error"]) == ("ok", 2, "")


# ---- webhook --------------------------------------------------------------------------------------
class HttpsReceiver:
    """An HTTPS webhook on loopback (the sandbox's certificate) that fails the first N deliveries."""

    def __init__(self) -> None:
        self.fail_next = 0
        self.attempts = 0
        self.delivered: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.attempts += 1
                status = 500 if receiver.fail_next > 0 else 200
                if status == 500:
                    receiver.fail_next -= 1
                else:
                    receiver.delivered.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = serve_https(Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Iterator[HttpsReceiver]:
    hook = HttpsReceiver()
    yield hook
    hook.close()


def test_webhook_500_then_200_is_retried_and_a_failed_delivery_is_redone_next_run(world: FaultWorld, receiver: HttpsReceiver) -> None:
    key = "signing-key-for-tests-0123456789"
    name = world.secret("hooked", "h-1")
    body = body_yaml(envs={"app": {"HOOKED": secret_ref(name)}},
                     targets={"hook": webhook_target("app", receiver.url, signing_key=key, retries=2, timeout=5)})
    receiver.fail_next = 1
    (first,) = world.engine(body).sync().targets
    assert (first.outcome, first.writes, receiver.attempts, len(receiver.delivered)) == ("pushed", 1, 2, 1)
    headers, payload = receiver.delivered[0]
    expected = "sha256=" + hmac.new(key.encode(), headers["x-vaultrelay-timestamp"].encode() + b"." + payload, hashlib.sha256).hexdigest()
    assert headers["x-vaultrelay-signature"] == expected and json.loads(payload)["values"] == {"HOOKED": "h-1"}

    world.source.set_secret(name, "h-2")
    receiver.fail_next = 10  # more than the retries: every attempt of this run fails
    receiver.attempts = 0
    (failed,) = world.engine(body).sync().targets
    assert (failed.outcome, failed.writes, receiver.attempts, len(receiver.delivered)) == ("error", 0, 3, 1)
    assert_clear(failed.error, "target hook", f"webhook {urllib.parse.urlsplit(receiver.url).netloc} answered HTTP 500",
                 secrets=("h-1", "h-2", key))
    status = status_of(world.engine(body), "hook")
    assert status["outcome"] == "error" and "HTTP 500" in status["last_error"]

    receiver.fail_next = 0
    receiver.attempts = 0
    (again,) = world.engine(body).sync().targets
    assert (again.outcome, again.updates, receiver.attempts, len(receiver.delivered)) == ("pushed", ["HOOKED"], 1, 2)
    assert json.loads(receiver.delivered[1][1])["values"] == {"HOOKED": "h-2"}
    (settled,) = world.engine(body).sync().targets
    assert settled.outcome == "unchanged" and receiver.attempts == 1
    assert status_of(world.engine(body), "hook")["last_error"] == ""


def test_an_unreachable_webhook_is_named_by_host_and_cause(world: FaultWorld) -> None:
    """The error says which host and why (connection refused), never the URL's path or query."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    name = world.secret("unreachable", "u-1")
    body = body_yaml(envs={"app": {"HOOKED": secret_ref(name)}}, targets={
        "hook": webhook_target("app", f"https://127.0.0.1:{port}/hook?code=query-token-123", signing_key="k", retries=0,
                               timeout=2),
    })
    (failed,) = world.engine(body).sync().targets
    assert failed.outcome == "error"
    assert_clear(failed.error, f"target hook: webhook 127.0.0.1:{port} unreachable: no connection: ConnectionRefusedError (Connection refused)",
                 secrets=("u-1", "query-token-123", "/hook"))
