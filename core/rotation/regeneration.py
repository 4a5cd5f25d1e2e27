"""What both rotations share: the report, and regenerating an account key through ARM.

A key regeneration is followed for a bounded time per run (Cosmos DB's is a long-running
operation); where it stands is recorded so that a later run finishes it.  Used by
`core.rotation.account_keys` and `core.rotation.tagged_secrets`; imports neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core import telemetry
from core.state.tables import Row

if TYPE_CHECKING:
    from core.azure.clients import AzureClients

log = logging.getLogger("vaultrelay.rotate")

# Polling of Cosmos DB's regenerateKey operation when ARM sends no Retry-After (the SDK would wait
# 30 s between polls while holding the rotation lease); a Retry-After from ARM still wins.
COSMOS_POLL_SECONDS = 5.0
_TERMINAL_FAILURES = ("failed", "canceled", "cancelled")


@dataclass
class Repush:
    """What a rotation changed that its envs must now publish: the envs with targets that use it,
    why (the work item trigger), which cached values to drop, what to record once they are
    pushed (`done`: account keys leave phase `repushing` only then) and the rotation's lease to
    release afterwards, whatever happened (`release`).  The rotate use case (core.app.rotate)
    hands it to a sync; rotation itself never pushes."""

    envs: list[str]
    trigger: str
    forget: list[dict[str, str]] = field(default_factory=list)
    done: Callable[[], None] | None = None
    release: Callable[[], None] | None = None


@dataclass
class RotationReport:
    name: str
    # adopted, rotated, resumed, not_due, busy, error, in_progress (a key regeneration still runs: a later run
    # finishes the rotation); tagged secrets also already_rotated, not_tagged, unsupported
    outcome: str
    old_active: str | None = None
    new_active: str | None = None
    next_due: str | None = None
    repushed: list[str] = field(default_factory=list)
    error: str | None = None
    # Set by the rotation: the envs a sync must push now (core.app.rotate fills `repushed`).
    repush: Repush | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "repush"}


def counted(report: RotationReport, kind: str) -> RotationReport:
    """`report`, counted in the `vaultrelay.rotations` metric by `kind` and outcome.  Rotations are
    counted here in the engine, once each, whoever started them (timer, HTTP, CLI, Key Vault events)."""
    telemetry.record_rotation(kind, report.outcome)
    return report


@dataclass(frozen=True)
class Regeneration:
    """Where a key regeneration stands after one run's bounded wait."""

    done: bool  # the operation succeeded (the caller still checks that the listed key changed)
    operation: str = ""  # polling URL of the operation while it runs; "" when there is none to follow
    status: str = ""  # the last status ARM gave (InProgress, Dequeued, Succeeded), or blocked / gone


class RegenerationFailed(RuntimeError):
    """ARM says the regeneration operation ended without success: the key was not regenerated."""


def follow_regeneration(row: Row, save: Callable[[Row], Row],
                        regenerate: Callable[[str, Callable[[str], None]], Regeneration]) -> tuple[Regeneration, Row]:
    """Run `regenerate(operation, on_started)` for a rotation record: the operation's polling URL
    is saved in the record (`operation`) as soon as ARM accepts the request, so that a run killed
    afterwards is followed up, never repeated; a failed or forgotten operation is cleared, so that
    the next run starts a new one."""
    held = [row]

    def started(url: str) -> None:
        held[0].fields.update({"operation": url, "operation_status": "Accepted"})
        held[0] = save(held[0])

    try:
        outcome = regenerate(str(row.fields.get("operation") or ""), started)
    except RegenerationFailed:
        held[0].fields.update({"operation": "", "operation_status": ""})
        save(held[0])
        raise
    row = held[0]
    if not outcome.done and (outcome.operation != row.fields.get("operation", "") or outcome.status != row.fields.get("operation_status")):
        row.fields.update({"operation": outcome.operation, "operation_status": outcome.status})
        row = save(row)
    return outcome, row


