"""Contract: Azure Policy with the Deny effect on Key Vault secret writes (Microsoft.KeyVault.Data mode).

The control API assigns rules to one vault (`SandboxClient.set_keyvault_policy`): an expiry, a maximum
validity, required tags and a content type.  A set secret, update of properties or certificate import
that breaks one is refused by the vault with 403 Forbidden / innererror `ForbiddenByPolicy`, the
broken rules named and no value in the message; nothing is written.  Other vaults are unaffected.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.secrets import SecretClient

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique
from tests.sandbox.test_keyvault_certificates import PEM_POLICY, pem_of, self_signed

VALUE = "hunter2-very-secret"


@pytest.fixture()
def vault(sandbox: SandboxClient) -> Iterator[str]:
    name = unique("kvp")
    sandbox.create_resource("vault", name)
    yield name
    sandbox.clear_keyvault_policy(name)


def secrets_of(sandbox: SandboxClient, vault: str) -> SecretClient:
    return SecretClient(sandbox.vault_url(vault), sandbox.admin_credential())


def in_days(days: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=days)


def assert_denied(error: pytest.ExceptionInfo[HttpResponseError], *rules: str) -> None:
    assert error.value.status_code == 403
    body = error.value.response.json()["error"]
    assert body["code"] == "Forbidden" and body["innererror"]["code"] == "ForbiddenByPolicy"
    for rule in rules:
        assert rule in body["message"]
    assert VALUE not in body["message"]


def test_secret_without_expiry_is_denied(sandbox: SandboxClient, vault: str) -> None:
    client = secrets_of(sandbox, vault)
    assert sandbox.keyvault_policy(vault)["enforced"] is False
    client.set_secret("before", VALUE)  # no rule yet
    described = sandbox.set_keyvault_policy(vault, require_expiry=True)
    assert described["require_expiry"] is True
    with pytest.raises(HttpResponseError) as denied:
        client.set_secret("no-expiry", VALUE)
    assert_denied(denied, "Key Vault secrets should have an expiration date")
    with pytest.raises(HttpResponseError):
        client.get_secret("no-expiry")  # nothing was written
    assert client.set_secret("with-expiry", VALUE, expires_on=in_days(30)).properties.expires_on is not None
    other = unique("kvq")
    sandbox.create_resource("vault", other)
    secrets_of(sandbox, other).set_secret("elsewhere", VALUE)  # another vault has no rule
    sandbox.clear_keyvault_policy(vault)
    client.set_secret("after", VALUE)


def test_maximum_validity_counts_from_creation(sandbox: SandboxClient, vault: str) -> None:
    client = secrets_of(sandbox, vault)
    sandbox.set_keyvault_policy(vault, max_validity_days=30)
    for expires in (None, in_days(45)):
        with pytest.raises(HttpResponseError) as denied:
            client.set_secret("long-lived", VALUE, expires_on=expires)
        assert_denied(denied, "maximum validity period (30 days)")
    client.set_secret("short-lived", VALUE, expires_on=in_days(20))


def test_required_tags_and_values(sandbox: SandboxClient, vault: str) -> None:
    client = secrets_of(sandbox, vault)
    sandbox.set_keyvault_policy(vault, required_tags={"owner": None, "env": "prod"})
    for tags in (None, {"owner": "a"}, {"owner": "a", "env": "dev"}):
        with pytest.raises(HttpResponseError) as denied:
            client.set_secret("tagged", VALUE, tags=tags)
        assert_denied(denied, "required tags (env")
    client.set_secret("tagged", VALUE, tags={"owner": "a", "env": "prod", "extra": "x"})


def test_content_type_set_or_exact(sandbox: SandboxClient, vault: str) -> None:
    client = secrets_of(sandbox, vault)
    sandbox.set_keyvault_policy(vault, content_type=True)
    with pytest.raises(HttpResponseError) as denied:
        client.set_secret("typed", VALUE)
    assert_denied(denied, "Secrets should have content type set")
    client.set_secret("typed", VALUE, content_type="text/plain")
    sandbox.set_keyvault_policy(vault, content_type="application/json")
    with pytest.raises(HttpResponseError):
        client.set_secret("typed", VALUE, content_type="text/plain")
    client.set_secret("typed", VALUE, content_type="application/json")


def test_update_is_judged_on_the_result(sandbox: SandboxClient, vault: str) -> None:
    client = secrets_of(sandbox, vault)
    client.set_secret("legacy", VALUE)  # written before the rule: stays as it is
    sandbox.set_keyvault_policy(vault, required_tags=["owner"], require_expiry=True)
    with pytest.raises(HttpResponseError) as denied:
        client.update_secret_properties("legacy", tags={"owner": "a"})  # still no expiry
    assert_denied(denied, "expiration date")
    assert client.get_secret("legacy").properties.tags is None  # unchanged
    updated = client.update_secret_properties("legacy", tags={"owner": "a"}, expires_on=in_days(10))
    assert updated.tags == {"owner": "a"} and updated.expires_on is not None
    with pytest.raises(HttpResponseError):
        client.update_secret_properties("legacy", tags={"other": "b"})  # would drop the required tag


def test_certificate_import_is_a_secret_write_under_the_rules(sandbox: SandboxClient, vault: str) -> None:
    certs = CertificateClient(sandbox.vault_url(vault), sandbox.admin_credential())
    key, cert = self_signed("policy.example", days=30)
    sandbox.set_keyvault_policy(vault, required_tags={"owner": None}, max_validity_days=90)
    with pytest.raises(HttpResponseError) as denied:
        certs.import_certificate("tls", pem_of(key, cert), policy=PEM_POLICY)
    assert_denied(denied, "required tags (owner)")
    with pytest.raises(HttpResponseError):
        secrets_of(sandbox, vault).get_secret("tls")  # no backing secret either
    sandbox.set_keyvault_policy(vault, required_tags={"owner": None}, max_validity_days=10)
    with pytest.raises(HttpResponseError) as too_long:
        certs.import_certificate("tls", pem_of(key, cert), policy=PEM_POLICY, tags={"owner": "web"})
    assert_denied(too_long, "maximum validity period (10 days)")
    sandbox.set_keyvault_policy(vault, required_tags={"owner": None}, max_validity_days=90, require_expiry=True, content_type=True)
    imported = certs.import_certificate("tls", pem_of(key, cert), policy=PEM_POLICY, tags={"owner": "web"})
    assert imported.properties.tags == {"owner": "web"}


def test_control_api_validates_rules(sandbox: SandboxClient, vault: str) -> None:
    for bad in ({"max_validity_days": 0}, {"required_tags": {"a": 1}}, {"bogus": True}, {"content_type": ""}):
        with pytest.raises(RuntimeError, match="400"):
            sandbox.call("PUT", f"/keyvault/policy/{vault}", bad)
    with pytest.raises(RuntimeError, match="404"):
        sandbox.set_keyvault_policy(unique("nokv"), require_expiry=True)
