"""`notify:`: signed notifications (the webhook target's signing), each event once across instances
(claimed in the state's events table), names and times only; Teams / Slack payload shapes."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from core import telemetry
from core.cli import EXIT_OK, main
from core.notify import Notifier
from sandbox.receiver import serve_https
from tests.configs import app_settings_target, body_yaml, keyvault_target, secret_ref
from tests.world import World, run_cli, write_config

KEY = "notify-signing-key-0123456789"


class Receiver:
    """HTTPS on loopback (the sandbox's certificate); keeps each body with its headers."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        self.server = serve_https(Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/notify"

    def events(self) -> list[dict[str, Any]]:
        found = []
        for headers, body in self.received:
            expected = "sha256=" + hmac.new(KEY.encode(), headers["x-vaultrelay-timestamp"].encode() + b"." + body, hashlib.sha256).hexdigest()
            assert headers["x-vaultrelay-signature"] == expected
            found.append(json.loads(body))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver() -> Any:
    hook = Receiver()
    yield hook
    hook.close()


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def body(world: World, receiver: Receiver, *, site: str, fmt: str = "json", expiring: str = "", vault: bool = True) -> str:
    secret = world.secret("db", "the-db-value")
    env = {"DB_PASSWORD": secret_ref(secret), **({"SOON": secret_ref(expiring)} if expiring else {})}
    targets = {"vault": keyvault_target("app", prefix="vr-TAG-")} if vault else {}
    return body_yaml(envs={"app": env}, targets={**targets, "web": app_settings_target("app", site=site)},
                     notify={"url": receiver.url, "signing_key": KEY, "format": fmt, "retries": 0})


def test_a_failed_push_is_notified_once_with_four_instances_running(world: World, receiver: Receiver, tmp_path: Path,
                                                                  sandbox_process: Any) -> None:
    config = write_config(world, body(world, receiver, site=f"no-such-site-{world.tag}"), tmp_path)
    procs = [run_cli(sandbox_process, config, "sync") for _ in range(4)]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert sorted(p.returncode for p in procs) != [0, 0, 0, 0], outputs  # the push to the missing site fails
    events = receiver.events()
    assert [(e["event"], e["subject"]) for e in events] == [("push_failed", "app->web")]
    assert "no-such-site" in events[0]["details"]["error"] and "the-db-value" not in json.dumps(events)
    # The same failure again: nothing new to say.
    code, _, _ = cli(config, "sync")
    assert code != EXIT_OK and len(receiver.received) == 1


def test_concurrent_claims_of_one_event_send_it_once(world: World, receiver: Receiver, tmp_path: Path) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    telemetry.use_meter_provider(provider)
    engines = [world.engine(body(world, receiver, site="sandbox-web")) for _ in range(4)]
    barrier = threading.Barrier(4)
    sent: list[bool] = []

    def emit(engine: Any) -> None:
        barrier.wait()
        sent.append(Notifier(engine).emit("rotation_done", "storage:acct", "key2", {"name": "storage:acct", "new_active": "key2"}))

    threads = [threading.Thread(target=emit, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sent) == [False, False, False, True] and len(receiver.received) == 1
    data = reader.get_metrics_data()
    telemetry.use_meter_provider(None)
    provider.shutdown()
    counted = [(dict(p.attributes), p.value) for r in data.resource_metrics for sc in r.scope_metrics for m in sc.metrics
               if m.name == "vaultrelay.notifications" for p in m.data.data_points]
    assert counted == [({"event": "rotation_done", "outcome": "sent"}, 1)]  # counted by the one sender


def test_drift_and_expiring_are_notified_in_the_teams_shape(world: World, receiver: Receiver, tmp_path: Path) -> None:
    soon = f"soon-{world.tag}"
    world.source.set_secret(soon, "soon-value", expires_on=datetime.now(UTC) + timedelta(days=5))
    world.sandbox.grant("system", "Website Contributor", world.sandbox.resource_id("site", "sandbox-web"))
    config = write_config(world, body(world, receiver, site="sandbox-web", fmt="teams", expiring=soon), tmp_path)
    code, out, err = cli(config, "sync")
    assert code == EXIT_OK, out + err
    events = receiver.events()
    assert [e["vaultrelay"]["event"] for e in events] == ["expiring"]
    card = events[0]
    assert card["@type"] == "MessageCard" and soon in card["title"]
    assert card["vaultrelay"]["details"]["used_by"] == "app.SOON" and card["vaultrelay"]["details"]["where"] == "kv-source"
    world.target.set_secret(f"vr-{world.tag}-db-password", "typed-by-hand")
    code, _, _ = cli(config, "sync")
    code, _, _ = cli(config, "sync")  # the same drift: not sent again, nor the same expiry
    events = receiver.events()
    assert [e["vaultrelay"]["event"] for e in events] == ["expiring", "drift_found"]
    assert events[1]["vaultrelay"]["details"]["names"] == ["DB_PASSWORD"] and events[1]["vaultrelay"]["subject"] == "app->vault"
    assert "typed-by-hand" not in json.dumps(events) and "soon-value" not in json.dumps(events)
