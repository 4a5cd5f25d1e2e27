"""Every key of docs/config.md, at run time: configs written here resolve against the sandbox.

Each test writes a config as YAML text, parses it with `parse_config` and resolves an env with a
`StoreConnections` over `os.environ` (which the session's sandbox fixture points at the local Azure), then
checks what came back against what was seeded (values, versions, keys ARM lists, tokens Azurite
accepts), against the sandbox's request counters, or against the failure that was expected.

Tests share one sandbox: every test uses vault objects, storage containers and tables of its own,
seeded by the admin identity; the identity under test gets its roles through ARM role assignments
at the narrowest scope (one secret, one key, one account).  Role assignments above resource scope
are deleted again when the test ends, so other test modules see the sandbox as they expect.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.data.tables import TableClient, TableServiceClient
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from azure.mgmt.authorization import AuthorizationManagementClient
from azure.mgmt.authorization.models import RoleAssignmentCreateParameters
from azure.mgmt.cosmosdb import CosmosDBManagementClient
from azure.mgmt.storage import StorageManagementClient
from azure.mgmt.storage.models import Sku, StorageAccountCreateParameters
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key, pkcs12

from core.bundle import Bundle
from core.config import LoadedConfig, parse_config
from core.connections import StoreConnections
from core.permissions.roles import role_by_name
from demo.seed import self_signed_pem
from sandbox.client import SandboxClient
from tests.configs import config_yaml, identity_block, mi_store, ref, secret_ref
from tests.sandbox.helpers import unique

KV_GET = "keyvault:GetSecret"
NO_RETRY: dict[str, Any] = {"retry_total": 0}


# ---- helpers --------------------------------------------------------------------------------
def config(text: str, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    return parse_config(textwrap.dedent(text), "test.yaml", environ=os.environ if environ is None else environ)


@pytest.fixture()
def broker() -> Iterator[Callable[..., StoreConnections]]:
    """`broker(yaml_text, environ=None)`: a StoreConnections over os.environ (or `environ`), closed after the test."""
    made: list[StoreConnections] = []

    def make(text: str, environ: Mapping[str, str] | None = None) -> StoreConnections:
        env = os.environ if environ is None else environ
        made.append(StoreConnections(config(text, env), environ=env))
        return made[-1]

    yield make
    for item in made:
        item.close()


def values(bundle: Bundle) -> dict[str, str]:
    """The plain values of a bundle that must have no failures."""
    assert not bundle.failures, {name: str(f) for name, f in bundle.failures.items()}
    return bundle.as_plain_dict()


def counted(sandbox: SandboxClient, key: str, table: str = "by_endpoint_status") -> int:
    return int(sandbox.counters()[table].get(key, 0))


def sas_params(token: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(token).items()}


def sas_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def close_to(actual: datetime, expected: datetime, seconds: float = 30) -> bool:
    return abs((actual - expected).total_seconds()) <= seconds


def authz(sandbox: SandboxClient) -> AuthorizationManagementClient:
    return AuthorizationManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)


def grant_principal(sandbox: SandboxClient, principal_id: str, role: str, scope: str) -> Any:
    """A role assignment through ARM for any principal (sandbox.grant knows managed identities only)."""
    definition = role_by_name(role)
    return authz(sandbox).role_assignments.create(scope, str(uuid.uuid4()), RoleAssignmentCreateParameters(  # type: ignore[call-arg]
        role_definition_id=f"/subscriptions/{sandbox.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{definition.role_id}",
        principal_id=principal_id, principal_type="ServicePrincipal",
    ))


@pytest.fixture()
def temporary_grant(sandbox: SandboxClient) -> Iterator[Callable[[str, str, str], Any]]:
    """`temporary_grant(identity, role, scope)`: sandbox.grant, deleted again after the test."""
    made: list[tuple[str, str]] = []

    def make(identity: str, role: str, scope: str) -> Any:
        assignment = sandbox.grant(identity, role, scope)
        made.append((scope, assignment.name))
        return assignment

    yield make
    for scope, name in made:
        authz(sandbox).role_assignments.delete(scope, name)


# ---- Key Vault fixtures -----------------------------------------------------------------------
@dataclass
class Vault:
    name: str
    id: str
    secrets: SecretClient
    certificates: CertificateClient
    keys: KeyClient

    def seed(self, value: str | None = None, prefix: str = "s", **attributes: Any) -> tuple[str, str, str]:
        """A new secret (name, value, version) seeded by the admin."""
        name = unique(prefix)
        value = value if value is not None else "value-" + uuid.uuid4().hex
        secret = self.secrets.set_secret(name, value, **attributes)
        assert secret.properties.version is not None
        return name, value, secret.properties.version

    def secret_scope(self, name: str) -> str:
        return f"{self.id}/secrets/{name}"


def new_vault(sandbox: SandboxClient) -> Vault:
    name = unique("kvr")[:24]
    created = sandbox.create_resource("vault", name)
    admin = sandbox.admin_credential()
    url = sandbox.vault_url(name)
    vault = Vault(name, created["id"], SecretClient(url, admin), CertificateClient(url, admin), KeyClient(url, admin))
    vault.secrets.set_secret("warm-up", "x")  # this process has now seen the vault's challenge
    return vault


@pytest.fixture(scope="module")
def vault(sandbox: SandboxClient) -> Vault:
    """A vault of this module (no identity but the admin has a role on it)."""
    return new_vault(sandbox)


# ---- Key Vault secrets ------------------------------------------------------------------------
def test_secret_latest_pinned_version_subscription_and_literals(sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    name, first, first_version = vault.seed()
    second = "second-" + uuid.uuid4().hex
    latest_version = vault.secrets.set_secret(name, second).properties.version
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "LATEST": secret_ref(name, vault=vault.name),
            "PINNED": secret_ref(name, vault=vault.name, version=first_version),
            "DOCUMENTED": ref(vault=vault.name, secret=name, subscription=sandbox.subscription_id),
            "NUMBER": 42,
            "FLAG": True,
            "TEXT": "plain",
        },
    }))
    bundle = b.resolve("e")
    assert values(bundle) == {"LATEST": second, "PINNED": first, "DOCUMENTED": second, "NUMBER": "42", "FLAG": "true", "TEXT": "plain"}
    assert bundle.values["PINNED"].version == first_version
    assert bundle.values["LATEST"].version == latest_version
    assert bundle.values["LATEST"].identity == f"user-assigned managed identity (client_id={sandbox.identities['app'].client_id})"
    assert bundle.values["NUMBER"].source == "literal"


def test_disabled_not_yet_valid_and_expired_secrets_are_failures(sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    now = datetime.now(UTC)
    good = vault.seed()
    disabled = vault.seed(enabled=False)
    future = vault.seed(not_before=now + timedelta(days=1))
    expired = vault.seed(expires_on=now - timedelta(hours=1))
    for name, _, _ in (good, disabled, future, expired):
        sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "GOOD": secret_ref(good[0], vault=vault.name),
            "DISABLED": secret_ref(disabled[0], vault=vault.name),
            "FUTURE": secret_ref(future[0], vault=vault.name),
            "EXPIRED": secret_ref(expired[0], vault=vault.name),
        },
    }))
    bundle = b.resolve("e")
    assert bundle.as_plain_dict() == {"GOOD": good[1]}
    assert {name: f.reason for name, f in bundle.failures.items()} == {
        "DISABLED": "disabled", "FUTURE": "not_yet_valid", "EXPIRED": "expired"}
    for variable, (name, value, _) in {"DISABLED": disabled, "FUTURE": future, "EXPIRED": expired}.items():
        failure = bundle.failures[variable]
        assert name in failure.message and value not in str(failure)
        assert failure.path == f"envs.e.{variable}.from"


def test_missing_secret_and_vault_are_not_found_missing_role_is_access_denied(
    sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections],
) -> None:
    missing = unique("missing")
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(missing))  # allowed, but nothing there
    denied, denied_value, _ = vault.seed()  # no role for it
    key = unique("k")
    vault.keys.create_rsa_key(key, size=2048)
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "MISSING": secret_ref(missing, vault=vault.name),
            "NO_VAULT": secret_ref("x", vault=unique("novault")[:20]),
            "DENIED": secret_ref(denied, vault=vault.name),
            "DENIED_KEY": secret_ref(key, vault=vault.name, type="key"),
        },
    }))
    bundle = b.resolve("e")
    assert not bundle.values
    assert {name: f.reason for name, f in bundle.failures.items()} == {
        "MISSING": "not_found", "NO_VAULT": "not_found", "DENIED": "access_denied", "DENIED_KEY": "access_denied"}
    assert missing in bundle.failures["MISSING"].message
    assert bundle.failures["DENIED"].hint == (
        f"needs 'Key Vault Secrets User' on key vault {vault.name} (denied: Microsoft.KeyVault/vaults/secrets/getSecret/action)")
    assert bundle.failures["DENIED_KEY"].hint == (
        f"needs 'Key Vault Reader' on key vault {vault.name} (denied: Microsoft.KeyVault/vaults/keys/read)")
    assert denied_value not in str(bundle.failures["DENIED"])


# ---- certificates and keys --------------------------------------------------------------------
def _cert_and_key(pem: bytes) -> tuple[x509.Certificate, Any]:
    return x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE-----"):]), load_pem_private_key(
        pem[: pem.index(b"-----END PRIVATE KEY-----") + len(b"-----END PRIVATE KEY-----")], None)


def test_certificates_as_pem_and_pfx(sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    """A certificate imported as PKCS#12 and one imported as PEM, each read in both formats."""
    pfx_name, pem_name = unique("cert-pfx"), unique("cert-pem")
    pfx_source, pem_source = self_signed_pem("pfx.example"), self_signed_pem("pem.example")
    certificate, key = _cert_and_key(pfx_source)
    pfx_bytes = pkcs12.serialize_key_and_certificates(b"pfx", key, certificate, None, serialization.NoEncryption())
    vault.certificates.import_certificate(pfx_name, pfx_bytes)  # default policy: application/x-pkcs12
    vault.certificates.import_certificate(pem_name, pem_source, policy=CertificatePolicy(
        issuer_name="Unknown", content_type=CertificateContentType.pem))
    for name in (pfx_name, pem_name):
        sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "FROM_PFX_AS_PEM": secret_ref(pfx_name, vault=vault.name, type="certificate"),
            "FROM_PFX_AS_PFX": secret_ref(pfx_name, vault=vault.name, type="certificate", format="pfx"),
            "FROM_PEM_AS_PEM": secret_ref(pem_name, vault=vault.name, type="certificate", format="pem"),
            "FROM_PEM_AS_PFX": secret_ref(pem_name, vault=vault.name, type="certificate", format="pfx"),
        },
    }))
    bundle = b.resolve("e")
    got = values(bundle)
    for prefix, source in (("FROM_PFX", pfx_source), ("FROM_PEM", pem_source)):
        expected_cert, expected_key = _cert_and_key(source)
        pem = got[f"{prefix}_AS_PEM"].encode()
        assert b"-----BEGIN PRIVATE KEY-----" in pem and b"-----BEGIN CERTIFICATE-----" in pem
        cert, key = _cert_and_key(pem)
        assert cert == expected_cert
        assert key.private_numbers() == expected_key.private_numbers()
        pfx_key, pfx_cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(got[f"{prefix}_AS_PFX"], validate=True), None)
        assert pfx_cert == expected_cert
        assert pfx_key is not None and pfx_key.private_numbers() == expected_key.private_numbers()  # type: ignore[union-attr]
        assert bundle.values[f"{prefix}_AS_PEM"].content_type == "application/x-pem-file"
        assert bundle.values[f"{prefix}_AS_PFX"].content_type == "application/x-pkcs12"


