"""Queue mode: planners enqueue work items, the queue-triggered `sync_work` (what function_app.py
registers, called with real `azure.functions.QueueMessage` objects) syncs them; poison records in
status.  Against the sandbox (Azurite's queue service, the sandbox's Key Vault)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
import yaml
from azure.functions.queue import QueueMessage  # what the worker builds from the host's trigger data
from azure.keyvault.secrets import SecretClient
from azure.storage.queue import QueueClient

from core.app.work import DEFAULT_MAX_DEQUEUE, WorkFailed, parse_item
from core.app.worker import work_item
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.functions.apihelpers import AUDIENCE, body_json, request, serving, write_config

ROOT = Path(__file__).resolve().parents[2]
ENVS = ("q-alpha", "q-beta", "q-gamma")


@pytest.fixture(scope="module")
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def source(seeded: SandboxClient, tag: str) -> SecretClient:
    client = SecretClient(seeded.vault_url("kv-source"), seeded.admin_credential())
    for env in ENVS:
        client.set_secret(f"wq-{tag}-{env}", f"value-of-{env}-{tag}")
    return client


@pytest.fixture(scope="module")
def api(seeded: SandboxClient, source: SecretClient, tag: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    """Three small envs with a Key Vault target each, in queue mode on this module's own queue."""
    path = write_config(tmp_path_factory.mktemp("work") / "vaultrelay.yaml", seeded)
    config = yaml.safe_load(path.read_text())
    config["state"]["table_prefix"] = f"w{tag}"
    config["envs"] = {env: {"LEVEL": "info", "SECRET": {"from": {"store": "azure", "vault": "kv-source", "secret": f"wq-{tag}-{env}"}}}
                      for env in ENVS}
    config["envs"]["q-broken"] = {"SECRET": {"from": {"store": "azure", "vault": "kv-source", "secret": f"wq-{tag}-missing"}}}
    config["access"] = {}
    config["targets"] = {f"t-{env}": {"type": "keyvault", "env": env, "store": "azure", "vault": "kv-target", "prefix": f"wq-{tag}-{env}-"}
                         for env in (*ENVS, "q-broken")}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    environ = {**os.environ, "VAULTRELAY_CONFIG": str(path), "VAULTRELAY_SYNC_MODE": "queue", "VAULTRELAY_WORK_QUEUE": f"wq-{tag}",
               "VAULTRELAY_WORK_BATCH": "1"}
    api = LiveRuntime(environ=environ, audit=MemoryAuditSink())
    with serving(api):
        yield api
    api.close()


@pytest.fixture(scope="module")
def raw_queue(seeded: SandboxClient, tag: str) -> QueueClient:
    """The work queue without any decoding: the messages as the Functions host reads them."""
    from azure.core.exceptions import ResourceExistsError

    client = QueueClient(seeded.env["AzureWebJobsStorage__queueServiceUri"], f"wq-{tag}", credential=seeded.admin_credential())
    try:
        client.create_queue()
    except ResourceExistsError:
        pass
    return client


@pytest.fixture(scope="module")
def target(seeded: SandboxClient) -> SecretClient:
    return SecretClient(seeded.vault_url("kv-target"), seeded.admin_credential())


