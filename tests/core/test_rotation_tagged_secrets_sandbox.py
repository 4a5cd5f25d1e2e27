"""Key Vault secrets tagged like Microsoft's rotation samples (CredentialId, ProviderAddress,
ValidityPeriodDays), rotated by vaultrelay against the sandbox: through a near-expiry event and
through the timer/CLI rotation.  Key values are compared by digest, never printed."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.keyvault.secrets import SecretClient
from azure.mgmt.storage import StorageManagementClient
from azure.storage.blob import BlobServiceClient

from core.app.events import KeyVaultEvents
from core.app.rotate import rotate
from core.errors import NotFoundError
from core.push import SyncEngine
from core.runtime import Runtime
from core.values import SecretValue
from sandbox.client import SandboxClient
from tests.configs import config_yaml, mi_store, state_block
from tests.core.test_rotation_account_keys_sandbox import cosmos_keys, fresh_cosmos_account
from tests.world import World, fresh_account, regenerations, run_cli, write_config

NEAR_EXPIRY = "Microsoft.KeyVault.SecretNearExpiry"
EXPIRED = "Microsoft.KeyVault.SecretExpired"


def digest(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()


def storage_keys(sandbox: SandboxClient, account: str) -> dict[str, str]:
    client = StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    return {k.key_name: k.value for k in client.storage_accounts.list_keys(sandbox.resource_group, account).keys_property or []}


def key_works(sandbox: SandboxClient, account: str, key: str) -> bool:
    client = BlobServiceClient(sandbox.storage_endpoint(account), credential={"account_name": account, "account_key": key}, retry_total=0)
    try:
        client.get_service_properties()
    except HttpResponseError:
        return False
    return True


class Tagged:
    """A vault of its own (watched), seeded the way Microsoft's sample deployment seeds it."""

    def __init__(self, world: World) -> None:
        self.world = world
        sandbox = world.sandbox
        self.vault = f"kvt{world.tag}"
        sandbox.create_resource("vault", self.vault)
        scope = sandbox.resource_id("vault", self.vault)
        sandbox.grant("system", "Key Vault Secrets Officer", scope)
        sandbox.grant("admin", "Key Vault Secrets Officer", scope)
        self.client = SecretClient(sandbox.vault_url(self.vault), world.admin)
        # rotation.tagged_secrets[0].accounts: what the config lets this vault's secrets name.
        self.accounts: list[str] = []

    def seed(self, name: str, value: str, credential_id: str, provider: str, *, expires_in: timedelta, validity_days: str = "60",
             listed: bool = True) -> Any:
        """A secret tagged like the samples; `listed`: the config lists its ProviderAddress (if it is a kind vaultrelay rotates)."""
        rotated = any(f"/providers/{kind}/".lower() in provider.lower()
                      for kind in ("Microsoft.Storage/storageAccounts", "Microsoft.DocumentDB/databaseAccounts", "Microsoft.Sql/servers"))
        if listed and rotated and provider not in self.accounts:
            self.accounts.append(provider)
        return self.client.set_secret(name, value, expires_on=datetime.now(UTC) + expires_in, content_type="text/plain", tags={
            "CredentialId": credential_id, "ProviderAddress": provider, "ValidityPeriodDays": validity_days})

    def body(self, env_secret: str | None = None) -> str:
        env = ""
        if env_secret:
            env = f"""
        envs:
          app:
            ACCOUNT_KEY: {{from: {{store: azure, vault: {self.vault}, secret: {env_secret}}}}}
        targets:
          vault: {{type: keyvault, env: app, store: azure, vault: kv-target, prefix: vr-TAG-}}
"""
        accounts = ", ".join(self.accounts or [f"/subscriptions/{self.world.sandbox.subscription_id}/resourceGroups/none/providers/"
                                                 f"Microsoft.Storage/storageAccounts/nothing{self.world.tag}"])
        return f"""
        rotation:
          tagged_secrets:
            - {{vault: {self.vault}, store: azure, accounts: [{accounts}]}}
{env}"""

    def engine(self, env_secret: str | None = None) -> SyncEngine:
        return self.world.engine(self.body(env_secret))

    def runtime(self, env_secret: str | None = None) -> Runtime:
        return self.world.runtime(self.body(env_secret))


def near_expiry(vault: str, name: str, version: str | None, event_id: str | None = None, *, event_type: str = NEAR_EXPIRY) -> dict[str, Any]:
    return {"id": event_id or str(uuid.uuid4()), "eventType": event_type, "subject": name,
            "data": {"VaultName": vault, "ObjectType": "Secret", "ObjectName": name, "Version": version}}


def expired(vault: str, name: str, version: str | None) -> dict[str, Any]:
    return near_expiry(vault, name, version, event_type=EXPIRED)


@pytest.fixture()
def tagged(world: World) -> Tagged:
    return Tagged(world)