def test_keys_as_jwk_and_pem(sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    rsa_name, ec_name = unique("rsa"), unique("ec")
    rsa_key = vault.keys.create_rsa_key(rsa_name, size=2048)
    ec_key = vault.keys.create_ec_key(ec_name, curve="P-256")
    for name in (rsa_name, ec_name):
        sandbox.grant("app", "Key Vault Reader", f"{vault.id}/keys/{name}")
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "RSA_JWK": secret_ref(rsa_name, vault=vault.name, type="key"),
            "RSA_PEM": secret_ref(rsa_name, vault=vault.name, type="key", format="pem"),
            "EC_JWK": secret_ref(ec_name, vault=vault.name, type="key", format="jwk"),
            "EC_PEM": secret_ref(ec_name, vault=vault.name, type="key", format="pem"),
        },
    }))
    got = values(b.resolve("e"))

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    rsa_seeded: Any = rsa_key.key
    ec_seeded: Any = ec_key.key
    rsa_jwk = json.loads(got["RSA_JWK"])
    assert rsa_jwk["kty"] == "RSA" and "d" not in rsa_jwk
    assert (rsa_jwk["n"], rsa_jwk["e"]) == (b64url(rsa_seeded.n), b64url(rsa_seeded.e))
    assert rsa_jwk["kid"] == rsa_key.id
    ec_jwk = json.loads(got["EC_JWK"])
    assert (ec_jwk["kty"], ec_jwk["crv"]) == ("EC", "P-256") and "d" not in ec_jwk
    assert (ec_jwk["x"], ec_jwk["y"]) == (b64url(ec_seeded.x), b64url(ec_seeded.y))
    rsa_public = load_pem_public_key(got["RSA_PEM"].encode())
    assert isinstance(rsa_public, rsa.RSAPublicKey)
    assert rsa_public.public_numbers().n == int.from_bytes(rsa_seeded.n, "big")
    ec_public = load_pem_public_key(got["EC_PEM"].encode())
    assert isinstance(ec_public, ec.EllipticCurvePublicKey)
    assert ec_public.public_numbers().x == int.from_bytes(ec_seeded.x, "big")


# ---- storage ----------------------------------------------------------------------------------
@dataclass
class Storage:
    account: str
    resource_group: str
    id: str
    keys: dict[str, str]
    container: str
    table: str


