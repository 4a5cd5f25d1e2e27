"""`type: blob` target: the bundle as one dotenv or JSON blob, written with an ETag condition.

The blob's metadata marks it as vaultrelay's (`managed_by=vaultrelay`, the env and the target;
nothing derived from a value).  A blob is vaultrelay's when its push record says vaultrelay wrote
it or its metadata marks it so; any other blob is never overwritten.  Drift is a blob ETag
different from the one vaultrelay's last write (or an accepted change) left.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from core.ownership import MANAGED_BY_METADATA, MANAGED_BY_VALUE
from core.permissions.matrix import denied_note
from core.render import UnrepresentableValue, render_dotenv
from core.targets.base import Change, DesiredItem, PushResult, Snapshot, TargetContext, TargetError


def _header_safe(text: str) -> str:
    """Metadata travels as HTTP headers: a name that is not printable ASCII is percent-encoded."""
    return text if text.isascii() and text.isprintable() and "%" not in text else urllib.parse.quote(text, safe="")


LEGACY_FINGERPRINT = "vaultrelay_fingerprint"  # written by earlier versions; ignored


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
        self._etag: str | None = None

    def _metadata(self, env: str) -> dict[str, str]:
        return {MANAGED_BY_METADATA: MANAGED_BY_VALUE, "vaultrelay_env": _header_safe(env), "vaultrelay_target": _header_safe(self.ctx.name)}

    def _content_type(self) -> str:
        return "application/json" if self.config.format == "json" else "text/plain; charset=utf-8"

    def _body(self, desired: dict[str, DesiredItem]) -> bytes:
        """The blob's content.

        Raises:
            TargetError: a value dotenv cannot carry inertly (named, never shown).
        """
        values = {name: item.value.reveal() for name, item in desired.items()}
        try:
            return (json.dumps(values, indent=2, sort_keys=True) + "\n" if self.config.format == "json" else render_dotenv(values)).encode()
        except UnrepresentableValue as exc:
            raise TargetError(f"target {self.ctx.name}: blob {self.config.container}/{self.blob} {exc} (format: json carries any value)") from None

    def _failed(self, doing: str, exc: Any) -> TargetError:
        return TargetError(f"target {self.ctx.name}: cannot {doing} blob {self.config.container}/{self.blob}: "
                           f"HTTP {exc.status_code}{denied_note(exc, 'target:blob')}")

    def snapshot(self, names: set[str], recorded: dict[str, str]) -> Snapshot:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            props = self.client.get_blob_properties()
        except ResourceNotFoundError:
            return Snapshot(exists=False)
        except HttpResponseError as exc:
            raise self._failed("read", exc) from None
        self._etag = props.etag
        snapshot = Snapshot(etag=props.etag)
        metadata = props.metadata or {}
        marked = metadata.get(MANAGED_BY_METADATA) == MANAGED_BY_VALUE and metadata.get("vaultrelay_target", self.ctx.name) == self.ctx.name
        if not (marked or recorded or self.ctx.recorded_etag):
            snapshot.foreign.add(self.blob)
        return snapshot

    def holds(self, desired: dict[str, DesiredItem], names: set[str]) -> set[str]:
        """set(desired) when the blob is exactly what vaultrelay would write now (body, content
        type, its metadata and nothing else), read once; else set()."""
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        try:
            downloader = self.client.download_blob()
            body = downloader.readall()
        except ResourceNotFoundError:
            return set()
        except HttpResponseError as exc:
            raise self._failed("read", exc) from None
        props = downloader.properties
        metadata = {k: v for k, v in (props.metadata or {}).items() if k != LEGACY_FINGERPRINT}
        same = (props.etag == self._etag and body == self._body(desired) and props.content_settings.content_type == self._content_type()
                and metadata == self._metadata(str(self.config.env)))
        return set(desired) if same else set()

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
        body = self._body(desired)
        metadata = self._metadata(env)
        condition: dict[str, Any] = (
            {"etag": snapshot.etag, "match_condition": MatchConditions.IfNotModified} if snapshot.exists and snapshot.etag
            else {"match_condition": MatchConditions.IfMissing}
        )
        from azure.storage.blob import ContentSettings

        def upload() -> dict[str, Any]:
            return dict(self.client.upload_blob(body, overwrite=True, metadata=metadata,
                                                content_settings=ContentSettings(content_type=self._content_type(), cache_control="no-store"), **condition))

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
