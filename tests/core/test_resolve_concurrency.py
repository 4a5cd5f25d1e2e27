"""Concurrency details of a resolve that the benchmark (bench/resolve.py) relies on.

* Dispatch order: one reference per vault/account first, then the rest round-robin, references
  that only reuse an account's shared call last.
* One Key Vault challenge (401) per vault on a cold start, however many requests start at once,
  and every identity's requests still carry that identity's own token.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.keyvault.secrets import SecretClient

from core.azure import clients as azure_clients
from core.config import parse_config
from core.connections import StoreConnections
from core.resolve import _dispatch_order
from core.sources.base import PlannedRef
from sandbox.client import SandboxClient
from tests.configs import config_yaml, mi_store, secret_ref
from tests.world import unique


def ref(name: str, kind: str, **params: Any) -> tuple[PlannedRef, list[PlannedRef]]:
    planned = PlannedRef(name=name, path=f"envs.e.{name}.from", store="s", kind=kind,
                         params=tuple(sorted(params.items())), description=name)
    return planned, [planned]


def test_dispatch_order_leads_with_one_reference_per_target_and_ends_with_shared_call_followers() -> None:
    items = [
        ref("A0", "keyvault_secret", vault="a", secret="0"), ref("A1", "keyvault_secret", vault="a", secret="1"),
        ref("A2", "keyvault_secret", vault="a", secret="2"), ref("B0", "keyvault_secret", vault="b", secret="0"),
        ref("B1", "keyvault_certificate", vault="B", secret="1"), ref("X1", "storage_key", account="x", key="key1"),
        ref("X2", "storage_key", account="x", key="key2"), ref("XS", "sas", account="X", permissions="r"),
        ref("T", "token", resource="https://graph.microsoft.com"), ref("Y1", "storage_key", account="y", key="key1"),
    ]
    order = [item[0].name for item in _dispatch_order(items)]
    assert order == ["A0", "B0", "X1", "T", "Y1", "A1", "B1", "A2", "X2", "XS"]
    assert sorted(order) == sorted(item[0].name for item in items)


@pytest.fixture()
def cold_vault(clean_faults: SandboxClient) -> Iterator[tuple[str, SecretClient, str]]:
    """(name, admin client, resource id) of a new vault whose challenge this process has forgotten."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    name = unique("kvc")[:24]
    created = clean_faults.create_resource("vault", name)
    admin = SecretClient(clean_faults.vault_url(name), clean_faults.admin_credential())
    yield name, admin, created["id"]
    http_challenge_cache.remove_challenge_for_url(clean_faults.vault_url(name))


def forget_challenge(sandbox: SandboxClient, vault: str) -> None:
    from azure.keyvault.secrets._shared import http_challenge_cache

    http_challenge_cache.remove_challenge_for_url(sandbox.vault_url(vault))


def test_one_challenge_per_vault_for_a_cold_concurrent_resolve(
    clean_faults: SandboxClient, cold_vault: tuple[str, SecretClient, str],
) -> None:
    name, admin, vault_id = cold_vault
    seeded = {f"S{i:02d}": (unique("s"), uuid.uuid4().hex) for i in range(20)}
    for secret, value in seeded.values():
        admin.set_secret(secret, value)
    clean_faults.grant("system", "Key Vault Secrets User", vault_id)
    forget_challenge(clean_faults, name)
    clean_faults.set_faults(rules=[{"service": "keyvault", "latency_ms": 30}])
    text = config_yaml(stores={"s": mi_store(performance={"max_concurrent": 10})},
                       envs={"e": {var: secret_ref(secret, vault=name, store="s") for var, (secret, _) in seeded.items()}})
    broker = StoreConnections(parse_config(text, "test.yaml", environ=os.environ))
    try:
        clean_faults.reset_counters()
        bundle = broker.resolve("e")
    finally:
        broker.close()
    assert bundle.as_plain_dict() == {var: value for var, (_, value) in seeded.items()}
    counters = clean_faults.counters()["by_endpoint_status"]
    assert counters.get("keyvault:GetSecret:401", 0) == 1
    assert counters.get("keyvault:GetSecret:200", 0) == 20


