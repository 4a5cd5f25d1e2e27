"""Composes the sandbox: one HTTPS server for the stand-ins, the managed identity endpoint,
the control API, Azurite behind a storage proxy, and the env file that describes it all."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shlex
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from sandbox.faults import Counters, DropConnection, Faults
from sandbox.http import AzureError, CallContext, Service, json_response, read_json
from sandbox.runtime import ARM_RETRY_AFTER_S, Runtime
from sandbox.tls import SandboxPki, create_pki
from sandbox.tokens import InvalidToken, LoginService, ManagedIdentityEndpoint, TokenIssuer
from sandbox.world import CONTAINER_APP_TYPE, COSMOS_TYPE, SITE_TYPE, SQL_TYPE, STORAGE_TYPE, VAULT_TYPE, World

log = logging.getLogger("sandbox")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOSTSHIM_DIR = Path(__file__).resolve().parent / "hostshim"

DEFAULT_VAULTS = ("kv-source", "kv-shared", "kv-target", "kv-state")
DEFAULT_STORAGE_ACCOUNTS = ("sandboxstore", "sandboxdata")
DEFAULT_COSMOS_ACCOUNT = "sandbox-cosmos"
DEFAULT_WEB_APP = "sandbox-web"
DEFAULT_USER_IDENTITIES = ("admin", "app", "data", "caller", "other")

# Variables the env file extends (the sourcing shell's value kept after the sandbox's) instead of replacing.
EXTENDED = ("PYTHONPATH",)
RESOURCE_KINDS = {
    "vault": VAULT_TYPE,
    "storage": STORAGE_TYPE,
    "cosmos": COSMOS_TYPE,
    "site": SITE_TYPE,
    "sql": SQL_TYPE,
    "containerapp": CONTAINER_APP_TYPE,
}


def _listen_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Sandbox:
    """A local Azure: build with `Sandbox(workdir)`, then `await start()` / `await stop()`."""

    def __init__(
        self, workdir: Path, *, domain: str = "vaultrelay.test", seed: str = "vaultrelay",
        with_azurite: bool = True, token_lifetime_s: int = 24 * 3600, arm_retry_after_s: int = ARM_RETRY_AFTER_S,
    ) -> None:
        self.workdir = workdir
        self.world = World(seed=seed, domain=domain)
        self.issuer = TokenIssuer(self.world, lifetime_s=token_lifetime_s)
        self.runtime = Runtime(
            world=self.world, issuer=self.issuer, faults=Faults(), counters=Counters(), domain=domain,
            arm_retry_after_s=arm_retry_after_s,
        )
        self.with_azurite = with_azurite
        self.identity_header = secrets.token_hex(16)
        self.pki: SandboxPki | None = None
        self._runners: list[web.AppRunner] = []
        self._services: dict[str, Service] = {}
        self._https_sock = _listen_socket()
        self._identity_sock = _listen_socket()
        self._control_sock = _listen_socket()
        self.runtime.https_port = self._https_sock.getsockname()[1]
        self.identity_port = self._identity_sock.getsockname()[1]
        self.control_port = self._control_sock.getsockname()[1]
        self.mi_endpoint = ManagedIdentityEndpoint(self.world, self.issuer, self.identity_header)
        self.started_at = 0.0

    # ---- composition ------------------------------------------------------------------------
    def _build_services(self) -> None:
        from sandbox.arm import ArmService
        from sandbox.azurite import AzuriteManager, StorageProxy
        from sandbox.eventgrid import EventGrid
        from sandbox.keyvault import KeyVaultService

        rt = self.runtime
        rt.events = EventGrid(rt)
        assert self.pki is not None
        rt.azurite = AzuriteManager(rt, self.workdir / "azurite", self.pki) if self.with_azurite else None
        self._services = {
            "keyvault": KeyVaultService(rt),
            "arm": ArmService(rt),
            "login": LoginService(self.world, self.issuer, rt.authority),
            "storage": StorageProxy(rt),
        }

    def _seed(self) -> None:
        world = self.world
        world.add_identity("system", "system")
        for name in DEFAULT_USER_IDENTITIES:
            world.add_identity(name, "user")
        world.add_identity("sp", "service_principal")
        # The admin has full rights, data planes included (Owner alone grants no data actions,
        # exactly as in Azure), so any SDK client can seed data with it.
        for role in ("Owner", "Key Vault Administrator", "Storage Blob Data Contributor", "Storage Table Data Contributor"):
            world.assign_role(world.subscription_scope, role, world.identities["admin"].object_id)
        for vault in DEFAULT_VAULTS:
            world.add_resource(VAULT_TYPE, vault)
        for account in DEFAULT_STORAGE_ACCOUNTS:
            world.add_resource(STORAGE_TYPE, account)
        world.add_resource(COSMOS_TYPE, DEFAULT_COSMOS_ACCOUNT)
        world.add_resource(SITE_TYPE, DEFAULT_WEB_APP)

    def _service_for_host(self, host: str) -> tuple[Service, str | None] | None:
        name = host.rsplit(":", 1)[0].lower() if not host.startswith("[") else host
        domain = self.runtime.domain
        if not name.endswith("." + domain):
            return None
        label = name[: -len(domain) - 1]
        if label == "management":
            return self._services["arm"], None
        if label == "login":
            return self._services["login"], None
        first, _, kind = label.partition(".")
        if kind == "vault":
            return self._services["keyvault"], first
        if kind in ("blob", "table", "queue"):
            return self._services["storage"], first
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        found = self._service_for_host(request.host)
        if found is None:
            ctx = CallContext(service="unknown")
            self.runtime.counters.record(ctx, 421)
            return json_response({"error": {"code": "MisdirectedRequest", "message": f"No sandbox service at host {request.host}."}}, status=421)
        service, host_target = found
        ctx = CallContext(service=service.name, target=host_target, path=request.path)
        status: int | str = 500
        try:
            response = await self._serve(service, request, ctx)
            status = response.status
            return response
        except AzureError as error:
            status = error.status
            return service.render_error(error)
        except DropConnection:
            status = "dropped"
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from None
        finally:
            self.runtime.counters.record(ctx, status)

    async def _serve(self, service: Service, request: web.Request, ctx: CallContext) -> web.StreamResponse:
        if getattr(service, "raw", False):
            ctx.operation = service.operation_of(request)  # type: ignore[attr-defined]
            await self.runtime.faults.apply(ctx)
            return await service.handle_raw(request, ctx)  # type: ignore[attr-defined]
        matched = service.match(request.method, request.path)
        if matched is None:
            raise AzureError(404, "NotFound", f"No route for {request.method} {request.path}.")
        route, params = matched
        ctx.operation = route.operation
        ctx.target = service.target_of(request, params) or ctx.target
        await self.runtime.faults.apply(ctx)
        if route.auth:
            token = _bearer(request)
            if token is None:
                raise AzureError(401, "Unauthorized", service_unauthorized_message(service, None), headers=service.challenge(request))
            try:
                ctx.identity, ctx.claims = self.issuer.validate(token, service.accepted_audiences(request))
            except InvalidToken as exc:
                raise AzureError(401, "Unauthorized", service_unauthorized_message(service, str(exc)), headers=service.challenge(request)) from None
        return await route.handler(request, ctx, **params)

    async def _identity(self, request: web.Request) -> web.StreamResponse:
        ctx = CallContext(service="identity")
        status: int | str = 500
        try:
            await self.runtime.faults.apply(ctx)
            response = await self.mi_endpoint.handle(request, ctx)
            status = response.status
            return response
        except AzureError as error:
            status = error.status
            return json_response({"statusCode": error.status, "message": error.message}, status=error.status, headers=error.headers)
        except DropConnection:
            status = "dropped"
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError() from None
        finally:
            self.runtime.counters.record(ctx, status)

    # ---- control API ------------------------------------------------------------------------
    def _control_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        rt = self.runtime
        routes = web.RouteTableDef()

        @routes.get("/health")
        async def health(request: web.Request) -> web.Response:
            return json_response({"ok": True, "uptime_s": time.time() - self.started_at})

        @routes.get("/counters")
        async def counters(request: web.Request) -> web.Response:
            snapshot = rt.counters.snapshot()
            snapshot["tokens_issued"] = self.issuer.issued
            snapshot["throttled"] = rt.faults.throttled
            return json_response(snapshot)

        @routes.delete("/counters")
        async def reset_counters(request: web.Request) -> web.Response:
            rt.counters.reset()
            self.issuer.issued = 0
            rt.faults.throttled = 0
            return web.Response(status=204)

        @routes.get("/faults")
        async def get_faults(request: web.Request) -> web.Response:
            return json_response(rt.faults.describe())

        @routes.put("/faults")
        async def put_faults(request: web.Request) -> web.Response:
            try:
                rt.faults.configure(await read_json(request))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, status=400)
            return json_response(rt.faults.describe())

        @routes.delete("/faults")
        async def clear_faults(request: web.Request) -> web.Response:
            rt.faults.configure({})
            return web.Response(status=204)

        @routes.get("/world")
        async def world(request: web.Request) -> web.Response:
            return json_response(self.describe_world())

        @routes.post("/resources")
        async def create_resource(request: web.Request) -> web.Response:
            body = await read_json(request)
            kind = RESOURCE_KINDS.get(str(body.get("kind")))
            if kind is None or not body.get("name"):
                return json_response({"error": f"kind must be one of {sorted(RESOURCE_KINDS)} and name is required"}, status=400)
            resource = self.world.add_resource(kind, str(body["name"]), resource_group=body.get("resource_group"))
            if kind == STORAGE_TYPE and rt.azurite is not None:
                await rt.azurite.sync_accounts()
            return json_response({"id": resource.id, "name": resource.name, "type": resource.type}, status=201)

        @routes.post("/role-assignments")
        async def assign_role(request: web.Request) -> web.Response:
            # A shortcut for tests; the real way is ARM Microsoft.Authorization/roleAssignments.
            body = await read_json(request)
            identity = self.world.identities.get(str(body.get("identity")))
            scope = str(body.get("scope") or self.world.subscription_scope)
            try:
                assignment = self.world.assign_role(scope, str(body.get("role")), identity.object_id) if identity else None
            except KeyError:
                assignment = None
            if assignment is None:
                return json_response({"error": "identity (a known name) and role (a known role name) are required"}, status=400)
            return json_response({"id": assignment.id, "name": assignment.name}, status=201)

        @routes.post("/identities")
        async def create_identity(request: web.Request) -> web.Response:
            # A new user-assigned managed identity with no role (Microsoft.ManagedIdentity is not served).
            body = await read_json(request)
            name = str(body.get("name") or "")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", name) or name in self.world.identities:
                return json_response({"error": "name (letters, digits, '-', '_'; not taken) is required"}, status=400)
            identity = self.world.add_identity(name, "user")
            return json_response({"name": name, "client_id": identity.client_id, "object_id": identity.object_id,
                                  "resource_id": identity.resource_id}, status=201)

        @routes.post("/tokens")
        async def issue_token(request: web.Request) -> web.Response:
            body = await read_json(request)
            identity = self.world.identities.get(str(body.get("identity")))
            if identity is None or not body.get("resource"):
                return json_response({"error": "identity (a known name) and resource are required"}, status=400)
            token, expires_on = self.issuer.issue(
                identity, str(body["resource"]), lifetime_s=body.get("lifetime_s"),
                extra_claims=body.get("claims"),
            )
            return json_response({"access_token": token, "expires_on": expires_on})

        @routes.put("/tokens")
        async def token_settings(request: web.Request) -> web.Response:
            body = await read_json(request)
            self.issuer.lifetime_s = int(body.get("lifetime_s", self.issuer.lifetime_s))
            return json_response({"lifetime_s": self.issuer.lifetime_s})

        app.add_routes(routes)
        for service in [*self._services.values(), rt.events, rt.azurite]:
            register = getattr(service, "control_routes", None)
            if register is not None:
                register(app)
        return app

    def describe_world(self) -> dict[str, Any]:
        world = self.world
        return {
            "tenant_id": world.tenant_id,
            "subscription_id": world.subscription_id,
            "resource_group": world.resource_group,
            "identities": {
                name: {"kind": i.kind, "client_id": i.client_id, "object_id": i.object_id, "resource_id": i.resource_id}
                for name, i in world.identities.items()
            },
            "resources": [{"type": r.type, "name": r.name, "id": r.id} for r in world.resources.values()],
            "role_assignments": len(world.role_assignments),
        }

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every part; returns when all of them answer."""
        self.started_at = time.time()
        self.pki = create_pki(self.workdir / "pki", self.runtime.domain)
        self._build_services()
        self._seed()
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(str(self.pki.server_cert), str(self.pki.server_key))

        main = web.Application(client_max_size=64 * 1024 * 1024)
        main.router.add_route("*", "/{tail:.*}", self._dispatch)
        identity = web.Application()
        identity.router.add_route("*", "/{tail:.*}", self._identity)
        control = self._control_app()

        for app, sock, ctx in (
            (main, self._https_sock, ssl_ctx),
            (identity, self._identity_sock, None),
            (control, self._control_sock, None),
        ):
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.SockSite(runner, sock, ssl_context=ctx)
            await site.start()
            self._runners.append(runner)
        if self.runtime.azurite is not None:
            await self.runtime.azurite.start()
        if self.runtime.events is not None:
            await self.runtime.events.start()

    async def stop(self) -> None:
        """Stop every part and every child process."""
        if self.runtime.events is not None:
            await self.runtime.events.stop()
        if self.runtime.azurite is not None:
            await self.runtime.azurite.stop()
        proxy = self._services.get("storage")
        if proxy is not None:
            await proxy.close()  # type: ignore[attr-defined]
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    # ---- the env file -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Every variable the env file exports (the sandbox's public contract)."""
        assert self.pki is not None
        rt = self.runtime
        world = self.world
        users = [i for i in world.identities.values() if i.kind == "user"]
        sp = world.identities["sp"]
        storage = DEFAULT_STORAGE_ACCOUNTS[0]
        return {
            "SANDBOX_DOMAIN": rt.domain,
            "PYTHONPATH": str(HOSTSHIM_DIR),  # the env file extends the caller's PYTHONPATH with it
            "IDENTITY_ENDPOINT": f"http://127.0.0.1:{self.identity_port}/msi/token",
            "IDENTITY_HEADER": self.identity_header,
            "REQUESTS_CA_BUNDLE": str(self.pki.ca_bundle),
            "SANDBOX_CA_CERT": str(self.pki.ca_cert),
            "AZURE_TENANT_ID": world.tenant_id,
            "SANDBOX_SUBSCRIPTION_ID": world.subscription_id,
            "SANDBOX_RESOURCE_GROUP": world.resource_group,
            "SANDBOX_ARM_ENDPOINT": rt.arm_endpoint,
            "SANDBOX_ARM_AUDIENCE": "https://management.azure.com/",
            "SANDBOX_VAULT_DNS_SUFFIX": rt.vault_dns_suffix,
            "SANDBOX_KEYVAULT_AUDIENCE": rt.keyvault_audience,
            "SANDBOX_VAULTS": ",".join(DEFAULT_VAULTS),
            "SANDBOX_AUTHORITY": rt.authority,
            "SANDBOX_ADMIN_CLIENT_ID": world.identities["admin"].client_id,
            "SANDBOX_SYSTEM_PRINCIPAL_ID": world.system_identity.object_id,
            "SANDBOX_SYSTEM_CLIENT_ID": world.system_identity.client_id,
            "SANDBOX_USER_IDENTITIES": ",".join(
                f"{i.name}={i.client_id}:{i.object_id}:{i.resource_id}" for i in users
            ),
            "SANDBOX_SP_CLIENT_ID": sp.client_id,
            "SANDBOX_SP_CLIENT_SECRET": sp.client_secret or "",
            "SANDBOX_STORAGE_ACCOUNT": storage,
            "SANDBOX_STORAGE_ACCOUNTS": ",".join(DEFAULT_STORAGE_ACCOUNTS),
            "SANDBOX_STORAGE_SUFFIX": rt.suffix,
            "SANDBOX_BLOB_ENDPOINT": rt.storage_endpoint(storage, "blob"),
            "SANDBOX_TABLE_ENDPOINT": rt.storage_endpoint(storage, "table"),
            "SANDBOX_QUEUE_ENDPOINT": rt.storage_endpoint(storage, "queue"),
            # The Function app's storage as its identity-based connection names it (the work queue).
            "AzureWebJobsStorage__queueServiceUri": rt.storage_endpoint(storage, "queue"),
            "SANDBOX_COSMOS_ACCOUNT": DEFAULT_COSMOS_ACCOUNT,
            "SANDBOX_COSMOS_SUFFIX": f"documents.{rt.suffix}",
            "SANDBOX_WEB_APP": DEFAULT_WEB_APP,
            "SANDBOX_CONTROL_URL": f"http://127.0.0.1:{self.control_port}",
            # vaultrelay's own cloud settings: the sandbox is a custom cloud.
            "VAULTRELAY_CLOUD": "custom",
            "VAULTRELAY_AUTHORITY_HOST": rt.authority,
            "VAULTRELAY_ARM_ENDPOINT": rt.arm_endpoint,
            "VAULTRELAY_ARM_AUDIENCE": "https://management.azure.com/",
            "VAULTRELAY_VAULT_DNS_SUFFIX": rt.vault_dns_suffix,
            "VAULTRELAY_STORAGE_SUFFIX": rt.suffix,
            "VAULTRELAY_COSMOS_SUFFIX": f"documents.{rt.suffix}",
            "VAULTRELAY_SUBSCRIPTION_ID": world.subscription_id,
        }

    def write_env_file(self, path: Path) -> None:
        lines = ["# vaultrelay sandbox: source this file (set -a; . FILE; set +a)"]
        for key, value in self.env().items():
            if key in EXTENDED:
                # Put the sandbox's entry in front of what the shell sourcing the file already has.
                lines.append(f'export {key}={shlex.quote(value)}"${{{key}:+{os.pathsep}${key}}}"')
            else:
                lines.append(f"export {key}={shlex.quote(value)}")
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(path)


def _bearer(request: web.Request) -> str | None:
    from sandbox.http import bearer_token

    return bearer_token(request)


def service_unauthorized_message(service: Service, reason: str | None) -> str:
    """The 401 message in the service's own words."""
    render = getattr(service, "unauthorized_message", None)
    if render is not None:
        return str(render(reason))
    return reason or "Authentication is required."
