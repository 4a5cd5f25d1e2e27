"""A small request router shared by the HTTPS stand-ins, with Azure-style errors.

One aiohttp server serves every stand-in; the Host header picks the service
(`<vault>.vault.<domain>`, `management.<domain>`, `login.<domain>`).  Each service declares
routes with an operation name (used by the counters), which of them need a bearer token, and
how its errors and 401 challenges look on the wire.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.world import Identity

Handler = Callable[..., Awaitable[web.StreamResponse]]


class AzureError(Exception):
    """An error the stand-in answers with; rendered in the service's own error format."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
        inner_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.inner_code = inner_code


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    operation: str
    auth: bool


@dataclass
class CallContext:
    """What one request is, for faults, counters and handlers."""

    service: str
    operation: str = "unknown"
    target: str | None = None
    path: str = ""
    identity: Identity | None = None
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def identity_label(self) -> str:
        return self.identity.name if self.identity else "anonymous"


class Service:
    """Base class of a stand-in: routes, target naming, challenge and error rendering."""

    name = "service"
    case_insensitive_paths = False

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def route(self, method: str, pattern: str, operation: str, *, auth: bool = True) -> Callable[[Handler], Handler]:
        flags = re.IGNORECASE if self.case_insensitive_paths else 0
        compiled = re.compile("^" + pattern.rstrip("/") + "/?$", flags)

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method.upper(), compiled, handler, operation, auth))
            return handler

        return register

    def add_route(self, method: str, pattern: str, operation: str, handler: Handler, *, auth: bool = True) -> None:
        self.route(method, pattern, operation, auth=auth)(handler)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        path_matched = False
        for route in self.routes:
            found = route.pattern.match(path)
            if found:
                path_matched = True
                if route.method == method:
                    return route, found.groupdict()
        if path_matched:
            raise AzureError(405, "MethodNotAllowed", f"The requested method {method} is not allowed.")
        return None

    # ---- hooks for subclasses ---------------------------------------------------------------
    def target_of(self, request: web.Request, params: dict[str, str]) -> str | None:
        """The vault/account a request addresses (for throttling and counters)."""
        return None

    def accepted_audiences(self, request: web.Request) -> set[str]:
        """Token audiences this service accepts (compared without trailing slash)."""
        return set()

    def challenge(self, request: web.Request) -> dict[str, str]:
        """Headers of a 401 response to a request without a usable token."""
        return {"WWW-Authenticate": "Bearer"}

    def render_error(self, error: AzureError) -> web.Response:
        body: dict[str, Any] = {"error": {"code": error.code, "message": error.message}}
        if error.inner_code:
            body["error"]["innererror"] = {"code": error.inner_code}
        return json_response(body, status=error.status, headers=error.headers)


def json_response(body: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with Azure's usual request-id headers."""
    all_headers = {"x-ms-request-id": str(uuid.uuid4())}
    all_headers.update(headers or {})
    return web.Response(
        body=json.dumps(body).encode(), status=status, headers=all_headers,
        content_type="application/json", charset="utf-8",
    )


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; a 400 BadParameter error when it is not."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise AzureError(400, "BadParameter", f"The request body is not valid JSON: {exc.msg}.") from exc
    except UnicodeDecodeError as exc:
        raise AzureError(400, "BadParameter", "The request body is not UTF-8.") from exc


def bearer_token(request: web.Request) -> str | None:
    """The bearer token of the Authorization header, if any."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
