"""Azurite (the real storage emulator) and the proxy that puts it on the sandbox's HTTPS port.

`AzuriteManager` runs one Azurite 3.37.0 (pinned in package.json) for Blob, Queue and Table over
HTTPS with the sandbox certificate, `--oauth basic` (bearer tokens from the sandbox identity
endpoint) and shared key / SAS for every storage account of the world (`AZURITE_ACCOUNTS`, with
the keys ARM's listKeys returns).  Data lives in the sandbox work directory so that a restart
keeps it: Azurite reads its accounts only from its environment, so regenerating a key (or adding
an account) restarts it with the new account set, after which the old key and everything it
signed is rejected.  Azurite dies with the sandbox: it stays in the sandbox's process group and
gets SIGKILL from the kernel if the sandbox process dies (PR_SET_PDEATHSIG).

`StorageProxy` serves `https://<account>.<blob|queue|table>.<suffix>` by forwarding each request
unchanged (Host included: Azurite takes the account from the first label of a production-style
host) to Azurite's port for that service, so storage gets the same faults and counters as every
other stand-in.  Azurite checks a bearer token's issuer, audience and lifetime but not Azure RBAC,
so the proxy authorizes Blob and Table requests made with a token against the world's role
assignments first (`storage_data_action`), and so it does for blob requests with a user
delegation SAS, against the roles of the identity that got the delegation key (`skoid`), as Azure
does; a denial is Azure's 403 `AuthorizationPermissionMismatch`, which names neither the action
nor a role.  Queue requests and requests signed with an account key are not checked here.

Azurite refuses what Azure refuses in entity keys (`/ \\ # ?`, control characters, more than 1 KiB)
and string properties over 64 KiB, but stores an entity of any size and any number of properties;
Azure holds at most 1 MiB and 252 properties per entity ("Understanding the Table service data
model"), so the proxy refuses larger single-entity writes (insert, update, merge) with Azure's
400 `EntityTooLarge` / `TooManyProperties` before Azurite sees them (`table_entity_problem`).
Entities inside a `$batch` are not checked.

While Azurite restarts (a key rotation) the proxy holds requests until it is back; while it is
stopped through the control API (`POST /azurite/stop`: a storage outage) every request is
answered at once with 503 ServerBusy, as Azure Storage answers when it is unavailable.

The proxy also enforces what Azure does and Azurite does not:
* Get User Delegation Key: the key's start and expiry must be within 7 days of the *service's*
  clock (REST "Get User Delegation Key"), else 400 `InvalidXmlNodeValue` with the offending value
  (the body Azure sends, azure-sdk-for-net#17690, azure-powershell#17183).  The proxy's clock can
  be skewed against the client's through the control API (`PUT /storage/clock {"skew_s": s}`,
  `SandboxClient.set_storage_clock_skew`): a negative skew is a service whose clock is behind.
* An account with `allowSharedKeyAccess: false` (set through ARM) refuses Shared Key requests
  and key-signed SAS (account and service SAS) with 403 `KeyBasedAuthenticationNotPermitted`
  (Learn: "Prevent Shared Key authorization for an Azure Storage account"); bearer tokens and
  user delegation SAS still work.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from sandbox.http import CallContext, Service, bearer_token, json_response, read_json
from sandbox.runtime import Runtime
from sandbox.tls import SandboxPki
from sandbox.world import STORAGE_TYPE, Resource, storage_keys

PROJECT_ROOT = Path(__file__).resolve().parent.parent
AZURITE_JS = PROJECT_ROOT / "node_modules" / "azurite" / "dist" / "src" / "azurite.js"
EMULATOR_ACCOUNT = "devstoreaccount1"
EMULATOR_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
SERVICES = ("blob", "queue", "table")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers", "transfer-encoding", "upgrade"}
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class AzuriteManager:
    """Starts, restarts and stops the sandbox's Azurite."""

    def __init__(self, runtime: Runtime, workdir: Path, pki: SandboxPki) -> None:
        self.runtime = runtime
        self.workdir = workdir
        self.pki = pki
        self.ports = {service: _free_port() for service in SERVICES}
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stopped = False  # stopped through the control API: an outage, not a restart
        self._accounts_env = ""
        self._lock = asyncio.Lock()
        self._ready = asyncio.Event()

    def accounts_env(self) -> str:
        """`AZURITE_ACCOUNTS` for every storage account of the world, plus the emulator account."""
        entries = [f"{EMULATOR_ACCOUNT}:{EMULATOR_KEY}"]
        for resource in sorted(self.runtime.world.resources_of(STORAGE_TYPE), key=lambda r: r.name):
            keys = storage_keys(resource)
            entries.append(f"{resource.name}:{keys['key1']}:{keys['key2']}")
        return ";".join(entries)

    async def start(self) -> None:
        """Start Azurite with the current accounts; returns when every service accepts connections."""
        async with self._lock:
            await self._start_locked()
            self.stopped = False

    async def _start_locked(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        node = shutil.which("node")
        if node is None or not AZURITE_JS.exists():
            raise RuntimeError("Azurite is not installed: run `npm ci` (make setup does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._accounts_env = self.accounts_env()
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = self._accounts_env
        args = [
            node, str(AZURITE_JS),
            "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
            "--blobPort", str(self.ports["blob"]), "--queuePort", str(self.ports["queue"]),
            "--tablePort", str(self.ports["table"]),
            "--location", str(self.workdir),
            "--cert", str(self.pki.server_cert), "--key", str(self.pki.server_key),
            "--oauth", "basic", "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
        ]
        log = (self.workdir / "azurite.log").open("ab")
        try:
            self.process = subprocess.Popen(
                args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while not all(self._accepts(port) for port in self.ports.values()):
            if self.process.poll() is not None:
                raise RuntimeError(f"Azurite exited with {self.process.returncode}; see {self.workdir / 'azurite.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError("Azurite did not start in time")
            await asyncio.sleep(0.05)
        self._ready.set()

    @staticmethod
    def _accepts(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
        return False

    async def stop(self) -> None:
        async with self._lock:
            self.stopped = True
            await self._stop_locked()

    async def _stop_locked(self) -> None:
        self._ready.clear()
        process = self.process
        self.process = None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # Azurite saves its databases when it closes
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.poll() is None:
            process.kill()
            process.wait()

    async def restart(self) -> None:
        async with self._lock:
            await self._stop_locked()
            self.restarts += 1
            await self._start_locked()
            self.stopped = False

    async def sync_accounts(self) -> None:
        """Restart Azurite if the world's accounts or keys changed since it started."""
        if self.accounts_env() != self._accounts_env:
            await self.restart()

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "ports": dict(self.ports),
            "pid": self.process.pid if self.process is not None else None,
            "running": self.process is not None and self.process.poll() is None,
            "restarts": self.restarts,
            "stopped": self.stopped,
        }

    def control_routes(self, app: web.Application) -> None:
        async def describe(request: web.Request) -> web.Response:
            return json_response(self.describe())

        async def restart(request: web.Request) -> web.Response:
            await self.restart()
            return json_response(self.describe())

        async def stop(request: web.Request) -> web.Response:
            await self.stop()
            return json_response(self.describe())

        async def start(request: web.Request) -> web.Response:
            await self.start()
            return json_response(self.describe())

        app.router.add_get("/azurite", describe)
        app.router.add_post("/azurite/restart", restart)
        app.router.add_post("/azurite/stop", stop)
        app.router.add_post("/azurite/start", start)


class StorageProxy(Service):
    """Forwards production-style storage URLs on the sandbox port to Azurite."""

    name = "storage"
    raw = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self._session: aiohttp.ClientSession | None = None
        self.clock_skew_s = 0.0  # the service's clock minus the real one (control API)

    def now(self) -> datetime:
        """The storage service's clock."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_skew_s)

    def control_routes(self, app: web.Application) -> None:
        async def get_clock(request: web.Request) -> web.Response:
            return json_response({"skew_s": self.clock_skew_s, "now": self.now().isoformat()})

        async def put_clock(request: web.Request) -> web.Response:
            body = await read_json(request)
            skew = body.get("skew_s") if isinstance(body, dict) else None
            if not isinstance(skew, int | float) or isinstance(skew, bool) or abs(skew) > 30 * 86400:
                return json_response({"error": "skew_s (seconds, at most 30 days either way) is required"}, status=400)
            self.clock_skew_s = float(skew)
            return await get_clock(request)

        app.router.add_get("/storage/clock", get_clock)
        app.router.add_put("/storage/clock", put_clock)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            assert self.runtime.azurite is not None
            context = ssl.create_default_context(cafile=str(self.runtime.azurite.pki.ca_cert))
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=256),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    @staticmethod
    def _service(request: web.Request) -> str:
        labels = request.host.split(".")
        return labels[1].lower() if len(labels) > 1 else "blob"

    def operation_of(self, request: web.Request) -> str:
        comp = request.query.get("comp")
        restype = request.query.get("restype")
        suffix = f":{comp}" if comp else (f":{restype}" if restype else "")
        return f"{self._service(request)}:{request.method}{suffix}"

    async def handle_raw(self, request: web.Request, ctx: CallContext) -> web.StreamResponse:
        manager = self.runtime.azurite
        token = bearer_token(request)
        if token is not None:
            with contextlib.suppress(Exception):
                ctx.identity, ctx.claims = self.runtime.issuer.validate(token, set())
        if manager is None or manager.stopped or not await manager.wait_ready(15.0):
            return _storage_error(503, "ServerBusy", "The storage service is not available right now.")
        service = self._service(request)
        account = self.runtime.world.find_resource(STORAGE_TYPE, request.host.split(".", 1)[0])
        if account is not None and account.properties.get("allowSharedKeyAccess") is False and _signed_with_account_key(request):
            return _key_based_refused(service)
        # RBAC: of the token's identity, or of the identity that got the user delegation key a
        # SAS was signed with (`skoid`): Azure checks both, at the time of the request.
        principal = ctx.identity.object_id if ctx.identity is not None else (
            request.query.get("skoid") if service == "blob" and "sig" in request.query else None)
        if principal:
            needed = storage_data_action(service, request.method, request.path, request.query, account) if account else None
            if needed is not None and not self.runtime.world.authorize(principal, needed[0], needed[2], data=needed[1]):
                return _storage_error(403, "AuthorizationPermissionMismatch",
                                      "This request is not authorized to perform this operation using this permission.")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        if service == "blob" and request.method == "POST" and _is_user_delegation_key_request(request) and token is not None:
            refused = _user_delegation_key_refusal(body, self.now())
            if refused is not None:
                return refused
        if service == "table" and body:
            problem = table_entity_problem(request.method, request.path, body)
            if problem is not None:
                return _table_error(400, *problem)
        url = f"https://127.0.0.1:{manager.ports[service]}{request.raw_path}"
        for attempt in range(40):
            try:
                async with self._client().request(
                    request.method, url, headers=headers, data=body if body else None, allow_redirects=False,
                ) as upstream:
                    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                    for key, value in upstream.headers.items():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            response.headers.add(key, value)
                    if upstream.content_length is not None:
                        response.content_length = upstream.content_length
                    await response.prepare(request)
                    if request.method != "HEAD":
                        async for chunk in upstream.content.iter_chunked(65536):
                            await response.write(chunk)
                    await response.write_eof()
                    return response
            except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
                # Azurite is restarting (key rotation): wait for it a while; stopped: an outage.
                if manager.stopped:
                    break
                if attempt == 39 or not await manager.wait_ready(0.25):
                    await asyncio.sleep(0.25)
                continue
        return _storage_error(503, "ServerBusy", "The storage service is not available right now.")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_BLOB = "Microsoft.Storage/storageAccounts/blobServices"
_TABLE = "Microsoft.Storage/storageAccounts/tableServices"


def storage_data_action(
    service: str, method: str, path: str, query: Any, account: Resource,
) -> tuple[str, bool, str] | None:
    """(action, is data action, scope resource id) Azure RBAC checks for a Blob or Table request
    made with a bearer token; None for requests the sandbox does not check (queues, service
    properties and statistics).  Scopes go down to the container or table, so assignments there
    count, as in Azure.
    """
    method = method.upper()
    read = method in ("GET", "HEAD")
    parts = [p for p in path.split("/") if p]
    if service == "blob":
        comp = (query.get("comp") or "").lower()
        if not parts:
            if comp == "userdelegationkey":
                return f"{_BLOB}/generateUserDelegationKey/action", False, account.id
            if comp == "list":
                return f"{_BLOB}/containers/read", False, account.id
            return None
        container = f"{account.id}/blobServices/default/containers/{parts[0]}"
        if len(parts) == 1 and (query.get("restype") or "").lower() == "container":
            if comp == "list":
                return f"{_BLOB}/containers/blobs/read", True, container
            verb = "read" if read else ("delete" if method == "DELETE" else "write")
            return f"{_BLOB}/containers/{verb}", False, container
        verb = "read" if read else ("delete" if method == "DELETE" else "write")
        return f"{_BLOB}/containers/blobs/{verb}", True, container
    if service == "table":
        if not parts or parts[0].startswith("$"):
            # the service root, or $batch (the tables are in the body): account scope
            return (f"{_TABLE}/tables/entities/write", True, account.id) if parts else None
        head = parts[0]
        if head.lower().startswith("tables"):
            if method == "GET" and head.lower() == "tables":
                return f"{_TABLE}/tables/read", False, account.id
            named = head[head.find("(") + 1:head.rfind(")")].strip("'") if "(" in head else ""
            scope = f"{account.id}/tableServices/default/tables/{named}" if named else account.id
            return f"{_TABLE}/tables/{'read' if read else ('delete' if method == 'DELETE' else 'write')}", False, scope
        table = f"{account.id}/tableServices/default/tables/{head.split('(', 1)[0]}"
        if read:
            return f"{_TABLE}/tables/entities/read", True, table
        if method == "DELETE":
            return f"{_TABLE}/tables/entities/delete", True, table
        if method == "POST":
            return f"{_TABLE}/tables/entities/add/action", True, table
        return f"{_TABLE}/tables/entities/write", True, table
    return None


def _storage_error(status: int, code: str, message: str, extra: str = "") -> web.Response:
    request_id = str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    text = f"{message}\nRequestId:{request_id}\nTime:{stamp}"
    body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{text}</Message>{extra}</Error>'
    return web.Response(status=status, body=body.encode(), content_type="application/xml",
                        headers={"x-ms-error-code": code, "x-ms-request-id": request_id})


# ---- accounts without Shared Key access ----------------------------------------------------------
KEY_BASED_NOT_PERMITTED = "Key based authentication is not permitted on this storage account."


def _signed_with_account_key(request: web.Request) -> bool:
    """A Shared Key (or Shared Key Lite) request, or a SAS signed with an account key (an account
    or service SAS: a `sig` without the user delegation key's `skoid`)."""
    scheme = request.headers.get("Authorization", "").split(" ", 1)[0].lower()
    if scheme in ("sharedkey", "sharedkeylite"):
        return True
    return "sig" in request.query and "skoid" not in request.query


def _key_based_refused(service: str) -> web.Response:
    """Azure's 403 KeyBasedAuthenticationNotPermitted: XML for Blob and Queue, OData JSON for Table."""
    if service != "table":
        return _storage_error(403, "KeyBasedAuthenticationNotPermitted", KEY_BASED_NOT_PERMITTED)
    request_id = str(uuid.uuid4())
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"
    body = {"odata.error": {"code": "KeyBasedAuthenticationNotPermitted", "message": {
        "lang": "en-US", "value": f"{KEY_BASED_NOT_PERMITTED}\nRequestId:{request_id}\nTime:{stamp}"}}}
    return web.Response(status=403, body=json.dumps(body).encode(),
                        content_type="application/json", charset="utf-8",
                        headers={"x-ms-error-code": "KeyBasedAuthenticationNotPermitted", "x-ms-request-id": request_id})


# ---- Get User Delegation Key: the 7-day bound ----------------------------------------------------
USER_DELEGATION_KEY_BOUND = timedelta(days=7)
_KEY_INFO_TIME = re.compile(r"<(Start|Expiry)>\s*([^<]*?)\s*</\1>")


def _is_user_delegation_key_request(request: web.Request) -> bool:
    return (request.query.get("restype") or "").lower() == "service" and (request.query.get("comp") or "").lower() == "userdelegationkey"


def _user_delegation_key_refusal(body: bytes, now: datetime) -> web.Response | None:
    """Azure's answer to a KeyInfo whose Start or Expiry is more than 7 days from `now` (the
    service's clock): 400 InvalidXmlNodeValue naming the value (Azure puts the value in both
    XmlNodeName and XmlNodeValue); None when the times are within the bound (malformed bodies are
    left to Azurite)."""
    found = dict(_KEY_INFO_TIME.findall(body.decode("utf-8", errors="replace")))
    for element in ("Start", "Expiry"):
        text = found.get(element)
        if not text:
            continue
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if abs(when - now) > USER_DELEGATION_KEY_BOUND:
            return _storage_error(400, "InvalidXmlNodeValue", "The value for one of the XML nodes is not in the correct format.",
                                  f"<XmlNodeName>{text}</XmlNodeName><XmlNodeValue>{text}</XmlNodeValue>")
    return None


# Table entity limits (Learn, "Understanding the Table service data model"): 252 properties besides
# PartitionKey, RowKey and Timestamp, 1 MiB in all, sized as the table design guide estimates it:
# 4 bytes + 2 per key character + per property 8 + 2 per name character + its value's size.
MAX_ENTITY_BYTES = 1024 * 1024
MAX_ENTITY_PROPERTIES = 252
_EDM_SIZES = {"Edm.Boolean": 1, "Edm.DateTime": 8, "Edm.Double": 8, "Edm.Guid": 16, "Edm.Int32": 4, "Edm.Int64": 8}


def entity_size(entity: dict[str, Any]) -> tuple[int, int]:
    """(estimated bytes, properties besides the keys and Timestamp) of a JSON entity as sent."""
    def units(text: str) -> int:
        return len(text.encode("utf-16-le")) // 2

    size = 4 + 2 * (units(str(entity.get("PartitionKey", ""))) + units(str(entity.get("RowKey", ""))))
    count = 0
    for name, value in entity.items():
        if name in ("PartitionKey", "RowKey", "Timestamp") or "@odata." in name or name.startswith("odata."):
            continue
        count += 1
        kind = entity.get(f"{name}@odata.type")
        if kind == "Edm.Binary":
            value_size = 4 + len(str(value)) * 3 // 4  # base64 text: its decoded length
        elif kind in _EDM_SIZES:
            value_size = _EDM_SIZES[kind]
        elif isinstance(value, bool):
            value_size = 1
        elif isinstance(value, int):
            value_size = 4
        elif isinstance(value, float):
            value_size = 8
        else:
            value_size = 4 + 2 * units(value if isinstance(value, str) else json.dumps(value))
        size += 8 + 2 * units(name) + value_size
    return size, count


def table_entity_problem(method: str, path: str, body: bytes) -> tuple[str, str] | None:
    """(error code, message) when a single-entity write (insert, update, merge) exceeds Azure's
    entity limits; None otherwise (and for anything that is not such a write)."""
    parts = [p for p in path.split("/") if p]
    if method.upper() not in ("POST", "PUT", "MERGE", "PATCH") or len(parts) != 1:
        return None
    head = parts[0]
    if head.startswith("$") or head.lower().startswith("tables"):
        return None
    if method.upper() == "POST" and "(" in head:
        return None
    try:
        entity = json.loads(body)
    except ValueError:
        return None
    if not isinstance(entity, dict):
        return None
    size, count = entity_size(entity)
    if count > MAX_ENTITY_PROPERTIES:
        return "TooManyProperties", "The entity contains more properties than allowed."
    if size > MAX_ENTITY_BYTES:
        return "EntityTooLarge", "The entity is larger than the maximum size permitted."
    return None


def _table_error(status: int, code: str, message: str) -> web.Response:
    """A Table service error in its JSON form (the form azure-data-tables asks for)."""
    value = f"{message}\nRequestId:{uuid.uuid4()}\nTime:{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')[:-3]}Z"
    body = json.dumps({"odata.error": {"code": code, "message": {"lang": "en-US", "value": value}}})
    return web.Response(status=status, body=body.encode(), headers={
        "Content-Type": "application/json;odata=minimalmetadata;streaming=true;charset=utf-8", "x-ms-error-code": code})


def account_key_bytes(key: str) -> bytes:
    return base64.b64decode(key)
