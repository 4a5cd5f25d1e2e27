"""The handlers against docs/openapi.yaml (schemathesis through a WSGI adapter over the
registered functions), and property tests: whatever a caller sends, never a 500 and never a value
in an error."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from demo.seed import EXAMPLE_SECRETS, example_environment, seed_example
from sandbox.client import SandboxClient
from tests.functions.apihelpers import (
    AUDIENCE,
    GROUP_ID,
    client_principal,
    foreign_token,
    get_env,
    serving,
    tamper,
    write_config,
    wsgi_app,
)

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(SPEC)

# 502 (a variable failed) and 503 (not configured / not ready) are documented answers; a 500 never is.
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance, response_headers_conformance]


@pytest.fixture(scope="module")
def served(sandbox: SandboxClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    seed_example(sandbox)
    config = write_config(tmp_path_factory.mktemp("openapi") / "vaultrelay.yaml", sandbox)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in example_environment(sandbox).items():
            patch.setenv(key, value)
        api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
        with serving(api):
            yield api
        api.close()


@pytest.fixture(scope="module")
def tokens(sandbox: SandboxClient) -> dict[str, str]:
    caller = sandbox.issue_token("caller", AUDIENCE)
    return {
        "caller": caller,
        "other": sandbox.issue_token("other", AUDIENCE),
        "expired": sandbox.issue_token("caller", AUDIENCE, lifetime_s=-600),
        "wrong_audience": sandbox.issue_token("caller", "api://not-this-one"),
        "tampered": tamper(caller),
        "unknown_kid": foreign_token(sandbox, kid="property-test-kid"),
    }


@pytest.fixture(scope="module")
def wsgi(functions: dict[str, Any]) -> Any:
    return wsgi_app(functions)


@pytest.fixture(scope="module")
def values(served: LiveRuntime, functions: dict[str, Any], tokens: dict[str, str]) -> list[str]:
    """Every value the production env resolves to (to look for in error bodies)."""
    response = get_env(functions, "production", tokens["caller"])
    assert response.status_code == 200
    resolved = [v for v in json.loads(response.get_body()).values() if len(v) >= 8]
    return sorted(set(resolved) | set(EXAMPLE_SECRETS.values()))


# ---- the spec and the registrations agree ------------------------------------------------------
def test_every_documented_route_is_registered_and_every_registered_route_documented(functions: dict[str, Any]) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    registered = set()
    for fn in functions.values():
        trigger = next((b for b in fn.get_bindings() if b.type == "httpTrigger"), None)
        if trigger is not None:
            for method in trigger.methods:
                registered.add((f"/{trigger.route}", str(getattr(method, "value", method)).upper()))
    assert documented == registered


# ---- schemathesis: generated requests, responses checked against the spec ----------------------
@pytest.mark.parametrize(("env", "query", "headers"), [
    ("production", {}, {}),
    ("production", {"format": "json"}, {}),
    ("production", {"format": "dotenv"}, {}),
    ("production", {"format": "shell"}, {}),
    ("production", {}, {"Accept": "text/plain"}),
    ("production", {}, {"Accept": "image/png"}),
    ("broken", {}, {}),
    ("no-such-env", {}, {}),
])
def test_known_requests_conform_to_the_spec(wsgi: Any, served: LiveRuntime, tokens: dict[str, str],
                                            env: str, query: dict[str, str], headers: dict[str, str]) -> None:
    operation = SCHEMA["/envs/{env}"]["GET"]
    for token in ("caller", "other", None):
        case = operation.Case(path_parameters={"env": env}, query=dict(query))
        auth = {"Authorization": f"Bearer {tokens[token]}"} if token else {}
        response = case.call(app=wsgi, headers={**headers, **auth})
        assert response.status_code != 500
        case.validate_response(response, checks=CHECKS)


def test_health_conforms_to_the_spec(wsgi: Any, served: LiveRuntime) -> None:
    operation = SCHEMA["/health"]["GET"]
    for query in ({}, {"deep": "1"}, {"deep": "no"}):
        case = operation.Case(query=query)
        response = case.call(app=wsgi)
        assert response.status_code == 200
        case.validate_response(response, checks=CHECKS)


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_conform_to_the_spec(case: Any, wsgi: Any, served: LiveRuntime, tokens: dict[str, str], values: list[str]) -> None:
    for token in (tokens["caller"], None):
        response = case.call(app=wsgi, headers={"Authorization": f"Bearer {token}"} if token else {})
        assert response.status_code != 500
        case.validate_response(response, checks=CHECKS)
        if response.status_code != 200:
            for value in values:
                assert value not in response.text


# ---- properties over the handler, called directly ----------------------------------------------
@pytest.fixture(scope="module", params=["bearer", "app_service"])
def mode(request: pytest.FixtureRequest, served: LiveRuntime, sandbox: SandboxClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API in each auth mode (same envs and access lists)."""
    if request.param == "bearer":
        yield "bearer"
        return
    config = write_config(tmp_path_factory.mktemp("easyauth") / "vaultrelay.yaml", sandbox, auth_mode="app_service", audience=None)
    api = LiveRuntime(environ={**served.environ, "VAULTRELAY_CONFIG": str(config), "WEBSITE_AUTH_ENABLED": "True"}, audit=MemoryAuditSink())
    with serving(api):
        yield "app_service"
    api.close()


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_env = st.one_of(st.just("production"), st.just("broken"),
                 st.sampled_from(["staging", "Production", "production ", "../production", "%2e%2e"]), _text.filter(bool))
