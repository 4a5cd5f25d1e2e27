"""`type: blob` target: the bundle as one dotenv or JSON blob, written with an ETag condition.

The blob's metadata says `managed_by=vaultrelay` and holds the bundle fingerprint; a blob without
that metadata is never overwritten.  Drift is a blob ETag different from the one last written.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from core.engine.render import dotenv_escape
from core.permissions import denied_note
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


def render_dotenv(values: dict[str, str]) -> str:
    """`NAME="value"` lines, escaped so that dotenv loaders and `set -a; . file` read them back."""
    # Always quoted, and backticks escaped too: the file is meant to be sourced by a shell.
    def quoted(value: str) -> str:
        return '"' + dotenv_escape(value).replace("`", "\\`") + '"'

    return "".join(f"{name}={quoted(values[name])}\n" for name in sorted(values))


class BlobTargetWriter:
    kind = "blob"
    whole_bundle = True
    ownership_in_state = False

    def __init__(self, config: Any, ctx: TargetContext) -> None:
        self.config = config
        self.ctx = ctx
        blob = config.blob or f"{config.env}.{'json' if config.format == 'json' else 'env'}"
        service = ctx.clients.blob_service(config.account, ctx.credential)
        self.client = service.get_blob_client(config.container, blob)
        self.container = service.get_container_client(config.container)
        self.blob = blob

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            props = self.client.get_blob_properties()
        except ResourceNotFoundError:
            return Snapshot(exists=False)
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: cannot read blob {self.config.container}/{self.blob}: HTTP {exc.status_code}{denied_note(exc, 'target:blob')}") from None
        snapshot = Snapshot(etag=props.etag, bundle_fingerprint=(props.metadata or {}).get("vaultrelay_fingerprint"))
        if (props.metadata or {}).get("managed_by") != "vaultrelay":
            snapshot.foreign.add(self.blob)
        return snapshot

    def push(self, env: str, desired: dict[str, DesiredItem], change: Change, snapshot: Snapshot) -> PushResult:
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            HttpResponseError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
        )

        if snapshot.foreign:
            raise TargetError(f"target {self.ctx.name}: blob {self.config.container}/{self.blob} is not managed by vaultrelay; refusing to overwrite")
        values = {name: item.value.reveal() for name, item in desired.items()}
        body = json.dumps(values, indent=2, sort_keys=True) + "\n" if self.config.format == "json" else render_dotenv(values)
        fingerprint = self.ctx.fingerprinter.of_mapping({n: i.value for n, i in desired.items()})
        # Metadata travels as HTTP headers: an env name that is not printable ASCII is percent-encoded.
        shown = env if env.isascii() and env.isprintable() and "%" not in env else urllib.parse.quote(env, safe="")
        metadata = {"managed_by": "vaultrelay", "vaultrelay_env": shown, "vaultrelay_fingerprint": fingerprint}
        condition: dict[str, Any] = (
            {"etag": snapshot.etag, "match_condition": MatchConditions.IfNotModified} if snapshot.exists and snapshot.etag
            else {"match_condition": MatchConditions.IfMissing}
        )
        content_type = "application/json" if self.config.format == "json" else "text/plain; charset=utf-8"
        from azure.storage.blob import ContentSettings

        def upload() -> dict[str, Any]:
            return dict(self.client.upload_blob(body.encode(), overwrite=True, metadata=metadata,
                                                content_settings=ContentSettings(content_type=content_type, cache_control="no-store"), **condition))

        try:
            try:
                result = upload()
            except ResourceNotFoundError:
                if snapshot.exists:
                    raise
                # A new blob in a container that does not exist yet (the first push of many to
                # one container): create it, then write.  An existing container costs nothing.
                try:
                    self.container.create_container()
                except ResourceExistsError:
                    pass
                result = upload()
        except (ResourceModifiedError, ResourceExistsError):
            raise TargetError(f"target {self.ctx.name}: blob {self.config.container}/{self.blob} changed during the push; retry next run") from None
        except ResourceNotFoundError:
            raise TargetError(f"target {self.ctx.name}: container {self.config.container} not found") from None
        except HttpResponseError as exc:
            raise TargetError(f"target {self.ctx.name}: writing blob {self.config.container}/{self.blob} failed: HTTP {exc.status_code}{denied_note(exc, 'target:blob')}") from None
        return PushResult(etag=result.get("etag"), writes=1)
