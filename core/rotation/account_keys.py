"""Dual-key rotation of storage and Cosmos DB account keys (`key: active` + `rotate: {every}`).

Microsoft's dual-key pattern, end to end:
1. regenerate the **inactive** key (nobody uses it: consumers were moved off it last time),
2. verify the new key works (one cheap authorized call),
3. switch `active` to it in the rotation record,
4. re-push every env that uses the account: `key: active` references now publish the new key,
   and SAS tokens signed with the old key are re-minted with the new one (the rotation returns
   the envs in its report's `repush`; the rotate use case, core.app.rotate, syncs them and then
   records the rotation done),
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from core.errors import NotFoundError
from core.resolve import forget_values
from core.rotation.regeneration import (
    Regeneration,
    Repush,
    RotationReport,
    counted,
    follow_regeneration,
    regenerate_account_key,
    verify_storage_key,
)
from core.sources.base import PlannedRef, RunContext
from core.sources.registry import sources
from core.state.tables import Conflict, Row

log = logging.getLogger("vaultrelay.rotate")

OTHER = {"key1": "key2", "key2": "key1", "primary": "secondary", "secondary": "primary"}
LEASE_SECONDS = 900.0


@dataclass(frozen=True)
class Candidate:
    name: str  # "storage:<account>" / "cosmos:<account>"
    kind: str  # storage | cosmos
    account: str
    store: str
    every: float
    ref: PlannedRef
    envs: tuple[str, ...]


class KeyRotation:
    """Rotation of every `rotate:` reference in a config, over its runtime (core.runtime)."""

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.broker = runtime.connections
        self.state = runtime.state
        self.wait = float(runtime.config.rotation.regenerate_wait)

    def candidates(self) -> dict[str, Candidate]:

        found: dict[str, Candidate] = {}
        config = self.broker.loaded.config
        plans = {env: self.broker.env_plan(env).refs for env in config.envs}
        for env, refs in plans.items():
            for ref in refs:
                variable = config.envs[env][ref.name].from_
                if variable is None or variable.rotate is None:
                    continue
                follows = sources().get(ref.kind).follows_active_key(ref)
                if follows is None:
                    continue
                kind = follows[0]
                name = f"{kind}:{ref.param('account').lower()}"
                users = tuple(sorted(_envs_using(plans, kind, ref.param("account"))))
                previous = found.get(name)
                every = min(variable.rotate.every, previous.every) if previous else variable.rotate.every
                found[name] = Candidate(name, kind, ref.param("account").lower(), ref.store, every, ref, users)
        return found

    def rotate(self, name: str | None = None, *, force: bool = False,
               progress: Callable[[str], None] | None = None) -> list[RotationReport]:
        """Rotate what is due (or `name`, or everything with `force`): account keys of `rotate:`
        references, then the secrets of `rotation.tagged_secrets` vaults (core.rotation.tagged_secrets).
        `progress(name)` is called as each account rotation is done.  A report whose rotation
        changed values carries the envs to push in `repush`; nothing is pushed here.

        Raises:
            NotFoundError: `name` is not a rotation of this config.
        """
        from core.rotation.tagged_secrets import TaggedSecretRotation

        tagged = TaggedSecretRotation(self.runtime) if self.runtime.config.rotation.tagged_secrets else None
        if name is not None and name.startswith("tagged:"):
            if tagged is None:
                raise NotFoundError(f"no rotation named '{name}' (no rotation.tagged_secrets in the config)")
            return tagged.rotate(name, force=force)
        candidates = self.candidates()
        if name is not None:
            if name not in candidates:
                extra = ", tagged:<vault>/<secret>" if tagged is not None else ""
                raise NotFoundError(f"no rotation named '{name}' (rotations: {', '.join(sorted(candidates)) or 'none'}{extra})")
            candidates = {name: candidates[name]}
        reports = []
        for candidate in candidates.values():
            reports.append(counted(self._rotate_one(candidate, force), candidate.kind))
            if progress is not None:
                progress(candidate.name)
        if tagged is not None and name is None:
            reports.extend(tagged.rotate(force=force))
        return reports

    # ---- one rotation -------------------------------------------------------------------
    def _rotate_one(self, c: Candidate, force: bool) -> RotationReport:
        now = self.runtime.clock()
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
        from core.state.leases import holder_is_dead

        lease = self.state.acquire_lease(f"rotate:{c.name}", self.runtime.owner, LEASE_SECONDS, stale=holder_is_dead)
        if lease is None:
            return RotationReport(c.name, "busy")
        kept = False
        try:
            row = self.state.get("rotations", c.kind, c.account) or Row(c.kind, c.account, {"active": default, "rotated_at": ""})
            phase = row.fields.get("phase") or ""
            if not phase and not force and not self._due(row, c, now):
                return RotationReport(c.name, "not_due", row.fields.get("active"), next_due=row.fields.get("next_due"))
            report = self._run(c, row, resumed=bool(phase))
            if report.repush is not None:
                # The lease stays held while the envs are pushed (other instances find the
                # rotation busy rather than resuming it); whoever pushes releases it.
                report.repush.release = lambda: self.state.release_lease(lease)
                kept = True
            return report
        except Exception as exc:
            log.error("rotation %s failed: %s", c.name, type(exc).__name__)
            self.state.audit(self.runtime.owner, "rotation.failed", c.name, {"error": type(exc).__name__})
            return RotationReport(c.name, "error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        finally:
            if not kept:
                self.state.release_lease(lease)

    @staticmethod
    def _due(row: Row, c: Candidate, now: datetime) -> bool:
        rotated_at = row.fields.get("rotated_at")
        if not rotated_at:
            return True
        return now - datetime.fromisoformat(rotated_at) >= timedelta(seconds=c.every)

    def _run(self, c: Candidate, row: Row, *, resumed: bool) -> RotationReport:
        fp = self.runtime.fingerprinter
        active = str(row.fields.get("active"))
        target = str(row.fields.get("target_key") or OTHER[active])
        report = RotationReport(c.name, "resumed" if resumed else "rotated", old_active=active, new_active=target)
        phase = row.fields.get("phase") or ""
        if phase in ("", "regenerating"):
            self._ensure_keys_usable(c)
        if not phase:
            keys = self._keys(c)
            row.fields.update({"phase": "regenerating", "target_key": target, "fp_before": fp.of(keys[target]), "started_at": self.runtime.clock().isoformat()})
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
            row.fields.update({"active": target, "previous": active, "rotated_at": self.runtime.clock().isoformat(), "phase": "repushing"})
            row = self._save(row)
            forget_values(account=c.account)
            phase = "repushing"
        if phase == "repushing":
            # Resumed here too after a run died while its envs were being pushed: they are pushed
            # again (a sync of an env already holding the new key writes nothing).
            envs = [env for env in c.envs if env in self.runtime.envs_with_targets()]
            report.repush = Repush(envs, f"rotation:{c.name}", [{"account": c.account}],
                                   done=lambda: self._finish(c, report, resumed))
        return report

    def _finish(self, c: Candidate, report: RotationReport, resumed: bool) -> None:
        """Leave phase `repushing` once the envs were pushed (or enqueued) after the switch.  A
        record already finished (another instance resumed the same rotation) is left as it is.

        Raises:
            RuntimeError: the record kept changing underneath this run.
        """
        row = self.state.get("rotations", c.kind, c.account)
        if row is None or row.fields.get("phase") != "repushing" or str(row.fields.get("active")) != report.new_active:
            return
        next_due = self.runtime.clock() + timedelta(seconds=c.every)
        row.fields.update({"phase": "", "target_key": "", "fp_before": "", "next_due": next_due.isoformat()})
        self._save(row)
        report.next_due = next_due.isoformat()
        self.state.audit(self.runtime.owner, "rotation.done", c.name, {"from": report.old_active, "to": report.new_active,
                                                                      "repushed": report.repushed, "resumed": resumed})

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
        self.state.audit(self.runtime.owner, "rotation.waiting", name, {"key": report.new_active, "status": outcome.status,
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


def _envs_using(plans: dict[str, list[PlannedRef]], kind: str, account: str) -> set[str]:
    """Envs whose values depend on `account`'s active key: key references and key-signed SAS
    (storage), key and connection-string references (cosmos)."""
    envs = set()
    for env, refs in plans.items():
        for ref in refs:
            follows = sources().get(ref.kind).follows_active_key(ref)
            if follows is not None and follows[0] == kind and follows[1].lower() == account.lower():
                envs.add(env)
    return envs
