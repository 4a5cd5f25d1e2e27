"""Contract: Key Vault certificate import as Azure does it, through the unmodified certificates SDK.

* the value is read in the format the policy's content type names (PKCS#12 by default; a PEM import
  needs `application/x-pem-file`: Key Vault does not infer it), with its password;
* a version of the certificate, of its key and of its backing secret (same name and version) is
  created; the certificate's `nbf`/`exp` come from the X.509 certificate, its tags go to the key and
  the secret; the secret holds the key and certificate (without the key when the policy's key is not
  exportable);
* get by version, list, list versions and get policy; RBAC on `certificates/import/action`.
"""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    pkcs12,
)
from cryptography.x509.oid import NameOID

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

PEM_POLICY = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem)


def self_signed(common_name: str, days: int = 30, *, curve: bool = False) -> tuple[object, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1()) if curve else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return key, cert


def pem_of(key: object, cert: x509.Certificate) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + cert.public_bytes(Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture()
def vault(sandbox: SandboxClient) -> str:
    name = unique("kvc")
    sandbox.create_resource("vault", name)
    return name


def clients(sandbox: SandboxClient, vault: str, identity: str = "admin") -> tuple[CertificateClient, SecretClient, KeyClient]:
    credential = sandbox.credential(identity)
    url = sandbox.vault_url(vault)
    return CertificateClient(url, credential), SecretClient(url, credential), KeyClient(url, credential)


def test_pfx_import_creates_certificate_key_and_backing_secret(sandbox: SandboxClient, vault: str) -> None:
    certs, secrets, keys = clients(sandbox, vault)
    key, cert = self_signed("pfx.example")
    pfx = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, BestAvailableEncryption(b"s3cret"))  # type: ignore[arg-type]
    imported = certs.import_certificate("web-tls", pfx, password="s3cret", tags={"team": "web"})

    props = imported.properties
    assert imported.cer == cert.public_bytes(Encoding.DER)
    assert props.x509_thumbprint == cert.fingerprint(hashes.SHA1())
    assert props.not_before == cert.not_valid_before_utc and props.expires_on == cert.not_valid_after_utc
    assert props.tags == {"team": "web"} and props.enabled
    assert imported.key_id == f"{sandbox.vault_url(vault)}/keys/web-tls/{props.version}"
    assert imported.secret_id == f"{sandbox.vault_url(vault)}/secrets/web-tls/{props.version}"
    policy = imported.policy
    assert policy is not None and policy.content_type == CertificateContentType.pkcs12 and policy.exportable
    assert policy.issuer_name == "Unknown" and policy.subject == "CN=pfx.example" and policy.key_type == "RSA"
    assert policy.san_dns_names == ["pfx.example"]

    backing = secrets.get_secret("web-tls")
    assert backing.properties.version == props.version and backing.properties.managed
    assert backing.properties.content_type == "application/x-pkcs12"
    assert backing.properties.key_id == imported.key_id
    assert backing.properties.not_before == props.not_before and backing.properties.expires_on == props.expires_on
    assert backing.properties.tags == {"team": "web"}
    loaded_key, loaded_cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(backing.value or ""), None)  # stored without password
    assert loaded_cert == cert and loaded_key is not None

    backing_key = keys.get_key("web-tls")
    assert backing_key.properties.managed and backing_key.properties.version == props.version
    assert backing_key.properties.expires_on == props.expires_on and not backing_key.key.d


def test_pem_import_needs_the_pem_content_type(sandbox: SandboxClient, vault: str) -> None:
    certs, secrets, _ = clients(sandbox, vault)
    key, cert = self_signed("pem.example", curve=True)
    with pytest.raises(HttpResponseError) as refused:
        certs.import_certificate("pem-default", pem_of(key, cert))  # default policy: read as PKCS#12
    assert refused.value.status_code == 400 and refused.value.error is not None and refused.value.error.code == "BadParameter"
    assert "PKCS#12" in str(refused.value.message)
    certs.import_certificate("pem-cert", pem_of(key, cert), policy=PEM_POLICY)
    backing = secrets.get_secret("pem-cert")
    assert backing.properties.content_type == "application/x-pem-file"
    assert "BEGIN PRIVATE KEY" in (backing.value or "")
    assert x509.load_pem_x509_certificate((backing.value or "").encode()) == cert
    assert certs.get_certificate_policy("pem-cert").key_curve_name == "P-256"