@pytest.fixture(scope="module")
def storage(sandbox: SandboxClient) -> Storage:
    """A storage account created through ARM for this module, with container/blob `b` = b"hello"
    and a table with entity (p, r); `app` may list its keys, get user delegation keys and use blobs."""
    account = "vr" + uuid.uuid4().hex[:16]
    group = sandbox.resource_group
    mgmt = StorageManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    mgmt.storage_accounts.begin_create(group, account, StorageAccountCreateParameters(
        sku=Sku(name="Standard_LRS"), kind="StorageV2", location="eastus"), polling_interval=0).result()
    keys = {str(k.key_name): str(k.value) for k in mgmt.storage_accounts.list_keys(group, account).keys_property or []}
    shared = AzureNamedKeyCredential(account, keys["key1"])
    container = "c" + uuid.uuid4().hex[:12]
    BlobServiceClient(sandbox.storage_endpoint(account), credential=shared).create_container(container).upload_blob("b", b"hello")
    table = "t" + uuid.uuid4().hex[:12]
    TableServiceClient(sandbox.storage_endpoint(account, "table"), credential=shared).create_table(table).create_entity(
        {"PartitionKey": "p", "RowKey": "r", "v": 1})
    scope = sandbox.resource_id("storage", account)
    sandbox.grant("app", "Storage Account Key Operator Service Role", scope)
    sandbox.grant("app", "Storage Blob Delegator", scope)
    # A user delegation SAS grants at most what its signer may do (checked when it is used).
    sandbox.grant("app", "Storage Blob Data Contributor", scope)
    return Storage(account, group, scope, keys, container, table)


def _rejected(call: Callable[[], Any]) -> int:
    with pytest.raises(HttpResponseError) as info:
        call()
    return int(info.value.status_code or 0)


def test_storage_keys_equal_what_arm_lists(clean_faults: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    resources = [{"type": "storage", "name": storage.account, "resource_group": storage.resource_group}]
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), resources=resources)}, envs={
        "e": {
            "DEFAULT": ref(resource_type="storage", account=storage.account),
            "KEY1": ref(resource_type="storage", account=storage.account, key="key1"),
            "KEY2": ref(resource_type="storage", account=storage.account, key="key2"),
            "ACTIVE": ref(resource_type="storage", account=storage.account, key="active"),
        },
    }))
    sandbox.reset_counters()
    bundle = b.resolve("e")
    assert values(bundle) == {"DEFAULT": storage.keys["key1"], "KEY1": storage.keys["key1"], "KEY2": storage.keys["key2"],
                              "ACTIVE": storage.keys["key1"]}
    assert bundle.values["KEY2"].version == "key2"
    # One listKeys per account per run, and no subscription-wide lookup of the account.
    by_endpoint = sandbox.counters()["by_endpoint"]
    assert by_endpoint.get("arm:StorageListKeys") == 1
    assert "arm:ListStorage" not in by_endpoint


def test_sas_tokens_are_accepted_by_azurite_within_their_permissions(
    sandbox: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections],
) -> None:
    acct, container, table = storage.account, storage.container, storage.table
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "ACCOUNT_SAS": ref(resource_type="storage", account=acct, operation="generate_sas", permissions="rl",
                               expiry="1h", services="b", resource_types="sco", resource_group=storage.resource_group),
            "CONTAINER_SAS": ref(resource_type="storage", account=acct, operation="generate_sas", sas_type="service",
                                 container=container, permissions="rl", expiry="1h",
                                 resource_group=storage.resource_group),
            "BLOB_SAS": ref(resource_type="storage", account=acct, operation="generate_sas", sas_type="service",
                            container=container, blob="b", permissions="r", expiry="30m",
                            resource_group=storage.resource_group),
            "TABLE_SAS": ref(resource_type="storage", account=acct, operation="generate_sas", table=table,
                             permissions="r", expiry="1h", resource_group=storage.resource_group),
            "DELEGATED": ref(resource_type="storage", account=acct, operation="generate_sas", container=container,
                             permissions="rcwl", expiry="2h"),
            "HTTP_ALLOWED": ref(resource_type="storage", account=acct, operation="generate_sas", permissions="r",
                                expiry=600, https_only=False, ip="127.0.0.1", resource_group=storage.resource_group),
        },
    }))
    started = datetime.now(UTC)
    bundle = b.resolve("e")
    got = values(bundle)
    endpoint = sandbox.storage_endpoint(acct)

    def read(sas: str, blob_name: str = "b") -> bytes:
        return BlobClient(endpoint, container, blob_name, credential=sas, **NO_RETRY).download_blob().readall()

    def write(sas: str) -> None:
        BlobClient(endpoint, container, unique("w"), credential=sas, **NO_RETRY).upload_blob(b"x")

    # Account SAS: reads and lists, cannot write.
    assert read(got["ACCOUNT_SAS"]) == b"hello"
    assert [x.name for x in ContainerClient(endpoint, container, credential=got["ACCOUNT_SAS"], **NO_RETRY).list_blobs()] == ["b"]
    assert _rejected(lambda: write(got["ACCOUNT_SAS"])) == 403
    # Service SAS for the container and for one blob.
    assert read(got["CONTAINER_SAS"]) == b"hello"
    assert _rejected(lambda: write(got["CONTAINER_SAS"])) == 403
    assert read(got["BLOB_SAS"]) == b"hello"
    assert _rejected(lambda: ContainerClient(endpoint, container, credential=got["BLOB_SAS"], **NO_RETRY).get_container_properties()) == 403
    # Table service SAS.
    table_client = TableClient(sandbox.storage_endpoint(acct, "table"), table, credential=AzureSasCredential(got["TABLE_SAS"]), **NO_RETRY)
    assert table_client.get_entity("p", "r")["v"] == 1
    assert _rejected(lambda: table_client.create_entity({"PartitionKey": "p", "RowKey": unique("r")})) == 403
    # User delegation SAS (the default for a container): no account key involved, may write.
    delegated = got["DELEGATED"]
    assert "skoid" in sas_params(delegated) and sas_params(delegated)["skoid"] == sandbox.identities["app"].object_id
    assert read(delegated) == b"hello"
    name = unique("w")
    BlobClient(endpoint, container, name, credential=delegated, **NO_RETRY).upload_blob(b"delegated")
    assert read(got["CONTAINER_SAS"], name) == b"delegated"
    # http allowed and an IP restriction the loopback client satisfies.
    http_params = sas_params(got["HTTP_ALLOWED"])
    assert http_params["spr"] == "https,http" and http_params["sip"] == "127.0.0.1"
    assert read(got["HTTP_ALLOWED"]) == b"hello"
    assert sas_params(got["ACCOUNT_SAS"])["spr"] == "https"  # https_only defaults to true

    kinds = {name: (v.detail["sas_type"], v.detail["signed_with"]) for name, v in bundle.values.items()}
    assert kinds == {
        "ACCOUNT_SAS": ("account", "key1"), "CONTAINER_SAS": ("service", "key1"), "BLOB_SAS": ("service", "key1"),
        "TABLE_SAS": ("service", "key1"), "DELEGATED": ("user_delegation", "user_delegation"), "HTTP_ALLOWED": ("account", "key1"),
    }
    lifetimes = {"ACCOUNT_SAS": 3600, "CONTAINER_SAS": 3600, "BLOB_SAS": 1800, "TABLE_SAS": 3600, "DELEGATED": 7200, "HTTP_ALLOWED": 600}
    for variable, lifetime in lifetimes.items():
        params = sas_params(got[variable])
        expires_on = bundle.values[variable].expires_on
        assert expires_on is not None and close_to(expires_on, started + timedelta(seconds=lifetime))
        assert close_to(sas_time(params["se"]), expires_on, 1)
        assert close_to(sas_time(params["st"]), started - timedelta(minutes=15)), variable


