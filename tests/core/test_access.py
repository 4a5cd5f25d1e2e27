"""core.access and core.render without the sandbox: key caching and rollover, issuers,
authorization, Accept negotiation."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from core.access import (
    Authenticator,
    AuthError,
    AuthUnavailable,
    Principal,
    SigningKeys,
    TokenValidator,
    is_admin,
    may_fetch,
    principal_from_app_service,
)
from core.config.model import normalized_ids
from core.render import UnrepresentableValue, negotiate, render

AUTHORITY = "https://login.example"
TENANT = "11111111-1111-1111-1111-111111111111"


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()

    return {"kty": "RSA", "use": "sig", "kid": kid, "n": b64(numbers.n), "e": b64(numbers.e)}


class FakeAuthority:
    """OpenID documents and a JWKS, with the keys published changeable and fetches counted."""

    def __init__(self) -> None:
        self.keys = {"k1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.fetches: list[str] = []
        self.down = False

    def fetch(self, url: str) -> Any:
        self.fetches.append(url)
        if self.down:
            raise OSError("unreachable")
        if url.endswith("/v2.0/.well-known/openid-configuration"):
            return {"issuer": f"{AUTHORITY}/{TENANT}/v2.0", "jwks_uri": f"{AUTHORITY}/{TENANT}/discovery/v2.0/keys"}
        if url.endswith("/.well-known/openid-configuration"):
            return {"issuer": f"https://sts.windows.net/{TENANT}/", "jwks_uri": f"{AUTHORITY}/common/discovery/keys"}
        return {"keys": [_jwk(k, kid) for kid, k in self.keys.items()] + [{"kty": "EC", "kid": "ignored"}]}

    def token(self, kid: str = "k1", **claims: Any) -> str:
        now = int(time.time())
        body = {"aud": "api://x", "iss": f"https://sts.windows.net/{TENANT}/", "iat": now, "nbf": now, "exp": now + 600,
                "oid": "OID-1", "appid": "APP-1", "tid": TENANT, **claims}
        return jwt.encode(body, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture()
def authority() -> FakeAuthority:
    return FakeAuthority()


def test_keys_are_cached_then_refetched_after_the_ttl_and_on_an_unknown_kid_at_most_every_interval(authority: FakeAuthority) -> None:
    now = [1000.0]
    keys = SigningKeys(AUTHORITY, TENANT, jwks_ttl_s=3600, min_refresh_s=30, fetch=authority.fetch, clock=lambda: now[0])
    validator = TokenValidator(keys, ["api://x"])
    assert validator.validate(authority.token()).object_id == "OID-1"
    assert validator.validate(authority.token()).app_id == "APP-1"
    assert keys.fetches == 1
    # rollover: a new key appears; the first token signed with it triggers one refetch
    authority.keys["k2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now[0] += 31
    assert validator.validate(authority.token("k2")).object_id == "OID-1"
    assert keys.fetches == 2
    # unknown kids within the interval do not refetch
    for _ in range(5):
        with pytest.raises(AuthError, match="unknown key"):
            keys.key("nope")
    assert keys.fetches == 2
    now[0] += 3601
    validator.validate(authority.token())  # the cached key serves; the refresh runs in the background
    assert keys.wait_for_fetch(5) and keys.fetches == 3


def test_stale_keys_are_kept_when_the_authority_is_down_and_unavailable_when_never_fetched(authority: FakeAuthority) -> None:
    now = [0.0]
    keys = SigningKeys(AUTHORITY, TENANT, jwks_ttl_s=10, fetch=authority.fetch, clock=lambda: now[0])
    validator = TokenValidator(keys, ["api://x"])
    validator.validate(authority.token())
    authority.down = True
    now[0] += 100
    assert validator.validate(authority.token()).object_id == "OID-1"
    fresh = TokenValidator(SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch), ["api://x"])
    with pytest.raises(AuthUnavailable):
        fresh.validate(authority.token())


def test_issuers_v1_and_v2_audience_forms_and_refusals(authority: FakeAuthority) -> None:
    validator = TokenValidator(SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch), ["api://x/, 2222"])
    assert validator.validate(authority.token(iss=f"{AUTHORITY}/{TENANT}/v2.0", aud="2222", appid=None, azp="AZP")).app_id == "AZP"
    assert validator.validate(authority.token(aud="api://x/")).object_id == "OID-1"
    for claims, message in [
        ({"iss": "https://sts.windows.net/someone-else/"}, "issuer"),
        ({"aud": "api://y"}, "audience"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 120}, "not valid yet"),
        ({"tid": "other"}, "tenant"),
        ({"oid": None, "appid": None}, "no principal"),
    ]:
        with pytest.raises(AuthError, match=message) as caught:
            validator.validate(authority.token(**claims))
        assert caught.value.status == 401 and caught.value.error == "invalid_token"
    within_leeway = authority.token(exp=int(time.time()) - 30)
    assert validator.validate(within_leeway).object_id == "OID-1"


def test_authenticator_modes_and_configuration_problems(authority: FakeAuthority) -> None:
    keys = SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch)
    bearer = Authenticator("bearer", authority=AUTHORITY, tenant_id=TENANT, audiences=["api://x"], keys=keys)
    assert bearer.authenticate({"authorization": f"bearer {authority.token()}"}).object_id == "OID-1"
    with pytest.raises(AuthError) as caught:
        bearer.authenticate({"authorization": "Bearer a b"})
    assert caught.value.status == 400
    with pytest.raises(AuthError) as caught:
        bearer.authenticate({})
    assert caught.value.status == 401 and caught.value.www_authenticate == 'Bearer realm="vaultrelay"'
    for problem in (dict(tenant_id=None, audiences=["api://x"]), dict(tenant_id=TENANT, audiences=[])):
        unconfigured = Authenticator("bearer", authority=AUTHORITY, keys=keys, **problem)  # type: ignore[arg-type]
        with pytest.raises(AuthUnavailable):
            unconfigured.authenticate({"authorization": f"Bearer {authority.token()}"})


def test_access_lists_and_admins() -> None:
    principal = Principal(object_id="OID-1", app_id="APP-1", groups=frozenset({"G-1"}), roles=frozenset({"VaultRelay.Admin"}), app_only=True)
    assert may_fetch({"prod": ["oid-1"]}, "prod", principal)
    assert may_fetch({"prod": ["g-1"]}, "prod", principal)
    assert may_fetch({"prod": normalized_ids([" APP-1 "])}, "prod", principal)  # as the loader normalized it
    user = Principal(object_id="USER-1", app_id="APP-1", groups=frozenset({"G-1"}))  # a user signed in through APP-1
    assert not may_fetch({"prod": normalized_ids(["APP-1"])}, "prod", user) and not is_admin(normalized_ids(["APP-1"]), None, user)
    assert may_fetch({"prod": normalized_ids(["user-1"])}, "prod", user) and may_fetch({"prod": normalized_ids(["G-1"])}, "prod", user)
    assert not may_fetch({"prod": ["someone"]}, "prod", principal)
    assert not may_fetch({"prod": ["oid-1"]}, "staging", principal)
    assert not may_fetch({"prod": []}, "prod", principal)
    assert is_admin([], "VaultRelay.Admin", principal)
    assert is_admin(["g-1"], None, Principal(object_id="x", app_id=None, groups=frozenset({"G-1"})))
    assert not is_admin(["someone"], "VaultRelay.Admin", Principal(object_id="x", app_id=None))
    assert principal.actor == "oid:OID-1" and Principal(object_id=None, app_id="A").actor == "appid:A"


@pytest.mark.parametrize(("accept", "expected"), [
    (None, "json"), ("", "json"), ("*/*", "json"), ("application/json", "json"), ("text/plain", "dotenv"),
    ("text/x-shellscript", "shell"), ("text/plain;q=0.5, application/json;q=0.9", "json"), ("text/*", "dotenv"),
    ("image/png", None), ("application/json;q=0", None), ("application/json;q=abc", None), ("text/plain;q=2", None),
    ("image/png, */*;q=0.1", "json"), ("TEXT/PLAIN", "dotenv"),
])
def test_accept_negotiation(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_render_formats_quote_values() -> None:
    values = {"B": "it's $HOME\n", "A": "plain"}
    # No quoting reads `it's $HOME` back the same in a shell and in python-dotenv: refused, not
    # written with a `\$` that python-dotenv keeps (tests/core/test_render_dotenv_readers.py).
    with pytest.raises(UnrepresentableValue, match="B: it has ' or"):
        render(values, "dotenv")
    assert render({"B": "its $HOME\n", "A": "plain"}, "dotenv") == "# docker --env-file cannot read values that span lines: " \
        "the next line makes it refuse this file\nexport DOCKER_ENV_FILE_CANNOT_READ_B\nA=plain\nB='its $HOME\n'\n"
    assert render(values, "shell") == "export A=plain\nexport B='it'\"'\"'s $HOME\n'\n"
    assert render(values, "json").startswith('{\n  "A": "plain"')
    with pytest.raises(ValueError):
        render(values, "xml")


# ---- app ids admit app-only tokens only (issue 14, item 4) -------------------------------------
@pytest.mark.parametrize(("claims", "app_only"), [
    ({"idtyp": "app", "sub": "OID-1"}, True),
    ({"idtyp": "app", "sub": "someone-else"}, True),  # idtyp decides when present
    ({"idtyp": "user", "sub": "OID-1"}, False),
    ({"sub": "OID-1"}, True),  # no idtyp: no scp and oid == sub
    ({"sub": "OID-1", "scp": "access_as_user"}, False),
    ({"sub": "pairwise-subject", "scp": "access_as_user"}, False),
    ({"sub": "pairwise-subject"}, False),
    ({}, False),
])
def test_app_ids_admit_app_only_tokens_not_users_signed_in_through_the_app(
    authority: FakeAuthority, claims: dict[str, Any], app_only: bool,
) -> None:
    validator = TokenValidator(SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch), ["api://x"])
    principal = validator.validate(authority.token(**claims))
    assert principal.app_only is app_only and principal.app_id == "APP-1"
    assert may_fetch({"prod": normalized_ids(["APP-1"])}, "prod", principal) is app_only
    assert is_admin(["app-1"], None, principal) is app_only
    assert may_fetch({"prod": normalized_ids(["OID-1"])}, "prod", principal)  # the object id matches either way


def test_app_service_principal_claims_decide_app_only_the_same_way() -> None:
    def principal(*claims: tuple[str, str]) -> Principal:
        document = {"auth_typ": "aad", "claims": [{"typ": t, "val": v} for t, v in claims]}
        return principal_from_app_service({"x-ms-client-principal": base64.b64encode(json.dumps(document).encode()).decode()}, TENANT)

    oid = "http://schemas.microsoft.com/identity/claims/objectidentifier"
    sub = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier"
    scope = "http://schemas.microsoft.com/identity/claims/scope"
    delegated = principal((oid, "U-1"), (sub, "pairwise"), (scope, "user_impersonation"), ("appid", "APP-1"))
    assert not delegated.app_only and not may_fetch({"prod": normalized_ids(["APP-1"])}, "prod", delegated)
    app = principal((oid, "SP-1"), (sub, "SP-1"), ("appid", "APP-1"))
    assert app.app_only and may_fetch({"prod": normalized_ids(["APP-1"])}, "prod", app)


def test_app_service_mode_refuses_every_request_unless_app_service_authentication_is_on() -> None:
    document = {"claims": [{"typ": "oid", "val": "OID-1"}]}
    headers = {"x-ms-client-principal": base64.b64encode(json.dumps(document).encode()).decode()}
    for setting in (None, "", "False", "0", "yes"):
        environ = {} if setting is None else {"WEBSITE_AUTH_ENABLED": setting}
        off = Authenticator("app_service", authority=AUTHORITY, tenant_id=TENANT, audiences=[], environ=environ)
        assert off.problem and "WEBSITE_AUTH_ENABLED is not True" in off.problem
        with pytest.raises(AuthUnavailable) as caught:
            off.authenticate(headers)  # a forged principal header is not even looked at
        assert "WEBSITE_AUTH_ENABLED" in caught.value.public
    for setting in ("True", "true", " TRUE "):
        on = Authenticator("app_service", authority=AUTHORITY, tenant_id=TENANT, audiences=[], environ={"WEBSITE_AUTH_ENABLED": setting})
        assert on.problem is None and on.authenticate(headers).object_id == "OID-1"


# ---- signing-key fetches (issue 14, item 5) ----------------------------------------------------
class SlowAuthority(FakeAuthority):
    """A FakeAuthority whose answers wait for `release` (set: answer at once) and may fail."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.started: list[str] = []

    def fetch(self, url: str) -> Any:
        self.started.append(url)
        self.release.wait(10)
        return super().fetch(url)

    def discoveries(self) -> int:
        return sum(url.endswith("/v2.0/.well-known/openid-configuration") for url in self.fetches)


