"""Azurite process management and the storage proxy (stub: filled in by the storage work)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from sandbox.http import AzureError, CallContext, Service
from sandbox.runtime import Runtime
from sandbox.tls import SandboxPki


class AzuriteManager:
    def __init__(self, runtime: Runtime, workdir: Path, pki: SandboxPki) -> None:
        self.runtime = runtime
        self.workdir = workdir
        self.pki = pki

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def sync_accounts(self) -> None:
        return None


class StorageProxy(Service):
    name = "storage"
    raw = True

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def operation_of(self, request: web.Request) -> str:
        return request.method

    async def handle_raw(self, request: web.Request, ctx: CallContext) -> web.StreamResponse:
        raise AzureError(503, "ServiceUnavailable", "storage is not wired yet")
