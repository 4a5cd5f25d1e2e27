"""Contract suite over every registered source (in the manner of dapr's conformance tests).

Parametrized from the source registry (core/sources/registry.py): a kind registered without a
case in CASES fails the suite, so a new source is covered as soon as it is registered.  Each case
prepares one existing object in the sandbox (and says how to check the value that comes back)
and, when the kind reads a remote object, a reference to one that does not exist.  Every source:

* resolves a value, the one the service holds;
* reports a missing object through the one not-found failure (reason `not_found`); kinds that
  read no remote object (SQL connection strings are formatted locally, tokens are minted for any
  audience) declare so in their case;
* declares its required permissions: `compute_permissions` names what the reference needs
  (Azure roles, or a note for needs outside Azure RBAC);
* never puts the value in a failure, a log record or a repr;
* keeps what it declares (core/sources/kinds.py, core/sources/base.py `Source`): a Key Vault
  read names its vault and object, a source following an account's active key names the case's
  account, only minted kinds ask a lifetime of their own, and a fetch that needs a user
  delegation key declares the storage token scope.
"""

from __future__ import annotations

import json
import logging
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.storage import StorageManagementClient
from azure.storage.blob import BlobServiceClient

from core.config import parse_config
from core.connections import StoreConnections
from core.permissions.matrix import compute_permissions
from core.plan import plan_env
from core.sources.base import STORAGE_SCOPE
from core.sources.registry import default_registry
from tests.configs import config_yaml, ref, secret_ref
from tests.world import World, unique

Check = Callable[[str], None]


@dataclass
class Prepared:
    """One existing object (`found`, a `from:` mapping) and how to check its value; `missing`:
    a reference to an object that does not exist (None: the kind reads no remote object)."""

    found: dict[str, Any]
    check: Check
    missing: dict[str, Any] | None
    kinds: tuple[str, ...] = ()  # the source kinds `found` is planned as (default: the case's)


def _keyvault_secret(world: World) -> Prepared:
    name = world.secret("contract", "contract-secret-value")

    def check(value: str) -> None:
        assert value == "contract-secret-value"

    return Prepared(secret_ref(name), check, secret_ref(f"missing-{world.tag}"))


def _keyvault_certificate(world: World) -> Prepared:
    # seeded by demo/seed.py: a self-signed certificate imported as PEM
    expected = world.source.get_secret("app-certificate").value or ""

    def check(value: str) -> None:
        assert "-----BEGIN CERTIFICATE-----" in value and value.strip() == expected.strip()

    return Prepared(secret_ref("app-certificate", type="certificate"), check, secret_ref(f"missing-{world.tag}", type="certificate"))


def _keyvault_key(world: World) -> Prepared:
    name = unique("contract-key")
    keys = KeyClient(world.sandbox.vault_url("kv-source"), world.admin)
    created: Any = keys.create_rsa_key(name, size=2048).key
    missing = f"missing-{world.tag}"
    for key in (name, missing):  # allowed to read the missing one too: Key Vault checks RBAC before existence
        world.sandbox.grant("system", "Key Vault Reader", f"{world.sandbox.resource_id('vault', 'kv-source')}/keys/{key}")

    def check(value: str) -> None:
        jwk = json.loads(value)
        assert jwk["kty"] == "RSA" and "d" not in jwk  # the public key only
        assert int.from_bytes(_b64url(jwk["n"]), "big") == int.from_bytes(created.n, "big")

    return Prepared(secret_ref(name, type="key"), check, secret_ref(missing, type="key"))


def _b64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _storage_key(world: World) -> Prepared:
    arm = StorageManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint)

    def check(value: str) -> None:
        listed = {k.key_name: k.value for k in arm.storage_accounts.list_keys(world.sandbox.resource_group, "sandboxstore").keys_property or []}
        assert value == listed["key2"]

    return Prepared(ref(resource_type="storage", account="sandboxstore", key="key2"), check,
                    ref(resource_type="storage", account=f"nost{world.tag}", key="key2"))


def _sas(world: World) -> Prepared:
    def check(value: str) -> None:
        assert "sig=" in value and "sp=rl" in value
        client = BlobServiceClient(world.sandbox.storage_endpoint("sandboxstore"), credential=value, retry_total=0)
        next(iter(client.list_containers(results_per_page=1)), None)  # Azurite accepts it
        with pytest.raises(HttpResponseError):  # and only within its permissions
            client.create_container(f"denied{world.tag}")

    fields = {"resource_type": "storage", "operation": "generate_sas", "permissions": "rl", "expiry": "1h"}
    return Prepared(ref(account="sandboxstore", **fields), check, ref(account=f"nost{world.tag}", **fields))


def _cosmos(world: World) -> Prepared:
    arm = CosmosDBManagementClient(world.admin, world.sandbox.subscription_id, base_url=world.sandbox.arm_endpoint)

    def check(value: str) -> None:
        strings = arm.database_accounts.list_connection_strings(world.sandbox.resource_group, "sandbox-cosmos").connection_strings or []
        assert value == next(c.connection_string for c in strings if c.description == "Primary SQL Connection String")

    fields = {"resource_type": "cosmosdb", "format": "connection_string"}
    return Prepared(ref(account="sandbox-cosmos", **fields), check, ref(account=f"nocosmos{world.tag}", **fields))


def _sql(world: World) -> Prepared:
    def check(value: str) -> None:
        assert value.startswith("Server=tcp:myserver.database.windows.net,1433;Database=mydb;")
        assert "Authentication=Active Directory Managed Identity" in value

    return Prepared(ref(resource_type="sql", server="myserver", database="mydb"), check, None)