_authorization = st.one_of(
    st.none(), _text, st.builds(lambda t: f"Bearer {t}", _text), st.just(("token", "caller", "")),
    st.builds(lambda n: ("token", n, ""), st.sampled_from(["other", "expired", "wrong_audience", "tampered", "unknown_kid"])),
    st.builds(lambda n, junk: ("token", n, junk), st.sampled_from(["caller", "other"]), _text),
)
_oid = st.one_of(_text, st.just(("identity", "caller")), st.sampled_from([("identity", "other"), "00000000-0000-0000-0000-000000000000"]))
_claims = st.lists(st.tuples(st.sampled_from(["oid", "http://schemas.microsoft.com/identity/claims/objectidentifier", "appid", "tid",
                                              "groups", "roles", "x"]), st.one_of(_text, st.just(GROUP_ID))), max_size=4)
_principal = st.one_of(st.none(), _text, st.builds(lambda oid, claims: ("principal", oid, claims), _oid, _claims))
_principal_id = st.one_of(st.none(), _oid)
# Whether App Service principal headers are sent in the mode that does not expect them (rarely:
# in bearer mode their presence alone decides the answer, 400).
_odd = st.sampled_from([False] * 7 + [True])
_accept = st.one_of(st.none(), _text, st.sampled_from(["application/json", "text/plain", "text/x-shellscript", "*/*;q=0", "text/*;q=abc", "application/json;q=2"]))
_format = st.one_of(st.none(), st.none(), _text, st.sampled_from(["json", "dotenv", "shell", "JSON", ""]))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(env=_env, authorization=_authorization, principal=_principal, principal_id=_principal_id, odd=_odd, accept=_accept, fmt=_format)
def test_bad_input_never_500_and_no_value_in_any_error(
    functions: dict[str, Any], mode: str, sandbox: SandboxClient, tokens: dict[str, str], values: list[str],
    env: str, authorization: Any, principal: Any, principal_id: Any, odd: bool, accept: str | None, fmt: str | None,
) -> None:
    def oid(value: Any) -> str:
        return sandbox.identities[value[1]].object_id if isinstance(value, tuple) else value

    headers: dict[str, str] = {}
    if isinstance(authorization, tuple):
        authorization = f"Bearer {tokens[authorization[1]]}{authorization[2]}"
    if authorization is not None:
        headers["Authorization"] = authorization
    if (mode == "app_service") == odd:
        principal = principal_id = None
    if isinstance(principal, tuple):
        principal = client_principal([("oid", oid(principal[1])), *principal[2]])
    if principal is not None:
        headers["X-MS-CLIENT-PRINCIPAL"] = principal
    if principal_id is not None:
        headers["X-MS-CLIENT-PRINCIPAL-ID"] = oid(principal_id)
    if accept is not None:
        headers["Accept"] = accept
    response = get_env(functions, env, headers=headers, params={"format": fmt} if fmt is not None else None)
    assert response.status_code in (200, 400, 401, 403, 406, 502)
    assert response.headers["Cache-Control"] == "no-store"
    if response.status_code == 200:
        assert env == "production"
        if mode == "bearer":
            assert headers["Authorization"] == f"Bearer {tokens['caller']}"
            assert "X-MS-CLIENT-PRINCIPAL" not in headers and "X-MS-CLIENT-PRINCIPAL-ID" not in headers
        else:
            assert "X-MS-CLIENT-PRINCIPAL" in headers
        return
    text = response.get_body().decode() + json.dumps(dict(response.headers))
    for value in values:
        assert value not in text
    body = json.loads(response.get_body())
    assert set(body) <= {"error", "message", "env", "failures"}
    if response.status_code == 401:
        assert re.match(r'^Bearer realm="vaultrelay"', response.headers["WWW-Authenticate"])
