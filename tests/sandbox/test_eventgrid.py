"""Contract: Event Grid delivery of Key Vault events, triggered through the unmodified SDK clients.

Webhooks are `sandbox.receiver.EventReceiver`s registered through the control API.  azure-eventgrid
is not installed here, so events are parsed the way the Functions worker parses an Event Grid
trigger payload (`azure.functions`' `EventGridEventInConverter`, both schemas); CloudEvents are
also parsed with azure-core's `CloudEvent.from_dict`.  The sandbox has no subject filters
(`subjectBeginsWith`/`subjectEndsWith`): only event-type and vault filters are tested.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.core.messaging import CloudEvent
from azure.functions.eventgrid import EventGridEventInConverter
from azure.functions.meta import Datum
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient

from sandbox.client import SandboxClient
from sandbox.receiver import EventReceiver, subscribe
from tests.sandbox.helpers import unique

NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"
NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"

Subscribe = Callable[..., tuple[EventReceiver, dict[str, Any]]]


@pytest.fixture(scope="module")
def vault(sandbox: SandboxClient) -> str:
    """A vault of this module's own, so other tests' secrets never reach these subscriptions."""
    name = unique("kv-eg")
    created = sandbox.create_resource("vault", name)
    sandbox.assign_role("admin", "Key Vault Administrator", created["id"])
    return name


@pytest.fixture(scope="module")
def secrets(sandbox: SandboxClient, vault: str) -> SecretClient:
    return SecretClient(sandbox.vault_url(vault), sandbox.admin_credential())


@pytest.fixture()
def receivers(sandbox: SandboxClient) -> Iterator[Subscribe]:
    """Makes (receiver, subscription) pairs; deletes the subscriptions and stops the receivers after."""
    made: list[tuple[EventReceiver, dict[str, Any]]] = []

    def make(*, fail_first: int = 0, endpoint: str | None = None, **options: Any) -> tuple[EventReceiver, dict[str, Any]]:
        receiver = EventReceiver(fail_first=fail_first)
        if endpoint is None:
            subscription = subscribe(sandbox, receiver, **options)
        else:
            subscription = dict(sandbox.call("POST", "/eventgrid/subscriptions", {"endpoint": endpoint, **options}))
        made.append((receiver, subscription))
        return receiver, subscription

    yield make
    for receiver, subscription in made:
        sandbox.call("DELETE", f"/eventgrid/subscriptions/{subscription['id']}")
        receiver.close()


def _as_function_input(event: dict[str, Any]) -> func.EventGridEvent | func.CloudEvent:
    """The event as an Event Grid-triggered Python function receives it."""
    return EventGridEventInConverter.decode(Datum(json.dumps(event), "json"), trigger_metadata={})


def _deliveries(sandbox: SandboxClient, subscription: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in sandbox.call("GET", "/eventgrid/deliveries") if d["subscription"] == subscription["id"]]


def _wait_deliveries(sandbox: SandboxClient, subscription: dict[str, Any], count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = _deliveries(sandbox, subscription)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(found)} of {count} deliveries: {found}")
        time.sleep(0.05)


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _vault_id(sandbox: SandboxClient, vault: str) -> str:
    return sandbox.resource_id("vault", vault)


def test_new_version_event_grid_schema_after_handshake(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, subscription = receivers(vault=vault, event_types=[NEW_VERSION])
    assert subscription["schema"] == "EventGridSchema" and not subscription["validated"]
    name = unique("eg-secret")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_before, expires = now - dt.timedelta(hours=1), now + dt.timedelta(days=90)
    secret = secrets.set_secret(name, "v1", not_before=not_before, expires_on=expires)

    [raw] = receiver.wait_for(1)
    event = _as_function_input(raw)
    assert isinstance(event, func.EventGridEvent)
    assert event.event_type == NEW_VERSION
    assert event.subject == name
    assert event.topic == _vault_id(sandbox, vault)
    assert event.data_version == "1" and raw["metadataVersion"] == "1"
    assert event.event_time is not None
    assert abs((event.event_time.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)).total_seconds()) < 30
    assert event.get_json() == {
        "Id": secret.id,
        "VaultName": vault,
        "ObjectType": "Secret",
        "ObjectName": name,
        "Version": secret.properties.version,
        "NBF": _epoch(not_before),
        "EXP": _epoch(expires),
    }
    assert receiver.headers[0]["aeg-event-type"] == "Notification"
    assert receiver.headers[0]["aeg-delivery-count"] == "0"
    # The webhook was validated once (SubscriptionValidationEvent echoed), before the first event.
    assert receiver.validations == 1
    log = _wait_deliveries(sandbox, subscription, 2)
    assert [(d["event_type"], d["status"]) for d in log] == [("SubscriptionValidation", "validated"), (NEW_VERSION, 200)]

    second = secrets.set_secret(name, "v2")  # a new version without nbf/exp: a new event, no new handshake
    events = receiver.wait_for(2)
    data = _as_function_input(events[1]).get_json()
    assert data["Version"] == second.properties.version != secret.properties.version
    assert data["Id"] == second.id
    assert data["NBF"] is None and data["EXP"] is None
    assert events[0]["id"] != events[1]["id"]
    assert receiver.validations == 1


def test_new_version_cloud_events_schema_after_options_handshake(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, _ = receivers(vault=vault, event_types=[NEW_VERSION], schema="CloudEventSchemaV1_0")
    name = unique("ce-secret")
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=10)
    secret = secrets.set_secret(name, "v", expires_on=expires)

    [raw] = receiver.wait_for(1)
    assert receiver.validations == 1  # the CloudEvents OPTIONS abuse-protection handshake
    assert receiver.headers[0]["content-type"].startswith("application/cloudevents+json")
    expected = {
        "Id": secret.id, "VaultName": vault, "ObjectType": "Secret", "ObjectName": name,
        "Version": secret.properties.version, "NBF": None, "EXP": _epoch(expires),
    }
    event = _as_function_input(raw)
    assert isinstance(event, func.CloudEvent)
    assert event.specversion == "1.0"
    assert event.type == NEW_VERSION
    assert event.source == _vault_id(sandbox, vault)
    assert event.subject == name
    assert event.get_json() == expected
    core_event: CloudEvent[Any] = CloudEvent.from_dict(raw)
    assert core_event.type == NEW_VERSION and core_event.id == event.id
    assert core_event.data == expected


def test_unvalidated_webhook_gets_nothing_and_skip_validation_delivers(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    _, dead = receivers(endpoint=f"http://127.0.0.1:{_free_port()}/events", vault=vault)
    skipping, _ = receivers(vault=vault, skip_validation=True)
    name = unique("handshake")
    secret = secrets.set_secret(name, "v")

    [event] = skipping.wait_for(1)
    assert event["data"]["Version"] == secret.properties.version
    assert skipping.validations == 0
    [log] = _wait_deliveries(sandbox, dead, 1)
    assert (log["event_type"], log["status"]) == ("SubscriptionValidation", "failed")
    state = {s["id"]: s for s in sandbox.call("GET", "/eventgrid/subscriptions")}[dead["id"]]
    assert state["failed_validation"] and not state["validated"]
    time.sleep(0.3)
    assert len(_deliveries(sandbox, dead)) == 1  # no event was posted without a handshake


def test_near_expiry_then_expired_once_per_version(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, _ = receivers(vault=vault, event_types=[NEAR_EXPIRY, EXPIRED])
    soon_name, later_name = unique("expiring"), unique("far-expiry")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    soon = now + dt.timedelta(seconds=3)
    soon_secret = secrets.set_secret(soon_name, "v", expires_on=soon)
    secrets.set_secret(later_name, "v", expires_on=now + dt.timedelta(days=60))  # outside the 30-day window

    def mine(count: int) -> list[func.EventGridEvent]:
        """This test's events (other secrets of the module's vault expire within 30 days too)."""
        deadline = time.monotonic() + 10
        while True:
            found = [_as_function_input(e) for e in receiver.events if e["subject"] in (soon_name, later_name)]
            if len(found) >= count or time.monotonic() > deadline:
                return [e for e in found if isinstance(e, func.EventGridEvent)]
            time.sleep(0.05)

    sandbox.call("POST", "/eventgrid/scan")
    [near] = mine(1)
    assert near.event_type == NEAR_EXPIRY
    assert near.subject == soon_name
    assert near.get_json() == {
        "Id": soon_secret.id, "VaultName": vault, "ObjectType": "Secret", "ObjectName": soon_name,
        "Version": soon_secret.properties.version, "NBF": None, "EXP": _epoch(soon),
    }

    time.sleep(max(0.0, soon.timestamp() - time.time()) + 0.2)
    sandbox.call("POST", "/eventgrid/scan")
    events = mine(2)
    assert [e.event_type for e in events] == [NEAR_EXPIRY, EXPIRED]
    assert events[1].get_json()["Version"] == soon_secret.properties.version
    assert events[1].get_json()["EXP"] == _epoch(soon)

    sandbox.call("POST", "/eventgrid/scan")  # each (version, event type) is published once
    time.sleep(0.3)
    assert len(mine(2)) == 2
    assert all(e.subject == soon_name for e in mine(2))  # the 60-day secret is not near expiry

    renewed = secrets.set_secret(soon_name, "v2", expires_on=now + dt.timedelta(days=7))
    sandbox.call("POST", "/eventgrid/scan")
    third = mine(3)[2]
    assert third.event_type == NEAR_EXPIRY
    assert third.get_json()["Version"] == renewed.properties.version


def test_failing_subscriber_is_retried_until_delivered(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, subscription = receivers(vault=vault, fail_first=2, retry_base_s=0.1, max_attempts=5)
    secret = secrets.set_secret(unique("retried"), "v")

    [event] = receiver.wait_for(1)
    assert event["data"]["Version"] == secret.properties.version
    assert receiver.headers[0]["aeg-delivery-count"] == "2"  # two failed attempts before this one
    log = [d for d in _wait_deliveries(sandbox, subscription, 4) if d["event_id"] == event["id"]]
    assert [(d["attempt"], d["status"]) for d in log] == [(1, 500), (2, 500), (3, 200)]
    assert log[2]["at"] - log[1]["at"] >= 0.2 - 0.05 and log[1]["at"] - log[0]["at"] >= 0.1 - 0.05  # backoff


def test_delivery_stops_after_max_attempts(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, subscription = receivers(vault=vault, fail_first=100, retry_base_s=0.05, max_attempts=3)
    secrets.set_secret(unique("given-up"), "v")

    log = _wait_deliveries(sandbox, subscription, 4)
    time.sleep(0.5)
    log = _deliveries(sandbox, subscription)
    assert [(d["attempt"], d["status"]) for d in log[1:]] == [(1, 500), (2, 500), (3, 500)]
    assert receiver.events == []


def test_duplicates_and_redelivery_repeat_the_same_event(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, _ = receivers(vault=vault, event_types=[NEW_VERSION], duplicate_rate=1.0)
    secret = secrets.set_secret(unique("dupe"), "v")

    first, second = receiver.wait_for(2)
    assert first == second  # a duplicate is the same event (same id), as Event Grid's at-least-once allows
    assert first["data"]["Version"] == secret.properties.version
    assert receiver.validations == 1  # concurrent first deliveries share one handshake
    assert first["id"] in {e["id"] for e in sandbox.call("GET", "/eventgrid/events")}

    assert sandbox.call("POST", "/eventgrid/redeliver", {"event_id": first["id"], "times": 2}) == {"queued": 2}
    events = receiver.wait_for(4)
    assert {e["id"] for e in events} == {first["id"]}
    assert all(_as_function_input(e).get_json() == first["data"] for e in events)
    with pytest.raises(RuntimeError, match="404"):
        sandbox.call("POST", "/eventgrid/redeliver", {"event_id": "no-such-event"})


def test_subscriptions_filter_by_vault_and_event_type(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    other_vault = unique("kv-eg-other")
    sandbox.create_resource("vault", other_vault)
    wanted, _ = receivers(vault=vault, event_types=[NEW_VERSION])
    everything, _ = receivers()
    other, _ = receivers(vault=other_vault)
    expiry_only, _ = receivers(vault=vault, event_types=[NEAR_EXPIRY, EXPIRED])
    name = unique("filtered")
    secrets.set_secret(name, "v")

    assert wanted.wait_for(1)[0]["subject"] == name
    assert name in {e["subject"] for e in everything.wait_for(1)}
    time.sleep(0.5)
    assert other.events == [] and other.validations == 0
    assert expiry_only.events == [] and expiry_only.validations == 0


def test_key_versions_publish_key_events(sandbox: SandboxClient, vault: str, secrets: SecretClient, receivers: Subscribe) -> None:
    receiver, _ = receivers(vault=vault, event_types=["Microsoft.KeyVault.KeyNewVersionCreated"])
    key = KeyClient(sandbox.vault_url(vault), sandbox.admin_credential()).create_ec_key(unique("eg-key"), curve="P-256")

    [raw] = receiver.wait_for(1)
    event = _as_function_input(raw)
    assert isinstance(event, func.EventGridEvent)
    assert event.event_type == "Microsoft.KeyVault.KeyNewVersionCreated"
    data = event.get_json()
    assert data["Id"] == key.id
    assert (data["ObjectType"], data["ObjectName"], data["Version"]) == ("Key", key.name, key.properties.version)