def admin(sandbox: SandboxClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {sandbox.issue_token('admin', AUDIENCE)}"}


def drain(raw_queue: QueueClient) -> list[tuple[str, int]]:
    """Every visible message (base64 text as stored, and its dequeue count), deleted."""
    taken = []
    for message in raw_queue.receive_messages(max_messages=32, visibility_timeout=30):
        taken.append((str(message.content), int(message.dequeue_count or 1)))
        raw_queue.delete_message(message)
    return taken


def deliver(functions: dict[str, Any], stored: str, dequeue_count: int = 1) -> None:
    """Call `sync_work` as the host does: the base64 decoded into the message body (the host
    decodes it: host.json's messageEncoding), the delivery count from the trigger metadata."""
    msg = QueueMessage(id=uuid.uuid4().hex, body=base64.b64decode(stored), dequeue_count=dequeue_count,
                       insertion_time=dt.datetime.now(dt.UTC), pop_receipt=uuid.uuid4().hex)
    functions["sync_work"].get_user_function()(msg)


def versions(target: SecretClient, tag: str, env: str) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return len(list(target.list_properties_of_secret_versions(f"wq-{tag}-{env}-SECRET")))
    except ResourceNotFoundError:
        return 0


def test_the_queue_trigger_is_registered_as_host_json_configures_it(functions: dict[str, Any]) -> None:
    binding = next(b for b in functions["sync_work"].get_bindings() if b.type == "queueTrigger")
    assert binding.queue_name == "%VAULTRELAY_WORK_QUEUE%" and binding.connection == "AzureWebJobsStorage"
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    assert queues["maxDequeueCount"] == DEFAULT_MAX_DEQUEUE
    assert queues["messageEncoding"] == "base64"
    assert 1 <= queues["batchSize"] <= 32


def test_http_sync_enqueues_and_the_worker_function_syncs_once(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient,
                                                               raw_queue: QueueClient, target: SecretClient, tag: str) -> None:
    drain(raw_queue)
    response = functions["sync_all"].get_user_function()(request("POST", "/api/sync", headers=admin(seeded)))
    assert response.status_code == 202
    body = body_json(response)
    assert sorted(e for item in body["enqueued"] for e in item["envs"]) == sorted((*ENVS, "q-broken"))
    for env in ENVS:  # nothing synced inline
        assert versions(target, tag, env) == 0
    stored = drain(raw_queue)
    assert len(stored) == len(body["enqueued"])
    for text, _ in stored:
        decoded = base64.b64decode(text).decode()
        item = parse_item(decoded)
        assert item.reason == "requested" and item.trigger.startswith("http:")
        for env in ENVS:
            assert f"value-of-{env}" not in decoded
    good = [t for t, _ in stored if "q-broken" not in parse_item(base64.b64decode(t).decode()).envs]
    for text in good:
        deliver(functions, text)
    assert all(versions(target, tag, env) == 1 for env in ENVS)
    assert target.get_secret(f"wq-{tag}-q-alpha-SECRET").value == f"value-of-q-alpha-{tag}"
    for text in good:  # delivered twice: no extra write
        deliver(functions, text)
    assert all(versions(target, tag, env) == 1 for env in ENVS)


def test_post_sync_of_one_env_answers_202_and_404_for_an_unknown_env(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient,
                                                                     raw_queue: QueueClient) -> None:
    one = functions["sync_env"].get_user_function()(request("POST", "/api/sync/q-beta", headers=admin(seeded), route_params={"env": "q-beta"}))
    assert one.status_code == 202 and [i["envs"] for i in body_json(one)["enqueued"]] == [["q-beta"]]
    missing = functions["sync_env"].get_user_function()(request("POST", "/api/sync/nope", headers=admin(seeded), route_params={"env": "nope"}))
    assert missing.status_code == 404
    drain(raw_queue)


def test_a_newer_value_then_an_older_item_does_one_write(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient,
                                                         raw_queue: QueueClient, source: SecretClient, target: SecretClient, tag: str) -> None:
    functions["sync_env"].get_user_function()(request("POST", "/api/sync/q-gamma", headers=admin(seeded), route_params={"env": "q-gamma"}))
    older = drain(raw_queue)
    source.set_secret(f"wq-{tag}-q-gamma", f"new-value-{tag}")
    event = func.EventGridEvent(
        id=str(uuid.uuid4()), topic="/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-source",
        subject=f"wq-{tag}-q-gamma", event_type="Microsoft.KeyVault.SecretNewVersionCreated", event_time=dt.datetime.now(dt.UTC),
        data_version="1", data={"VaultName": "kv-source", "ObjectType": "Secret", "ObjectName": f"wq-{tag}-q-gamma", "Version": "1" * 32})
    before = versions(target, tag, "q-gamma")
    functions["keyvault_events"].get_user_function()(event)
    assert versions(target, tag, "q-gamma") == before  # the event enqueued, it did not sync
    newer = drain(raw_queue)
    item = parse_item(base64.b64decode(newer[0][0]).decode())
    assert item.reason == "secret_changed" and item.envs == ["q-gamma"]
    assert [f.params() for f in item.forget] == [{"vault": "kv-source", "secret": f"wq-{tag}-q-gamma"}]
    deliver(functions, newer[0][0])
    deliver(functions, older[0][0])  # the older item, after the newer one: nothing more to write
    assert versions(target, tag, "q-gamma") == before + 1
    assert target.get_secret(f"wq-{tag}-q-gamma-SECRET").value == f"new-value-{tag}"


def test_the_timer_enqueues_every_env(functions: dict[str, Any], api: LiveRuntime, raw_queue: QueueClient) -> None:
    from azure.functions.timer import TimerRequest

    functions["sync_timer"].get_user_function()(TimerRequest(past_due=False))
    envs = sorted(e for text, _ in drain(raw_queue) for e in parse_item(base64.b64decode(text).decode()).envs)
    assert envs == sorted((*ENVS, "q-broken"))


def test_a_failing_item_is_poisoned_on_its_last_delivery_and_cleared_by_a_good_sync(
        functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, raw_queue: QueueClient, source: SecretClient, tag: str) -> None:
    functions["sync_env"].get_user_function()(request("POST", "/api/sync/q-broken", headers=admin(seeded), route_params={"env": "q-broken"}))
    (text, _), = drain(raw_queue)
    with pytest.raises(WorkFailed):
        deliver(functions, text, dequeue_count=1)
    status = body_json(functions["status"].get_user_function()(request("GET", "/api/status", headers=admin(seeded))))
    assert status["poisoned"] == []  # not its last delivery yet
    with pytest.raises(WorkFailed, match="SECRET: not_found"):
        deliver(functions, text, dequeue_count=DEFAULT_MAX_DEQUEUE)
    status = body_json(functions["status"].get_user_function()(request("GET", "/api/status", headers=admin(seeded))))
    (poisoned,) = status["poisoned"]
    assert poisoned["env"] == "q-broken" and "SECRET: not_found" in poisoned["cause"] and poisoned["deliveries"] == DEFAULT_MAX_DEQUEUE
    source.set_secret(f"wq-{tag}-missing", "now-there")
    deliver(functions, text, dequeue_count=1)
    status = body_json(functions["status"].get_user_function()(request("GET", "/api/status", headers=admin(seeded))))
    assert status["poisoned"] == []
    assert "now-there" not in json.dumps(status)


def test_a_message_that_is_not_a_work_item_is_acknowledged(functions: dict[str, Any], api: LiveRuntime) -> None:
    deliver(functions, base64.b64encode(b'{"envs": "x"}').decode())  # no exception: retrying cannot fix it



def test_a_throttled_env_is_re_enqueued_with_a_delay_not_failed(functions: dict[str, Any], api: LiveRuntime, clean_faults: SandboxClient,
                                                                 raw_queue: QueueClient, source: SecretClient, target: SecretClient,
                                                                 tag: str) -> None:
    import time

    from core.app.work import new_item

    drain(raw_queue)
    source.set_secret(f"wq-{tag}-q-beta", f"throttled-value-{tag}")
    item = new_item(["q-beta"], "secret_changed", "event:test", forget=[{"vault": "kv-source", "secret": f"wq-{tag}-q-beta"}])
    # The source vault answers 429 to everything: past vaultrelay's bounded retries the env is throttled.
    clean_faults.set_faults([{"service": "keyvault", "target": "kv-source", "error_rate": 1.0, "error_status": 429}])
    try:
        deliver(functions, base64.b64encode(item.to_text().encode()).decode())  # no exception: not a failure
    finally:
        clean_faults.clear_faults()
    assert clean_faults.counters().get("by_status", {}).get("429", 0) > 1  # retried before giving up
    assert list(raw_queue.receive_messages(max_messages=32, visibility_timeout=1)) == []  # re-enqueued, invisible for now
    assert raw_queue.get_queue_properties().approximate_message_count == 1
    # Once visible it is the same work, one attempt later; delivered, it pushes the new value.
    deadline = time.monotonic() + 30
    found: list[Any] = []
    while not found and time.monotonic() < deadline:
        found = list(raw_queue.receive_messages(max_messages=32, visibility_timeout=30))
        time.sleep(0.5)
    (message,) = found
    again = parse_item(base64.b64decode(str(message.content)).decode())
    assert again.envs == ["q-beta"] and again.attempt == 1 and again.reason == "secret_changed" and again.id != item.id
    raw_queue.delete_message(message)
    deliver(functions, str(message.content))
    assert target.get_secret(f"wq-{tag}-q-beta-SECRET").value == f"throttled-value-{tag}"


def test_a_long_retry_after_is_not_waited_for_the_item_comes_back_after_it(api: LiveRuntime, clean_faults: SandboxClient,
                                                                          raw_queue: QueueClient, source: SecretClient, tag: str) -> None:
    """Key Vault asks for 120 s: the item does not hold its worker that long (the 429 is not
    retried, the vault's other requests are not sent) but is re-enqueued, invisible at least as
    long as Retry-After asked."""
    from core.app.work import WAIT_MAX_S, new_item

    drain(raw_queue)
    source.set_secret(f"wq-{tag}-q-gamma", f"later-value-{tag}")
    item = new_item(["q-gamma"], "secret_changed", "event:test", forget=[{"vault": "kv-source", "secret": f"wq-{tag}-q-gamma"}])
    fresh = LiveRuntime(environ=api.environ)  # its own clients: the vault stays closed for this one only
    clean_faults.set_faults([{"service": "keyvault", "target": "kv-source", "error_rate": 1.0, "error_status": 429, "retry_after_s": 120}])
    clean_faults.reset_counters()
    try:
        result = dict(work_item(fresh.current(), item.to_text(), 1).__dict__)
    finally:
        clean_faults.clear_faults()
        fresh.close()
    assert 120 > WAIT_MAX_S
    assert result["outcome"] == "requeued" and result["requeued"] == ["q-gamma"] and result["delay_s"] >= 120
    # The one 429 was not retried, and no other request went to the vault while it is closed.
    counters = clean_faults.counters()
    assert counters["by_status"].get("429") == 1 and counters["by_target"].get("keyvault:kv-source") == 1
    assert list(raw_queue.receive_messages(max_messages=32, visibility_timeout=1)) == []  # invisible for now
    assert raw_queue.get_queue_properties().approximate_message_count == 1
    raw_queue.clear_messages()  # the re-enqueued item would otherwise come back in two minutes


def test_a_small_fan_out_is_cut_into_enough_items_for_many_instances() -> None:
    from core.app.work import item_size, plan_items

    def sizes(envs: int, batch: int = 10) -> list[int]:
        groups = [[f"e{i}"] for i in range(envs)]
        return [len(item.envs) for item in plan_items(groups, "scheduled", "timer", batch=item_size(envs, batch))]

    assert sizes(100) == [7] * 14 + [2]  # 15 items, not 10 of 10: 4 consumers get 4 rounds, none idle for long
    assert sizes(5000) == [10] * 500  # a large fleet: the configured batch
    assert sizes(3) == [1, 1, 1] and sizes(40, batch=2) == [2] * 20


def test_work_items_reuse_a_key_listing_until_the_accounts_key_switches(api: LiveRuntime, clean_faults: SandboxClient, tag: str,
                                                                        tmp_path: Path) -> None:
    """Each item listing the storage keys afresh would spend the storage provider's 100 lists per
    5 minutes on a few hundred items; items reuse this process's listing instead, except one made
    before (or about when) another instance switched the account's active key."""
    from core.app.work import new_item
    from core.state.tables import Row
    from tests.world import fresh_account

    account = fresh_account(clean_faults, f"wk{tag}")
    config = yaml.safe_load(Path(api.environ["VAULTRELAY_CONFIG"]).read_text())
    for store in config["secretStores"].values():  # no value cache: what is kept is the listing itself
        store.setdefault("cache", {})["secret_cache"] = {"enabled": False}
    config["envs"]["q-key"] = {"KEY": {"from": {"store": "azure", "resource_type": "storage", "account": account, "key": "active"}}}
    config["targets"]["t-q-key"] = {"type": "keyvault", "env": "q-key", "store": "azure", "vault": "kv-target", "prefix": f"wq-{tag}-key-"}
    path = tmp_path / "vaultrelay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    worker = LiveRuntime(environ={**api.environ, "VAULTRELAY_CONFIG": str(path)})

    def list_keys_calls() -> int:
        clean_faults.reset_counters()
        assert work_item(worker.current(), new_item(["q-key"], "scheduled", "timer").to_text(), 1).outcome == "done"
        return int(clean_faults.counters()["by_endpoint"].get("arm:StorageListKeys", 0))

    try:
        assert list_keys_calls() == 1
        assert list_keys_calls() == 0  # the listing this process keeps
        worker.current().state.put("rotations", Row("storage", account.lower(), {"active": "key1", "rotated_at": dt.datetime.now(dt.UTC).isoformat()}))
        assert list_keys_calls() == 1  # made before the switch: listed afresh
    finally:
        worker.close()
