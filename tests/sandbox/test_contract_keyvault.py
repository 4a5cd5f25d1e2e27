"""Contract: the unmodified Key Vault SDK clients against the sandbox's vaults."""

from __future__ import annotations

import base64
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12
from cryptography.x509.oid import NameOID

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

VAULT = "kv-source"


@pytest.fixture(scope="module")
def admin_secrets(sandbox: SandboxClient) -> SecretClient:
    sandbox.assign_role("admin", "Key Vault Administrator")
    return SecretClient(sandbox.vault_url(VAULT), sandbox.admin_credential())


def test_first_request_gets_the_challenge_then_succeeds(clean_faults: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("challenge")
    vault = unique("kvc")
    clean_faults.create_resource("vault", vault)
    client = SecretClient(clean_faults.vault_url(vault), clean_faults.admin_credential())
    client.set_secret(name, "v1")
    counters = clean_faults.counters()["by_endpoint_status"]
    # A vault host this process never saw: one bodiless 401 challenge, then the PUT with a token.
    assert counters["keyvault:SetSecret:401"] == 1
    assert counters["keyvault:SetSecret:200"] == 1
    assert client.get_secret(name).value == "v1"


def test_set_get_versions_and_properties(admin_secrets: SecretClient) -> None:
    name = unique("db-password")
    first = admin_secrets.set_secret(name, "one", content_type="text/plain", tags={"team": "a"})
    second = admin_secrets.set_secret(name, "two")
    assert first.properties.version != second.properties.version
    assert admin_secrets.get_secret(name).value == "two"
    assert admin_secrets.get_secret(name, first.properties.version).value == "one"
    assert admin_secrets.get_secret(name, first.properties.version).properties.content_type == "text/plain"
    assert admin_secrets.get_secret(name, first.properties.version).properties.tags == {"team": "a"}
    versions = {p.version for p in admin_secrets.list_properties_of_secret_versions(name)}
    assert versions == {first.properties.version, second.properties.version}
    updated = admin_secrets.update_secret_properties(name, second.properties.version, tags={"x": "y"}, content_type="json")
    assert updated.tags == {"x": "y"} and updated.content_type == "json"


def test_attributes_round_trip_and_disabled_secret_is_refused(admin_secrets: SecretClient) -> None:
    name = unique("attrs")
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=3)
    not_before = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    secret = admin_secrets.set_secret(name, "v", expires_on=expires, not_before=not_before)
    assert secret.properties.expires_on == expires
    assert secret.properties.not_before == not_before
    admin_secrets.update_secret_properties(name, enabled=False)
    with pytest.raises(HttpResponseError) as info:
        admin_secrets.get_secret(name)
    assert info.value.status_code == 403
    assert "disabled" in str(info.value)


def test_listing_follows_next_link_across_pages(clean_faults: SandboxClient, admin_secrets: SecretClient) -> None:
    prefix = unique("page")
    for i in range(12):
        admin_secrets.set_secret(f"{prefix}-{i}", "v")
    clean_faults.reset_counters()
    names = [p.name for p in admin_secrets.list_properties_of_secrets(max_page_size=5)]
    assert sum(1 for n in names if n.startswith(prefix)) == 12
    pages = clean_faults.counters()["by_endpoint"]["keyvault:GetSecrets"]
    assert pages >= 3  # at least 12 / 5 pages, plus what other tests stored


def test_missing_secret_and_version_are_404(admin_secrets: SecretClient) -> None:
    name = unique("missing")
    with pytest.raises(ResourceNotFoundError) as info:
        admin_secrets.get_secret(name)
    assert info.value.error is not None and info.value.error.code == "SecretNotFound"
    admin_secrets.set_secret(name, "v")
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_secret(name, "0" * 32)


