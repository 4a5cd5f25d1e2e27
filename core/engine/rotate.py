"""Dual-key rotation of storage and Cosmos DB account keys (`key: active` + `rotate: {every}`).

Microsoft's dual-key pattern, end to end:
1. regenerate the **inactive** key (nobody uses it: consumers were moved off it last time),
2. verify the new key works (one cheap authorized call),
3. switch `active` to it in the rotation record,
4. re-push every env that uses the account: `key: active` references now publish the new key,
   and SAS tokens signed with the old key are re-minted with the new one,
5. only then is the rotation done; the old key keeps working until the *next* rotation
   regenerates it, so consumers that have not picked up the new values yet keep working.

Each step is recorded (`phase`) before it is taken, under a lease, with ETag-conditional writes:
several instances on one schedule rotate once, and a run killed at any point is resumed by the
next one without regenerating twice (the inactive key's fingerprint before regeneration tells
whether step 1 already happened).

An account whose keys authorize nothing (storage `allowSharedKeyAccess: false`, Cosmos DB
`disableLocalAuth: true`) is not rotated: the rotation reports an error naming the account and
the property before any key is regenerated (core.sources.key_access).
Cosmos DB's regenerateKey is a long-running operation that can take "anywhere from one minute to
multiple hours" (Learn, "Rotate keys for Azure Cosmos DB"), and the account refuses another one
meanwhile (412 PreconditionFailed).  A run waits for it at most `rotation.regenerate_wait`; the
operation's polling URL is kept in the rotation's record, so later runs poll it (never start a
second one) and switch `active` only once it succeeded and the listed key actually changed.  A run
killed between starting the operation and recording its URL is resumed the same way: the next
start is refused with 412 while the first one runs, and once it is done the listed key has changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from core import telemetry
from core.engine.resolve import forget_values
from core.sources.base import PlannedRef, RunContext
from core.state.tables import Conflict, Row

log = logging.getLogger("vaultrelay.rotate")

OTHER = {"key1": "key2", "key2": "key1", "primary": "secondary", "secondary": "primary"}
LEASE_SECONDS = 900.0
# Polling of Cosmos DB's regenerateKey operation when ARM sends no Retry-After (the SDK would wait
# 30 s between polls while holding the rotation lease); a Retry-After from ARM still wins.
COSMOS_POLL_SECONDS = 5.0
# Waits between re-push attempts of an env another instance is syncing (its lease lasts a sync).
REPUSH_WAITS = (1.0, 2.0, 4.0, 8.0)
_TERMINAL_FAILURES = ("failed", "canceled", "cancelled")


@dataclass(frozen=True)
class Candidate:
    name: str  # "storage:<account>" / "cosmos:<account>"
    kind: str  # storage | cosmos
    account: str
    store: str
    every: float
    ref: PlannedRef
    envs: tuple[str, ...]


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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def counted(report: RotationReport, kind: str) -> RotationReport:
    """`report`, counted in the `vaultrelay.rotations` metric by `kind` and outcome.  Rotations are
    counted here in the engine, once each, whoever started them (timer, HTTP, CLI, Key Vault events)."""
    telemetry.record_rotation(kind, report.outcome)
    return report


class KeyRotation:
    """Rotation of every `rotate:` reference in a config, through a SyncEngine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.broker = engine.broker
        self.state = engine.state
        self.wait = float(engine.config.rotation.regenerate_wait)

    def candidates(self) -> dict[str, Candidate]:
        from core.engine.plan import plan_env

        found: dict[str, Candidate] = {}
        config = self.broker.loaded.config
        plans = {env: plan_env(self.broker.loaded, env).refs for env in config.envs}
        for env, refs in plans.items():
            for ref in refs:
                variable = config.envs[env][ref.name].from_
                if variable is None or variable.rotate is None:
                    continue
                kind = "storage" if ref.kind == "storage_key" else "cosmos"
                name = f"{kind}:{ref.param('account').lower()}"
                users = tuple(sorted(_envs_using(plans, kind, ref.param("account"))))
                previous = found.get(name)
                every = min(variable.rotate.every, previous.every) if previous else variable.rotate.every
                found[name] = Candidate(name, kind, ref.param("account").lower(), ref.store, every, ref, users)
        return found

    def rotate(self, name: str | None = None, *, force: bool = False,
               progress: Callable[[str], None] | None = None) -> list[RotationReport]:
        """Rotate what is due (or `name`, or everything with `force`): account keys of `rotate:`
        references, then the secrets of `rotation.tagged_secrets` vaults (core.engine.tagged_rotation).
        `progress(name)` is called as each account rotation is done.

        Raises:
            KeyError: `name` is not a rotation of this config.
        """
        from core.engine.tagged_rotation import TaggedSecretRotation

        tagged = TaggedSecretRotation(self.engine) if self.engine.config.rotation.tagged_secrets else None
        if name is not None and name.startswith("tagged:"):
            if tagged is None:
                raise KeyError(f"no rotation named '{name}' (no rotation.tagged_secrets in the config)")
            return tagged.rotate(name, force=force)
        candidates = self.candidates()
        if name is not None:
            if name not in candidates:
                extra = ", tagged:<vault>/<secret>" if tagged is not None else ""
                raise KeyError(f"no rotation named '{name}' (rotations: {', '.join(sorted(candidates)) or 'none'}{extra})")
            candidates = {name: candidates[name]}
        reports = []
        for candidate in candidates.values():
            reports.append(counted(self._rotate_one(candidate, force), candidate.kind))
            if progress is not None:
                progress(candidate.name)
        if tagged is not None and name is None:
            reports.extend(tagged.rotate(force=force))
        notify_rotations(self.engine, reports)
        return reports

    # ---- one rotation -------------------------------------------------------------------
    def _rotate_one(self, c: Candidate, force: bool) -> RotationReport:
        now = self.engine.clock()
        row = self.state.get("rotations", c.kind, c.account)
        default = "key1" if c.kind == "storage" else "primary"
        if row is None and not force:
            # First sight of this account: adopt it (key1/primary active from now); the schedule
            # starts today rather than rotating at once on a fresh deployment.
            next_due = now + timedelta(seconds=c.every)
            try:
                self.state.put("rotations", Row(c.kind, c.account, {"active": default, "rotated_at": now.isoformat(), "next_due": next_due.isoformat(), "phase": ""}))
            except Conflict:
                return RotationReport(c.name, "busy")
            return RotationReport(c.name, "adopted", default, next_due=next_due.isoformat())
        if row is not None and not row.fields.get("phase") and not force and not self._due(row, c, now):
            return RotationReport(c.name, "not_due", row.fields.get("active", default), next_due=row.fields.get("next_due"))
        from core.engine.sync import holder_is_dead

        lease = self.state.acquire_lease(f"rotate:{c.name}", self.engine.owner, LEASE_SECONDS, stale=holder_is_dead)
        if lease is None:
            return RotationReport(c.name, "busy")
        try:
            row = self.state.get("rotations", c.kind, c.account) or Row(c.kind, c.account, {"active": default, "rotated_at": ""})
            phase = row.fields.get("phase") or ""
            if not phase and not force and not self._due(row, c, now):
                return RotationReport(c.name, "not_due", row.fields.get("active"), next_due=row.fields.get("next_due"))
            return self._run(c, row, resumed=bool(phase))
        except Exception as exc:
            log.error("rotation %s failed: %s", c.name, type(exc).__name__)
            self.state.audit(self.engine.owner, "rotation.failed", c.name, {"error": type(exc).__name__})
            return RotationReport(c.name, "error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        finally:
            self.state.release_lease(lease)

    @staticmethod
    def _due(row: Row, c: Candidate, now: datetime) -> bool:
        rotated_at = row.fields.get("rotated_at")
        if not rotated_at:
            return True
        return now - datetime.fromisoformat(rotated_at) >= timedelta(seconds=c.every)

    def _run(self, c: Candidate, row: Row, *, resumed: bool) -> RotationReport:
        fp = self.engine.fingerprinter
        active = str(row.fields.get("active"))
        target = str(row.fields.get("target_key") or OTHER[active])
        report = RotationReport(c.name, "resumed" if resumed else "rotated", old_active=active, new_active=target)
        phase = row.fields.get("phase") or ""
        if phase in ("", "regenerating"):
            self._ensure_keys_usable(c)
        if not phase:
            keys = self._keys(c)
            row.fields.update({"phase": "regenerating", "target_key": target, "fp_before": fp.of(keys[target]), "started_at": self.engine.clock().isoformat()})
            row = self._save(row)
            phase = "regenerating"
        if phase == "regenerating":
            keys = self._keys(c)
            changed = fp.of(keys[target]) != row.fields.get("fp_before")
            if not changed or row.fields.get("operation"):
                # Start the regeneration, or follow the one a previous run started.
                outcome, row = self._regenerate(c, target, row)
                keys = self._keys(c) if outcome.done else keys
                if not outcome.done or fp.of(keys[target]) == row.fields.get("fp_before"):
                    if outcome.done and c.kind == "storage":
                        raise RuntimeError(f"{c.account} still lists the old {target} after regenerating it")
                    return self._waiting(report, c.name, row, outcome)
            else:
                log.info("rotation %s: %s was already regenerated by an interrupted run", c.name, target)
            problem = self._verify(c, keys[target])
            if problem:
                raise RuntimeError(f"the regenerated {target} did not work: {problem}")
            row.fields.update({"phase": "switching", "operation": "", "operation_status": ""})
            row = self._save(row)
            phase = "switching"
        if phase == "switching":
            row.fields.update({"active": target, "previous": active, "rotated_at": self.engine.clock().isoformat(), "phase": "repushing"})
            row = self._save(row)
            forget_values(account=c.account)
            phase = "repushing"
        if phase == "repushing":
            envs = [env for env in c.envs if env in self.engine.envs_with_targets()]
            # Queue mode: the re-pushes are work items (a busy env is re-enqueued by the worker
            # until it is pushed after the switch); the record may then leave `repushing`.
            if self.engine.request_sync(envs, reason="rotation", trigger=f"rotation:{c.name}", forget=[{"account": c.account}]) is not None:
                report.repushed.extend(envs)
            else:
                for env in envs:
                    self._repush(env, target)
                    report.repushed.append(env)
            next_due = self.engine.clock() + timedelta(seconds=c.every)
            row.fields.update({"phase": "", "target_key": "", "fp_before": "", "next_due": next_due.isoformat()})
            row = self._save(row)
            report.next_due = next_due.isoformat()
        self.state.audit(self.engine.owner, "rotation.done", c.name, {"from": active, "to": target, "repushed": report.repushed, "resumed": resumed})
        return report

    def _repush(self, env: str, target: str) -> None:
        """Sync `env` after the switch.  Another instance holding the env's lease may have read
        the old key before the switch, so its push does not count: wait for the lease and push
        again; if it stays busy the rotation stays in phase `repushing` and the next run resumes."""
        for wait in (0.0, *REPUSH_WAITS):
            if wait:
                log.info("rotation: env %s is being synced by another instance; re-push again in %.0f s", env, wait)
                time.sleep(wait)
            result = self.engine.sync(env)
            if not result.ok:
                raise RuntimeError(f"re-push of env {env} after switching to {target} did not complete; will resume")
            if not any(t.outcome == "busy" for t in result.targets):
                return
        raise RuntimeError(f"re-push of env {env} after switching to {target}: another instance kept its lease; will resume")

    def _save(self, row: Row) -> Row:
        try:
            return self.state.put("rotations", row)
        except Conflict:
            raise RuntimeError("the rotation record changed underneath this run (another instance); giving up this run") from None

    # ---- provider calls -----------------------------------------------------------------
    def _run_context(self) -> RunContext:
        return RunContext(clients=self.broker.clients)

    def _keys(self, c: Candidate) -> dict[str, str]:
        """Both keys as listed now (a new run context each time: never a cached listing)."""
        store = self.broker.store(c.store)
        run = self._run_context()
        if c.kind == "storage":
            from core.sources.storage import account_keys

            return account_keys(c.ref, store, run, c.account, fresh=True)
        from core.sources.cosmos import _locate

        subscription, group = _locate(c.ref, store, run, c.account)
        keys = self.broker.clients.cosmos_management(subscription, store.credential).database_accounts.list_keys(group, c.account)
        return {"primary": keys.primary_master_key, "secondary": keys.secondary_master_key}

    def _where(self, c: Candidate) -> tuple[str, str]:
        """(subscription, resource group) of the candidate's account."""
        store = self.broker.store(c.store)
        run = self._run_context()
        if c.kind == "storage":
            from core.sources.storage import locate_account

            return locate_account(c.ref, store, run, c.account)
        from core.sources.cosmos import _locate

        return _locate(c.ref, store, run, c.account)

    def _ensure_keys_usable(self, c: Candidate) -> None:
        """Raises KeyAccessDisabled when the account's keys authorize nothing (read now)."""
        from core.sources.key_access import ensure_account_keys_usable

        subscription, group = self._where(c)
        ensure_account_keys_usable(self.broker.clients, c.kind, subscription, group, c.account, self.broker.store(c.store).credential,
                                   "rotate its keys")

    def _regenerate(self, c: Candidate, key: str, row: Row) -> tuple[Regeneration, Row]:
        """Regenerate `key` (storage), or start / follow Cosmos DB's operation for at most
        `self.wait`, keeping its polling URL in the record."""
        store = self.broker.store(c.store)
        subscription, group = self._where(c)
        if not row.fields.get("operation"):
            log.info("rotation %s: regenerating %s", c.name, key)
        return follow_regeneration(row, self._save, lambda operation, started: regenerate_account_key(
            self.broker.clients, c.kind, subscription, group, c.account, key, store.credential, operation=operation,
            wait=self.wait, on_started=started))

    def _waiting(self, report: RotationReport, name: str, row: Row, outcome: Regeneration) -> RotationReport:
        """The report of a run that leaves a running regeneration to a later run."""
        why = {"blocked": "another operation on the account is running (its end is awaited)",
               "gone": "the operation is no longer known to ARM; the next run checks the key and starts over if needed"}
        detail = why.get(outcome.status, f"operation {outcome.status or 'running'}; the listed key has not changed yet")
        log.info("rotation %s: %s is being regenerated: %s; a later run finishes the rotation", name, report.new_active, detail)
        self.state.audit(self.engine.owner, "rotation.waiting", name, {"key": report.new_active, "status": outcome.status,
                                                                       "since": row.fields.get("started_at", "")})
        report.outcome = "in_progress"
        report.error = None
        return report

    def _verify(self, c: Candidate, key: str) -> str | None:
        """One authorized call with the new key (storage); Cosmos keys are checked by being listed
        changed (a data-plane call would need the account's endpoint and network access)."""
        if c.kind != "storage":
            return None
        return verify_storage_key(self.broker.clients, c.account, key)


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


def regenerate_account_key(clients: Any, kind: str, subscription: str, group: str, account: str, key: str, credential: Any, *,
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


def _check_operation_url(clients: Any, url: str) -> None:
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


def verify_storage_key(clients: Any, account: str, key: str) -> str | None:
    """One cheap authorized call (Get Blob Service Properties) with `key`; None when it works,
    else why not (an HTTP status, never the key)."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient(clients.storage_url(account, "blob"), credential={"account_name": account, "account_key": key}, retry_total=2)
    try:
        client.get_service_properties()
    except HttpResponseError as exc:
        return f"HTTP {exc.status_code}"
    return None


def _envs_using(plans: dict[str, list[PlannedRef]], kind: str, account: str) -> set[str]:
    """Envs whose values depend on `account`'s active key: key references and key-signed SAS
    (storage), key and connection-string references (cosmos)."""
    envs = set()
    for env, refs in plans.items():
        for ref in refs:
            if ref.param("account", "").lower() != account.lower():
                continue
            if kind == "storage" and (ref.kind == "storage_key" or (ref.kind == "sas" and ref.param("sas_type") != "user_delegation")):
                envs.add(env)
            elif kind == "cosmos" and ref.kind == "cosmos":
                envs.add(env)
    return envs


def notify_rotations(engine: Any, reports: list[RotationReport]) -> None:
    """`rotation_done` / `rotation_failed` notifications (each once across instances)."""
    from core.app.notify import Notifier, occurrence

    notifier = Notifier(engine)
    if not notifier.enabled:
        return
    for report in reports:
        if report.outcome == "rotated":
            notifier.emit("rotation_done", report.name, occurrence(report.new_active, report.next_due),
                          {"name": report.name, "old_active": report.old_active, "new_active": report.new_active,
                           "next_due": report.next_due, "repushed": report.repushed})
        elif report.outcome == "error":
            notifier.emit("rotation_failed", report.name, occurrence(report.error, report.old_active),
                          {"name": report.name, "error": report.error, "active": report.old_active})
