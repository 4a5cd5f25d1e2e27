"""Accounts that forbid keys, through the CLI against the sandbox: a storage account with
`allowSharedKeyAccess: false` and a Cosmos DB account with `disableLocalAuth: true` still list
their keys, but vaultrelay refuses to publish them, a key-signed SAS or a connection string, or to
rotate them, naming the account and the property; a user delegation SAS of the same account works."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.cosmosdb.models import DatabaseAccountCreateUpdateParameters, Location
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import StorageAccountUpdateParameters
from azure.storage.blob import ContainerClient

from core.app.rotate import rotate
from core.cli import EXIT_OK, EXIT_RESOLUTION, main
from sandbox.client import SandboxClient
from tests.configs import body_yaml, ref
from tests.core.test_rotation_tagged_secrets_sandbox import Tagged
from tests.world import World, fresh_account, write_config

STORAGE_REFUSAL = "has allowSharedKeyAccess: false: its keys authorize nothing"
COSMOS_REFUSAL = "has disableLocalAuth: true: its keys authorize nothing"


def run(config: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--config", str(config), *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def storage_mgmt(sandbox: SandboxClient) -> StorageManagementClient:
    return StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def keyless_storage(world: World) -> tuple[str, str]:
    """A new storage account with a container holding hello.txt, then allowSharedKeyAccess: false;
    the system identity may list its keys, read it, sign user delegation SAS and read blobs."""
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    scope = sandbox.resource_id("storage", account)
    for role in ("Storage Blob Delegator", "Storage Blob Data Contributor", "Storage Table Data Contributor"):
        sandbox.grant("system", role, scope)
    container = f"c{world.tag}"
    client = ContainerClient(sandbox.storage_endpoint(account), container, credential=world.admin)
    client.create_container()
    client.upload_blob("hello.txt", b"hello")
    storage_mgmt(sandbox).storage_accounts.update(sandbox.resource_group, account, StorageAccountUpdateParameters(allow_shared_key_access=False))
    return account, container


def operations(sandbox: SandboxClient, word: str) -> int:
    return sum(v for k, v in sandbox.counters()["by_endpoint"].items() if word.lower() in k.lower())


def test_storage_keys_and_key_signed_sas_are_refused_and_user_delegation_sas_work(world: World, tmp_path: Path) -> None:
    sandbox = world.sandbox
    account, container = keyless_storage(world)
    keys = {k.key_name: k.value for k in storage_mgmt(sandbox).storage_accounts.list_keys(sandbox.resource_group, account).keys_property or []}
    body = body_yaml(envs={
        "published": {
            "KEY": ref(resource_type="storage", account=account, key="key1"),
            "ACCOUNT_SAS": ref(resource_type="storage", account=account, operation="generate_sas", sas_type="account",
                               permissions="rl", expiry="1h"),
            "SERVICE_SAS": ref(resource_type="storage", account=account, operation="generate_sas", sas_type="service",
                               container=container, permissions="r", expiry="1h"),
            "TABLE_SAS": ref(resource_type="storage", account=account, operation="generate_sas", table=f"t{world.tag}",
                             permissions="r", expiry="1h"),
        },
        "delegated": {
            "UD_SAS": ref(resource_type="storage", account=account, operation="generate_sas", container=container,
                          permissions="rl", expiry="1h"),
        },
        "rotated": {
            "ACTIVE": ref(resource_type="storage", account=account, key="active", rotate={"every": "30d"}),
        },
    })
    config = write_config(world, body, tmp_path)

    code, out, err = run(config, "resolve", "--env", "published", "--format", "json", "--reveal")
    assert (code, out) == (EXIT_RESOLUTION, "")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 4, err
    for line in errors:
        assert "key_access_disabled" in line and f"storage account '{account}' {STORAGE_REFUSAL}" in line, line
        assert "use a user delegation SAS or Entra ID auth instead" in line
    assert "will not publish its keys" in next(line for line in errors if "error: KEY:" in line)
    assert "will not mint a key-signed account SAS" in next(line for line in errors if "ACCOUNT_SAS" in line)
    assert "will not mint a key-signed service SAS" in next(line for line in errors if "SERVICE_SAS" in line)
    assert not any(value in err for value in keys.values())

    code, out, err = run(config, "resolve", "--env", "delegated", "--format", "json", "--reveal")
    assert code == EXIT_OK, err
    token = json.loads(out)["UD_SAS"]
    assert [b.name for b in ContainerClient(sandbox.storage_endpoint(account), container, credential=token, retry_total=0).list_blobs()] == ["hello.txt"]

    sandbox.reset_counters()
    code, out, err = run(config, "rotate", "--name", f"storage:{account}", "--force")
    assert code == EXIT_RESOLUTION
    assert f"error: storage:{account}: KeyAccessDisabled: storage account '{account}' {STORAGE_REFUSAL}, so vaultrelay will not rotate its keys" in err
    assert operations(sandbox, "regenerate") == 0
    rows = {r["name"]: r for r in world.engine(body).rotation_status() if r["kind"] == "storage"}
    assert rows.get(account, {}).get("phase", "") == ""  # nothing was started


def key_operator_config(world: World, tmp_path: Path, account: str, name: str) -> Path:
    """A config resolving storage `account`'s key2 as a new identity that holds only Storage
    Account Key Operator Service Role there (list keys, no read of the account)."""
    sandbox = world.sandbox
    operator = sandbox.create_identity(f"{name}-{world.tag}")
    sandbox.grant(operator.name, "Storage Account Key Operator Service Role", sandbox.resource_id("storage", account))
    config = tmp_path / "operator.yaml"
    config.write_text(json.dumps({
        "version": 1,
        "secretStores": {"op": {"type": "azure.managed_identity", "identity": {"type": "user_assigned", "client_id": operator.client_id}}},
        "envs": {"e": {"KEY": {"from": {"store": "op", "resource_type": "storage", "account": account, "key": "key2",
                                        "resource_group": sandbox.resource_group}}}},
    }))
    return config


def test_without_read_on_the_account_the_data_plane_answers_the_question(world: World, tmp_path: Path) -> None:
    """An identity with only Storage Account Key Operator Service Role (no read on the account)
    cannot GET allowSharedKeyAccess; one request with the listed key tells the same."""
    sandbox = world.sandbox
    account, _ = keyless_storage(world)
    config = key_operator_config(world, tmp_path, account, "keyop")
    sandbox.reset_counters()
    code, out, err = run(config, "resolve", "--env", "e", "--format", "json", "--reveal")
    assert (code, out) == (EXIT_RESOLUTION, "")
    assert f"storage account '{account}' {STORAGE_REFUSAL}, so vaultrelay will not publish its keys" in err
    statuses = sandbox.counters()["by_endpoint_status"]
    assert statuses.get("arm:GetStorage:403") == 1  # the GET was refused ...
    assert statuses.get("storage:blob:GET:properties:403") == 1  # ... the data plane said KeyBasedAuthenticationNotPermitted


def test_a_data_plane_that_cannot_answer_is_asked_once_and_the_key_published(world: World, tmp_path: Path) -> None:
    """The data-plane probe sits on the caller's path: when the blob service cannot answer (503,
    a firewall), it is asked once, not retried after the storage SDK's 15 s backoff, and the key
    is published as before."""
    sandbox = world.sandbox
    account = fresh_account(sandbox, world.tag)
    config = key_operator_config(world, tmp_path, account, "keyop2")
    sandbox.set_faults(rules=[{"service": "storage", "target": account, "operation": "blob:GET:properties",
                               "error_rate": 1.0, "error_status": 503}])
    sandbox.reset_counters()
    try:
        code, out, _ = run(config, "resolve", "--env", "e", "--format", "json", "--reveal")
        statuses = sandbox.counters()["by_endpoint_status"]
    finally:
        sandbox.clear_faults()
    assert code == EXIT_OK and json.loads(out)["KEY"]
    assert statuses.get("arm:GetStorage:403") == 1
    assert statuses.get("storage:blob:GET:properties:503") == 1  # one probe, no retry


def test_cosmos_keys_and_connection_strings_are_refused_without_local_auth(world: World, tmp_path: Path) -> None:
    sandbox = world.sandbox
    account = f"cosmos-nla-{world.tag}"
    CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint).database_accounts.begin_create_or_update(
        sandbox.resource_group, account, DatabaseAccountCreateUpdateParameters(
            location="eastus", locations=[Location(location_name="eastus")], disable_local_auth=True), polling_interval=0).result()
    sandbox.grant("system", "DocumentDB Account Contributor", sandbox.resource_id("cosmos", account))
    body = body_yaml(envs={
        "app": {
            "KEY": ref(resource_type="cosmosdb", account=account, key="primary", resource_group=sandbox.resource_group),
            "READ_ONLY": ref(resource_type="cosmosdb", account=account, key="primary_readonly"),
            "CONNECTION": ref(resource_type="cosmosdb", account=account, format="connection_string"),
        },
        "rotated": {
            "ACTIVE": ref(resource_type="cosmosdb", account=account, key="active", rotate={"every": "30d"}),
        },
    })
    config = write_config(world, body, tmp_path)
    code, out, err = run(config, "resolve", "--env", "app", "--format", "json", "--reveal")
    assert (code, out) == (EXIT_RESOLUTION, "")
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, err
    for line in errors:
        assert "key_access_disabled" in line and f"Cosmos DB account '{account}' {COSMOS_REFUSAL}" in line, line
        assert "use Entra ID auth instead" in line and "get_token" in line
    assert "will not publish a connection string" in next(line for line in errors if "CONNECTION" in line)

    sandbox.reset_counters()
    (report,) = rotate(world.runtime(body), f"cosmos:{account}", force=True)
    assert report.outcome == "error" and f"Cosmos DB account '{account}' {COSMOS_REFUSAL}" in (report.error or ""), report
    assert operations(sandbox, "regenerate") == 0


def test_tagged_rotation_does_not_regenerate_keys_of_an_account_without_shared_key(world: World) -> None:
    sandbox = world.sandbox
    account, _ = keyless_storage(world)
    tagged = Tagged(world)
    key = {k.key_name: k.value for k in storage_mgmt(sandbox).storage_accounts.list_keys(sandbox.resource_group, account).keys_property or []}
    tagged.seed("storage-key", key["key1"] or "", "key1", sandbox.resource_id("storage", account), expires_in=timedelta(days=5))
    sandbox.reset_counters()
    reports: list[Any] = rotate(tagged.runtime())
    (report,) = [r for r in reports if r.name.endswith("/storage-key")]
    assert report.outcome == "error", report
    assert f"storage account '{account}' {STORAGE_REFUSAL}" in (report.error or "")
    assert operations(sandbox, "regenerate") == 0
    assert tagged.client.get_secret("storage-key").properties.tags["CredentialId"] == "key1"  # nothing written