def _token(world: World) -> Prepared:
    def check(value: str) -> None:
        claims = jwt.decode(value, options={"verify_signature": False})
        assert claims["aud"] == "https://graph.microsoft.com" and claims["tid"] == world.sandbox.tenant_id

    return Prepared(ref(operation="get_token", resource="https://graph.microsoft.com"), check, None)


CASES: dict[str, Callable[[World], Prepared]] = {
    "keyvault_secret": _keyvault_secret,
    "keyvault_certificate": _keyvault_certificate,
    "keyvault_key": _keyvault_key,
    "storage_key": _storage_key,
    "sas": _sas,
    "cosmos": _cosmos,
    "sql": _sql,
    "token": _token,
}

REGISTERED = default_registry().kinds()


def test_every_case_is_a_registered_source() -> None:
    assert sorted(CASES) == sorted(set(CASES) & set(REGISTERED)), f"cases for unregistered kinds: {sorted(set(CASES) - set(REGISTERED))}"


def prepare(kind: str, world: World) -> Prepared:
    if kind not in CASES:
        pytest.fail(f"source kind {kind!r} is registered but has no contract case in tests/contract/test_sources.py")
    return CASES[kind](world)


def loaded_for(variables: dict[str, Any]) -> Any:
    return parse_config(config_yaml(envs={"e": variables}), "contract.yaml", environ=os.environ)


@pytest.fixture(params=REGISTERED)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_resolves_the_value_the_service_holds(kind: str, world: World) -> None:
    case = prepare(kind, world)
    broker = StoreConnections(loaded_for({"VALUE": case.found}))
    try:
        from core.plan import plan_env

        planned = {r.kind for r in plan_env(broker.loaded, "e").refs}
        assert planned == {kind}, f"the case's reference is planned as {planned}, not {kind}"
        bundle = broker.resolve("e")
    finally:
        broker.close()
    assert not bundle.failures, {n: str(f) for n, f in bundle.failures.items()}
    case.check(bundle.as_plain_dict()["VALUE"])


def test_a_missing_object_is_the_one_not_found_failure(kind: str, world: World) -> None:
    case = prepare(kind, world)
    if case.missing is None:
        assert kind in ("sql", "token"), f"{kind} reads a remote object: its case must name a missing one"
        return  # formatted locally / minted for any audience: nothing can be missing
    broker = StoreConnections(loaded_for({"MISSING": case.missing}))
    try:
        bundle = broker.resolve("e")
    finally:
        broker.close()
    assert not bundle.values
    failure = bundle.failures["MISSING"]
    assert failure.reason == "not_found", str(failure)


def test_declares_its_required_permissions(kind: str, world: World) -> None:
    case = prepare(kind, world)
    report = compute_permissions(loaded_for({"VALUE": case.found}), environ=os.environ)
    path = "envs.e.VALUE.from"
    requirements = [r for g in report.grants for r in g.requirements if r.path == path]
    notes = [n for n in report.notes if path in n]
    assert requirements or notes, f"{kind}: no permission declared for {path}"
    for requirement in requirements:
        assert requirement.need.role and requirement.need.action, requirement
    if requirements:
        assert any(r.capability.startswith("source:") for r in requirements), [r.capability for r in requirements]


def test_never_puts_the_value_in_failures_logs_or_reprs(kind: str, world: World, caplog: pytest.LogCaptureFixture) -> None:
    case = prepare(kind, world)
    variables = {"VALUE": case.found}
    if case.missing is not None:
        variables["MISSING"] = case.missing
    caplog.set_level(logging.DEBUG)
    broker = StoreConnections(loaded_for(variables))
    try:
        bundle = broker.resolve("e")
    finally:
        broker.close()
    value = bundle.as_plain_dict()["VALUE"] if "VALUE" in bundle.values else None
    assert value, {n: str(f) for n, f in bundle.failures.items()}
    seen = [repr(bundle), repr(bundle.values["VALUE"]), str(bundle.values["VALUE"])]
    seen += [str(f) for f in bundle.failures.values()] + [repr(f) for f in bundle.failures.values()]
    seen += [r.getMessage() for r in caplog.records] + [textwrap.shorten(caplog.text, 10**9)]
    assert not [text for text in seen if value in text]


def test_a_registered_kind_without_a_case_fails_the_suite(world: World) -> None:
    with pytest.raises(pytest.fail.Exception, match="'new_kind' is registered but has no contract case"):
        prepare("new_kind", world)


def test_keeps_what_it_declares(kind: str, world: World) -> None:
    case = prepare(kind, world)
    loaded = loaded_for({"VALUE": case.found, "AGAIN": case.found})
    first, again = plan_env(loaded, "e").refs
    registry = default_registry()
    source, features = registry.get(kind), registry.features(kind)
    read = source.keyvault_object(first)
    assert (read is not None) == features.reads_keyvault, read
    if read is not None:  # what a Key Vault event for the object names
        assert read == (first.param("vault"), first.param("secret"))
    assert source.fetch_target(first) == source.fetch_target(again)
    follows = source.follows_active_key(first)
    if follows is not None:
        assert features.shares_account_call and follows[1].lower() == str(first.param("account")).lower()
    if source.minted_lifetime(first) is not None:
        assert features.minted
    broker = StoreConnections(loaded)
    try:
        scopes = source.token_scopes(first, broker.cloud)
    finally:
        broker.close()
    assert all(scope.endswith("/.default") for scope in scopes), scopes
    if source.uses_delegation_key(first):
        assert STORAGE_SCOPE in scopes
