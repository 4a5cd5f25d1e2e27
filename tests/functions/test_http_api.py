"""`GET /api/envs/{env}` and `GET /api/health?deep=1` through what function_app.py registers,
against the sandbox, with real tokens from the sandbox's Entra issuer."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from dotenv import dotenv_values

from core.app.readiness import readiness
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from demo.seed import EXAMPLE_SECRETS
from functions.http_api import FORBIDDEN_BODY
from sandbox.client import SandboxClient
from tests.functions.apihelpers import (
    ADMIN_ROLE,
    AUDIENCE,
    GROUP_ID,
    body_json,
    client_principal,
    foreign_token,
    get_env,
    kid_of,
    request,
    serving,
    tamper,
    write_config,
)

SECRET_VALUES = list(EXAMPLE_SECRETS.values())
OID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier"


@pytest.fixture(scope="module")
def bearer_config(seeded: SandboxClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(tmp_path_factory.mktemp("bearer") / "vaultrelay.yaml", seeded)


@pytest.fixture(scope="module")
def audit() -> MemoryAuditSink:
    return MemoryAuditSink()


@pytest.fixture(scope="module")
def api(bearer_config: Path, audit: MemoryAuditSink) -> Iterator[LiveRuntime]:
    """The bearer-mode API over the example config, serving the registered functions."""
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(bearer_config)}, audit=audit)
    with serving(api):
        yield api
    api.close()


@pytest.fixture(scope="module")
def caller_token(seeded: SandboxClient) -> str:
    return seeded.issue_token("caller", AUDIENCE)


def assert_no_values(response: Any) -> None:
    text = response.get_body().decode(errors="replace") + json.dumps(dict(response.headers))
    for value in SECRET_VALUES:
        assert value not in text


# ---- registration ------------------------------------------------------------------------------
def test_get_env_is_registered_on_api_envs_env_for_get(functions: dict[str, Any]) -> None:
    trigger = next(b for b in functions["get_env"].get_bindings() if b.type == "httpTrigger")
    assert trigger.route == "envs/{env}"
    assert [str(getattr(m, "value", m)) for m in trigger.methods] == ["GET"]


# ---- a valid caller ----------------------------------------------------------------------------
def test_valid_caller_gets_the_bundle_as_json_and_the_fetch_is_audited_without_values(
    functions: dict[str, Any], api: LiveRuntime, audit: MemoryAuditSink, caller_token: str, seeded: SandboxClient,
) -> None:
    audit.clear()
    response = get_env(functions, "production", caller_token)
    assert response.status_code == 200, response.get_body()
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    values = body_json(response)
    assert values["DATABASE_PASSWORD"] == EXAMPLE_SECRETS[("kv-source", "database-password")]
    assert values["DATA_SECRET"] == EXAMPLE_SECRETS[("kv-shared", "data-api-key")]
    assert values["LOG_LEVEL"] == "info" and len(values) == 12
    password = EXAMPLE_SECRETS[("kv-source", "database-password")]
    assert values["DATABASE_URL"] == f"postgresql://app:{quote(password, safe='')}@db.internal:5432/app?sslmode=require"  # composed
    [record] = audit.records
    assert record.actor == f"oid:{seeded.identities['caller'].object_id}"
    assert (record.action, record.env) == ("env.fetch", "production")
    assert record.detail["outcome"] == "ok" and record.detail["variables"] == "12"
    assert len(record.detail["fp.DATABASE_PASSWORD"]) == 32 and "version.DATABASE_PASSWORD" in record.detail
    audited = json.dumps([r.as_dict() for r in audit.records])
    for value in values.values():
        assert value not in audited


@pytest.mark.parametrize(("params", "accept", "media_type", "line"), [
    ({"format": "dotenv"}, None, "text/plain", "DATABASE_PASSWORD=s3cr3t-db-password\n"),
    ({"format": "shell"}, None, "text/x-shellscript", "export DATABASE_PASSWORD=s3cr3t-db-password\n"),
    ({"format": "json"}, "text/plain", "application/json", '"DATABASE_PASSWORD": "s3cr3t-db-password"'),
    ({}, "text/plain", "text/plain", "LOG_LEVEL=info\n"),
    ({}, "text/x-shellscript", "text/x-shellscript", "export LOG_LEVEL=info\n"),
    ({}, "text/html;q=0.9, text/plain;q=0.5, application/json;q=0.8", "application/json", '"LOG_LEVEL": "info"'),
    ({}, "*/*", "application/json", '"LOG_LEVEL": "info"'),
])
def test_formats_by_query_or_accept(
    functions: dict[str, Any], api: LiveRuntime, caller_token: str,
    params: dict[str, str], accept: str | None, media_type: str, line: str,
) -> None:
    response = get_env(functions, "production", caller_token, params=params, headers={"Accept": accept} if accept else None)
    assert response.status_code == 200
    assert response.mimetype == media_type
    assert line in response.get_body().decode()
    assert response.headers["Cache-Control"] == "no-store"


def test_unknown_format_is_400_and_unacceptable_accept_is_406(functions: dict[str, Any], api: LiveRuntime, caller_token: str) -> None:
    response = get_env(functions, "production", caller_token, params={"format": "xml"})
    assert response.status_code == 400 and body_json(response)["error"] == "bad_request"
    response = get_env(functions, "production", caller_token, headers={"Accept": "image/png"})
    assert response.status_code == 406 and body_json(response)["error"] == "not_acceptable"


def test_group_member_and_app_id_in_the_access_list_may_fetch(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient) -> None:
    as_group = seeded.issue_token("app", AUDIENCE, claims={"groups": [GROUP_ID]})
    assert get_env(functions, "production", as_group).status_code == 200
    as_app = seeded.issue_token("sp", AUDIENCE)  # listed by its app (client) id
    assert get_env(functions, "production", as_app).status_code == 200
    assert get_env(functions, "production", seeded.issue_token("app", AUDIENCE)).status_code == 403


def test_v2_issuer_and_comma_separated_audiences_are_accepted(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "v2.yaml", seeded, audience=None)
    environ = {**os.environ, "VAULTRELAY_CONFIG": str(config), "VAULTRELAY_API_AUDIENCE": f"{AUDIENCE}, 11111111-2222-3333-4444-555555555555"}
    client_id_audience = seeded.issue_token("caller", "11111111-2222-3333-4444-555555555555", claims={
        "iss": f"{seeded.authority}/{seeded.tenant_id}/v2.0", "ver": "2.0", "azp": seeded.identities["caller"].client_id,
    })
    with serving(LiveRuntime(environ=environ, audit=MemoryAuditSink())) as api:
        assert get_env(functions, "production", client_id_audience).status_code == 200
        assert get_env(functions, "production", seeded.issue_token("caller", AUDIENCE)).status_code == 200
        api.close()


# ---- tokens that are refused -------------------------------------------------------------------
def test_missing_token_is_401_with_a_bearer_challenge(functions: dict[str, Any], api: LiveRuntime) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": ""}):
        response = get_env(functions, "production", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="vaultrelay"'
        assert response.headers["Cache-Control"] == "no-store"
        assert body_json(response)["error"] == "unauthorized"


@pytest.mark.parametrize(("case", "description"), [
    ("wrong_audience", "audience"),
    ("expired", "expired"),
    ("not_yet_valid", "not valid yet"),
    ("tampered", "signature"),
    ("foreign_key_known_kid", "signature"),
    ("unknown_kid", "unknown key"),
    ("wrong_issuer", "issuer"),
    ("wrong_tenant", "tenant"),
    ("not_a_jwt", "not a JWT"),
    ("alg_none", "RS256"),
])
def test_bad_tokens_are_401_invalid_token(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, caller_token: str, case: str, description: str,
) -> None:
    now = int(time.time())
    other_tenant = "00000000-1111-2222-3333-444444444444"
    token = {
        "wrong_audience": lambda: seeded.issue_token("caller", "api://someone-else"),
        "expired": lambda: seeded.issue_token("caller", AUDIENCE, lifetime_s=-600),
        "not_yet_valid": lambda: seeded.issue_token("caller", AUDIENCE, claims={"nbf": now + 3600, "iat": now + 3600}),
        "tampered": lambda: tamper(caller_token),
        "foreign_key_known_kid": lambda: foreign_token(seeded, kid=kid_of(caller_token)),
        "unknown_kid": lambda: foreign_token(seeded, kid="no-such-key-id"),
        "wrong_issuer": lambda: seeded.issue_token("caller", AUDIENCE, claims={"iss": f"https://sts.windows.net/{other_tenant}/"}),
        "wrong_tenant": lambda: seeded.issue_token("caller", AUDIENCE, claims={"tid": other_tenant}),
        "not_a_jwt": lambda: "definitely-not-a-jwt",
        "alg_none": lambda: "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + caller_token.split(".")[1] + ".",
    }[case]()
    response = get_env(functions, "production", token)
    assert response.status_code == 401, response.get_body()
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="vaultrelay", error="invalid_token"')
    assert description in body_json(response)["message"]
    assert token not in response.get_body().decode()
    assert_no_values(response)


def test_unknown_kid_refetches_the_keys_at_most_once_per_interval(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient) -> None:
    keys = api.current().authenticator().validator.keys
    get_env(functions, "production", foreign_token(seeded, kid="rollover-1"))
    before = keys.fetches
    for i in range(3):
        assert get_env(functions, "production", foreign_token(seeded, kid=f"rollover-{i + 2}")).status_code == 401
    assert keys.fetches - before <= 1


# ---- authorization -----------------------------------------------------------------------------
def test_caller_not_listed_and_unknown_env_get_the_same_403(
    functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, caller_token: str, audit: MemoryAuditSink,
) -> None:
    other = seeded.issue_token("other", AUDIENCE)
    admin = seeded.issue_token("admin", AUDIENCE, claims={"roles": [ADMIN_ROLE]})
    responses = [
        get_env(functions, "production", other),      # exists, caller not listed
        get_env(functions, "no-such-env", caller_token),  # does not exist
        get_env(functions, "no-such-env", other),
        get_env(functions, "staging", caller_token),  # exists, no access: entry at all
        get_env(functions, "production", admin),      # admins sync and rotate; they do not fetch
    ]
    bodies = {r.get_body() for r in responses}
    assert [r.status_code for r in responses] == [403] * 5
    assert len(bodies) == 1 and json.loads(bodies.pop()) == FORBIDDEN_BODY
    assert {r.mimetype for r in responses} == {"application/json"}
    assert {tuple(sorted(r.headers.keys())) for r in responses} == {tuple(sorted(responses[0].headers.keys()))}
    denied = [r for r in audit.records if r.detail.get("outcome") == "denied"]
    assert {r.env for r in denied} >= {"production", "no-such-env", "staging"}


def test_resolution_failure_is_502_with_names_and_reasons_only(
    functions: dict[str, Any], api: LiveRuntime, caller_token: str, audit: MemoryAuditSink,
) -> None:
    response = get_env(functions, "broken", caller_token)
    assert response.status_code == 502
    document = body_json(response)
    assert document == {"error": "resolution_failed", "env": "broken", "failures": [{"name": "MISSING_SECRET", "reason": "not_found"}]}
    assert_no_values(response)
    assert "api-key" not in response.get_body().decode()
    assert audit.records[-1].detail["outcome"] == "failed" and audit.records[-1].detail["failed"] == "MISSING_SECRET"


def test_app_service_principal_headers_are_refused_in_bearer_mode(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, caller_token: str) -> None:
    principal = client_principal([(OID_CLAIM, seeded.identities["caller"].object_id)])
    for headers in ({"X-MS-CLIENT-PRINCIPAL": principal}, {"X-MS-CLIENT-PRINCIPAL-ID": seeded.identities["caller"].object_id}):
        response = get_env(functions, "production", caller_token, headers=headers)
        assert response.status_code == 400
        assert "app_service" in body_json(response)["message"]
        assert_no_values(response)


# ---- App Service Authentication mode -----------------------------------------------------------
@pytest.fixture(scope="module")
def app_service_api(seeded: SandboxClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    config = write_config(tmp_path_factory.mktemp("easyauth") / "vaultrelay.yaml", seeded, auth_mode="app_service", audience=None)
    # What App Service sets when its authentication module is on (and strips forged headers).
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config), "WEBSITE_AUTH_ENABLED": "True"}, audit=MemoryAuditSink())
    yield api
    api.close()


def test_app_service_mode_trusts_the_client_principal_headers(
    functions: dict[str, Any], app_service_api: LiveRuntime, seeded: SandboxClient, caller_token: str,
) -> None:
    caller = seeded.identities["caller"]
    other = seeded.identities["other"]
    good = client_principal([(OID_CLAIM, caller.object_id), ("appid", caller.client_id), ("tid", seeded.tenant_id)])
    group = client_principal([(OID_CLAIM, other.object_id), ("groups", GROUP_ID)])
    with serving(app_service_api):
        ok = get_env(functions, "production", headers={"X-MS-CLIENT-PRINCIPAL": good, "X-MS-CLIENT-PRINCIPAL-ID": caller.object_id})
        assert ok.status_code == 200 and body_json(ok)["DATABASE_PASSWORD"] == "s3cr3t-db-password"
        assert get_env(functions, "production", headers={"X-MS-CLIENT-PRINCIPAL": group}).status_code == 200
        cases = {
            "missing": ({}, 401),
            "bearer only": ({"Authorization": f"Bearer {caller_token}"}, 401),
            "id only": ({"X-MS-CLIENT-PRINCIPAL-ID": caller.object_id}, 401),
            "not base64": ({"X-MS-CLIENT-PRINCIPAL": "%%%not-base64%%%"}, 400),
            "not json": ({"X-MS-CLIENT-PRINCIPAL": "bm90IGpzb24="}, 400),
            "no claims": ({"X-MS-CLIENT-PRINCIPAL": "eyJhdXRoX3R5cCI6ICJhYWQifQ=="}, 400),
            "id mismatch": ({"X-MS-CLIENT-PRINCIPAL": good, "X-MS-CLIENT-PRINCIPAL-ID": other.object_id}, 401),
            "other tenant": ({"X-MS-CLIENT-PRINCIPAL": client_principal([(OID_CLAIM, caller.object_id), ("tid", "00000000-1111-2222-3333-444444444444")])}, 401),
            "not listed": ({"X-MS-CLIENT-PRINCIPAL": client_principal([(OID_CLAIM, other.object_id)])}, 403),
        }
        for name, (headers, status) in cases.items():
            response = get_env(functions, "production", headers=headers)
            assert response.status_code == status, name
            assert_no_values(response)
        unknown = get_env(functions, "no-such-env", headers={"X-MS-CLIENT-PRINCIPAL": good})
        assert unknown.status_code == 403 and body_json(unknown) == FORBIDDEN_BODY


# ---- the config --------------------------------------------------------------------------------
def test_config_changes_are_picked_up_and_an_invalid_config_fails_closed(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path, caller_token: str,
) -> None:
    config = write_config(tmp_path / "vaultrelay.yaml", seeded)
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
    with serving(api):
        assert get_env(functions, "production", caller_token).status_code == 200
        first = api.current()
        assert api.current() is first  # cached while the file is unchanged
        write_config(config, seeded, access={"production": [seeded.identities["other"].object_id]})
        os.utime(config, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        assert get_env(functions, "production", caller_token).status_code == 403
        config.write_text(config.read_text() + "\nunknown_top_level_key: 1\n")
        response = get_env(functions, "production", caller_token)
        assert response.status_code == 503 and body_json(response)["error"] == "unavailable"
        assert str(config) not in response.get_body().decode()
    api.close()
    missing = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(tmp_path / "missing.yaml")}, audit=MemoryAuditSink())
    with serving(missing):
        assert get_env(functions, "production", caller_token).status_code == 503


def test_bearer_mode_without_an_audience_is_503_not_401(functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path, caller_token: str) -> None:
    config = write_config(tmp_path / "vaultrelay.yaml", seeded, audience=None)
    environ = {k: v for k, v in os.environ.items() if k != "VAULTRELAY_API_AUDIENCE"}
    with serving(LiveRuntime(environ={**environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())) as api:
        response = get_env(functions, "production", caller_token)
        assert response.status_code == 503 and response.headers["Retry-After"] == "30"
        api.close()


# ---- health ------------------------------------------------------------------------------------
def test_health_liveness_and_deep_readiness(functions: dict[str, Any], api: LiveRuntime, seeded: SandboxClient, tmp_path: Path) -> None:
    health = functions["health"].get_user_function()
    live = health(request("GET", "/api/health"))
    assert live.status_code == 200 and body_json(live) == {"status": "ok"}
    admin = {"Authorization": f"Bearer {seeded.issue_token('admin', AUDIENCE)}"}
    deep = health(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
    assert deep.status_code == 200, deep.get_body()
    document = body_json(deep)
    assert document["status"] == "ok" and document["stores"]["azure"]["ok"] and document["stores"]["azure-data"]["ok"]
    assert any(scope.startswith("https://vault.") for scope in document["stores"]["azure-data"]["scopes"])
    assert "eyJ" not in deep.get_body().decode()  # no token
    assert deep.headers["Cache-Control"] == "no-store"

    broken = tmp_path / "vaultrelay.yaml"
    broken.write_text(
        "version: 1\nsecretStores:\n  ghost:\n    type: azure.managed_identity\n    identity:\n      type: user_assigned\n"
        "      client_id: 0badc0de-0000-4000-8000-000000000000\n"
        "envs:\n  e:\n    X:\n      from: {store: ghost, vault: kv-source, secret: api-key}\n"
        f"api: {{audience: '{AUDIENCE}', admins: [{seeded.identities['admin'].object_id}]}}\n"
    )
    with serving(LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(broken)}, audit=MemoryAuditSink())) as other:
        not_ready = health(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
        assert not_ready.status_code == 503
        assert body_json(not_ready)["stores"]["ghost"]["ok"] is False
        anonymous = health(request("GET", "/api/health", params={"deep": "1"}))
        assert anonymous.status_code == 503 and body_json(anonymous) == {"status": "unavailable"}
        other.close()


# ---- issue 14: app ids admit app-only tokens only ----------------------------------------------
def test_a_user_signed_in_through_a_listed_app_is_not_that_app(functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path) -> None:
    """`access:` and `api.admins` list the service principal `sp` by its app (client) id.  A user
    who signs in through that app gets a delegated token carrying the same `appid`: refused."""
    sp_app_id = seeded.env["SANDBOX_SP_CLIENT_ID"]
    config = write_config(tmp_path / "vaultrelay.yaml", seeded, access={"production": [sp_app_id]})
    document = yaml.safe_load(config.read_text())
    document["api"]["admins"] = [sp_app_id]
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    delegated = seeded.issue_token("other", AUDIENCE, claims={
        "appid": sp_app_id, "idtyp": "user", "scp": "user_impersonation", "sub": "pairwise-subject-of-the-user"})
    delegated_v2 = seeded.issue_token("other", AUDIENCE, claims={  # no idtyp (an optional claim): scp and sub decide
        "ver": "2.0", "idtyp": None, "appid": None, "azp": sp_app_id, "scp": "user_impersonation", "sub": "pairwise-subject-of-the-user"})
    app_only = seeded.issue_token("sp", AUDIENCE)  # client credentials: idtyp app, sub == oid
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
    with serving(api):
        for token in (delegated, delegated_v2):
            assert get_env(functions, "production", token).status_code == 403
            status = functions["status"].get_user_function()(request("GET", "/api/status", headers={"Authorization": f"Bearer {token}"}))
            assert status.status_code == 403 and body_json(status)["error"] == "forbidden"
        assert get_env(functions, "production", app_only).status_code == 200
        status = functions["status"].get_user_function()(request("GET", "/api/status", headers={"Authorization": f"Bearer {app_only}"}))
        assert status.status_code != 403
    api.close()


# ---- issue 14: app_service mode without App Service Authentication ----------------------------
def test_app_service_mode_without_app_service_authentication_refuses_every_request(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "vaultrelay.yaml", seeded, auth_mode="app_service", audience=None)
    environ = {k: v for k, v in os.environ.items() if k != "WEBSITE_AUTH_ENABLED"}
    caller = seeded.identities["caller"]
    forged = client_principal([(OID_CLAIM, caller.object_id), ("tid", seeded.tenant_id)])  # anyone can send this
    for setting in (None, "False"):
        env = {**environ, "VAULTRELAY_CONFIG": str(config), **({"WEBSITE_AUTH_ENABLED": setting} if setting else {})}
        api = LiveRuntime(environ=env, audit=MemoryAuditSink())
        with serving(api):
            response = get_env(functions, "production", headers={"X-MS-CLIENT-PRINCIPAL": forged, "X-MS-CLIENT-PRINCIPAL-ID": caller.object_id})
            assert response.status_code == 503
            assert body_json(response)["error"] == "unavailable" and "WEBSITE_AUTH_ENABLED is not True" in body_json(response)["message"]
            assert_no_values(response)
            sync = functions["sync_all"].get_user_function()(request("POST", "/api/sync", headers={"X-MS-CLIENT-PRINCIPAL": forged}))
            assert sync.status_code == 503 and "WEBSITE_AUTH_ENABLED" in body_json(sync)["message"]
            ready = functions["health"].get_user_function()(request("GET", "/api/health", params={"deep": "1"}))
            # not ready; the detail is for admins only, and none can be recognised in this state
            assert ready.status_code == 503 and body_json(ready) == {"status": "unavailable"}
            ready, detail = readiness(api.current(), api.source_status())
            auth = detail["auth"]
            assert not ready and auth["mode"] == "app_service" and auth["ok"] is False and "WEBSITE_AUTH_ENABLED" in auth["problem"]
        api.close()


# ---- issue 14: dotenv over HTTP ----------------------------------------------------------------
def test_dotenv_over_http_is_inert_and_a_value_it_cannot_carry_is_406_naming_the_variable(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path, caller_token: str,
) -> None:
    from azure.keyvault.secrets import SecretClient

    marker = tmp_path / "ran"
    source = SecretClient(seeded.vault_url("kv-source"), seeded.admin_credential())
    name = f"dotenv-attack-{uuid.uuid4().hex[:8]}"
    evil = f"p@ss `touch {marker}` $(touch {marker}) \\x \"q\" # end"
    source.set_secret(name, evil)
    source.set_secret(f"{name}-expand", "https://attacker.example/?stolen=${OTHER}")  # python-dotenv would expand it
    caller = seeded.identities["caller"].object_id
    config = write_config(tmp_path / "vaultrelay.yaml", seeded, access={"attack": [caller], "expand": [caller]})
    document = yaml.safe_load(config.read_text())
    document["envs"]["attack"] = {"EVIL": {"from": {"store": "azure", "vault": "kv-source", "secret": name}}, "OTHER": "other-value"}
    document["envs"]["expand"] = {"EVIL": {"from": {"store": "azure", "vault": "kv-source", "secret": f"{name}-expand"}}, "OTHER": "other-value"}
    config.write_text(yaml.safe_dump(document, sort_keys=False))
    audit = MemoryAuditSink()
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=audit)
    with serving(api):
        response = get_env(functions, "attack", caller_token, params={"format": "dotenv"})
        assert response.status_code == 200
        path = tmp_path / "fetched.env"
        path.write_bytes(response.get_body())
        done = subprocess.run(["sh", "-c", '. "$1"; printf %s "$EVIL"', "sh", str(path)], capture_output=True, timeout=20)
        assert done.returncode == 0 and done.stdout.decode() == evil and not marker.exists()
        assert dotenv_values(path) == {"EVIL": evil, "OTHER": "other-value"}

        audit.clear()
        refused = get_env(functions, "expand", caller_token, params={"format": "dotenv"})
        assert refused.status_code == 406 and body_json(refused)["error"] == "not_acceptable"
        assert "EVIL: it contains ${...}" in body_json(refused)["message"] and "attacker" not in refused.get_body().decode()
        assert audit.records[-1].detail["outcome"] == "not_representable" and audit.records[-1].detail["failed"] == "EVIL"
        assert get_env(functions, "expand", caller_token, params={"format": "json"}).status_code == 200
    api.close()