def test_near_expiry_event_rotates_the_alternate_storage_key_once(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    provider = sandbox.resource_id("storage", account)
    before = storage_keys(sandbox, account)
    seeded_secret = tagged.seed("storage-key", before["key1"], "key1", provider, expires_in=timedelta(days=10))
    engine = tagged.engine("storage-key")
    assert engine.sync().ok
    assert digest(world.target.get_secret(f"vr-{world.tag}-account-key").value) == digest(before["key1"])

    sandbox.reset_counters()
    event = near_expiry(tagged.vault, "storage-key", seeded_secret.properties.version)
    outcome = KeyVaultEvents(tagged.runtime("storage-key")).handle(event)
    assert (outcome.outcome, outcome.envs) == ("rotated", ["app"]), outcome
    assert regenerations(sandbox, account) == 1

    after = storage_keys(sandbox, account)
    assert digest(after["key2"]) != digest(before["key2"])  # the alternate key was regenerated
    assert digest(after["key1"]) == digest(before["key1"])  # the one in use was left alone
    current = tagged.client.get_secret("storage-key")
    assert current.properties.version != seeded_secret.properties.version
    assert digest(current.value) == digest(after["key2"])
    assert current.properties.tags == {"CredentialId": "key2", "ProviderAddress": provider, "ValidityPeriodDays": "60"}
    assert current.properties.content_type == "text/plain"
    expected_expiry = datetime.now(UTC) + timedelta(days=60)
    assert current.properties.expires_on is not None and abs(current.properties.expires_on - expected_expiry) < timedelta(minutes=2)
    assert key_works(sandbox, account, current.value or "") and key_works(sandbox, account, before["key1"])
    assert digest(world.target.get_secret(f"vr-{world.tag}-account-key").value) == digest(after["key2"])  # re-pushed

    # The same event again, a late event about the old version, and Key Vault's own near-expiry
    # notice of the new (60-day) version: nothing is regenerated.
    handler = KeyVaultEvents(tagged.runtime("storage-key"))
    assert handler.handle(event).outcome == "duplicate"
    late = handler.handle(near_expiry(tagged.vault, "storage-key", seeded_secret.properties.version))
    assert late.outcome == "ignored" and "already rotated" in late.detail
    fresh = handler.handle(near_expiry(tagged.vault, "storage-key", current.properties.version))
    assert fresh.outcome == "ignored" and "not due" in fresh.detail
    assert regenerations(sandbox, account) == 1
    assert digest(tagged.client.get_secret("storage-key").value) == digest(after["key2"])

    state = tagged.engine().state
    record = state.get("rotations", "tagged", f"{tagged.vault}:storage-key")
    assert record is not None and record.fields["active"] == "key2" and record.fields["phase"] == ""
    audit = [r for r in state.query("audit") if r.fields.get("action") == "tagged.rotated"]
    assert len(audit) == 1 and json.loads(audit[0].fields["detail"])["to"] == "key2"
    rows = json.dumps([r.fields for t in ("rotations", "audit", "events") for r in state.query(t)], default=str)
    assert all(k not in rows for k in (before["key1"], before["key2"], after["key2"]))


def test_timer_rotation_rotates_due_tagged_secrets_of_storage_and_cosmos_and_warns_on_other_kinds(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    cosmos = fresh_cosmos_account(sandbox, world.tag)
    storage_provider = sandbox.resource_id("storage", account)
    cosmos_provider = sandbox.resource_id("cosmos", cosmos)
    keys = storage_keys(sandbox, account)
    cosmos_before = cosmos_keys(sandbox, cosmos)
    tagged.seed("due-key", keys["key2"], "key2", storage_provider, expires_in=timedelta(days=5))
    tagged.seed("later-key", keys["key2"], "key2", storage_provider, expires_in=timedelta(days=50))
    tagged.seed("cosmos-key", cosmos_before.primary_master_key, "Primary", cosmos_provider, expires_in=timedelta(days=2), validity_days="30")
    hub = f"/subscriptions/{sandbox.subscription_id}/resourceGroups/{sandbox.resource_group}/providers/Microsoft.EventHub/namespaces/eh{world.tag}"
    tagged.seed("hub-key", "not-a-key", "key1", hub, expires_in=timedelta(days=1))
    tagged.client.set_secret("untagged", "whatever", expires_on=datetime.now(UTC) + timedelta(days=1))

    sandbox.reset_counters()
    reports = {r.name: r for r in rotate(tagged.runtime())}
    prefix = f"tagged:{tagged.vault}/"
    assert set(reports) == {prefix + n for n in ("due-key", "later-key", "cosmos-key", "hub-key")}
    assert (reports[prefix + "due-key"].outcome, reports[prefix + "due-key"].new_active) == ("rotated", "key1")
    assert reports[prefix + "later-key"].outcome == "not_due"
    assert (reports[prefix + "cosmos-key"].outcome, reports[prefix + "cosmos-key"].new_active) == ("rotated", "Secondary")
    unsupported = reports[prefix + "hub-key"]
    assert unsupported.outcome == "unsupported" and "Microsoft.EventHub/namespaces" in (unsupported.error or "")
    warnings = {r.key: r.fields for r in tagged.engine().state.query("rotations", "warning")}
    assert "hub-key" in warnings[f"{tagged.vault}:hub-key"]["detail"]
    assert "Microsoft.EventHub/namespaces" in warnings[f"{tagged.vault}:hub-key"]["detail"]
    status = {(r["kind"], r["name"]): r for r in tagged.engine().rotation_status()}
    assert status[("tagged", f"{tagged.vault}:due-key")]["active"] == "key1"
    assert "Microsoft.EventHub/namespaces" in status[("warning", f"{tagged.vault}:hub-key")]["detail"]

    after = storage_keys(sandbox, account)
    assert digest(after["key1"]) != digest(keys["key1"]) and digest(after["key2"]) == digest(keys["key2"])
    assert digest(tagged.client.get_secret("due-key").value) == digest(after["key1"])
    assert key_works(sandbox, account, after["key1"])
    cosmos_after = cosmos_keys(sandbox, cosmos)
    assert digest(cosmos_after.secondary_master_key) != digest(cosmos_before.secondary_master_key)
    assert digest(cosmos_after.primary_master_key) == digest(cosmos_before.primary_master_key)
    rotated_cosmos = tagged.client.get_secret("cosmos-key")
    assert digest(rotated_cosmos.value) == digest(cosmos_after.secondary_master_key)
    assert rotated_cosmos.properties.tags["CredentialId"] == "Secondary"
    endpoints = sandbox.counters()["by_endpoint"]
    assert (endpoints.get("arm:StorageRegenerateKey"), endpoints.get("arm:CosmosRegenerateKey")) == (1, 1)

    sandbox.reset_counters()
    again = {r.name: r.outcome for r in rotate(tagged.runtime())}
    assert again == {prefix + "due-key": "not_due", prefix + "later-key": "not_due", prefix + "cosmos-key": "not_due",
                     prefix + "hub-key": "unsupported"}
    assert not any("regenerate" in k.lower() for k in sandbox.counters()["by_endpoint"])

    (one,) = rotate(tagged.runtime(), prefix + "later-key", force=True)
    assert (one.outcome, one.old_active, one.new_active) == ("rotated", "key2", "key1")
    with pytest.raises(NotFoundError):
        rotate(tagged.runtime(), prefix + "untagged")


def test_an_interrupted_rotation_is_resumed_without_regenerating_again(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    provider = sandbox.resource_id("storage", account)
    keys = storage_keys(sandbox, account)
    seeded_secret = tagged.seed("storage-key", keys["key1"], "key1", provider, expires_in=timedelta(days=3))
    engine = tagged.engine()
    # A run that recorded its intent and regenerated key2, then died before writing the secret.
    from core.state.tables import Row

    engine.state.put("rotations", Row("tagged", f"{tagged.vault}:storage-key", {
        "phase": "regenerating", "from": "key1", "target": "key2", "from_version": seeded_secret.properties.version,
        "provider": provider, "fp_before": engine.fingerprinter.of(keys["key2"])}))
    from azure.mgmt.storage.models import StorageAccountRegenerateKeyParameters

    StorageManagementClient(world.admin, sandbox.subscription_id, base_url=sandbox.arm_endpoint).storage_accounts.regenerate_key(
        sandbox.resource_group, account, StorageAccountRegenerateKeyParameters(key_name="key2"))
    regenerated = storage_keys(sandbox, account)["key2"]

    sandbox.reset_counters()
    (report,) = rotate(tagged.runtime())
    assert (report.outcome, report.new_active) == ("resumed", "key2"), report
    assert not any("regenerate" in k.lower() for k in sandbox.counters()["by_endpoint"])
    assert digest(tagged.client.get_secret("storage-key").value) == digest(regenerated)


def test_expired_event_rotates_an_expired_tagged_secret_at_once(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    provider = sandbox.resource_id("storage", account)
    before = storage_keys(sandbox, account)
    # Expired an hour ago: the sample's function missed it (or never ran); consumers of the env fail.
    seeded_secret = tagged.seed("storage-key", before["key1"], "key1", provider, expires_in=-timedelta(hours=1), validity_days="30")
    engine = tagged.engine("storage-key")
    assert "ACCOUNT_KEY" in engine.sync().failures.get("app", [""])[0]  # an expired source secret is not pushed

    sandbox.reset_counters()
    handler = KeyVaultEvents(tagged.runtime("storage-key"))
    outcome = handler.handle(expired(tagged.vault, "storage-key", seeded_secret.properties.version))
    assert (outcome.outcome, outcome.envs) == ("rotated", ["app"]), outcome
    assert regenerations(sandbox, account) == 1
    after = storage_keys(sandbox, account)
    assert digest(after["key2"]) != digest(before["key2"]) and digest(after["key1"]) == digest(before["key1"])
    current = tagged.client.get_secret("storage-key")
    assert current.properties.version != seeded_secret.properties.version
    assert digest(current.value) == digest(after["key2"]) and key_works(sandbox, account, current.value or "")
    assert current.properties.tags["CredentialId"] == "key2"
    expected_expiry = datetime.now(UTC) + timedelta(days=30)
    assert current.properties.expires_on is not None and abs(current.properties.expires_on - expected_expiry) < timedelta(minutes=2)
    assert digest(world.target.get_secret(f"vr-{world.tag}-account-key").value) == digest(after["key2"])  # re-pushed
    state = tagged.engine().state
    audit = [json.loads(r.fields["detail"]) for r in state.query("audit") if r.fields.get("action") == "tagged.rotated"]
    assert [(a["reason"], a["from_version"], a["to_version"]) for a in audit] == [
        ("SecretExpired", seeded_secret.properties.version, current.properties.version)]

    # Key Vault delivers at least once: a second SecretExpired (another event id) about the expired
    # version, and the timer afterwards, regenerate nothing.
    late = KeyVaultEvents(tagged.runtime("storage-key")).handle(expired(tagged.vault, "storage-key", seeded_secret.properties.version))
    assert late.outcome == "ignored" and "already rotated" in late.detail
    assert [r.outcome for r in rotate(tagged.runtime())] == ["not_due"]
    assert regenerations(sandbox, account) == 1


@pytest.mark.parametrize(("first", "second"), [("PrimaryReadOnly", "SecondaryReadOnly"), ("SecondaryReadonly", "PrimaryReadonly"),
                                               ("primaryReadonly", "secondaryReadonly")])
def test_cosmos_read_only_credential_ids_alternate_between_the_read_only_keys(world: World, tagged: Tagged, first: str, second: str) -> None:
    sandbox = world.sandbox
    cosmos = fresh_cosmos_account(sandbox, world.tag)
    provider = sandbox.resource_id("cosmos", cosmos)
    attribute = {"primary": "primary_readonly_master_key", "secondary": "secondary_readonly_master_key"}
    start = first.lower().removesuffix("readonly")
    other = second.lower().removesuffix("readonly")
    keys = cosmos_keys(sandbox, cosmos)
    tagged.seed("cosmos-read", getattr(keys, attribute[start]), first, provider, expires_in=timedelta(days=2), validity_days="30")
    label = f"tagged:{tagged.vault}/cosmos-read"
    all_keys = ("primary_master_key", "secondary_master_key", "primary_readonly_master_key", "secondary_readonly_master_key")

    sandbox.reset_counters()
    (report,) = rotate(tagged.runtime())
    assert (report.name, report.outcome, report.old_active, report.new_active) == (label, "rotated", first, second), report
    assert regenerations(sandbox, cosmos) == 1
    after = cosmos_keys(sandbox, cosmos)
    changed = [k for k in all_keys if getattr(after, k) != getattr(keys, k)]
    assert changed == [attribute[other]]  # only the alternate read-only key; never a read-write key
    secret = tagged.client.get_secret("cosmos-read")
    assert digest(secret.value) == digest(getattr(after, attribute[other]))
    assert secret.properties.tags["CredentialId"] == second  # spelled the way the sample's tag was

    # And back: the next rotation regenerates the first read-only key and leaves the one in use alone.
    sandbox.reset_counters()
    (back,) = rotate(tagged.runtime(), label, force=True)
    assert (back.outcome, back.old_active, back.new_active) == ("rotated", second, first), back
    assert regenerations(sandbox, cosmos) == 1
    final = cosmos_keys(sandbox, cosmos)
    assert [k for k in all_keys if getattr(final, k) != getattr(after, k)] == [attribute[start]]
    secret = tagged.client.get_secret("cosmos-read")
    assert digest(secret.value) == digest(getattr(final, attribute[start])) and secret.properties.tags["CredentialId"] == first


def test_two_processes_rotating_one_due_tagged_secret_regenerate_once(
    world: World, tagged: Tagged, tmp_path: Path, sandbox_process: Any, clean_faults: SandboxClient,
) -> None:
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    provider = sandbox.resource_id("storage", account)
    keys = storage_keys(sandbox, account)
    seeded_secret = tagged.seed("storage-key", keys["key1"], "key1", provider, expires_in=timedelta(days=3))
    config = write_config(world, tagged.body("storage-key"), tmp_path)
    # A slow regenerateKey keeps the first process inside its rotation while the second arrives.
    clean_faults.set_faults([{"service": "arm", "target": account, "operation": "StorageRegenerateKey", "latency_ms": 1500}])

    sandbox.reset_counters()
    procs = [run_cli(sandbox_process, config, "rotate", "--name", f"tagged:{tagged.vault}/storage-key") for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    texts = [out.decode() for out, _ in outputs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    assert sum(" rotated " in t for t in texts) == 1, texts
    assert sum(" busy " in t or " not_due " in t for t in texts) == 1, texts
    assert regenerations(sandbox, account) == 1
    versions = list(tagged.client.list_properties_of_secret_versions("storage-key"))
    assert len(versions) == 2 and seeded_secret.properties.version in {v.version for v in versions}
    current = tagged.client.get_secret("storage-key")
    after = storage_keys(sandbox, account)
    assert current.properties.tags["CredentialId"] == "key2" and digest(current.value) == digest(after["key2"])
    assert digest(after["key1"]) == digest(keys["key1"])
    assert digest(world.target.get_secret(f"vr-{world.tag}-account-key").value) == digest(after["key2"])  # re-pushed once
    state = tagged.engine().state
    assert len([r for r in state.query("audit") if r.fields.get("action") == "tagged.rotated"]) == 1


# ---- SQL server administrator passwords (Microsoft's "one set of credentials" sample) ----------
SQL_LOGIN = "vrsqladmin"


def new_sql_server(sandbox: SandboxClient, tag: str, *, role: str = "SQL Server Contributor") -> tuple[str, SecretValue]:
    """A SQL server created through ARM (PUT) by the admin, with `role` for vaultrelay's identity on it;
    returns its name and initial administrator password."""
    server = f"sql{tag}"
    password = "Init-1a-" + uuid.uuid4().hex
    token = sandbox.admin_credential().get_token("https://management.azure.com/.default").token
    response = requests.put(f"{sandbox.arm_endpoint}{sandbox.resource_id('sql', server)}?api-version=2021-11-01", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}, json={"location": "eastus", "properties": {
                                "administratorLogin": SQL_LOGIN, "administratorLoginPassword": password}})
    assert response.status_code == 201, response.status_code
    sandbox.grant("system", role, sandbox.resource_id("sql", server))
    return server, SecretValue(password)


def signs_in(sandbox: SandboxClient, server: str, password: SecretValue) -> bool:
    """The sandbox's stand-in for a SQL sign-in (passwords stay SecretValue: a failing assert shows '***')."""
    return sandbox.sql_login_valid(server, SQL_LOGIN, password.reveal())


def value_of(secret: Any) -> SecretValue:
    return SecretValue(secret.value or "")


def character_classes(password: SecretValue) -> int:
    value = password.reveal()
    return sum(any(test(c) for c in value) for test in (str.isupper, str.islower, str.isdigit, lambda c: not c.isalnum()))


def sql_updates(sandbox: SandboxClient) -> int:
    return int(sandbox.counters()["by_endpoint"].get("arm:PatchSql", 0))


def leaks(text: str, *values: SecretValue) -> bool:
    """Whether `text` holds any of `values`."""
    return any(v.reveal() in text for v in values)


def state_rows(engine: SyncEngine) -> str:
    state = engine.state
    return json.dumps([r.fields for t in ("rotations", "audit", "events") for r in state.query(t)], default=str)


def test_near_expiry_event_sets_a_new_sql_server_password_once(world: World, tagged: Tagged, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sandbox = world.sandbox
    server, initial = new_sql_server(sandbox, world.tag)
    provider = sandbox.resource_id("sql", server)
    seeded_secret = tagged.seed("sql-password", initial.reveal(), SQL_LOGIN, provider, expires_in=timedelta(days=10))
    assert tagged.engine("sql-password").sync().ok
    assert signs_in(sandbox, server, initial)

    sandbox.reset_counters()
    event = near_expiry(tagged.vault, "sql-password", seeded_secret.properties.version)
    outcome = KeyVaultEvents(tagged.runtime("sql-password")).handle(event)
    assert (outcome.outcome, outcome.envs) == ("rotated", ["app"]), outcome
    assert sql_updates(sandbox) == 1

    current = tagged.client.get_secret("sql-password")
    password = value_of(current)
    assert current.properties.version != seeded_secret.properties.version
    assert password != initial
    assert signs_in(sandbox, server, password)  # the stored password signs in ...
    assert not signs_in(sandbox, server, initial)  # ... and the old one no longer does
    assert len(password) == 32 and character_classes(password) == 4
    # Tags as they were (CredentialId is the login: it does not switch), the pending mark removed.
    assert current.properties.tags == {"CredentialId": SQL_LOGIN, "ProviderAddress": provider, "ValidityPeriodDays": "60"}
    assert current.properties.content_type == "text/plain" and current.properties.enabled
    expected_expiry = datetime.now(UTC) + timedelta(days=60)
    assert current.properties.expires_on is not None and abs(current.properties.expires_on - expected_expiry) < timedelta(minutes=2)
    assert len(list(tagged.client.list_properties_of_secret_versions("sql-password"))) == 2
    pushed = value_of(world.target.get_secret(f"vr-{world.tag}-account-key"))
    assert pushed == password  # re-pushed (SecretValue compares values, shows '***')

    # The same event again, a late one about the old version, Key Vault's notice of the new version.
    handler = KeyVaultEvents(tagged.runtime("sql-password"))
    assert handler.handle(event).outcome == "duplicate"
    late = handler.handle(near_expiry(tagged.vault, "sql-password", seeded_secret.properties.version))
    assert late.outcome == "ignored" and "already rotated" in late.detail
    fresh = handler.handle(near_expiry(tagged.vault, "sql-password", current.properties.version))
    assert fresh.outcome == "ignored" and "not due" in fresh.detail
    assert sql_updates(sandbox) == 1 and signs_in(sandbox, server, password)

    engine = tagged.engine()
    record = engine.state.get("rotations", "tagged", f"{tagged.vault}:sql-password")
    assert record is not None and record.fields["active"] == SQL_LOGIN and record.fields["phase"] == ""
    assert record.fields["version"] == current.properties.version
    audit = [json.loads(r.fields["detail"]) for r in engine.state.query("audit") if r.fields.get("action") == "tagged.rotated"]
    assert [(a["kind"], a["account"], a["to_version"]) for a in audit] == [("sql", server, current.properties.version)]
    in_rows = leaks(state_rows(engine), password, initial)
    in_logs = leaks(caplog.text + "\n".join(str(r.args) for r in caplog.records), password, initial)
    assert caplog.records and not in_rows and not in_logs


def test_an_interrupted_sql_password_rotation_is_finished_with_the_stored_password(
    world: World, tagged: Tagged, clean_faults: SandboxClient,
) -> None:
    sandbox = world.sandbox
    server, initial = new_sql_server(sandbox, world.tag)
    provider = sandbox.resource_id("sql", server)
    seeded_secret = tagged.seed("sql-password", initial.reveal(), SQL_LOGIN, provider, expires_in=timedelta(days=3))
    key = f"{tagged.vault}:sql-password"

    # 1. The password update fails (the server answers 500 and keeps its password): the new
    #    password is stored as a pending version, and the old one still signs in.
    clean_faults.set_faults([{"service": "arm", "target": server, "operation": "PatchSql", "error_rate": 1.0, "error_status": 500}])
    (failed,) = rotate(tagged.runtime())
    assert failed.outcome == "error", failed
    pending = tagged.client.get_secret("sql-password")
    stored = value_of(pending)
    assert pending.properties.version != seeded_secret.properties.version
    assert pending.properties.tags["vaultrelay-rotation"] == "pending" and pending.properties.tags["CredentialId"] == SQL_LOGIN
    assert signs_in(sandbox, server, initial) and not signs_in(sandbox, server, stored)
    record = tagged.engine().state.get("rotations", "tagged", key)
    assert record is not None and (record.fields["phase"], record.fields["to_version"]) == ("setting", pending.properties.version)

    # 2. The update goes through but the pending mark cannot be removed (Key Vault answers 500):
    #    the server has the stored password, the secret is still pending.
    clean_faults.set_faults([{"service": "keyvault", "target": tagged.vault, "operation": "UpdateSecret", "error_rate": 1.0, "error_status": 500}])
    (failed_again,) = rotate(tagged.runtime())
    assert failed_again.outcome == "error", failed_again
    assert signs_in(sandbox, server, stored) and not signs_in(sandbox, server, initial)
    still = tagged.client.get_secret("sql-password")
    assert still.properties.version == pending.properties.version and still.properties.tags.get("vaultrelay-rotation") == "pending"

    # 3. The next run finishes with the stored password: no new password, no new version.
    clean_faults.clear_faults()
    sandbox.reset_counters()
    (report,) = rotate(tagged.runtime())
    assert (report.outcome, report.new_active) == ("resumed", SQL_LOGIN), report
    assert sql_updates(sandbox) == 1  # the same password set again (idempotent)
    current = tagged.client.get_secret("sql-password")
    now_stored = value_of(current)
    assert current.properties.version == pending.properties.version and now_stored == stored
    assert current.properties.tags == {"CredentialId": SQL_LOGIN, "ProviderAddress": provider, "ValidityPeriodDays": "60"}
    assert signs_in(sandbox, server, stored)
    assert len(list(tagged.client.list_properties_of_secret_versions("sql-password"))) == 2
    assert [r.outcome for r in rotate(tagged.runtime())] == ["not_due"]
    engine = tagged.engine()
    record = engine.state.get("rotations", "tagged", key)
    assert record is not None and record.fields["phase"] == "" and record.fields["version"] == current.properties.version
    in_rows = leaks(state_rows(engine), stored, initial)
    assert not in_rows


def test_a_refused_sql_password_update_writes_the_previous_password_back(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    # Reader: vaultrelay can read the server but not change it (no Microsoft.Sql/servers/write).
    server, initial = new_sql_server(sandbox, world.tag, role="Reader")
    provider = sandbox.resource_id("sql", server)
    seeded_secret = tagged.seed("sql-password", initial.reveal(), SQL_LOGIN, provider, expires_in=timedelta(days=3))

    (report,) = rotate(tagged.runtime())
    assert report.outcome == "error" and "403" in (report.error or "") and "written back" in (report.error or ""), report
    current = tagged.client.get_secret("sql-password")
    assert current.properties.version != seeded_secret.properties.version
    restored = value_of(current)
    assert restored == initial and signs_in(sandbox, server, initial)
    assert current.properties.tags == seeded_secret.properties.tags  # no pending mark: what consumers read works
    assert current.properties.expires_on == seeded_secret.properties.expires_on
    assert len(list(tagged.client.list_properties_of_secret_versions("sql-password"))) == 3
    engine = tagged.engine()
    record = engine.state.get("rotations", "tagged", f"{tagged.vault}:sql-password")
    assert record is not None and record.fields["phase"] == ""
    in_rows = leaks(state_rows(engine), initial)
    assert not in_rows


def test_a_sql_credential_id_that_is_not_the_server_login_is_a_warning(world: World, tagged: Tagged) -> None:
    sandbox = world.sandbox
    server, initial = new_sql_server(sandbox, world.tag)
    tagged.seed("sql-password", initial.reveal(), "someoneelse", sandbox.resource_id("sql", server), expires_in=timedelta(days=3))
    sandbox.reset_counters()
    (report,) = rotate(tagged.runtime())
    assert report.outcome == "unsupported" and "administrator login" in (report.error or ""), report
    assert sql_updates(sandbox) == 0 and len(list(tagged.client.list_properties_of_secret_versions("sql-password"))) == 1


# ---- the confused deputy: ProviderAddress is written by whoever may write the secret ---------
def arm_calls_to(sandbox: SandboxClient, account: str) -> int:
    return int(sandbox.counters()["by_target"].get(f"arm:{account.lower()}", 0))


def secret_writer(world: World, tagged: Tagged, name: str) -> SecretClient:
    """A principal that may write exactly one secret of the watched vault (Key Vault Secrets
    Officer scoped to that secret) and has no role on any account: the attacker."""
    sandbox = world.sandbox
    tagged.client.set_secret(name, "the team's own value")  # the secret exists: RBAC scopes name existing objects
    attacker = sandbox.create_identity(f"attacker-{world.tag}-{name}")
    sandbox.grant(attacker.name, "Key Vault Secrets Officer", f"{sandbox.resource_id('vault', tagged.vault)}/secrets/{name}")
    return SecretClient(sandbox.vault_url(tagged.vault), sandbox.credential(attacker.name))


def tag_as(client: SecretClient, name: str, credential_id: str, provider: str, *, expires_in: timedelta) -> Any:
    return client.set_secret(name, "placeholder", expires_on=datetime.now(UTC) + expires_in, tags={
        "CredentialId": credential_id, "ProviderAddress": provider, "ValidityPeriodDays": "1"})


def test_a_secret_naming_an_account_the_config_does_not_list_is_refused_and_the_account_left_alone(
    world: World, tagged: Tagged, caplog: pytest.LogCaptureFixture,
) -> None:
    """The attack of issue 14: a principal with write on one secret of a watched vault tags it with
    the resource id of an account (storage, Cosmos DB, SQL server) vaultrelay's identity may manage
    but the config does not list for that vault.  Timer, event and forced CLI rotation all refuse:
    no ARM call reaches the account, no key or password lands in the secret, status names it."""
    caplog.set_level(logging.DEBUG)
    sandbox = world.sandbox
    listed = fresh_account(sandbox, world.tag)
    listed_keys = storage_keys(sandbox, listed)
    tagged.seed("real-key", listed_keys["key1"], "key1", sandbox.resource_id("storage", listed), expires_in=timedelta(days=3))
    victim = fresh_account(sandbox, f"v{world.tag}"[:9])
    victim_cosmos = fresh_cosmos_account(sandbox, f"v{world.tag}")
    victim_sql, victim_password = new_sql_server(sandbox, f"v{world.tag}")
    victim_keys = storage_keys(sandbox, victim)
    cosmos_before = cosmos_keys(sandbox, victim_cosmos)

    attacker = secret_writer(world, tagged, "mine")
    # The attacker may not read the victim's keys itself ...
    attacker_arm = StorageManagementClient(sandbox.credential(f"attacker-{world.tag}-mine"), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    with pytest.raises(HttpResponseError) as denied:
        attacker_arm.storage_accounts.list_keys(sandbox.resource_group, victim)
    assert denied.value.status_code == 403
    subscription, group = sandbox.subscription_id, sandbox.resource_group
    listed_id = sandbox.resource_id("storage", listed)
    addresses = {
        "storage": ("key1", sandbox.resource_id("storage", victim)),
        "cosmos": ("Primary", sandbox.resource_id("cosmos", victim_cosmos)),
        "sql": (SQL_LOGIN, sandbox.resource_id("sql", victim_sql)),
        # near misses of the listed account: never matched by name alone, by suffix or by kind
        "other-group": ("key1", listed_id.replace(f"/resourceGroups/{group}/", "/resourceGroups/elsewhere/")),
        "other-subscription": ("key1", listed_id.replace(f"/subscriptions/{subscription}/", "/subscriptions/00000000-0000-0000-0000-0000000000ff/")),
        "other-kind": ("Primary", listed_id.replace("Microsoft.Storage/storageAccounts", "Microsoft.DocumentDB/databaseAccounts")),
        "longer-name": ("key1", listed_id + "x"),
        "nested": ("key1", f"{listed_id}/providers/Microsoft.Storage/storageAccounts/{victim}"),
    }
    # The listed account's own secret rotates as before (and is not due again in the loop below).
    (real,) = rotate(tagged.runtime(), f"tagged:{tagged.vault}/real-key")
    assert (real.outcome, real.new_active) == ("rotated", "key2"), real
    reports: dict[str, Any] = {}
    for case, (credential_id, address) in addresses.items():
        # ... so it tags its one secret with the account's resource id, already expired.
        planted = tag_as(attacker, "mine", credential_id, address, expires_in=-timedelta(hours=1))
        sandbox.reset_counters()
        timer = {r.name: r for r in rotate(tagged.runtime())}
        event = KeyVaultEvents(tagged.runtime()).handle(expired(tagged.vault, "mine", planted.properties.version))
        (forced,) = rotate(tagged.runtime(), f"tagged:{tagged.vault}/mine", force=True)
        reports[case] = timer[f"tagged:{tagged.vault}/mine"]
        assert reports[case].outcome == "unsupported" and forced.outcome == "unsupported", (case, reports[case], forced)
        assert "does not list" in (reports[case].error or "") or case == "nested", (case, reports[case])
        assert event.outcome == "warning" and "mine" in event.detail, (case, event)
        counters = sandbox.counters()["by_endpoint"]
        assert not any("regenerate" in k.lower() or k == "arm:PatchSql" for k in counters), (case, counters)
        for account in (victim, victim_cosmos, victim_sql, listed):
            assert arm_calls_to(sandbox, account) == 0, (case, account)
        current = attacker.get_secret("mine")
        assert current.properties.version == planted.properties.version and current.value == "placeholder", case
        # Status names the secret and says why.
        warnings = {r["name"]: r["detail"] for r in tagged.engine().rotation_status() if r["kind"] == "warning"}
        assert warnings[f"{tagged.vault}:mine"].startswith(f"{tagged.vault}/mine: "), (case, warnings)
        assert "not touched" in warnings[f"{tagged.vault}:mine"] or case == "nested", (case, warnings)

    # Nothing changed on the accounts, no key or password reached the secret's versions.
    assert storage_keys(sandbox, victim) == victim_keys
    assert cosmos_keys(sandbox, victim_cosmos).as_dict() == cosmos_before.as_dict()
    assert signs_in(sandbox, victim_sql, victim_password)
    secrets_ever = {attacker.get_secret("mine", v.version).value for v in attacker.list_properties_of_secret_versions("mine")}
    assert secrets_ever == {"the team's own value", "placeholder"}
    rotated = tagged.client.get_secret("real-key")
    assert rotated.properties.tags["CredentialId"] == "key2" and digest(rotated.value) == digest(storage_keys(sandbox, listed)["key2"])
    assert not leaks(caplog.text, SecretValue(victim_keys["key1"]), SecretValue(victim_keys["key2"]), victim_password)


def test_an_account_listed_for_some_secrets_is_refused_to_the_others(world: World, tagged: Tagged) -> None:
    """`secrets:` on an accounts entry: another secret of the same vault naming that account (a
    writer of one secret reaching for the key another secret holds) is refused."""
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    address = sandbox.resource_id("storage", account)
    keys = storage_keys(sandbox, account)
    tagged.seed("real-key", keys["key1"], "key1", address, expires_in=timedelta(days=3), listed=False)
    attacker = secret_writer(world, tagged, "mine")
    tag_as(attacker, "mine", "key2", address, expires_in=-timedelta(hours=1))
    body = tagged.body().replace(f"accounts: [{tagged.accounts[0] if tagged.accounts else ''}", "accounts: [")  # no plain entries
    body = body.replace("accounts: [", f"accounts: [{{id: {address}, secrets: [REAL-KEY]}}, ", 1)

    sandbox.reset_counters()
    reports = {r.name.rsplit("/", 1)[1]: r for r in rotate(world.runtime(body))}
    assert reports["mine"].outcome == "unsupported" and "not for this secret" in (reports["mine"].error or ""), reports["mine"]
    assert (reports["real-key"].outcome, reports["real-key"].new_active) == ("rotated", "key2"), reports["real-key"]
    assert regenerations(sandbox, account) == 1  # the real one only
    assert attacker.get_secret("mine").value == "placeholder"


def test_provider_address_is_checked_again_under_the_lease(world: World, tagged: Tagged) -> None:
    """A writer who swaps ProviderAddress between vaultrelay's first read (a listed account) and its
    read under the lease does not get the swapped-in account rotated."""
    from core.rotation.tagged_secrets import TaggedSecretRotation

    sandbox = world.sandbox
    listed = fresh_account(sandbox, world.tag)
    victim = fresh_account(sandbox, f"v{world.tag}"[:9])
    keys = storage_keys(sandbox, listed)
    tagged.seed("swapped", keys["key1"], "key1", sandbox.resource_id("storage", listed), expires_in=timedelta(days=3))
    victim_keys = storage_keys(sandbox, victim)

    class SwapAfterFirstRead(TaggedSecretRotation):
        reads = 0

        def current(self, vault: str, name: str) -> Any:
            found = super().current(vault, name)
            self.reads += 1
            if self.reads == 1:
                tagged.seed(name, "placeholder", "key1", sandbox.resource_id("storage", victim), expires_in=timedelta(days=3), listed=False)
            return found

    sandbox.reset_counters()
    rotation = SwapAfterFirstRead(tagged.runtime())
    report = rotation.rotate_secret(tagged.vault, "swapped", force=True)
    assert rotation.reads == 2 and report.outcome == "unsupported" and victim in (report.error or ""), report
    assert arm_calls_to(sandbox, victim) == 0 and arm_calls_to(sandbox, listed) == 0
    assert storage_keys(sandbox, victim) == victim_keys and storage_keys(sandbox, listed) == keys
    assert tagged.client.get_secret("swapped").value == "placeholder"


def test_the_roles_plan_permissions_names_for_tagged_rotation_are_enough(world: World, tagged: Tagged) -> None:
    """A fresh identity holding exactly what `plan --permissions` computes for a tagged_secrets
    entry (Key Vault Secrets Officer on the vault, and per listed account the role that rotates it:
    no DocumentDB Account Contributor) rotates a storage key, a Cosmos DB key and a SQL password."""
    import os

    from core.config import parse_config
    from core.permissions.matrix import compute_permissions
    from tests.infra.test_least_privilege_sandbox import scope_id

    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    cosmos = fresh_cosmos_account(sandbox, world.tag)
    server, initial = new_sql_server(sandbox, world.tag)
    keys, cosmos_before = storage_keys(sandbox, account), cosmos_keys(sandbox, cosmos)
    tagged.seed("st-key", keys["key1"], "key1", sandbox.resource_id("storage", account), expires_in=timedelta(days=2))
    tagged.seed("cosmos-key", cosmos_before.primary_master_key, "Primary", sandbox.resource_id("cosmos", cosmos), expires_in=timedelta(days=2))
    tagged.seed("sql-password", initial.reveal(), SQL_LOGIN, sandbox.resource_id("sql", server), expires_in=timedelta(days=2))
    rotator = sandbox.create_identity(f"lp-tagged-{world.tag}")
    loaded = parse_config(config_yaml(stores={
        "azure": mi_store(),
        "rot": mi_store({"type": "user_assigned", "client_id": rotator.client_id}),
    }, state=state_block(f"t{world.tag}"), rotation={
        "tagged_secrets": [{"vault": tagged.vault, "store": "rot", "accounts": list(tagged.accounts)}],
    }), "tagged.yaml", environ=os.environ)
    report = compute_permissions(loaded, environ=os.environ)
    needed = sorted((g.scope.kind, g.scope.name, role) for g in report.grants if g.identity.client_id == rotator.client_id for role in g.roles)
    assert needed == [("cosmos", cosmos, "vaultrelay Cosmos DB Key Operator"), ("sql", server, "SQL Server Contributor"),
                      ("storage", account, "Storage Account Key Operator Service Role"), ("vault", tagged.vault, "Key Vault Secrets Officer")]
    for grant in report.grants:
        if grant.identity.client_id == rotator.client_id:
            for role in grant.roles:
                sandbox.grant(rotator.name, role, scope_id(sandbox, grant.scope))

    reports = {r.name.rsplit("/", 1)[1]: r for r in rotate(Runtime(loaded))}
    assert {name: r.outcome for name, r in reports.items()} == {"st-key": "rotated", "cosmos-key": "rotated", "sql-password": "rotated"}, reports
    assert digest(tagged.client.get_secret("st-key").value) == digest(storage_keys(sandbox, account)["key2"])
    assert digest(tagged.client.get_secret("cosmos-key").value) == digest(cosmos_keys(sandbox, cosmos).secondary_master_key)
    assert signs_in(sandbox, server, value_of(tagged.client.get_secret("sql-password")))
