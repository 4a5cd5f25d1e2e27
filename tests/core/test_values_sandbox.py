"""Shaping values against the sandbox: composed values (fetched once, masked, pushed exactly when
an input changes) and transforms on references (`property`, `decode`, `encode`)."""

from __future__ import annotations

import base64
import json

from core.connections import StoreConnections
from sandbox.client import SandboxClient
from tests.configs import body_yaml, keyvault_target, secret_ref
from tests.world import World


def shaped_env(world: World, doc: str, password: str) -> str:
    return body_yaml(envs={
        "app": {
            "DB_PASSWORD": secret_ref(password),
            "DB_USER": secret_ref(doc, property="db.user"),
            "DB_PORT": secret_ref(doc, property="db.port"),
            "DB_HOST": "db.internal",
            "DATABASE_URL": {
                "template": "postgresql://{{ DB_USER }}:{{ DB_PASSWORD | urlencode }}@{{ DB_HOST }}:{{ DB_PORT }}/app",
            },
            "BASIC_AUTH": {"template": "Basic {{ (DB_USER ~ ':' ~ DB_PASSWORD) | b64encode }}"},
        },
    }, targets={"vault": keyvault_target("app", prefix="vr-TAG-")})


def test_composed_values_resolve_from_sources_fetched_once(seeded: SandboxClient) -> None:
    world = World(seeded)
    doc = world.secret("doc", json.dumps({"db": {"user": "app", "port": 5432}}))
    password = world.secret("pw", "p@ss/w:rd")
    broker = StoreConnections(world.config(shaped_env(world, doc, password)))
    seeded.reset_counters()
    bundle = broker.resolve("app")
    assert bundle.complete, bundle.failures
    values = bundle.as_plain_dict()
    assert values["DATABASE_URL"] == "postgresql://app:p%40ss%2Fw%3Ard@db.internal:5432/app"
    assert values["BASIC_AUTH"] == "Basic " + base64.b64encode(b"app:p@ss/w:rd").decode()
    assert seeded.counters()["by_endpoint"]["keyvault:GetSecret"] == 2  # the JSON document once, the password once
    assert "p@ss" not in repr(bundle.values["DATABASE_URL"])
    assert bundle.values["DATABASE_URL"].source == "template over DB_HOST, DB_PASSWORD, DB_PORT, DB_USER"


def test_composed_value_is_pushed_exactly_when_an_input_changes(seeded: SandboxClient) -> None:
    world = World(seeded)
    doc = world.secret("doc", json.dumps({"db": {"user": "app", "port": 5432}}))
    password = world.secret("pw", "first-password")
    body = shaped_env(world, doc, password)
    first = world.engine(body).sync()
    assert first.ok and first.target_writes == 6
    url = world.target.get_secret(f"vr-{world.tag}-database-url")
    assert url.value == "postgresql://app:first-password@db.internal:5432/app"
    assert url.properties.tags["managed-by"] == "vaultrelay"

    again = world.engine(body).sync()  # a fresh process, nothing changed
    assert again.ok and again.target_writes == 0

    world.source.set_secret(password, "second/password")
    changed = world.engine(body).sync()
    assert changed.ok and changed.target_writes == 3  # DB_PASSWORD and the two values composed from it
    [target] = changed.targets
    assert sorted(target.updates) == ["BASIC_AUTH", "DATABASE_URL", "DB_PASSWORD"]
    assert world.target.get_secret(f"vr-{world.tag}-database-url").value == "postgresql://app:second%2Fpassword@db.internal:5432/app"


def test_transform_failures_name_the_key_never_the_document(seeded: SandboxClient) -> None:
    world = World(seeded)
    doc = world.secret("doc", json.dumps({"db": {"user": "s3cret-user-value"}}))
    packed = world.secret("packed", base64.b64encode(json.dumps({"token": "tok-123"}).encode()).decode())
    broker = StoreConnections(world.config(body_yaml(envs={
        "app": {
            "MISSING": secret_ref(doc, property="db.password"),
            "TOKEN": secret_ref(packed, decode="base64", property="token", encode="base64"),
            "NOT_B64": secret_ref(doc, decode="base64"),
        },
    })))
    bundle = broker.resolve("app")
    assert bundle.as_plain_dict() == {"TOKEN": base64.b64encode(b"tok-123").decode()}
    missing = bundle.failures["MISSING"]
    assert str(missing) == "envs.app.MISSING.from: invalid: property db.password: key 'password' is missing in db (keys there: user)"
    assert "s3cret" not in str(bundle.failures["NOT_B64"]) and "not base64" in str(bundle.failures["NOT_B64"])