def test_sas_expiry_is_capped_by_max_sas_expiry(sandbox: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections]) -> None:
    acct = storage.account
    b = broker(config_yaml(stores={
        "capped": mi_store(identity_block(sandbox, "app"), max_sas_expiry="2h"),
        "default": mi_store(identity_block(sandbox, "app")),
    }, envs={
        "e": {
            "CAPPED": ref("capped", resource_type="storage", account=acct, resource_group=storage.resource_group,
                          operation="generate_sas", permissions="r", expiry="7d"),
            "CAPPED_DELEGATED": ref("capped", resource_type="storage", account=acct, operation="generate_sas",
                                    container=storage.container, permissions="r", expiry="24h"),
            "DEFAULT_CAP": ref("default", resource_type="storage", account=acct, resource_group=storage.resource_group,
                               operation="generate_sas", permissions="r", expiry="30d"),
        },
    }))
    started = datetime.now(UTC)
    bundle = b.resolve("e")
    got = values(bundle)
    for variable, cap in (("CAPPED", timedelta(hours=2)), ("CAPPED_DELEGATED", timedelta(hours=2)), ("DEFAULT_CAP", timedelta(days=7))):
        assert close_to(sas_time(sas_params(got[variable])["se"]), started + cap), variable
        blob = BlobClient(sandbox.storage_endpoint(acct), storage.container, "b", credential=got[variable], **NO_RETRY)
        assert blob.download_blob().readall() == b"hello"


def test_user_delegation_sas_from_a_store_allowing_longer_sas_than_delegation_keys(
    sandbox: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections],
) -> None:
    """max_sas_expiry above 7 days: a short user delegation SAS still works (delegation keys are
    valid for at most 7 days), a 10-day one is refused instead of minting a broken token."""
    acct = storage.account
    b = broker(config_yaml(stores={"long": mi_store(identity_block(sandbox, "app"), max_sas_expiry="30d")}, envs={
        "e": {
            "SHORT": ref("long", resource_type="storage", account=acct, operation="generate_sas",
                         container=storage.container, permissions="r", expiry="1h"),
            "TOO_LONG": ref("long", resource_type="storage", account=acct, operation="generate_sas",
                            container=storage.container, permissions="r", expiry="10d"),
            "ACCOUNT_LONG": ref("long", resource_type="storage", account=acct, resource_group=storage.resource_group,
                                operation="generate_sas", permissions="r", expiry="10d"),
        },
    }))
    started = datetime.now(UTC)
    bundle = b.resolve("e")
    assert set(bundle.failures) == {"TOO_LONG"}
    assert bundle.failures["TOO_LONG"].reason == "invalid"
    assert "delegation key" in bundle.failures["TOO_LONG"].message
    got = bundle.as_plain_dict()
    assert BlobClient(sandbox.storage_endpoint(acct), storage.container, "b", credential=got["SHORT"], **NO_RETRY).download_blob().readall() == b"hello"
    # The delegation key behind it was asked for 7 days at most (Azure refuses longer ones).
    assert sas_time(sas_params(got["SHORT"])["ske"]) <= started + timedelta(days=7, seconds=30)
    assert close_to(sas_time(sas_params(got["ACCOUNT_LONG"])["se"]), started + timedelta(days=10))


def test_account_lookup_resource_group_and_resources_override(
    clean_faults: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections], temporary_grant: Callable[[str, str, str], Any],
) -> None:
    sandbox = clean_faults
    acct = storage.account
    text = config_yaml(stores={
        "plain": mi_store(identity_block(sandbox, "app")),
        "overridden": mi_store(identity_block(sandbox, "app"), resources=[{"type": "storage", "name": acct.upper(),
                               "resource_group": storage.resource_group}]),
    }, envs={
        "e": {
            "LOOKED_UP": ref("plain", resource_type="storage", account=acct),
            "LOOKED_UP_AGAIN": ref("plain", resource_type="storage", account=acct, key="key2"),
            "BY_REFERENCE": ref("plain", resource_type="storage", account=acct, key="key2",
                                resource_group=storage.resource_group),
            "BY_OVERRIDE": ref("overridden", resource_type="storage", account=acct),
        },
    })
    # The identity may list keys of this one account only: the subscription-wide lookup is refused.
    sandbox.reset_counters()
    bundle = broker(text).resolve("e")
    assert bundle.as_plain_dict() == {"BY_REFERENCE": storage.keys["key2"], "BY_OVERRIDE": storage.keys["key1"]}
    for variable in ("LOOKED_UP", "LOOKED_UP_AGAIN"):
        failure = bundle.failures[variable]
        assert failure.reason == "access_denied"
        assert failure.hint == (f"needs 'Reader' on subscription {sandbox.subscription_id} "
                                "(denied: Microsoft.Storage/storageAccounts/read)")
    by_endpoint = sandbox.counters()["by_endpoint_status"]
    assert by_endpoint.get("arm:ListStorage:403") == 1  # one lookup per account per run, shared
    # One for both stores: they have the same identity, and a listing is kept per identity (core.sources.listed_keys).
    assert by_endpoint.get("arm:StorageListKeys:200") == 1

    # With Reader on the subscription the lookup works, once per account and run.
    temporary_grant("app", "Reader", f"/subscriptions/{sandbox.subscription_id}")
    sandbox.reset_counters()
    bundle = broker(text).resolve("e")
    assert values(bundle) == {"LOOKED_UP": storage.keys["key1"], "LOOKED_UP_AGAIN": storage.keys["key2"],
                              "BY_REFERENCE": storage.keys["key2"], "BY_OVERRIDE": storage.keys["key1"]}
    assert sandbox.counters()["by_endpoint_status"].get("arm:ListStorage:200") == 1


def test_default_subscription_and_per_reference_subscription(
    sandbox: SandboxClient, storage: Storage, broker: Callable[..., StoreConnections],
) -> None:
    acct, group, sub = storage.account, storage.resource_group, sandbox.subscription_id
    wrong = str(uuid.uuid4())
    b = broker(config_yaml(stores={
        "wrong_default": mi_store(identity_block(sandbox, "app"), default_subscription=wrong),
        "override_sub": mi_store(identity_block(sandbox, "app"), default_subscription=wrong,
                                 resources=[{"type": "storage", "name": acct, "subscription": sub,
                                 "resource_group": group}]),
        "right_default": mi_store(identity_block(sandbox, "app"), default_subscription=sub),
    }, envs={
        "e": {
            "FROM_WRONG_DEFAULT": ref("wrong_default", resource_type="storage", account=acct, resource_group=group),
            "REFERENCE_SUB": ref("wrong_default", resource_type="storage", account=acct, resource_group=group,
                                 subscription=sub, key="key2"),
            "OVERRIDE_SUB": ref("override_sub", resource_type="storage", account=acct),
            "RIGHT_DEFAULT": ref("right_default", resource_type="storage", account=acct, resource_group=group),
            "WRONG_REFERENCE": ref("right_default", resource_type="storage", account=acct, resource_group=group,
                                   subscription=wrong, key="key2"),
        },
    }))
    bundle = b.resolve("e")
    assert bundle.as_plain_dict() == {"REFERENCE_SUB": storage.keys["key2"], "OVERRIDE_SUB": storage.keys["key1"],
                                      "RIGHT_DEFAULT": storage.keys["key1"]}
    for variable in ("FROM_WRONG_DEFAULT", "WRONG_REFERENCE"):
        failure = bundle.failures[variable]
        assert failure.reason == "not_found"
        assert f"The subscription '{wrong}' could not be found" in failure.message

    # Without default_subscription: $VAULTRELAY_SUBSCRIPTION_ID, then $AZURE_SUBSCRIPTION_ID, else a clear error.
    text = config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))},
                       envs={"e": {"KEY": ref(resource_type="storage", account=acct, resource_group=group)}})
    base = {k: v for k, v in os.environ.items() if k not in ("VAULTRELAY_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID")}
    assert values(broker(text, {**base, "VAULTRELAY_SUBSCRIPTION_ID": sub, "AZURE_SUBSCRIPTION_ID": wrong}).resolve("e")) == {
        "KEY": storage.keys["key1"]}
    assert values(broker(text, {**base, "AZURE_SUBSCRIPTION_ID": sub}).resolve("e")) == {"KEY": storage.keys["key1"]}
    failure = broker(text, base).resolve("e").failures["KEY"]
    assert failure.reason == "invalid"
    assert f"no subscription known for storage '{acct}'" in failure.message and "default_subscription" in failure.message


