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
"""

from __future__ import annotations

import logging
import time
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
    outcome: str  # adopted, rotated, resumed, not_due, busy, error; tagged secrets also already_rotated, not_tagged, unsupported
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

    def rotate(self, name: str | None = None, *, force: bool = False) -> list[RotationReport]:
        """Rotate what is due (or `name`, or everything with `force`): account keys of `rotate:`
        references, then the secrets of `rotation.tagged_secrets` vaults (core.engine.tagged_rotation).

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
        reports = [counted(self._rotate_one(c, force), c.kind) for c in candidates.values()]
        if tagged is not None and name is None:
            reports.extend(tagged.rotate(force=force))
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
            if fp.of(keys[target]) == row.fields.get("fp_before"):
                self._regenerate(c, target)
                keys = self._keys(c)
            else:
                log.info("rotation %s: %s was already regenerated by an interrupted run", c.name, target)
            problem = self._verify(c, keys[target])
            if problem:
                raise RuntimeError(f"the regenerated {target} did not work: {problem}")
            row.fields.update({"phase": "switching"})
            row = self._save(row)
            phase = "switching"
        if phase == "switching":
            row.fields.update({"active": target, "previous": active, "rotated_at": self.engine.clock().isoformat(), "phase": "repushing"})
            row = self._save(row)
            forget_values(account=c.account)
            phase = "repushing"
        if phase == "repushing":
            for env in c.envs:
                if env in self.engine.envs_with_targets():
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

    def _regenerate(self, c: Candidate, key: str) -> None:
        store = self.broker.store(c.store)
        log.info("rotation %s: regenerating %s", c.name, key)
        subscription, group = self._where(c)
        regenerate_account_key(self.broker.clients, c.kind, subscription, group, c.account, key, store.credential)

    def _verify(self, c: Candidate, key: str) -> str | None:
        """One authorized call with the new key (storage); Cosmos keys are checked by being listed
        changed (a data-plane call would need the account's endpoint and network access)."""
        if c.kind != "storage":
            return None
        return verify_storage_key(self.broker.clients, c.account, key)


def regenerate_account_key(clients: Any, kind: str, subscription: str, group: str, account: str, key: str, credential: Any) -> None:
    """Regenerate one key of a storage account (`key`: key1/key2) or a Cosmos DB account (`key`: its
    key kind, e.g. primary or secondaryReadonly), waiting for Cosmos DB's long-running operation.
    This process's kept listings of a storage account are dropped (core.sources.listed_keys)."""
    if kind == "storage":
        from azure.mgmt.storage.models import StorageAccountRegenerateKeyParameters

        from core.sources.listed_keys import forget_listed_keys

        try:
            clients.storage_management(subscription, credential).storage_accounts.regenerate_key(
                group, account, StorageAccountRegenerateKeyParameters(key_name=key))
        finally:
            forget_listed_keys(account)
        return
    from azure.mgmt.cosmosdb.models import DatabaseAccountRegenerateKeyParameters

    clients.cosmos_management(subscription, credential).database_accounts.begin_regenerate_key(
        group, account, DatabaseAccountRegenerateKeyParameters(key_kind=key), polling_interval=COSMOS_POLL_SECONDS).result()


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
