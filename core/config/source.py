"""Where the config comes from: `$VAULTRELAY_CONFIG` is a file path (default `vaultrelay.yaml`)
or an `https://<account>.blob.<suffix>/<container>/<blob>` URL read with the app's managed
identity (`core.identity.app_credential`: the user-assigned identity of `$AZURE_CLIENT_ID`, else
the system-assigned one).

A source hands out `ConfigSnapshot`s: a version signature (file modification time, size and
inode; the blob's ETag) and the content.  Callers re-parse only when the signature changes.

The blob is checked at most once per `$VAULTRELAY_CONFIG_RELOAD_SECONDS` (default 30) with a
conditional GET (`If-None-Match: <ETag>`): a 304 keeps the snapshot, a new ETag brings new
content.  When the blob cannot be read (network, identity, permissions, deleted), the last
snapshot read stays current and `problem` says why, for readiness; only with no snapshot at all
does `snapshot()` raise.  Nothing here parses YAML; `load_snapshot` does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from core.azure.protocols import BlobClientLike

log = logging.getLogger("vaultrelay.config")

CONFIG_SETTING = "VAULTRELAY_CONFIG"
RELOAD_SETTING = "VAULTRELAY_CONFIG_RELOAD_SECONDS"
DEFAULT_CONFIG = "vaultrelay.yaml"
DEFAULT_RELOAD_S = 30.0
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class ConfigSourceError(Exception):
    """The config cannot be read (the message names the file or URL and the cause, never content)."""


@dataclass(frozen=True)
class ConfigSnapshot:
    """One version of the config: where it is, its version signature and (blob) its content."""

    location: str
    signature: tuple[Any, ...]
    content: bytes | None = field(default=None, repr=False)


class ConfigSource(Protocol):
    """A config location that can say which version is current."""

    kind: str
    location: str

    def snapshot(self) -> ConfigSnapshot:
        """The current version.

        Raises:
            ConfigSourceError: the config cannot be read and no earlier version is known.
        """
        ...

    def status(self) -> dict[str, Any]:
        """For readiness: `{"kind", "ok", ...}` (no URL, no content)."""
        ...

    def close(self) -> None: ...


def config_location(environ: Mapping[str, str] | None = None) -> str:
    """`$VAULTRELAY_CONFIG` as given (a path or a URL), else `vaultrelay.yaml`."""
    environ = os.environ if environ is None else environ
    return (environ.get(CONFIG_SETTING) or "").strip() or DEFAULT_CONFIG


def reload_interval(environ: Mapping[str, str] | None = None) -> float:
    """Seconds between two checks of the config blob: `$VAULTRELAY_CONFIG_RELOAD_SECONDS`
    (0 = every request), default 30; an unusable value is logged and the default used."""
    environ = os.environ if environ is None else environ
    raw = (environ.get(RELOAD_SETTING) or "").strip()
    if not raw:
        return DEFAULT_RELOAD_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86_400:
        log.warning("$%s=%r is not a number of seconds between 0 and 86400; using %d", RELOAD_SETTING, raw, DEFAULT_RELOAD_S)
        return DEFAULT_RELOAD_S
    return value


def open_source(environ: Mapping[str, str] | None = None, *, credential: Any = None,
                clock: Callable[[], float] = time.monotonic) -> ConfigSource:
    """The source `$VAULTRELAY_CONFIG` names.

    Raises:
        ConfigSourceError: an `http://` URL, a URL that is not a blob URL, or one with a query
            (a SAS: the blob is read with the managed identity, never with a key in a setting).
    """
    environ = os.environ if environ is None else environ
    location = config_location(environ)
    if location.lower().startswith(("https://", "http://")):
        return BlobConfigSource(location, credential=credential, interval_s=reload_interval(environ), environ=environ, clock=clock)
    return FileConfigSource(location)


class FileConfigSource:
    """A file: its signature is (modification time, size, inode), read on every call."""

    kind = "file"

    def __init__(self, path: str) -> None:
        self.location = path

    def snapshot(self) -> ConfigSnapshot:
        try:
            stat = os.stat(self.location)
        except OSError as exc:
            raise ConfigSourceError(f"cannot read config {self.location}: {exc.strerror or exc}") from None
        return ConfigSnapshot(self.location, ("file", stat.st_mtime_ns, stat.st_size, stat.st_ino))

    def status(self) -> dict[str, Any]:
        return {"kind": self.kind, "ok": True}

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class BlobLocation:
    account_url: str
    container: str
    blob: str


def parse_blob_url(url: str) -> BlobLocation:
    """`https://<account>.blob.<suffix>/<container>/<blob>` split into its parts.

    Raises:
        ConfigSourceError: not https, no `.blob.` host, no container or blob name, or a query.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    if parts.scheme.lower() != "https":
        raise ConfigSourceError(f"${CONFIG_SETTING} must be a file path or an https:// blob URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigSourceError(f"${CONFIG_SETTING}: a blob URL must not carry a query (no SAS: the app's managed identity reads the blob)")
    if len(labels) < 3 or labels[1].lower() != "blob" or not labels[0]:
        raise ConfigSourceError(f"${CONFIG_SETTING}: {url} is not a blob URL (https://<account>.blob.<suffix>/<container>/<blob>)")
    container, _, blob = parts.path.lstrip("/").partition("/")
    if not container or not blob or blob.endswith("/"):
        raise ConfigSourceError(f"${CONFIG_SETTING}: {url} names no container and blob (https://<account>.blob.<suffix>/<container>/<blob>)")
    return BlobLocation(f"https://{parts.netloc}", unquote(container), unquote(blob))


class BlobConfigSource:
    """A blob read with the app's managed identity, re-checked by ETag at most every `interval_s`."""

    kind = "blob"

    def __init__(self, url: str, *, credential: Any = None, interval_s: float = DEFAULT_RELOAD_S,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.location = url
        self.parts = parse_blob_url(url)
        self.interval_s = interval_s
        self._credential = credential
        self._environ = os.environ if environ is None else environ
        self._clock = clock
        self._client: BlobClientLike | None = None
        self._current: ConfigSnapshot | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.problem: str | None = None
        self.problem_since: datetime | None = None
        self.checked_at: datetime | None = None
        self.downloads = 0  # full reads (200), for status and tests
        self.not_modified = 0  # conditional reads answered 304

    def _blob(self) -> BlobClientLike:
        if self._client is None:
            from core.azure.clients import config_blob_client
            from core.identity import app_credential

            credential = self._credential if self._credential is not None else app_credential(self._environ)
            self._client = config_blob_client(self.parts.account_url, self.parts.container, self.parts.blob, credential)
        return self._client

    def snapshot(self) -> ConfigSnapshot:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                if self._current is None:
                    raise ConfigSourceError(self.problem or f"cannot read config {self.location}")
                return self._current
            self._next_check = now + self.interval_s
            try:
                fetched = self._fetch()
            except ConfigSourceError as exc:
                if self.problem is None:
                    self.problem_since = datetime.now(UTC)
                self.problem = str(exc)
                if self._current is None:
                    raise
                log.warning("%s; serving the config read earlier (ETag %s)", exc, self._current.signature[1])
                return self._current
            if self.problem is not None:
                log.info("config %s is readable again", self.location)
            self.problem = self.problem_since = None
            if fetched is not None:
                self._current = fetched
            assert self._current is not None
            return self._current

    def _fetch(self) -> ConfigSnapshot | None:
        """The blob if it changed since the current snapshot, None for 304.

        Raises:
            ConfigSourceError: it cannot be read (names the URL and the error kind only).
        """
        from azure.core import MatchConditions
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ResourceNotModifiedError,
            ServiceRequestError,
            ServiceResponseError,
        )

        conditions: dict[str, Any] = {}
        if self._current is not None:
            conditions = {"etag": self._current.signature[1], "match_condition": MatchConditions.IfModified}
        self.checked_at = datetime.now(UTC)
        try:
            downloader = self._blob().download_blob(**conditions)
            size = downloader.size
            if size is not None and size > MAX_CONFIG_BYTES:
                raise ConfigSourceError(f"config {self.location} is {size} bytes, more than {MAX_CONFIG_BYTES}")
            content = downloader.readall()
        except ResourceNotModifiedError:
            self.not_modified += 1
            return None
        except ResourceNotFoundError:
            raise ConfigSourceError(f"cannot read config {self.location}: the blob does not exist") from None
        except ClientAuthenticationError as exc:
            raise ConfigSourceError(f"cannot read config {self.location}: the app's identity got no token or was refused "
                                    f"({type(exc).__name__}, status {getattr(exc, 'status_code', None)})") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise ConfigSourceError(f"cannot read config {self.location}: storage is unreachable ({type(exc).__name__})") from None
        except HttpResponseError as exc:
            if exc.status_code == 304:
                self.not_modified += 1
                return None
            code = getattr(exc, "error_code", None) or ""
            raise ConfigSourceError(f"cannot read config {self.location}: HTTP {exc.status_code} {code}".rstrip()) from None
        except OSError as exc:
            raise ConfigSourceError(f"cannot read config {self.location}: {type(exc).__name__}") from None
        etag = downloader.properties.etag
        self.downloads += 1
        log.info("config %s: new version (ETag %s, %d bytes)", self.location, etag, len(content))
        return ConfigSnapshot(self.location, ("blob", etag), bytes(content))

    def status(self) -> dict[str, Any]:
        with self._lock:
            status: dict[str, Any] = {"kind": self.kind, "ok": self.problem is None}
            if self._current is not None:
                status["etag"] = str(self._current.signature[1])
            if self.checked_at is not None:
                status["checked_at"] = self.checked_at.isoformat()
            if self.problem is not None:
                status["error"] = "the config blob cannot be read; serving the version read earlier" if self._current else \
                    "the config blob cannot be read"
                if self.problem_since is not None:
                    status["since"] = self.problem_since.isoformat()
            return status

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def load_snapshot(snapshot: ConfigSnapshot, environ: Mapping[str, str] | None = None) -> Any:
    """Parse and validate a snapshot (problems name its file or URL).

    Raises:
        ConfigError: not readable, not UTF-8, not YAML or invalid.
    """
    from core.config.loader import load_config, parse_config
    from core.errors import ConfigError, ConfigProblem

    if snapshot.content is None:
        return load_config(snapshot.location, environ=environ)
    try:
        text = snapshot.content.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem(snapshot.location, None, "", "the config is not UTF-8 text")]) from None
    return parse_config(text, snapshot.location, environ=environ)