# ---- Cosmos DB --------------------------------------------------------------------------------
def test_cosmos_keys_and_connection_strings_equal_arm(clean_faults: SandboxClient, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    account = unique("cosmos")
    created = sandbox.create_resource("cosmos", account)
    sandbox.grant("app", "DocumentDB Account Contributor", created["id"])
    admin = CosmosDBManagementClient(sandbox.admin_credential(), sandbox.subscription_id, base_url=sandbox.arm_endpoint)
    keys = admin.database_accounts.list_keys(sandbox.resource_group, account)
    strings = {c.description: c.connection_string for c in
               admin.database_accounts.list_connection_strings(sandbox.resource_group, account).connection_strings or []}
    loaded_text = config_yaml(stores={"azure": mi_store(
        identity_block(sandbox, "app"), preferred_regions=["westeurope", "eastus"],
        resources=[{"type": "cosmosdb", "name": account, "resource_group": sandbox.resource_group}])}, envs={
        "e": {
            "PRIMARY": ref(resource_type="cosmosdb", account=account),
            "SECONDARY": ref(resource_type="cosmosdb", account=account, key="secondary"),
            "PRIMARY_RO": ref(resource_type="cosmosdb", account=account, key="primary_readonly"),
            "SECONDARY_RO": ref(resource_type="cosmosdb", account=account, key="secondary_readonly"),
            "PRIMARY_CS": ref(resource_type="cosmosdb", account=account, format="connection_string"),
            "SECONDARY_RO_CS": ref(resource_type="cosmosdb", account=account, key="secondary_readonly",
                                   format="connection_string"),
            "BY_REFERENCE": ref(resource_type="cosmosdb", account=account, subscription=sandbox.subscription_id,
                                resource_group=sandbox.resource_group),
        },
    })
    b = broker(loaded_text)
    assert any("preferred_regions" in w.path and "has no effect" in w.message for w in b.loaded.warnings)
    sandbox.reset_counters()
    got = values(b.resolve("e"))
    assert got == {
        "PRIMARY": keys.primary_master_key, "SECONDARY": keys.secondary_master_key,
        "PRIMARY_RO": keys.primary_readonly_master_key, "SECONDARY_RO": keys.secondary_readonly_master_key,
        "PRIMARY_CS": strings["Primary SQL Connection String"],
        "SECONDARY_RO_CS": strings["Secondary Read-Only SQL Connection String"], "BY_REFERENCE": keys.primary_master_key,
    }
    assert str(keys.secondary_readonly_master_key) in got["SECONDARY_RO_CS"]
    by_endpoint = sandbox.counters()["by_endpoint"]
    assert (by_endpoint.get("arm:CosmosListKeys"), by_endpoint.get("arm:CosmosReadOnlyKeys"), by_endpoint.get("arm:CosmosListConnectionStrings")) == (1, 1, 1)
    assert "arm:ListCosmos" not in by_endpoint


# ---- SQL ----------------------------------------------------------------------------------------
def test_sql_connection_strings_name_the_user_assigned_identity(clean_faults: SandboxClient, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    data = sandbox.identities["data"]
    b = broker(config_yaml(stores={
        "system": mi_store(),
        "by_client_id": mi_store(identity_block(sandbox, "data", "client_id")),
        "by_resource_id": mi_store(identity_block(sandbox, "data", "resource_id")),
        "by_object_id": mi_store(identity_block(sandbox, "data", "object_id")),
    }, envs={
        "e": {
            "DEFAULT": ref("system", resource_type="sql", server="myserver", database="mydb"),
            "ADO": ref("by_client_id", resource_type="sql", server="myserver", database="mydb", format="ado"),
            "CONNECTION_STRING": ref("by_client_id", resource_type="sql", server="myserver.database.windows.net",
                                     database="mydb", format="connection_string"),
            "ODBC": ref("by_client_id", resource_type="sql", server="myserver", database="mydb", format="odbc"),
            "JDBC": ref("by_client_id", resource_type="sql", server="myserver", database="mydb", format="jdbc"),
            "BY_RESOURCE_ID": ref("by_resource_id", resource_type="sql", server="myserver", database="mydb",
                                  format="jdbc"),
            "BY_OBJECT_ID": ref("by_object_id", resource_type="sql", server="myserver", database="mydb", format="odbc"),
        },
    }))
    sandbox.reset_counters()
    got = values(b.resolve("e"))
    host = "myserver.database.windows.net"
    ado = (f"Server=tcp:{host},1433;Database=mydb;Authentication=Active Directory Managed Identity;User Id={data.client_id};"
           "Encrypt=True;TrustServerCertificate=False;Connection Timeout=30;")
    odbc = ("Driver={ODBC Driver 18 for SQL Server};" f"Server=tcp:{host},1433;Database=mydb;Authentication=ActiveDirectoryMsi;"
            f"UID={data.client_id};Encrypt=yes;TrustServerCertificate=no;Connection Timeout=30;")
    jdbc = (f"jdbc:sqlserver://{host}:1433;database=mydb;authentication=ActiveDirectoryManagedIdentity;user={data.client_id};"
            "encrypt=true;trustServerCertificate=false;hostNameInCertificate=*.database.windows.net;loginTimeout=30;")
    assert got == {
        "DEFAULT": ado.replace(f"User Id={data.client_id};", ""), "ADO": ado, "CONNECTION_STRING": ado,
        "ODBC": odbc, "JDBC": jdbc, "BY_RESOURCE_ID": jdbc, "BY_OBJECT_ID": odbc,
    }
    # Only the identities given by resource or object id needed a token (to read its appid).
    counters = sandbox.counters()
    assert counters["by_endpoint_status"] == {"identity:GetManagedIdentityToken:200": 2}
    assert counters["by_identity"] == {"data": 2}


# ---- tokens -------------------------------------------------------------------------------------
def test_get_token_by_resource_and_by_scope(sandbox: SandboxClient, broker: Callable[..., StoreConnections]) -> None:
    app = sandbox.identities["app"]
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "GRAPH": ref(operation="get_token", resource="https://graph.microsoft.com"),
            "STORAGE": ref(operation="get_token", scope="https://storage.azure.com/.default"),
            "API": ref(operation="get_token", scope=f"api://{app.client_id}/.default"),
        },
    }))
    bundle = b.resolve("e")
    got = values(bundle)
    for variable, audience in (("GRAPH", "https://graph.microsoft.com"), ("STORAGE", "https://storage.azure.com"),
                               ("API", f"api://{app.client_id}")):
        claims = jwt.decode(got[variable], options={"verify_signature": False})
        assert claims["aud"] == audience
        assert (claims["oid"], claims["appid"], claims["tid"]) == (app.object_id, app.client_id, sandbox.tenant_id)
        expires_on = bundle.values[variable].expires_on
        assert expires_on is not None and int(expires_on.timestamp()) == claims["exp"]
        assert bundle.values[variable].content_type == "application/jwt"