def regenerate_account_key(clients: AzureClients, kind: str, subscription: str, group: str, account: str, key: str, credential: Any, *,
                           operation: str = "", wait: float = 60.0, on_started: Callable[[str], None] | None = None) -> Regeneration:
    """Regenerate one key of a storage account (`key`: key1/key2; synchronous) or a Cosmos DB
    account (`key`: its key kind, e.g. primary or secondaryReadonly).  This process's kept listings
    of a storage account are dropped (core.sources.listed_keys).

    Cosmos DB's regeneration is a long-running operation that may take hours: it is started (or,
    with `operation`, the one started earlier is followed) and polled for at most `wait` seconds.
    `on_started(url)` is called as soon as ARM accepted the request, before any wait, so the caller
    can record the operation.  A start refused with 412 (another operation holds the account: one
    this rotation started and could not record, or someone else's) starts nothing.

    Raises:
        RegenerationFailed: the operation ended Failed or Canceled.
        HttpResponseError: ARM refused the request (other than 412) or a poll.
    """
    if kind == "storage":
        from azure.mgmt.storage.models import StorageAccountRegenerateKeyParameters

        from core.sources.listed_keys import forget_listed_keys

        try:
            clients.storage_management(subscription, credential).storage_accounts.regenerate_key(
                group, account, StorageAccountRegenerateKeyParameters(key_name=key))
        finally:
            forget_listed_keys(account)
        return Regeneration(True, status="Succeeded")
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.cosmosdb.models import DatabaseAccountRegenerateKeyParameters

    client = clients.cosmos_management(subscription, credential)
    deadline = time.monotonic() + max(wait, 0.0)
    delay = COSMOS_POLL_SECONDS
    if not operation:
        answer: dict[str, Any] = {}

        def keep(response: Any) -> None:
            answer["status"] = response.http_response.status_code
            answer["headers"] = response.http_response.headers

        try:
            client.database_accounts.begin_regenerate_key(group, account, DatabaseAccountRegenerateKeyParameters(key_kind=key),
                                                          polling=False, raw_response_hook=keep)
        except HttpResponseError as exc:
            if exc.status_code == 412:
                log.info("regenerating %s of %s: another operation on the account is running (412)", key, account)
                return Regeneration(False, status="blocked")
            raise
        headers = answer.get("headers") or {}
        operation = str(headers.get("Azure-AsyncOperation") or headers.get("Location") or "")
        if answer.get("status") == 200 or not operation:
            return Regeneration(True, status="Succeeded")
        _check_operation_url(clients, operation)
        if on_started is not None:
            on_started(operation)
        delay = _retry_after(headers.get("Retry-After"))
    else:
        _check_operation_url(clients, operation)
        delay = 0.0
    return _poll_regeneration(client, operation, deadline, delay)


def _check_operation_url(clients: AzureClients, url: str) -> None:
    """An operation URL from ARM or from the state table is polled with an ARM token: only on ARM's
    own host (or a regional one under it, as ARM sends), over HTTPS.

    Raises:
        RuntimeError: the URL points elsewhere.
    """
    from urllib.parse import urlsplit

    arm = urlsplit(str(clients.cloud.arm_endpoint)).netloc.lower()
    found = urlsplit(url)
    host = found.netloc.lower()
    if found.scheme != "https" or not (host == arm or host.endswith("." + arm)):
        raise RuntimeError(f"refusing to poll an operation outside {arm} ({host or 'no host'})")


def _retry_after(value: Any) -> float:
    try:
        return max(0.0, min(float(value), 60.0)) if value is not None else COSMOS_POLL_SECONDS
    except (TypeError, ValueError):
        return COSMOS_POLL_SECONDS


def _poll_regeneration(client: Any, url: str, deadline: float, delay: float) -> Regeneration:
    """Poll the operation at `url` until it ends or `deadline` (at least once)."""
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest
    from azure.mgmt.core.exceptions import ARMErrorFormat

    while True:
        if delay:
            time.sleep(delay)
        response = client.send_request(HttpRequest("GET", url, headers={"Accept": "application/json"}))
        if response.status_code == 404:
            return Regeneration(False, status="gone")
        if response.status_code >= 400:
            raise HttpResponseError(response=response, error_format=ARMErrorFormat)
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        status = str(body.get("status") or "") if isinstance(body, dict) else ""
        if response.status_code == 202 and not status:
            status = "InProgress"  # a Location URL answers 202 while the operation runs
        if not status or status.lower() == "succeeded":
            return Regeneration(True, url, "Succeeded")
        if status.lower() in _TERMINAL_FAILURES:
            raw = body.get("error") if isinstance(body, dict) else None
            error: dict[str, Any] = raw if isinstance(raw, dict) else {}
            code = f" ({error.get('code')})" if error.get("code") else ""
            raise RegenerationFailed(f"the key regeneration ended {status}{code}")
        delay = _retry_after(response.headers.get("Retry-After"))
        if time.monotonic() + delay > deadline:
            return Regeneration(False, url, status)


def verify_storage_key(clients: AzureClients, account: str, key: str) -> str | None:
    """One cheap authorized call (Get Blob Service Properties) with `key`; None when it works,
    else why not (an HTTP status, never the key)."""
    from azure.core.exceptions import HttpResponseError

    client = clients.account_key_blob_service(account, key, retry_total=2)
    try:
        client.get_service_properties()
    except HttpResponseError as exc:
        return f"HTTP {exc.status_code}"
    return None