def test_identities_sharing_a_cold_vault_each_use_their_own_token(
    clean_faults: SandboxClient, cold_vault: tuple[str, SecretClient, str],
) -> None:
    name, admin, vault_id = cold_vault
    own: dict[str, list[tuple[str, str]]] = {"system": [], "app": []}
    for identity in own:
        for _ in range(6):
            secret, value = unique(identity), uuid.uuid4().hex
            admin.set_secret(secret, value)
            clean_faults.grant(identity, "Key Vault Secrets User", f"{vault_id}/secrets/{secret}")
            own[identity].append((secret, value))
    forget_challenge(clean_faults, name)
    clean_faults.set_faults(rules=[{"service": "keyvault", "latency_ms": 30}])
    app_id = clean_faults.identities["app"].client_id
    env: dict[str, Any] = {}
    for identity, other in (("system", "app"), ("app", "system")):
        for i, ((mine, _), (theirs, _)) in enumerate(zip(own[identity], own[other], strict=True)):
            env[f"{identity.upper()}_OWN_{i}"] = secret_ref(mine, vault=name, store=identity)
            env[f"{identity.upper()}_OTHER_{i}"] = secret_ref(theirs, vault=name, store=identity)
    text = config_yaml(stores={
        "system": mi_store(performance={"max_concurrent": 10}),
        "app": mi_store({"type": "user_assigned", "client_id": app_id}, performance={"max_concurrent": 10}),
    }, envs={"e": env})
    broker = StoreConnections(parse_config(text, "test.yaml", environ=os.environ))
    try:
        clean_faults.reset_counters()
        bundle = broker.resolve("e")
    finally:
        broker.close()
    expected = {f"{identity.upper()}_OWN_{i}": value for identity in own for i, (_, value) in enumerate(own[identity])}
    assert bundle.as_plain_dict() == expected
    assert sorted(bundle.failures) == sorted(f"{identity.upper()}_OTHER_{i}" for identity in own for i in range(6))
    assert {failure.reason for failure in bundle.failures.values()} == {"access_denied"}
    assert clean_faults.counters()["by_endpoint_status"].get("keyvault:GetSecret:401", 0) == 1


def test_concurrent_connections_load_the_ca_bundle_once_and_still_verify_the_server(
    clean_faults: SandboxClient, cold_vault: tuple[str, SecretClient, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    import certifi

    name, admin, vault_id = cold_vault
    seeded = {f"S{i:02d}": (unique("s"), uuid.uuid4().hex) for i in range(12)}
    for secret, value in seeded.values():
        admin.set_secret(secret, value)
    clean_faults.grant("system", "Key Vault Secrets User", vault_id)
    clean_faults.set_faults(rules=[{"service": "keyvault", "latency_ms": 30}])
    text = config_yaml(stores={"s": mi_store(performance={"max_concurrent": 10})},
                       envs={"e": {var: secret_ref(secret, vault=name, store="s") for var, (secret, _) in seeded.items()}})
    loads: list[Any] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    monkeypatch.setattr(azure_clients, "_TRUST_CONTEXTS", {})  # as in a fresh process
    for _ in range(2):  # two brokers (two invocations of one Functions instance)
        forget_challenge(clean_faults, name)
        broker = StoreConnections(parse_config(text, "test.yaml", environ=os.environ))
        try:
            assert broker.resolve("e").as_plain_dict() == {var: value for var, (_, value) in seeded.items()}
        finally:
            broker.close()
    assert len(loads) == 1  # up to 10 connections each, two brokers: one parse of the bundle per process

    # The shared context trusts exactly the configured bundle: without the sandbox CA, TLS fails.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    broker = StoreConnections(parse_config(text, "test.yaml", environ=os.environ))
    try:
        bundle = broker.resolve("e")
    finally:
        broker.close()
    assert not bundle.values
    assert {failure.reason for failure in bundle.failures.values()} == {"network"}
    assert all("CERTIFICATE_VERIFY_FAILED" in failure.message for failure in bundle.failures.values())


def test_a_cold_resolve_fetches_the_vault_token_alongside_the_challenge(
    clean_faults: SandboxClient, cold_vault: tuple[str, SecretClient, str],
) -> None:
    """The token for the cloud's vault audience is fetched while the challenges are in flight:
    still one token request for the audience, one challenge per vault, and both vaults' challenge
    flows are served the prefetched token."""
    from azure.keyvault.secrets._shared import http_challenge_cache

    second = unique("kvc")[:24]
    second_id = clean_faults.create_resource("vault", second)["id"]
    vaults = [cold_vault, (second, SecretClient(clean_faults.vault_url(second), clean_faults.admin_credential()), second_id)]
    env: dict[str, Any] = {}
    expected = {}
    try:
        for index, (name, admin, vault_id) in enumerate(vaults):
            clean_faults.grant("system", "Key Vault Secrets User", vault_id)
            for item in range(3):
                secret, value = unique("p"), uuid.uuid4().hex
                admin.set_secret(secret, value)
                env[f"V{index}_{item}"] = secret_ref(secret, vault=name, store="s")
                expected[f"V{index}_{item}"] = value
            forget_challenge(clean_faults, name)
        text = config_yaml(stores={"s": mi_store(performance={"max_concurrent": 4})}, envs={"e": env})
        broker = StoreConnections(parse_config(text, "test.yaml", environ=os.environ))
        try:
            clean_faults.reset_counters()
            bundle = broker.resolve("e")
            stats = broker.store("s").credential.stats
        finally:
            broker.close()
    finally:
        http_challenge_cache.remove_challenge_for_url(clean_faults.vault_url(second))
    assert bundle.as_plain_dict() == expected
    counters = clean_faults.counters()
    assert sum(n for k, n in counters["by_endpoint"].items() if k.startswith("identity:")) == 1
    assert counters["by_endpoint_status"].get("keyvault:GetSecret:401", 0) == 2
    assert (stats.fetches, stats.requests) == (1, 3)  # the prefetch, then each vault's challenge flow