def test_one_fetch_serves_every_waiting_request_and_unknown_kids_do_not_refetch() -> None:
    authority = SlowAuthority()
    keys = SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch, wait_s=10)
    authority.release.clear()
    with ThreadPoolExecutor(max_workers=40) as pool:
        futures = [pool.submit(keys.key, "k1" if i % 10 == 0 else f"random-{i}") for i in range(100)]
        while not authority.started:
            time.sleep(0.01)
        assert keys.fetching
        authority.release.set()
        outcomes = [f.exception() or "key" for f in futures]
    assert authority.discoveries() == 1 and keys.attempts == 1 and keys.fetches == 1
    assert outcomes.count("key") == 10
    assert all(isinstance(o, AuthError) and o.status == 401 for o in outcomes if o != "key")
    for i in range(100):  # within the refresh interval, unknown kids are refused without a fetch
        with pytest.raises(AuthError, match="unknown key"):
            keys.key(f"again-{i}")
    assert authority.discoveries() == 1


def test_waiting_is_bounded_and_failures_back_off_even_with_no_keys_cached() -> None:
    authority = SlowAuthority()
    now = [0.0]
    keys = SigningKeys(AUTHORITY, TENANT, fetch=authority.fetch, clock=lambda: now[0], wait_s=0.2,
                       failure_backoff_s=5, max_backoff_s=60)
    authority.release.clear()  # the authority hangs
    began = time.monotonic()
    for _ in range(20):
        with pytest.raises(AuthUnavailable, match="still being fetched"):
            keys.key("k1")
    assert time.monotonic() - began < 20 * 0.2 + 2  # each request waited its wait_s at most, none for the authority
    assert keys.attempts == 1
    authority.down = True
    authority.release.set()
    assert keys.wait_for_fetch(5) and keys.fetches == 0
    for _ in range(50):  # backing off: no fetch, an answer at once
        with pytest.raises(AuthUnavailable, match="backing off"):
            keys.key("k1")
    assert authority.discoveries() == 1
    now[0] += 5.1
    with pytest.raises(AuthUnavailable):
        keys.key("k1")  # one more try after the back-off, still down
    assert authority.discoveries() == 2
    now[0] += 5.1  # the back-off doubled: 10 s now
    with pytest.raises(AuthUnavailable, match="backing off"):
        keys.key("k1")
    authority.down = False
    now[0] += 5.0
    assert keys.key("k1") is not None and keys.fetches == 1 and authority.discoveries() == 3


def test_cached_keys_serve_at_once_while_a_refresh_hangs(authority: FakeAuthority) -> None:
    slow = SlowAuthority()
    now = [0.0]
    keys = SigningKeys(AUTHORITY, TENANT, fetch=slow.fetch, clock=lambda: now[0], jwks_ttl_s=100, min_refresh_s=30, wait_s=5)
    validator = TokenValidator(keys, ["api://x"])
    token = slow.token()
    validator.validate(token)
    slow.release.clear()
    now[0] += 101  # stale: a refresh starts in the background
    for _ in range(4):
        assert validator.validate(token).object_id == "OID-1"
    assert keys.fetching  # the four were answered while the refresh still hung
    slow.release.set()
    assert keys.wait_for_fetch(5) and keys.fetches == 2