# ---- identities -----------------------------------------------------------------------------
def test_each_identity_selector_reads_what_only_that_identity_may_read(
    sandbox: SandboxClient, broker: Callable[..., StoreConnections],
) -> None:
    vault = new_vault(sandbox)
    stores = {"system": ("system", "client_id"), "by_client_id": ("app", "client_id"),
              "by_resource_id": ("data", "resource_id"), "by_object_id": ("caller", "object_id")}
    seeded = {}
    for store, (identity, _) in stores.items():
        seeded[store] = vault.seed(prefix=store.replace("_", "-"))
        sandbox.grant(identity, "Key Vault Secrets User", vault.secret_scope(seeded[store][0]))
    env: dict[str, Any] = {}
    readers = list(stores)
    for store, neighbour in zip(readers, [*readers[1:], readers[0]], strict=True):
        env[f"OWN_{store.upper()}"] = secret_ref(seeded[store][0], vault=vault.name, store=store)
        env[f"OTHER_{store.upper()}"] = secret_ref(seeded[neighbour][0], vault=vault.name, store=store)
    b = broker(config_yaml(stores={store: mi_store(identity_block(sandbox, identity, selector))
                                   for store, (identity, selector) in stores.items()}, envs={"e": env}))
    bundle = b.resolve("e")
    assert bundle.as_plain_dict() == {f"OWN_{store.upper()}": seeded[store][1] for store in stores}
    assert {name: f.reason for name, f in bundle.failures.items()} == {f"OTHER_{store.upper()}": "access_denied" for store in stores}
    plan = b.plan("e")
    assert plan.stores["system"] == "system-assigned managed identity"
    assert plan.stores["by_resource_id"] == f"user-assigned managed identity (resource_id={sandbox.identities['data'].resource_id})"


# ---- fallback chains ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sp_secret(sandbox: SandboxClient) -> tuple[Vault, str, str]:
    """A vault secret only the sandbox service principal `sp` may read."""
    vault = new_vault(sandbox)
    name, value, _ = vault.seed(prefix="sp")
    sp_object_id = sandbox.world()["identities"]["sp"]["object_id"]
    grant_principal(sandbox, sp_object_id, "Key Vault Secrets User", vault.secret_scope(name))
    return vault, name, value


def test_fallback_falls_through_a_missing_managed_identity_to_the_service_principal(
    clean_faults: SandboxClient, sp_secret: tuple[Vault, str, str], broker: Callable[..., StoreConnections],
) -> None:
    sandbox = clean_faults
    vault, name, value = sp_secret
    assert os.environ["SANDBOX_AUTHORITY"].rstrip("/") == os.environ["VAULTRELAY_AUTHORITY_HOST"].rstrip("/")
    nobody = str(uuid.uuid4())
    b = broker(config_yaml(stores={"azure": mi_store(fallback=[{
                "type": "managed_identity",
                "identity": {"type": "user_assigned", "client_id": nobody},
            }, {
                "type": "service_principal",
                "client_id": "${SANDBOX_SP_CLIENT_ID}",
                "client_secret": "${SANDBOX_SP_CLIENT_SECRET}",
                "tenant_id": "${AZURE_TENANT_ID}",
            }])}, envs={"e": {"SECRET": secret_ref(name, vault=vault.name)}}))
    assert b.plan("e").stores["azure"] == (
        f"user-assigned managed identity (client_id={nobody}) -> service principal {os.environ['SANDBOX_SP_CLIENT_ID']}")
    sandbox.reset_counters()
    assert values(b.resolve("e")) == {"SECRET": value}
    statuses = sandbox.counters()["by_endpoint_status"]
    assert statuses.get("identity:GetManagedIdentityToken:400", 0) >= 1  # the managed identity was tried first
    assert statuses.get("login:ClientCredentialsToken:200") == 1


def test_environment_fallback_reads_the_named_variables(
    sandbox: SandboxClient, sp_secret: tuple[Vault, str, str], broker: Callable[..., StoreConnections],
) -> None:
    vault, name, value = sp_secret
    text = config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), fallback=[{
                "type": "environment",
                "client_id_env": "MY_SP_ID",
                "client_secret_env": "MY_SP_SECRET",
                "tenant_id_env": "MY_TENANT",
            }, {"type": "managed_identity"}])}, envs={"e": {"SECRET": secret_ref(name, vault=vault.name)}})
    environ = {**os.environ, "MY_SP_ID": os.environ["SANDBOX_SP_CLIENT_ID"], "MY_SP_SECRET": os.environ["SANDBOX_SP_CLIENT_SECRET"],
               "MY_TENANT": os.environ["AZURE_TENANT_ID"]}
    with_variables = broker(text, environ)
    assert with_variables.plan("e").stores["azure"].startswith(f"service principal {environ['MY_SP_ID']} (from $MY_SP_ID) -> ")
    assert values(with_variables.resolve("e")) == {"SECRET": value}
    # The default names: AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_TENANT_ID.
    defaults = broker(config_yaml(stores={"azure": mi_store(fallback=[{"type": "environment"}])},
                                  envs={"e": {"SECRET": secret_ref(name, vault=vault.name)}}),
                      {**os.environ, "AZURE_CLIENT_ID": environ["MY_SP_ID"], "AZURE_CLIENT_SECRET": environ["MY_SP_SECRET"]})
    assert values(defaults.resolve("e")) == {"SECRET": value}
    # Without the variables the entry is left out: the managed identity (app) is used, and may not read it.
    without = broker(text, {k: v for k, v in environ.items() if k != "MY_SP_SECRET"})
    assert without.plan("e").stores["azure"] == f"user-assigned managed identity (client_id={sandbox.identities['app'].client_id})"
    failure = without.resolve("e").failures["SECRET"]
    assert failure.reason == "access_denied"


def test_unset_variable_in_a_fallback_entry_skips_it(
    sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VR_TEST_UNSET_SECRET", raising=False)
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={
        "azure": mi_store(identity_block(sandbox, "app"), fallback=[{
                "type": "service_principal",
                "client_id": "${SANDBOX_SP_CLIENT_ID}",
                "client_secret": "${VR_TEST_UNSET_SECRET}",
                "tenant_id": "${AZURE_TENANT_ID}",
            }, {"type": "azure_cli", "tenant_id": "${AZURE_TENANT_ID}"}, {"type": "managed_identity"}]),
        "nothing_left": mi_store(fallback=[{
                "type": "service_principal",
                "client_id": "${VR_TEST_UNSET_SECRET}",
                "client_secret": "x",
                "tenant_id": "${AZURE_TENANT_ID}",
            }]),
    }, envs={
        "e": {
            "SECRET": secret_ref(name, vault=vault.name),
            "NONE": secret_ref(name, vault=vault.name, store="nothing_left"),
        },
    }))
    assert [(w.path, w.severity) for w in b.loaded.warnings if "skipped at run time" in w.message] == [
        ("secretStores.azure.fallback[0]", "warning"), ("secretStores.nothing_left.fallback[0]", "warning")]
    assert b.plan("e").stores["azure"] == f"Azure CLI -> user-assigned managed identity (client_id={sandbox.identities['app'].client_id})"
    bundle = b.resolve("e")
    assert bundle.as_plain_dict() == {"SECRET": value}  # no Azure CLI here: it falls through to the managed identity
    assert bundle.failures["NONE"].reason == "identity"
    assert "no usable credential" in bundle.failures["NONE"].message


