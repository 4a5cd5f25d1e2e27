"""Scenario 3, "events at least once": duplicated, shuffled and stale Key Vault events.

An env of a few source secrets has two targets in a vault of the scenario's own: one secret per
variable and one bundle secret.  Each round writes a new version of one source secret and emits
its `SecretNewVersionCreated` event; every event is delivered 1-5 times, its first copy in its
own round and the others scheduled for later rounds (so older versions' events arrive after newer
ones), each round's deliveries shuffled.  In some rounds a version is written and its event held
back, then a newer version of the same secret is written and delivered: the older version's
FIRST delivery comes in a later round, after the newer version was pushed (its other copies
later still).  Delivery goes through the real event path: `core.app.events.handle_event` (the Event Grid function's use case) with the
Event Grid wire shape.

Invariant: exactly one push per new version per target, except for the held-back versions,
which were never the newest when any event was handled: those get no push (expected pushes =
new versions - held back), and each held-back first delivery, handled on its own, changes no
target (target versions counted just before and after it).  Pushes are counted as versions of
the target secrets, read back with the admin identity; at the end each target holds the newest
source versions.  Figures: events, deliveries, duplicates, stale deliveries, stale first
deliveries and the pushes they caused, pushes, expected pushes.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

from resilience.common import ScenarioContext, ScenarioResult

NAME = "events at least once"
NEW_VERSION = "Microsoft.KeyVault.SecretNewVersionCreated"


def run(ctx: ScenarioContext) -> ScenarioResult:
    import yaml
    from azure.keyvault.secrets import SecretClient

    from core.app.events import handle_event
    from core.app.sync import engine
    from core.runtime import LiveRuntime
    from core.state.audit import MemoryAuditSink

    result = ScenarioResult(NAME)
    sandbox = ctx.sandbox
    rng = random.Random(ctx.seed)
    rounds = 60 if ctx.long else 16
    variables = 5 if ctx.long else 3
    tag = uuid.uuid4().hex[:8]
    target_vault = f"evt{tag}"
    state_vault = f"evt{tag}-st"  # state is never kept in a target's vault
    prefix = f"e{tag}"

    sandbox.create_resource("vault", target_vault)
    sandbox.create_resource("vault", state_vault)
    sandbox.assign_role("system", "Key Vault Secrets Officer", sandbox.resource_id("vault", target_vault))
    sandbox.assign_role("system", "Key Vault Secrets Officer", sandbox.resource_id("vault", state_vault))
    sandbox.assign_role("system", "Key Vault Secrets User", sandbox.resource_id("vault", "kv-source"))
    sandbox.assign_role("system", "Storage Table Data Contributor", sandbox.resource_id("storage", ctx.state_account))
    for table in ("pushes", "rotations", "events", "leases", "audit"):
        ctx.state_tables.add(prefix + table)

    admin = sandbox.admin_credential()
    source = SecretClient(sandbox.vault_url("kv-source"), admin)
    target = SecretClient(sandbox.vault_url(target_vault), admin)
    names = {f"SECRET_{i}": f"evt-{tag}-{i}" for i in range(variables)}  # variable -> source secret
    latest: dict[str, str] = {}
    for variable, secret in names.items():
        latest[variable] = ctx.secret(f"event-value-{uuid.uuid4().hex}")
        source.set_secret(secret, latest[variable])

    config = {
        "version": 1,
        "secretStores": {"azure": {"type": "azure.managed_identity"}},
        "envs": {"app": {variable: {"from": {"store": "azure", "vault": "kv-source", "secret": secret}} for variable, secret in names.items()}},
        "targets": {
            "vars": {"type": "keyvault", "env": "app", "store": "azure", "vault": target_vault, "prefix": "v-"},
            "bundle": {"type": "keyvault", "env": "app", "store": "azure", "vault": target_vault, "mode": "bundle", "secret_name": "app-bundle"},
        },
        "state": {"store": "azure", "account": ctx.state_account, "vault": state_vault, "table_prefix": prefix,
                  "fingerprint_key": ctx.secret(f"event-fingerprint-key-{uuid.uuid4().hex}")},
    }
    path = ctx.workdir / "events-vaultrelay.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink())
    target_secrets = {f"v-secret-{i}": f"SECRET_{i}" for i in range(variables)}
    try:
        first = engine(api.current()).sync()
        result.check(first.ok, f"the first sync did not complete: {[(t.target, t.outcome, t.error) for t in first.targets]}")
        before = _versions(target, [*target_secrets, "app-bundle"])

        emitted: list[dict[str, Any]] = []  # every event, with its secret and version
        schedule: dict[int, list[int]] = {}  # round -> indexes of events to deliver again
        late_first: dict[int, list[int]] = {}  # round -> held-back events delivered for the first time
        deliveries = duplicates = stale = held_back = stale_first_pushes = 0
        delivered_once: set[int] = set()
        outcomes: dict[str, int] = {}
        version_of: dict[str, str] = {}  # source secret -> newest version
        problems: list[str] = []

        def emit(variable: str) -> int:
            latest[variable] = ctx.secret(f"event-value-{uuid.uuid4().hex}")
            created = source.set_secret(names[variable], latest[variable])
            version_of[names[variable]] = str(created.properties.version)
            emitted.append({"secret": names[variable], "version": created.properties.version, "event": {
                "id": str(uuid.uuid4()), "eventType": NEW_VERSION, "subject": names[variable], "dataVersion": "1",
                "topic": f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{sandbox.resource_group}/providers/Microsoft.KeyVault/vaults/kv-source",
                "data": {"Id": f"{sandbox.vault_url('kv-source')}/secrets/{names[variable]}/{created.properties.version}",
                         "VaultName": "kv-source", "ObjectType": "Secret", "ObjectName": names[variable],
                         "Version": created.properties.version, "NBF": None, "EXP": None},
            }})
            return len(emitted) - 1

        def deliver(index: int) -> None:
            nonlocal deliveries, duplicates, stale
            item = emitted[index]
            deliveries += 1
            if index in delivered_once:
                duplicates += 1
            delivered_once.add(index)
            if version_of[item["secret"]] != item["version"]:
                stale += 1
            try:
                outcome = dict(handle_event(api.current(), item["event"]).__dict__)
            except Exception as exc:  # a valid event that could not be acted on (Event Grid would retry)
                ctx.observe(str(exc))
                problems.append(f"event for {item['secret']}@{item['version'][:8]}: {type(exc).__name__}: {str(exc)[:120]}")
                return
            ctx.observe(json.dumps(outcome, default=str))
            outcomes[str(outcome.get("outcome"))] = outcomes.get(str(outcome.get("outcome")), 0) + 1

        for round_ in range(rounds + 1):
            batch: list[int] = []
            if round_ < rounds:
                variable = rng.choice(sorted(names))
                if round_ < rounds - 1 and rng.random() < 0.3:
                    # A version whose event is late: a newer one is written (and delivered) first.
                    old = emit(variable)
                    held_back += 1
                    first_round = rng.randint(round_ + 1, rounds)
                    late_first.setdefault(first_round, []).append(old)
                    for _ in range(rng.randint(1, 5) - 1):
                        if first_round < rounds:
                            schedule.setdefault(rng.randint(first_round + 1, rounds), []).append(old)
                index = emit(variable)
                batch.append(index)
                for _ in range(rng.randint(1, 5) - 1):  # the other copies, now or in a later round
                    schedule.setdefault(rng.randint(round_, rounds), []).append(index)
            batch += schedule.pop(round_, [])
            head, rest = batch[:1], batch[1:]
            rng.shuffle(rest)
            # This round's new event goes first half of the time; else a late copy of an older one does.
            order = head + rest if rng.random() < 0.5 or not rest else rest[:1] + head + rest[1:]
            for index in order:
                deliver(index)
            for index in late_first.pop(round_, []):
                # The newest versions were pushed by this round's deliveries: this one must change nothing.
                ahead = _versions(target, [*target_secrets, "app-bundle"])
                deliver(index)
                caused = sum(_versions(target, [*target_secrets, "app-bundle"]).values()) - sum(ahead.values())
                stale_first_pushes += caused
                if caused:
                    problems.append(f"the late first event of {emitted[index]['secret']}@{emitted[index]['version'][:8]} "
                                    f"(a newer version already pushed) caused {caused} pushes")

        after = _versions(target, [*target_secrets, "app-bundle"])
        new_versions = len(emitted)
        per_variable_pushes = sum(after[n] - before[n] for n in target_secrets)
        bundle_pushes = after["app-bundle"] - before["app-bundle"]
        finals = {variable: target.get_secret(name).value for name, variable in target_secrets.items()}
        bundle = json.loads(target.get_secret("app-bundle").value or "{}")
    finally:
        api.close()

    expected = new_versions - held_back
    result.figures.update({
        "new versions": new_versions,
        "events delivered": deliveries,
        "duplicates": duplicates,
        "stale": stale,
        "stale first deliveries": held_back,
        "pushes caused by stale first deliveries": stale_first_pushes,
        "outcomes": dict(sorted(outcomes.items())),
        "pushes (per-variable target)": per_variable_pushes,
        "pushes (bundle target)": bundle_pushes,
        "expected pushes per target": expected,
    })
    result.violations += problems
    result.check(held_back > 0, "no version's first event came after a newer version's push (the seed gave none)")
    result.check(per_variable_pushes == expected,
                 f"per-variable target: {per_variable_pushes} pushes for {new_versions} new versions, {held_back} of them never the newest when an event came")
    result.check(bundle_pushes == expected,
                 f"bundle target: {bundle_pushes} pushes for {new_versions} new versions, {held_back} of them never the newest when an event came")
    wrong = sorted(v for v, value in finals.items() if value != latest[v])
    result.check(not wrong, f"per-variable target does not hold the newest versions of {wrong}")
    result.check(bundle == latest, "bundle target does not hold the newest versions")
    return result


def _versions(client: Any, names: list[str]) -> dict[str, int]:
    return {name: sum(1 for _ in client.list_properties_of_secret_versions(name)) for name in names}