def test_soft_delete_recover_and_purge(admin_secrets: SecretClient) -> None:
    name = unique("deleted")
    admin_secrets.set_secret(name, "keep-me")
    poller = admin_secrets.begin_delete_secret(name)
    deleted = poller.result()
    assert deleted.recovery_id and deleted.scheduled_purge_date and deleted.deleted_date
    poller.wait()  # deletion is asynchronous: the SDK polls the deleted secret until it is there
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_secret(name)
    assert admin_secrets.get_deleted_secret(name).name == name
    assert name in {d.name for d in admin_secrets.list_deleted_secrets()}
    with pytest.raises(ResourceExistsError) as info:
        admin_secrets.set_secret(name, "reuse")  # name is held while soft-deleted
    assert info.value.error is not None and info.value.error.innererror["code"] == "ObjectIsDeletedButRecoverable"
    assert f"Secret {name} is currently in a deleted but recoverable state" in info.value.error.message
    admin_secrets.begin_recover_deleted_secret(name).wait()
    assert admin_secrets.get_secret(name).value == "keep-me"
    admin_secrets.begin_delete_secret(name).wait()
    admin_secrets.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_deleted_secret(name)
    admin_secrets.set_secret(name, "new life")  # purged names are free again


def conflict_of(call: Any) -> tuple[int, str, str]:
    """(status, inner error code, message) of a call Key Vault refuses."""
    with pytest.raises(HttpResponseError) as info:
        call()
    body = info.value.response.json()["error"]
    return info.value.status_code, body.get("innererror", {}).get("code", ""), body["message"]


@pytest.fixture()
def slow_soft_delete(sandbox: SandboxClient) -> Iterator[SandboxClient]:
    sandbox.set_keyvault_transitions(delete_seconds=1.0, recover_seconds=1.0)
    yield sandbox
    sandbox.set_keyvault_transitions()


def test_delete_is_asynchronous_with_azures_409_meanwhile(slow_soft_delete: SandboxClient, admin_secrets: SecretClient) -> None:
    """While a delete runs the secret is in neither collection, and writes of its name, recover
    and purge are answered 409 Conflict, innererror ObjectIsBeingDeleted."""
    name = unique("deleting")
    admin_secrets.set_secret(name, "v", tags={"owner": "x"})
    admin_secrets.begin_delete_secret(name)
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_secret(name)
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_deleted_secret(name)
    assert name not in {d.name for d in admin_secrets.list_deleted_secrets()}
    assert name not in {p.name for p in admin_secrets.list_properties_of_secrets()}
    being_deleted = (409, "ObjectIsBeingDeleted", "Secret is currently being deleted.")
    assert conflict_of(lambda: admin_secrets.set_secret(name, "again")) == being_deleted
    assert conflict_of(lambda: admin_secrets.begin_recover_deleted_secret(name)) == being_deleted
    assert conflict_of(lambda: admin_secrets.purge_deleted_secret(name)) == being_deleted
    time.sleep(1.1)
    assert admin_secrets.get_deleted_secret(name).properties.tags == {"owner": "x"}
    status, code, message = conflict_of(lambda: admin_secrets.set_secret(name, "again"))
    assert (status, code) == (409, "ObjectIsDeletedButRecoverable") and "its name cannot be reused" in message


