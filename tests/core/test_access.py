"""core.access and core.engine.render without the sandbox: key caching and rollover, issuers,
authorization, Accept negotiation."""

from __future__ import annotations

import base64
import time
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
)
from core.config.model import normalized_ids
from core.engine.render import negotiate, render

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
    validator.validate(authority.token())
    assert keys.fetches == 3


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
    principal = Principal(object_id="OID-1", app_id="APP-1", groups=frozenset({"G-1"}), roles=frozenset({"VaultRelay.Admin"}))
    assert may_fetch({"prod": ["oid-1"]}, "prod", principal)
    assert may_fetch({"prod": ["g-1"]}, "prod", principal)
    assert may_fetch({"prod": normalized_ids([" APP-1 "])}, "prod", principal)  # as the loader normalized it
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
    assert render(values, "dotenv") == 'A=plain\nB="it\'s \\$HOME\\n"\n'
    assert render(values, "shell") == "export A=plain\nexport B='it'\"'\"'s $HOME\n'\n"
    assert render(values, "json").startswith('{\n  "A": "plain"')
    with pytest.raises(ValueError):
        render(values, "xml")
