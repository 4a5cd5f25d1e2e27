"""Key Vault targets whose writes must pass Azure Policy (expiry, content type, required tags), and
certificates pushed as certificates, against the sandbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from azure.keyvault.certificates import CertificateClient

from core.targets.base import DesiredItem
from core.targets.keyvault import _period_expiry
from sandbox.client import SandboxClient
from tests.configs import body_yaml, keyvault_target, secret_ref
from tests.world import World


@pytest.fixture()
def policed(seeded: SandboxClient) -> Iterator[SandboxClient]:
    seeded.set_keyvault_policy("kv-target", require_expiry=True, max_validity_days=90, content_type=True,
                               required_tags=["cost-center", "owner"], assignment="secrets-need-expiry-and-tags")
    try:
        yield seeded
    finally:
        seeded.clear_keyvault_policy("kv-target")


def env_body(world: World, **target_extra: Any) -> str:
    secret = world.secret("api", "the-api-key-value")
    return body_yaml(envs={"app": {
        "API_KEY": secret_ref(secret),
        "API_URL": {"template": "https://api.example/?key={{ API_KEY | urlencode }}"},
    }}, targets={"vault": keyvault_target("app", prefix="vr-TAG-", **target_extra)})


def test_writes_without_the_keys_are_refused_and_reported_clearly(policed: SandboxClient) -> None:
    world = World(policed)
    report = world.engine(env_body(world)).sync()
    assert not report.ok
    [target] = report.targets
    assert target.outcome == "error" and target.error is not None
    assert f"target vault (env app): setting vr-{world.tag}-api-key (variable API_KEY) in vault kv-target was refused by Azure Policy" in target.error
    assert "secrets-need-expiry-and-tags" in target.error and "the-api-key-value" not in target.error
    assert world.engine(env_body(world)).status()  # the error is on record
    record = world.engine(env_body(world)).state.get("pushes", "app", "vault")
    assert record is not None and "refused by Azure Policy" in str(record.fields.get("error"))


def test_writes_with_content_type_tags_and_expiry_pass_the_policy(policed: SandboxClient) -> None:
    world = World(policed)
    body = env_body(world, content_type="text/plain", tags={"cost-center": "4711", "owner": "platform"}, expires="30d")
    first = world.engine(body).sync()
    assert first.ok, [t.error for t in first.targets]
    assert first.target_writes == 2
    secret = world.target.get_secret(f"vr-{world.tag}-api-url")
    assert secret.value == "https://api.example/?key=the-api-key-value"
    props = secret.properties
    assert props.content_type == "text/plain"
    assert {k: v for k, v in props.tags.items() if k in ("cost-center", "owner", "managed-by")} == {
        "cost-center": "4711", "owner": "platform", "managed-by": "vaultrelay"}
    assert props.expires_on is not None
    assert timedelta(days=10) < props.expires_on - datetime.now(UTC) <= timedelta(days=30)

    again = world.engine(body).sync()  # unchanged: nothing written, the tags and expiry hold
    assert again.ok and again.target_writes == 0

    # A changed static tag is a change to push (the written metadata is part of what is compared).
    retagged = world.engine(body.replace('owner: platform', 'owner: payments')).sync()
    assert retagged.ok and retagged.target_writes == 2
    assert world.target.get_secret(f"vr-{world.tag}-api-key").properties.tags["owner"] == "payments"


def test_expires_follow_refuses_values_without_expiry_and_follows_the_source(policed: SandboxClient) -> None:
    world = World(policed)
    refused = world.engine(env_body(world, tags={"cost-center": "1", "owner": "o"}, content_type="text/plain",
                                    expires="follow")).sync()
    [target] = refused.targets
    assert target.outcome == "error" and "expires: follow, but API_KEY, API_URL have no expiry of their own" in (target.error or "")

    world2 = World(policed)
    exp = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
    secret = f"api-{world2.tag}"
    world2.source.set_secret(secret, "expiring-value", expires_on=exp)
    body = body_yaml(envs={"app": {"API_KEY": secret_ref(secret)}}, targets={
        "vault": keyvault_target("app", prefix="vr-TAG-", expires="follow", content_type="text/plain",
                                 tags={"cost-center": "1", "owner": "o"}),
    })
    report = world2.engine(body).sync()
    assert report.ok, [t.error for t in report.targets]
    assert world2.target.get_secret(f"vr-{world2.tag}-api-key").properties.expires_on == exp


def test_reserved_tags_cannot_be_overridden(seeded: SandboxClient) -> None:
    from core.errors import ConfigError

    world = World(seeded)
    with pytest.raises(ConfigError) as caught:
        world.config(env_body(world, tags={"managed-by": "me", "vaultrelay-target": "x"}))
    assert any("managed-by, vaultrelay-target is vaultrelay's own" in p.message for p in caught.value.problems)


def test_period_expiry_is_stable_within_a_period_and_leaves_a_third() -> None:
    day = 86400.0
    now = 1_800_000_000.0
    first = _period_expiry(90 * day, now)
    assert _period_expiry(90 * day, now + 3600) == first or _period_expiry(90 * day, now + 3600) > first
    assert first.timestamp() - now >= 30 * day  # at least a third of the lifetime left when written
    assert first.timestamp() - now <= 90 * day
    assert DesiredItem("x", None, "").kind is None


def test_certificate_pushed_as_a_certificate(seeded: SandboxClient) -> None:
    world = World(seeded)
    prefix = f"vr-{world.tag}-"
    body = body_yaml(envs={
        "app": {
            "TLS_CERT": secret_ref("app-certificate", type="certificate"),
            "TLS_PFX": secret_ref("app-certificate", type="certificate", format="pfx"),
            "PLAIN": "plain-value",
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-", certificates="certificate")})
    seeded.grant("system", "Key Vault Certificates Officer", seeded.resource_id("vault", "kv-target"))
    first = world.engine(body).sync()
    assert first.ok, [t.error for t in first.targets]
    assert first.target_writes == 3
    certs = CertificateClient(seeded.vault_url("kv-target"), world.admin)
    source = CertificateClient(seeded.vault_url("kv-source"), world.admin).get_certificate("app-certificate")
    for variable in ("tls-cert", "tls-pfx"):
        pushed = certs.get_certificate(prefix + variable)
        assert pushed.cer == source.cer  # the same certificate, now in the target's certificate views
        assert pushed.properties.expires_on == source.properties.expires_on
        assert pushed.properties.tags["managed-by"] == "vaultrelay" and pushed.properties.tags["vaultrelay-target"] == "vault"
        assert pushed.key_id  # imported with its key
    assert certs.get_certificate_policy(prefix + "tls-cert").content_type == "application/x-pem-file"
    assert certs.get_certificate_policy(prefix + "tls-pfx").content_type == "application/x-pkcs12"
    assert prefix + "plain" not in {c.name for c in certs.list_properties_of_certificates()}

    again = world.engine(body).sync()  # unchanged: no import, no write
    assert again.ok and again.target_writes == 0

    # Someone imports another certificate under the name: drift, reported as for secrets (drift_policy: report).
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from tests.sandbox.test_keyvault_certificates import PEM_POLICY, self_signed

    key, cert = self_signed(f"other-{uuid.uuid4().hex[:6]}.example")
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()) + cert.public_bytes(Encoding.PEM)
    certs.import_certificate(prefix + "tls-cert", pem, policy=PEM_POLICY)
    drifted = world.engine(body).sync()
    [target] = drifted.targets
    assert target.drift == ["TLS_CERT"] and target.writes == 0 and certs.get_certificate(prefix + "tls-cert").cer != source.cer
