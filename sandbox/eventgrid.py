"""Event Grid delivery of Key Vault events to webhook subscribers, at least once.

Subscriptions are registered through the control API (`POST /eventgrid/subscriptions`).  Key
Vault publishes `Microsoft.KeyVault.SecretNewVersionCreated` (and the Certificate/Key variants)
when a new version is written; a periodic scan publishes `SecretNearExpiry` (once per version,
when `exp` is within the window; Key Vault's is 30 days) and `SecretExpired`.  Events use the
Event Grid schema (an array per request, header `aeg-event-type: Notification`) or CloudEvents 1.0
(structured mode, one event per request).  Before its first delivery a webhook must pass Event
Grid's validation handshake (`SubscriptionValidationEvent` echoed back as `validationResponse`,
or the CloudEvents `OPTIONS` abuse-protection handshake) unless the subscription skips it.
Failed deliveries are retried with exponential backoff up to `max_attempts`; `duplicate_rate`
delivers some events twice, and `/eventgrid/redeliver` replays a past event, for idempotency tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from sandbox.http import json_response, read_json
from sandbox.runtime import Runtime
from sandbox.world import VAULT_TYPE, Resource

NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"


@dataclass
class Subscription:
    id: str
    endpoint: str
    event_types: list[str] | None = None
    vault: str | None = None
    schema: str = "EventGridSchema"
    max_attempts: int = 5
    retry_base_s: float = 0.2
    duplicate_rate: float = 0.0
    skip_validation: bool = False
    validated: bool = False
    failed_validation: bool = False

    def wants(self, event_type: str, vault: str) -> bool:
        if self.event_types and event_type not in self.event_types:
            return False
        return self.vault is None or self.vault.lower() == vault.lower()


@dataclass
class Delivery:
    event_id: str
    subscription: str
    event_type: str
    attempt: int
    status: int | str
    at: float = field(default_factory=time.time)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class EventGrid:
    """Publishes Key Vault events and delivers them to subscribers."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.subscriptions: dict[str, Subscription] = {}
        self.deliveries: list[Delivery] = []
        self.published: dict[str, dict[str, Any]] = {}
        self.scan_interval_s = 30.0
        self.near_expiry_window_s = 30 * 86400.0
        self._emitted: set[tuple[str, str, str, str]] = set()
        self._queue: asyncio.Queue[tuple[Subscription, dict[str, Any], int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._rng = random.Random(7)
        self._validation_locks: dict[str, asyncio.Lock] = {}

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._deliver_forever()) for _ in range(4)]
        self._tasks.append(asyncio.create_task(self._scan_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # ---- publishing -------------------------------------------------------------------------
    def keyvault_event(
        self, vault: Resource, event_type: str, *, object_type: str, name: str, version: str,
        nbf: int | None = None, exp: int | None = None,
    ) -> None:
        """Publish a Key Vault event (Event Grid schema) to every matching subscription."""
        collection = {"Secret": "secrets", "Key": "keys", "Certificate": "certificates"}[object_type]
        event: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "topic": vault.id,
            "subject": name,
            "eventType": event_type,
            "eventTime": _iso_now(),
            "data": {
                "Id": f"{self.runtime.vault_url(vault.name)}/{collection}/{name}/{version}",
                "VaultName": vault.name,
                "ObjectType": object_type,
                "ObjectName": name,
                "Version": version,
                "NBF": nbf,
                "EXP": exp,
            },
            "dataVersion": "1",
            "metadataVersion": "1",
        }
        self.published[event["id"]] = event
        for subscription in self.subscriptions.values():
            if subscription.wants(event_type, vault.name):
                self._enqueue(subscription, event)

    def _enqueue(self, subscription: Subscription, event: dict[str, Any]) -> None:
        self._queue.put_nowait((subscription, event, 1))
        if subscription.duplicate_rate and self._rng.random() < subscription.duplicate_rate:
            self._queue.put_nowait((subscription, event, 1))

    def scan(self) -> int:
        """Publish near-expiry and expired events that are due; returns how many."""
        from sandbox.keyvault import vault_secrets

        now = time.time()
        published = 0
        for vault in self.runtime.world.resources_of(VAULT_TYPE):
            for obj in vault_secrets(vault).values():
                current = obj.current()
                if current.exp is None:
                    continue
                for event_type, due in ((EXPIRED, current.exp <= now), (NEAR_EXPIRY, 0 < current.exp - now <= self.near_expiry_window_s)):
                    key = (vault.name, obj.name, current.version, event_type)
                    if due and key not in self._emitted:
                        self._emitted.add(key)
                        self.keyvault_event(vault, event_type, object_type="Secret", name=obj.name, version=current.version, nbf=current.nbf, exp=current.exp)
                        published += 1
        return published

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval_s)
            self.scan()

    # ---- delivery ---------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            context = ssl.create_default_context()
            if self.runtime.azurite is not None:
                context.load_verify_locations(str(self.runtime.azurite.pki.ca_cert))
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def _validate(self, subscription: Subscription) -> bool:
        try:
            if subscription.schema == "CloudEventSchemaV1_0":
                async with self._client().options(subscription.endpoint, headers={"WebHook-Request-Origin": "eventgrid.azure.net"}) as response:
                    ok = response.status == 200 and response.headers.get("WebHook-Allowed-Origin") in ("eventgrid.azure.net", "*")
            else:
                code = str(uuid.uuid4())
                event = [{
                    "id": str(uuid.uuid4()), "topic": f"/subscriptions/{self.runtime.world.subscription_id}",
                    "subject": "", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "eventTime": _iso_now(),
                    "data": {"validationCode": code, "validationUrl": f"{self.runtime.arm_endpoint}/eventgrid/validate/{code}"},
                    "dataVersion": "2", "metadataVersion": "1",
                }]
                async with self._client().post(subscription.endpoint, json=event, headers={"aeg-event-type": "SubscriptionValidation"}) as response:
                    body = await response.json(content_type=None) if response.status == 200 else None
                    ok = isinstance(body, dict) and body.get("validationResponse") == code
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        self.deliveries.append(Delivery("validation", subscription.id, "SubscriptionValidation", 1, "validated" if ok else "failed"))
        return ok

    async def _deliver_forever(self) -> None:
        while True:
            subscription, event, attempt = await self._queue.get()
            try:
                await self._deliver(subscription, event, attempt)
            except Exception:
                self.deliveries.append(Delivery(event["id"], subscription.id, event["eventType"], attempt, "error"))

    async def _deliver(self, subscription: Subscription, event: dict[str, Any], attempt: int) -> None:
        if subscription.id not in self.subscriptions:
            return
        if not subscription.skip_validation and not subscription.validated:
            # One handshake per subscription, even when several workers hold its first events.
            async with self._validation_locks.setdefault(subscription.id, asyncio.Lock()):
                if not subscription.validated:
                    subscription.validated = await self._validate(subscription)
            if not subscription.validated:
                subscription.failed_validation = True
                return
        status: int | str
        try:
            if subscription.schema == "CloudEventSchemaV1_0":
                body = json.dumps(to_cloud_event(event)).encode()
                headers = {"Content-Type": "application/cloudevents+json; charset=utf-8", "aeg-event-type": "Notification"}
            else:
                body = json.dumps([event]).encode()
                headers = {"Content-Type": "application/json", "aeg-event-type": "Notification", "aeg-delivery-count": str(attempt - 1)}
            async with self._client().post(subscription.endpoint, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        self.deliveries.append(Delivery(event["id"], subscription.id, event["eventType"], attempt, status))
        if isinstance(status, int) and 200 <= status < 300:
            return
        if attempt < subscription.max_attempts:
            delay = subscription.retry_base_s * (2 ** (attempt - 1))
            asyncio.get_running_loop().call_later(delay, self._queue.put_nowait, (subscription, event, attempt + 1))

    # ---- control API ------------------------------------------------------------------------
    def control_routes(self, app: web.Application) -> None:
        async def create(request: web.Request) -> web.Response:
            body = await read_json(request)
            if not isinstance(body, dict) or not str(body.get("endpoint", "")).startswith(("http://", "https://")):
                return json_response({"error": "endpoint (an http(s) URL) is required"}, status=400)
            schema = body.get("schema", "EventGridSchema")
            if schema not in ("EventGridSchema", "CloudEventSchemaV1_0"):
                return json_response({"error": "schema must be EventGridSchema or CloudEventSchemaV1_0"}, status=400)
            subscription = Subscription(
                id=str(uuid.uuid4()), endpoint=str(body["endpoint"]), event_types=body.get("event_types"),
                vault=body.get("vault"), schema=schema, max_attempts=int(body.get("max_attempts", 5)),
                retry_base_s=float(body.get("retry_base_s", 0.2)), duplicate_rate=float(body.get("duplicate_rate", 0.0)),
                skip_validation=bool(body.get("skip_validation", False)),
            )
            self.subscriptions[subscription.id] = subscription
            return json_response(asdict(subscription), status=201)

        async def list_subscriptions(request: web.Request) -> web.Response:
            return json_response([asdict(s) for s in self.subscriptions.values()])

        async def delete(request: web.Request) -> web.Response:
            self.subscriptions.pop(request.match_info["id"], None)
            return web.Response(status=204)

        async def deliveries(request: web.Request) -> web.Response:
            return json_response([asdict(d) for d in self.deliveries])

        async def settings(request: web.Request) -> web.Response:
            body = await read_json(request)
            self.scan_interval_s = float(body.get("scan_interval_s", self.scan_interval_s))
            self.near_expiry_window_s = float(body.get("near_expiry_window_s", self.near_expiry_window_s))
            return json_response({"scan_interval_s": self.scan_interval_s, "near_expiry_window_s": self.near_expiry_window_s})

        async def scan(request: web.Request) -> web.Response:
            return json_response({"published": self.scan()})

        async def redeliver(request: web.Request) -> web.Response:
            body = await read_json(request)
            event = self.published.get(str(body.get("event_id")))
            if event is None:
                return json_response({"error": "unknown event_id"}, status=404)
            times = int(body.get("times", 1))
            vault = str(event["data"]["VaultName"])
            for subscription in self.subscriptions.values():
                if subscription.wants(event["eventType"], vault):
                    for _ in range(times):
                        self._queue.put_nowait((subscription, event, 1))
            return json_response({"queued": times})

        async def events(request: web.Request) -> web.Response:
            return json_response(list(self.published.values()))

        app.router.add_post("/eventgrid/subscriptions", create)
        app.router.add_get("/eventgrid/subscriptions", list_subscriptions)
        app.router.add_delete("/eventgrid/subscriptions/{id}", delete)
        app.router.add_get("/eventgrid/deliveries", deliveries)
        app.router.add_get("/eventgrid/events", events)
        app.router.add_put("/eventgrid/settings", settings)
        app.router.add_post("/eventgrid/scan", scan)
        app.router.add_post("/eventgrid/redeliver", redeliver)


def to_cloud_event(event: dict[str, Any]) -> dict[str, Any]:
    """The CloudEvents 1.0 form of an Event Grid schema event."""
    return {
        "specversion": "1.0",
        "type": event["eventType"],
        "source": event["topic"],
        "subject": event["subject"],
        "id": event["id"],
        "time": event["eventTime"],
        "datacontenttype": "application/json",
        "data": event["data"],
    }