def test_recover_is_asynchronous_with_azures_409_meanwhile(slow_soft_delete: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("recovering")
    admin_secrets.set_secret(name, "v")
    admin_secrets.begin_delete_secret(name).wait()
    admin_secrets.begin_recover_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_secret(name)  # what the SDK's recover poller waits on
    with pytest.raises(ResourceNotFoundError):
        admin_secrets.get_deleted_secret(name)
    being_recovered = (409, "ObjectIsBeingRecovered", f"Secret {name} is currently being recovered and cannot be re-created; retry later.")
    assert conflict_of(lambda: admin_secrets.set_secret(name, "again")) == being_recovered
    assert conflict_of(lambda: admin_secrets.begin_delete_secret(name)) == being_recovered
    time.sleep(1.1)
    assert admin_secrets.get_secret(name).value == "v"
    assert admin_secrets.set_secret(name, "again").value == "again"


def test_soft_delete_times_are_validated(sandbox: SandboxClient) -> None:
    with pytest.raises(RuntimeError, match="400"):
        sandbox.call("PUT", "/keyvault/soft-delete", {"delete_seconds": "soon"})
    with pytest.raises(RuntimeError, match="400"):
        sandbox.call("PUT", "/keyvault/soft-delete", {"recover_seconds": -1})
    assert sandbox.set_keyvault_transitions() == {"delete_seconds": 1.0, "recover_seconds": 1.0}


def test_rbac_denies_without_role_with_azures_body(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("rbac")
    admin_secrets.set_secret(name, "v")
    client = SecretClient(sandbox.vault_url(VAULT), sandbox.credential("other"))
    with pytest.raises(HttpResponseError) as info:
        client.get_secret(name)
    error = info.value
    assert error.status_code == 403
    assert error.error is not None and error.error.code == "Forbidden"
    assert error.error.innererror["code"] == "ForbiddenByRbac"
    assert "Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'" in error.error.message
    assert sandbox.identities["other"].object_id in error.error.message


def test_secrets_user_reads_but_cannot_write(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("user")
    admin_secrets.set_secret(name, "readable")
    sandbox.assign_role("data", "Key Vault Secrets User", sandbox.resource_id("vault", VAULT) + f"/secrets/{name}")
    client = SecretClient(sandbox.vault_url(VAULT), sandbox.credential("data"))
    assert client.get_secret(name).value == "readable"
    with pytest.raises(HttpResponseError) as info:
        client.set_secret(name, "nope")
    assert info.value.status_code == 403
    other = unique("user-other")
    admin_secrets.set_secret(other, "x")
    with pytest.raises(HttpResponseError):
        client.get_secret(other)  # the assignment was scoped to one secret


def test_reader_sees_metadata_not_values(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("reader")
    admin_secrets.set_secret(name, "hidden")
    sandbox.assign_role("caller", "Key Vault Reader", sandbox.resource_id("vault", VAULT))
    client = SecretClient(sandbox.vault_url(VAULT), sandbox.credential("caller"))
    assert name in {p.name for p in client.list_properties_of_secrets()}
    with pytest.raises(HttpResponseError) as info:
        client.get_secret(name)
    assert info.value.status_code == 403


def test_unknown_vault_is_404(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    client = SecretClient(sandbox.vault_url("no-such-vault"), sandbox.admin_credential())
    with pytest.raises(HttpResponseError) as info:
        client.get_secret("x")
    assert info.value.status_code == 404


def _self_signed(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256())
    )
    return key, cert


def test_certificate_import_pkcs12_backing_secret(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("cert-pfx")
    key, cert = _self_signed("pfx.example")
    pfx = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, NoEncryption())
    certs = CertificateClient(sandbox.vault_url(VAULT), sandbox.admin_credential())
    imported = certs.import_certificate(name, pfx)
    assert imported.cer == cert.public_bytes(Encoding.DER)
    backing = admin_secrets.get_secret(name)
    assert backing.properties.content_type == "application/x-pkcs12"
    assert backing.properties.key_id and backing.properties.managed
    assert backing.properties.version == imported.properties.version
    loaded_key, loaded_cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(backing.value or ""), None)
    assert loaded_cert == cert
    assert loaded_key is not None
    assert certs.get_certificate(name).properties.x509_thumbprint == cert.fingerprint(hashes.SHA1())


def test_certificate_import_pem_backing_secret(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    name = unique("cert-pem")
    key, cert = _self_signed("pem.example")
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + cert.public_bytes(Encoding.PEM)
    certs = CertificateClient(sandbox.vault_url(VAULT), sandbox.admin_credential())
    certs.import_certificate(name, pem, policy=CertificatePolicy.get_default().__class__(issuer_name="Unknown", content_type=CertificateContentType.pem))
    backing = admin_secrets.get_secret(name)
    assert backing.properties.content_type == "application/x-pem-file"
    assert "BEGIN PRIVATE KEY" in (backing.value or "")
    assert x509.load_pem_x509_certificate((backing.value or "").encode()) == cert


def test_keys_expose_only_public_jwk(sandbox: SandboxClient, admin_secrets: SecretClient) -> None:
    keys = KeyClient(sandbox.vault_url(VAULT), sandbox.admin_credential())
    rsa_key = keys.create_rsa_key(unique("rsa"), size=2048)
    ec_key = keys.create_ec_key(unique("ec"), curve="P-256")
    fetched = keys.get_key(rsa_key.name)
    assert fetched.key.n and fetched.key.e and not fetched.key.d
    assert keys.get_key(ec_key.name).key.crv == "P-256"
    for private_part in ("d", "p", "q", "dp", "dq", "qi"):
        assert getattr(fetched.key, private_part, None) is None
