"""Helpers for the HTTP API tests: configs with `access:`, requests through the registered
functions, a WSGI adapter over them, and tokens the sandbox's issuer would not sign."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa

from core.runtime import LiveRuntime, set_live_runtime
from sandbox.client import SandboxClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vaultrelay.yaml"
AUDIENCE = "api://vaultrelay-tests"
GROUP_ID = "6f1c2a4e-0b7d-4c55-9a1e-3d2f8b9c0a11"
ADMIN_ROLE = "VaultRelay.Admin"

_EXTRA_ENVS: dict[str, Any] = {
    "staging": {"LOG_LEVEL": "debug"},
    "broken": {
        "LOG_LEVEL": "info",
        "MISSING_SECRET": {"from": {"store": "azure", "vault": "kv-source", "secret": "no-such-secret-anywhere"}},
        "API_KEY": {"from": {"store": "azure", "vault": "kv-source", "secret": "api-key"}},
    },
}


def write_config(path: Path, sandbox: SandboxClient, *, auth_mode: str = "bearer", audience: str | None = AUDIENCE,
                 access: dict[str, list[str]] | None = None) -> Path:
    """The example config plus test envs, an `api:` section and an `access:` section."""
    config = yaml.safe_load(EXAMPLE.read_text())
    config["envs"].update(_EXTRA_ENVS)
    if access is None:
        caller = sandbox.identities["caller"].object_id
        access = {"production": [caller, GROUP_ID, sandbox.env["SANDBOX_SP_CLIENT_ID"]], "broken": [caller]}
    config["api"] = {"auth_mode": auth_mode, "admins": [sandbox.identities["admin"].object_id]}
    if audience:
        config["api"]["audience"] = audience
    config["access"] = access
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def serving(api: LiveRuntime) -> Iterator[LiveRuntime]:
    """`api` as the process-wide LiveRuntime the registered functions use (one Function instance)."""
    old = set_live_runtime(api)
    try:
        yield api
    finally:
        set_live_runtime(old)


def request(method: str, path: str, *, headers: dict[str, str] | None = None, params: dict[str, str] | None = None,
            route_params: dict[str, str] | None = None) -> func.HttpRequest:
    query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
    return func.HttpRequest(method=method, url=f"http://localhost{path}{'?' + query if query else ''}", headers=headers or {},
                            params=params or {}, route_params=route_params or {}, body=b"")


def get_env(functions: dict[str, Any], env: str, token: str | None = None, *, headers: dict[str, str] | None = None,
            params: dict[str, str] | None = None) -> func.HttpResponse:
    """`GET /api/envs/{env}` through the function function_app.py registers."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    req = request("GET", f"/api/envs/{env}", headers=all_headers, params=params, route_params={"env": env})
    return functions["get_env"].get_user_function()(req)


def fetch(live: LiveRuntime, env: str, *, headers: dict[str, str] | None = None,
          params: dict[str, str] | None = None) -> func.HttpResponse:
    """`GET /api/envs/{env}` through the registered function, served by `live` (one instance)."""
    from tests.functions.conftest import registered_functions

    with serving(live):
        return get_env(registered_functions(), env, headers=headers, params=params)


def keyvault_event(live: LiveRuntime, event: Any) -> dict[str, Any]:
    """One Key Vault event handled by `live`'s current runtime (the Event Grid function's use
    case, core.app.events.handle_event), its outcome as a dict."""
    from core.app.events import handle_event

    return dict(handle_event(live.current(), event).__dict__)


def body_json(response: func.HttpResponse) -> Any:
    return json.loads(response.get_body())


def client_principal(claims: Iterable[tuple[str, str]], *, role_typ: str = "roles") -> str:
    """An `X-MS-CLIENT-PRINCIPAL` header value as App Service Authentication builds it."""
    document = {
        "auth_typ": "aad", "name_typ": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name", "role_typ": role_typ,
        "claims": [{"typ": typ, "val": val} for typ, val in claims],
    }
    return base64.b64encode(json.dumps(document).encode()).decode()


# ---- tokens the sandbox did not sign -----------------------------------------------------------
_FOREIGN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def foreign_token(sandbox: SandboxClient, *, kid: str, audience: str = AUDIENCE, identity: str = "caller") -> str:
    """A well-formed token for `identity`, signed with a key the tenant does not have."""
    now = int(time.time())
    claims = {
        "aud": audience, "iss": f"https://sts.windows.net/{sandbox.tenant_id}/", "iat": now, "nbf": now, "exp": now + 3600,
        "oid": sandbox.identities[identity].object_id, "appid": sandbox.identities[identity].client_id,
        "tid": sandbox.tenant_id, "sub": sandbox.identities[identity].object_id, "uti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, _FOREIGN_KEY, algorithm="RS256", headers={"kid": kid})


def tamper(token: str) -> str:
    """The token with one claim changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["oid"] = str(uuid.uuid4())
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


# ---- a WSGI adapter over the registered functions ---------------------------------------------
def wsgi_app(functions: dict[str, Any]) -> Callable[..., Iterable[bytes]]:
    """A WSGI application that routes `/api/<route>` to the registered HTTP functions the way
    the Functions host does (route templates, methods, route parameters)."""
    routes: list[tuple[re.Pattern[str], set[str], Any]] = []
    for fn in functions.values():
        trigger = next((b for b in fn.get_bindings() if b.type == "httpTrigger"), None)
        if trigger is None:
            continue
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", trigger.route)
        methods = {str(getattr(m, "value", m)).upper() for m in trigger.methods or ["GET"]}
        routes.append((re.compile(f"^/api/{pattern}$"), methods, fn.get_user_function()))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"].upper()
        headers = {key[5:].replace("_", "-").lower(): str(value) for key, value in environ.items() if key.startswith("HTTP_")}
        params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        for pattern, methods, handler in routes:
            match = pattern.match(path)
            if match is None:
                continue
            if method not in methods:
                start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
                return [b""]
            req = func.HttpRequest(method=method, url=f"http://localhost{path}", headers=headers, params=params,
                                   route_params=match.groupdict(), body=b"")
            response = handler(req)
            content_type = f"{response.mimetype}; charset={response.charset}"
            header_list = [("Content-Type", content_type), *((k, v) for k, v in response.headers.items() if k.lower() != "content-type")]
            start_response(f"{response.status_code} X", header_list)
            return [response.get_body()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b""]

    return app
