"""`VAULTRELAY_CONFIG` as a blob URL: read with the app's managed identity from the sandbox's
Azurite, re-checked by ETag (conditional GETs, counted by the sandbox) at most once per
`VAULTRELAY_CONFIG_RELOAD_SECONDS`, through the functions function_app.py registers."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from azure.storage.blob import BlobServiceClient, ContainerClient

from core.config.source import (
    BlobConfigSource,
    ConfigSourceError,
    FileConfigSource,
    open_source,
    parse_blob_url,
    reload_interval,
)
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.functions.apihelpers import AUDIENCE, body_json, get_env, request, serving, write_config

INTERVAL_S = 1.0


def blob_gets(sandbox: SandboxClient) -> dict[str, int]:
    """Blob GETs the sandbox has answered, by status."""
    counts = sandbox.counters()["by_endpoint_status"]
    return {status: counts.get(f"storage:blob:GET:{status}", 0) for status in ("200", "206", "304")}


def downloads(sandbox: SandboxClient) -> int:
    gets = blob_gets(sandbox)
    return gets["200"] + gets["206"]


@pytest.fixture(scope="module")
def container(seeded: SandboxClient) -> Iterator[ContainerClient]:
    service = BlobServiceClient(seeded.storage_endpoint("sandboxstore"), credential=seeded.admin_credential())
    client = service.get_container_client(f"config-{uuid.uuid4().hex[:8]}")
    client.create_container()
    yield client
    client.delete_container()
    service.close()


def config_text(sandbox: SandboxClient, tmp_path: Path, *, log_level: str = "info", access: dict[str, list[str]] | None = None) -> bytes:
    path = write_config(tmp_path / "vaultrelay.yaml", sandbox, access=access)
    config = yaml.safe_load(path.read_text())
    config["envs"]["production"]["LOG_LEVEL"] = log_level
    return yaml.safe_dump(config, sort_keys=False).encode()


def wait_interval() -> None:
    time.sleep(INTERVAL_S + 0.1)


def test_blob_config_is_reloaded_by_etag_with_conditional_gets(
    functions: dict[str, Any], seeded: SandboxClient, clean_faults: SandboxClient, container: ContainerClient,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    blob = container.get_blob_client("app/vaultrelay.yaml")
    blob.upload_blob(config_text(seeded, tmp_path), overwrite=True)
    environ = {**os.environ, "VAULTRELAY_CONFIG": blob.url, "VAULTRELAY_CONFIG_RELOAD_SECONDS": str(INTERVAL_S)}
    environ.pop("AZURE_CLIENT_ID", None)  # the system-assigned identity reads it
    token = seeded.issue_token("caller", AUDIENCE)
    api = LiveRuntime(environ=environ, audit=MemoryAuditSink())
    seeded.reset_counters()
    with serving(api):
        first = get_env(functions, "production", token)
        assert first.status_code == 200, first.get_body()
        assert body_json(first)["LOG_LEVEL"] == "info"
        assert downloads(seeded) == 1 and blob_gets(seeded)["304"] == 0
        context = api.current()

        # Within the interval: no request to storage at all.
        assert get_env(functions, "production", token).status_code == 200
        assert downloads(seeded) == 1 and blob_gets(seeded)["304"] == 0

        # After it, unchanged: one conditional GET answered 304, the parsed config is kept.
        wait_interval()
        assert get_env(functions, "production", token).status_code == 200
        assert blob_gets(seeded)["304"] == 1 and downloads(seeded) == 1
        assert api.current() is context

        # A new version is seen only after the interval, then downloaded once and re-parsed.
        blob.upload_blob(config_text(seeded, tmp_path, log_level="debug"), overwrite=True)
        assert body_json(get_env(functions, "production", token))["LOG_LEVEL"] == "info"
        wait_interval()
        assert body_json(get_env(functions, "production", token))["LOG_LEVEL"] == "debug"
        assert downloads(seeded) == 2
        assert api.current() is not context

        # Access revoked in a new version: followed like a file edit.
        blob.upload_blob(config_text(seeded, tmp_path, access={"production": [seeded.identities["other"].object_id]}), overwrite=True)
        wait_interval()
        assert get_env(functions, "production", token).status_code == 403

        # An invalid version fails closed (the error names the blob URL) and is not downloaded again.
        blob.upload_blob(config_text(seeded, tmp_path) + b"\nunknown_top_level_key: 1\n", overwrite=True)
        wait_interval()
        with caplog.at_level(logging.ERROR, logger="vaultrelay.api"):
            refused = get_env(functions, "production", token)
        assert refused.status_code == 503 and body_json(refused)["error"] == "unavailable"
        assert blob.url not in refused.get_body().decode()
        assert any(blob.url in r.getMessage() and "unknown_top_level_key" in r.getMessage() for r in caplog.records)
        fetched = downloads(seeded)
        wait_interval()
        assert get_env(functions, "production", token).status_code == 503
        assert downloads(seeded) == fetched and blob_gets(seeded)["304"] >= 2

        # Fixed: served again.
        blob.upload_blob(config_text(seeded, tmp_path), overwrite=True)
        wait_interval()
        assert get_env(functions, "production", token).status_code == 200
    api.close()


def test_an_unreachable_blob_keeps_the_last_good_config_and_readiness_says_so(
    functions: dict[str, Any], seeded: SandboxClient, clean_faults: SandboxClient, container: ContainerClient, tmp_path: Path,
) -> None:
    blob = container.get_blob_client("unreachable.yaml")
    blob.upload_blob(config_text(seeded, tmp_path), overwrite=True)
    environ = {**os.environ, "VAULTRELAY_CONFIG": blob.url, "VAULTRELAY_CONFIG_RELOAD_SECONDS": str(INTERVAL_S)}
    token = seeded.issue_token("caller", AUDIENCE)
    admin = {"Authorization": f"Bearer {seeded.issue_token('admin', AUDIENCE)}"}  # readiness detail is for admins
    health = functions["health"].get_user_function()
    api = LiveRuntime(environ=environ, audit=MemoryAuditSink())
    with serving(api):
        assert get_env(functions, "production", token).status_code == 200
        ready = health(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
        assert ready.status_code == 200, ready.get_body()
        assert body_json(ready)["config_source"]["kind"] == "blob" and body_json(ready)["config"] == "ok"

        seeded.set_faults([{"service": "storage", "target": "sandboxstore", "operation": "blob:GET", "error_rate": 1.0, "error_status": 500}])
        wait_interval()
        served = get_env(functions, "production", token)
        assert served.status_code == 200 and body_json(served)["LOG_LEVEL"] == "info"
        stale = health(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
        document = body_json(stale)
        assert stale.status_code == 503 and document["config"] == "stale"
        assert document["config_source"]["ok"] is False and "serving the version read earlier" in document["config_source"]["error"]
        assert blob.url not in stale.get_body().decode()

        seeded.clear_faults()
        wait_interval()
        assert get_env(functions, "production", token).status_code == 200
        again = health(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
        assert again.status_code == 200 and body_json(again)["config_source"]["ok"] is True
    api.close()


def test_a_blob_that_cannot_be_read_at_start_is_503(
    functions: dict[str, Any], seeded: SandboxClient, container: ContainerClient,
) -> None:
    missing = f"{container.url}/no-such-config.yaml"
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": missing}, audit=MemoryAuditSink())
    with serving(api):
        response = get_env(functions, "production", seeded.issue_token("caller", AUDIENCE))
        assert response.status_code == 503
        with pytest.raises(Exception, match="does not exist") as raised:
            api.current()
        assert missing in str(raised.value)
        not_ready = functions["health"].get_user_function()(request("GET", "/api/health", params={"deep": "1"}))
        # no config, so no admin list: nobody learns more than the status (the log names the blob)
        assert not_ready.status_code == 503 and body_json(not_ready) == {"status": "unavailable"}
    api.close()


# ---- the source, without the Function host -------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://acct.blob.core.windows.net/c/vaultrelay.yaml",
    "https://acct.blob.core.windows.net/c/vaultrelay.yaml?sv=2024&sig=abc",
    "https://acct.table.core.windows.net/c/vaultrelay.yaml",
    "https://acct.blob.core.windows.net/onlycontainer",
    "https://acct.blob.core.windows.net/c/dir/",
])
def test_unusable_config_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigSourceError) as raised:
        open_source({"VAULTRELAY_CONFIG": url})
    assert "sig=abc" not in str(raised.value)


def test_blob_url_parts_and_sources() -> None:
    parts = parse_blob_url("https://acct.blob.vaultrelay.test:8443/config/app/vault%20relay.yaml")
    assert (parts.account_url, parts.container, parts.blob) == ("https://acct.blob.vaultrelay.test:8443", "config", "app/vault relay.yaml")
    assert isinstance(open_source({}), FileConfigSource) and open_source({}).location == "vaultrelay.yaml"
    source = open_source({"VAULTRELAY_CONFIG": "https://acct.blob.core.windows.net/c/v.yaml", "VAULTRELAY_CONFIG_RELOAD_SECONDS": "5"})
    assert isinstance(source, BlobConfigSource) and source.interval_s == 5.0


@pytest.mark.parametrize(("value", "seconds"), [(None, 30.0), ("", 30.0), ("0", 0.0), ("2.5", 2.5), ("-1", 30.0), ("soon", 30.0)])
def test_reload_interval_setting(value: str | None, seconds: float) -> None:
    environ = {} if value is None else {"VAULTRELAY_CONFIG_RELOAD_SECONDS": value}
    assert reload_interval(environ) == seconds


def test_readiness_document_of_a_file_config_names_its_source(functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path) -> None:
    path = write_config(tmp_path / "vaultrelay.yaml", seeded)
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(path)}, audit=MemoryAuditSink())
    with serving(api):
        admin = {"Authorization": f"Bearer {seeded.issue_token('admin', AUDIENCE)}"}
        ready = functions["health"].get_user_function()(request("GET", "/api/health", params={"deep": "1"}, headers=admin))
        assert ready.status_code == 200
        assert json.loads(ready.get_body())["config_source"] == {"kind": "file", "ok": True}
    api.close()