def test_unreadable_material_wrong_password_and_missing_key_are_400(sandbox: SandboxClient, vault: str) -> None:
    certs, _, _ = clients(sandbox, vault)
    key, cert = self_signed("bad.example")
    pfx = pkcs12.serialize_key_and_certificates(b"x", key, cert, None, BestAvailableEncryption(b"right"))  # type: ignore[arg-type]
    for name, material, kwargs in (
        ("wrong-password", pfx, {"password": "wrong"}),
        ("no-key", cert.public_bytes(Encoding.PEM), {"policy": PEM_POLICY}),
        ("garbage", b"not a certificate", {}),
    ):
        with pytest.raises(HttpResponseError) as refused:
            certs.import_certificate(name, material, **kwargs)  # type: ignore[arg-type]
        assert refused.value.status_code == 400, name
    assert [c.name for c in certs.list_properties_of_certificates()] == []  # nothing half-created


def test_non_exportable_key_leaves_the_private_key_out_of_the_secret(sandbox: SandboxClient, vault: str) -> None:
    certs, secrets, _ = clients(sandbox, vault)
    key, cert = self_signed("locked.example")
    # The SDK sends key_props only when one is truthy: name the key type so `exportable: false` goes out.
    policy = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem, exportable=False, key_type="RSA")
    imported = certs.import_certificate("locked", pem_of(key, cert), policy=policy)
    assert imported.policy is not None and imported.policy.exportable is False
    value = secrets.get_secret("locked").value or ""
    assert "PRIVATE KEY" not in value and x509.load_pem_x509_certificate(value.encode()) == cert


def test_versions_listing_and_get_by_version(sandbox: SandboxClient, vault: str) -> None:
    certs, secrets, _ = clients(sandbox, vault)
    first_key, first = self_signed("v1.example")
    second_key, second = self_signed("v2.example", days=60)
    v1 = certs.import_certificate("rotating", pem_of(first_key, first), policy=PEM_POLICY)
    v2 = certs.import_certificate("rotating", pem_of(second_key, second), policy=PEM_POLICY, tags={"gen": "2"})
    assert certs.get_certificate("rotating").properties.version == v2.properties.version
    assert certs.get_certificate_version("rotating", v1.properties.version or "").cer == first.public_bytes(Encoding.DER)
    versions = {p.version: p for p in certs.list_properties_of_certificate_versions("rotating")}
    assert set(versions) == {v1.properties.version, v2.properties.version}
    assert versions[v2.properties.version].x509_thumbprint == second.fingerprint(hashes.SHA1())
    assert versions[v2.properties.version].tags == {"gen": "2"}
    listed = {p.name: p for p in certs.list_properties_of_certificates()}
    assert set(listed) == {"rotating"} and listed["rotating"].expires_on == second.not_valid_after_utc
    # The backing secret has one version per certificate version, the same ids.
    assert {p.version for p in secrets.list_properties_of_secret_versions("rotating")} == set(versions)
    with pytest.raises(HttpResponseError) as missing:
        certs.get_certificate("no-such-cert")
    assert missing.value.status_code == 404 and missing.value.error is not None and missing.value.error.code == "CertificateNotFound"


def test_import_needs_certificates_import_and_reading_needs_certificates_read(sandbox: SandboxClient, vault: str) -> None:
    scope = sandbox.resource_id("vault", vault)
    caller = sandbox.create_identity(unique("certs"))
    sandbox.grant(caller.name, "Key Vault Secrets Officer", scope)
    certs, _, _ = clients(sandbox, vault, caller.name)
    key, cert = self_signed("rbac.example")
    with pytest.raises(HttpResponseError) as denied:
        certs.import_certificate("rbac", pem_of(key, cert), policy=PEM_POLICY)
    assert denied.value.status_code == 403
    assert denied.value.response.json()["error"]["innererror"]["code"] == "ForbiddenByRbac"
    assert "certificates/import/action" in str(denied.value.message)
    sandbox.grant(caller.name, "Key Vault Certificates Officer", scope)
    certs.import_certificate("rbac", pem_of(key, cert), policy=PEM_POLICY)
    reader = sandbox.create_identity(unique("certread"))
    sandbox.grant(reader.name, "Key Vault Certificate User", scope)
    reader_certs, reader_secrets, _ = clients(sandbox, vault, reader.name)
    assert reader_certs.get_certificate("rbac").cer == cert.public_bytes(Encoding.DER)
    assert "PRIVATE KEY" in (reader_secrets.get_secret("rbac").value or "")