def test_workload_identity_fallback(
    clean_faults: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside AKS (no federated token file) a workload_identity entry is unavailable and the chain
    goes on; configured, it exchanges its token file at the authority (which the sandbox, having no
    federated credentials, refuses)."""
    sandbox = clean_faults
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    token_file = tmp_path / "token"
    token_file.write_text(sandbox.issue_token("app", "api://AzureADTokenExchange"))
    b = broker(config_yaml(stores={
        "not_in_aks": mi_store(identity_block(sandbox, "app"), fallback=[{"type": "workload_identity"},
                               {"type": "managed_identity"}]),
        "configured": mi_store(fallback=[{
                "type": "workload_identity",
                "client_id": sandbox.identities["app"].client_id,
                "tenant_id": sandbox.tenant_id,
                "token_file": str(token_file),
            }]),
    }, envs={
        "e": {
            "OUTSIDE_AKS": secret_ref(name, vault=vault.name, store="not_in_aks"),
            "FEDERATED": secret_ref(name, vault=vault.name, store="configured"),
        },
    }))
    sandbox.reset_counters()
    bundle = b.resolve("e")
    assert bundle.as_plain_dict() == {"OUTSIDE_AKS": value}
    assert bundle.failures["FEDERATED"].reason == "identity"
    assert counted(sandbox, "login:ClientCredentialsToken", "by_endpoint") == 1  # the assertion was presented


# ---- caches ---------------------------------------------------------------------------------------
def test_token_cache_reuses_tokens_until_the_buffer(clean_faults: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    name, value, _ = vault.seed()
    sandbox.grant("caller", "Key Vault Secrets User", vault.secret_scope(name))
    envs = {"e": {
        "SECRET": secret_ref(name, vault=vault.name),
        "GRAPH": ref(operation="get_token", resource="https://graph.microsoft.com"),
        "STORAGE_TOKEN": ref(operation="get_token", scope="https://storage.azure.com/.default"),
    }}

    def store(cache: dict[str, Any]) -> str:
        return config_yaml(stores={"azure": mi_store(identity_block(sandbox, "caller"), cache={"token_cache": cache})}, envs=envs)

    runs = 4
    sandbox.reset_counters()
    cached = broker(store({"enabled": True, "buffer": 300}))
    tokens = set()
    for _ in range(runs):
        bundle = cached.resolve("e")
        assert values(bundle)["SECRET"] == value
        tokens.add(bundle.as_plain_dict()["GRAPH"])
    stats = cached.store("azure").credential.stats
    assert stats.fetches == 3  # one per audience: Key Vault, Graph, Storage
    assert stats.requests >= 1 + 2 * runs
    assert len(tokens) == 1
    assert sandbox.counters()["tokens_issued"] == 3

    # A buffer longer than the tokens live (24 h in the sandbox): every request is a fetch.
    always = broker(store({"buffer": "2d"}))
    for _ in range(runs):
        values(always.resolve("e"))
    stats = always.store("azure").credential.stats
    assert stats.fetches == stats.requests >= 2 * runs
    disabled = broker(store({"enabled": False}))
    for _ in range(runs):
        values(disabled.resolve("e"))
    stats = disabled.store("azure").credential.stats
    assert stats.fetches == stats.requests >= 2 * runs


def test_secret_cache_serves_within_ttl_without_calling_key_vault(
    clean_faults: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections],
) -> None:
    sandbox = clean_faults
    now = datetime.now(UTC)
    name, value, _ = vault.seed()
    short, short_value, _ = vault.seed(expires_on=now + timedelta(seconds=45))  # expires sooner than 60 s from now
    for secret in (name, short):
        sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(secret))

    def text(cache: dict[str, Any]) -> str:
        return config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), cache={"secret_cache": cache})}, envs={
            "e": {"SECRET": secret_ref(name, vault=vault.name), "SHORT_LIVED": secret_ref(short, vault=vault.name)},
        })

    sandbox.reset_counters()
    enabled = broker(text({"enabled": True, "ttl": "10m"}))
    assert values(enabled.resolve("e")) == {"SECRET": value, "SHORT_LIVED": short_value}
    assert counted(sandbox, f"{KV_GET}:200") == 2
    again = enabled.resolve("e")
    assert values(again) == {"SECRET": value, "SHORT_LIVED": short_value}
    assert enabled.last_stats.cache_hits == 1
    # The cached value is served without a request; the one expiring within 60 s is fetched again.
    assert counted(sandbox, f"{KV_GET}:200") == 3
    # The cache is per process: a new broker (a warm Functions instance's next request) uses it too.
    values(broker(text({"enabled": True, "ttl": "10m"})).resolve("e"))
    assert counted(sandbox, f"{KV_GET}:200") == 4

    sandbox.reset_counters()
    disabled = broker(text({"enabled": False}))
    for _ in range(2):
        assert values(disabled.resolve("e"))["SECRET"] == value
    assert counted(sandbox, f"{KV_GET}:200") == 4
    assert disabled.last_stats.cache_hits == 0


def test_secret_cache_ttl_expires(clean_faults: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), cache={"secret_cache": {"enabled": True, "ttl": 1}})},
                           envs={"e": {"SECRET": secret_ref(name, vault=vault.name)}}))
    sandbox.reset_counters()
    values(b.resolve("e"))
    values(b.resolve("e"))
    assert counted(sandbox, f"{KV_GET}:200") == 1
    time.sleep(1.1)
    assert values(b.resolve("e")) == {"SECRET": value}
    assert counted(sandbox, f"{KV_GET}:200") == 2


# ---- performance ----------------------------------------------------------------------------------
def test_max_concurrent_bounds_requests_in_flight(clean_faults: SandboxClient, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    vault = new_vault(sandbox)
    seeded = [vault.seed() for _ in range(10)]
    sandbox.grant("app", "Key Vault Secrets User", vault.id)
    refs = {f"S{i}": secret_ref(name, vault=vault.name) for i, (name, _, _) in enumerate(seeded)}

    def elapsed(max_concurrent: int, batch_size: int = 25) -> float:
        b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), performance={
            "max_concurrent": max_concurrent, "batch_size": batch_size})}, envs={"e": refs}))
        b.store("azure").credential.get_token("https://vault.azure.net/.default")  # token in hand: time only the reads
        started = time.monotonic()
        assert values(b.resolve("e")) == {f"S{i}": value for i, (_, value, _) in enumerate(seeded)}
        return time.monotonic() - started

    sandbox.set_faults([{"service": "keyvault", "target": vault.name, "operation": "GetSecret", "latency_ms": 200}])
    sandbox.reset_counters()
    serial = elapsed(1)
    parallel = elapsed(10)
    batched = elapsed(10, batch_size=3)
    assert serial >= 2.0
    assert parallel * 3 < serial
    assert batched * 3 < serial
    assert counted(sandbox, f"{KV_GET}:200") == 30


def test_identical_references_are_fetched_once(clean_faults: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {"FIRST": secret_ref(name, vault=vault.name), "SECOND": secret_ref(name, vault=vault.name)},
    }))
    sandbox.reset_counters()
    assert values(b.resolve("e")) == {"FIRST": value, "SECOND": value}
    assert counted(sandbox, f"{KV_GET}:200") == 1
    assert (b.last_stats.references, b.last_stats.unique, b.last_stats.fetched) == (2, 1, 1)


def test_429_is_retried_and_the_value_resolves(clean_faults: SandboxClient, broker: Callable[..., StoreConnections]) -> None:
    sandbox = clean_faults
    vault = new_vault(sandbox)
    seeded = [vault.seed() for _ in range(2)]
    for name, _, _ in seeded:
        sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"))}, envs={
        "e": {
            "A": secret_ref(seeded[0][0], vault=vault.name),
            "B": secret_ref(seeded[1][0], vault=vault.name),
        },
    }))
    b.store("azure").credential.get_token("https://vault.azure.net/.default")
    sandbox.set_faults(throttles={"keyvault": {"capacity": 1, "window_s": 1}})  # one request per second per vault
    sandbox.reset_counters()
    assert values(b.resolve("e")) == {"A": seeded[0][1], "B": seeded[1][1]}
    statuses = sandbox.counters()["by_endpoint_status"]
    assert statuses.get(f"{KV_GET}:200") == 2
    assert statuses.get(f"{KV_GET}:429", 0) >= 1
    assert sandbox.counters()["throttled"] >= 1


# ---- debug logging ----------------------------------------------------------------------------------
def test_log_requests_and_trace_identity_never_log_values_or_tokens(
    sandbox: SandboxClient, vault: Vault, storage: Storage, broker: Callable[..., StoreConnections], caplog: pytest.LogCaptureFixture,
) -> None:
    name, value, _ = vault.seed()
    sandbox.grant("caller", "Key Vault Secrets User", vault.secret_scope(name))
    sandbox.grant("caller", "Storage Account Key Operator Service Role", storage.id)
    caller = sandbox.identities["caller"]
    debug = {"log_requests": True, "trace_identity": True, "log_tokens": False}
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "caller"), debug=debug)}, envs={
        "e": {
            "SECRET": secret_ref(name, vault=vault.name),
            "KEY": ref(resource_type="storage", account=storage.account, resource_group=storage.resource_group),
            "SAS": ref(resource_type="storage", account=storage.account, resource_group=storage.resource_group,
                       operation="generate_sas", permissions="r", expiry="1h"),
            "TOKEN": ref(operation="get_token", resource="https://graph.microsoft.com"),
        },
    }))
    caplog.set_level(logging.INFO)
    got = values(b.resolve("e"))
    assert got["SECRET"] == value and got["KEY"] == storage.keys["key1"]
    requests = [r.getMessage() for r in caplog.records if r.name == "vaultrelay.requests"]
    assert any(re.match(rf"GET https://{vault.name}\.{re.escape(sandbox.vault_dns_suffix)}/secrets/{name}/? -> 200 in \d+ ms$", line)
               for line in requests)
    assert any(re.match(rf"POST https://management\.[^ ]+/subscriptions/{sandbox.subscription_id}/resourceGroups/{storage.resource_group}"
                        rf"/providers/Microsoft\.Storage/storageAccounts/{storage.account}/listKeys -> 200 in \d+ ms$", line) for line in requests)
    traces = [r.getMessage() for r in caplog.records if r.name == "vaultrelay.identity"]
    assert len(traces) == 3  # Key Vault, ARM, Graph: one token each
    assert all(f"oid={caller.object_id} appid={caller.client_id} tid={sandbox.tenant_id}" in t for t in traces)
    assert any(t.startswith("token for https://graph.microsoft.com/.default from user-assigned managed identity") for t in traces)
    everything = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in (*got.values(), *storage.keys.values()):
        assert secret not in everything
    assert "eyJ" not in everything  # no JWT anywhere
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("vaultrelay"))
    assert "?" not in ours and "sig=" not in ours and "api-version" not in ours  # never a query string


def test_debug_enabled_logs_names_at_debug_without_values(
    sandbox: SandboxClient, vault: Vault, broker: Callable[..., StoreConnections], caplog: pytest.LogCaptureFixture,
) -> None:
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    logger = logging.getLogger("vaultrelay")
    level = logger.level
    try:
        b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), debug={"enabled": True})},
                               envs={"e": {"SECRET": secret_ref(name, vault=vault.name)}}))
        caplog.set_level(logging.DEBUG)
        assert values(b.resolve("e")) == {"SECRET": value}
        assert logger.level == logging.DEBUG
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("vaultrelay")]
        assert any(f"fetching keyvault secret {vault.name}/{name}@latest for SECRET" in m for m in messages)
        assert value not in caplog.text
    finally:
        logger.setLevel(level)


# ---- legacy store and explicit cloud --------------------------------------------------------------
def test_legacy_keyvault_store_with_a_service_principal(
    clean_faults: SandboxClient, sp_secret: tuple[Vault, str, str], broker: Callable[..., StoreConnections],
) -> None:
    sandbox = clean_faults
    vault, name, value = sp_secret
    b = broker(config_yaml(stores={"legacy": {
        "type": "azure.keyvault", "vault_name": vault.name,
        "auth": {"client_id": "${SANDBOX_SP_CLIENT_ID}", "client_secret": "${SANDBOX_SP_CLIENT_SECRET}", "tenant_id": "${AZURE_TENANT_ID}"},
        "cache": {"secret_cache": {"enabled": False}}, "performance": {"max_concurrent": 2},
    }}, envs={"e": {"SECRET": ref("legacy", secret=name), "EXPLICIT_VAULT": secret_ref(name, vault=vault.name, store="legacy")}}))
    assert any("client secret" in w.message for w in b.loaded.warnings)
    sandbox.reset_counters()
    assert values(b.resolve("e")) == {"SECRET": value, "EXPLICIT_VAULT": value}
    counters = sandbox.counters()
    assert counters["by_endpoint_status"].get("login:ClientCredentialsToken:200") == 1
    assert counters["by_identity"].get("sp") == 2  # the token request and one (deduplicated) read


def test_explicit_custom_cloud_block(sandbox: SandboxClient, vault: Vault, storage: Storage, broker: Callable[..., StoreConnections]) -> None:
    """`cloud:` in the file instead of VAULTRELAY_CLOUD and friends."""
    name, value, _ = vault.seed()
    sandbox.grant("app", "Key Vault Secrets User", vault.secret_scope(name))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VAULTRELAY_")}
    b = broker(config_yaml(stores={"azure": mi_store(identity_block(sandbox, "app"), default_subscription=sandbox.subscription_id)}, envs={
        "e": {
            "SECRET": secret_ref(name, vault=f"${{VR_VAULT:-{vault.name}}}"),
            "KEY": ref(resource_type="storage", account=storage.account, resource_group=storage.resource_group),
            "SQL": ref(resource_type="sql", server="db", database="d", format="jdbc"),
            "PRICE": "$$5",
        },
    }, cloud={
        "name": "custom",
        "authority": os.environ["SANDBOX_AUTHORITY"],
        "arm_endpoint": os.environ["SANDBOX_ARM_ENDPOINT"],
        "arm_audience": os.environ["SANDBOX_ARM_AUDIENCE"],
        "vault_dns_suffix": os.environ["SANDBOX_VAULT_DNS_SUFFIX"],
        "storage_suffix": os.environ["SANDBOX_STORAGE_SUFFIX"],
        "sql_suffix": "database.example",
    }), environ)
    got = values(b.resolve("e"))
    assert (got["SECRET"], got["KEY"], got["PRICE"]) == (value, storage.keys["key1"], "$5")
    assert got["SQL"].startswith("jdbc:sqlserver://db.database.example:1433;")
