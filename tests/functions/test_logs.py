"""Log hygiene in the Function app (core/logs.py, set when function_app.py loads its blueprints):
the Azure SDK and urllib3 stay at WARNING unless asked (the Python worker forwards every record at
INFO and above to Application Insights), and at any level no SAS signature, bearer token or
client secret reaches a log line: a real sync that mints SAS tokens, captured at DEBUG."""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.keyvault.secrets import SecretClient

from core.config import parse_config
from core.connections import StoreConnections
from core.logs import SDK_LOGGERS, configure_logging, redact, sdk_log_level, set_sdk_log_level
from core.push import SyncEngine
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.configs import config_yaml, keyvault_target, mi_store, ref, secret_ref, state_block
from tests.functions.apihelpers import AUDIENCE, get_env, serving, write_config


class Capture(logging.Handler):
    """Every record the root logger passes on, formatted as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


@pytest.fixture()
def root_at(request: pytest.FixtureRequest) -> Iterator[Capture]:
    """The root logger at the level the test asks for (the worker's is INFO) with a capture
    handler added after the app configured logging; every level restored afterwards."""
    level = getattr(request, "param", logging.INFO)
    root = logging.getLogger()
    saved_root, saved_sdk = root.level, {name: logging.getLogger(name).level for name in SDK_LOGGERS}
    capture = Capture()
    root.addHandler(capture)
    root.setLevel(level)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved_root)
        for name, sdk_level in saved_sdk.items():
            logging.getLogger(name).setLevel(sdk_level)


def test_loading_the_app_puts_the_sdk_loggers_at_warning(functions: dict[str, Any]) -> None:
    assert all(logging.getLogger(name).level == logging.WARNING for name in SDK_LOGGERS)
    assert sdk_log_level({}) == logging.WARNING and sdk_log_level({"VAULTRELAY_SDK_LOG_LEVEL": "debug"}) == logging.DEBUG
    assert sdk_log_level({"VAULTRELAY_SDK_LOG_LEVEL": "15"}) == 15 and sdk_log_level({"VAULTRELAY_SDK_LOG_LEVEL": "loud"}) == logging.WARNING


def _sdk_records(capture: Capture) -> list[logging.LogRecord]:
    return [r for r in capture.records if not r.name.startswith("vaultrelay") and r.levelno >= logging.INFO]


def test_an_authorized_fetch_sends_no_sdk_records_to_the_worker(
    functions: dict[str, Any], seeded: SandboxClient, tmp_path: Path, root_at: Capture,
) -> None:
    config = write_config(tmp_path / "vaultrelay.yaml", seeded)
    token = seeded.issue_token("caller", AUDIENCE)

    def fetch() -> int:
        api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())  # cold caches
        with serving(api):
            root_at.records.clear()
            assert get_env(functions, "production", token).status_code == 200
        api.close()
        return len(_sdk_records(root_at))

    # What the worker forwarded before: the SDK loggers unset, so at the root's INFO.
    set_sdk_log_level(logging.NOTSET)
    before = fetch()
    assert before >= 10, f"expected azure-core's request/response records, got {before}"
    configure_logging({})  # what loading the app does
    after = fetch()
    assert after == 0, [f"{r.name}: {r.getMessage()[:80]}" for r in _sdk_records(root_at)]
    print(f"records from the SDK at INFO+ for one authorized GET /api/envs/production: {before} before, {after} after")


def test_asked_for_the_sdk_level_is_what_the_setting_says(functions: dict[str, Any], root_at: Capture) -> None:
    configure_logging({"VAULTRELAY_SDK_LOG_LEVEL": "INFO"})
    assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").getEffectiveLevel() == logging.INFO
    configure_logging({})
    assert logging.getLogger("azure").getEffectiveLevel() == logging.WARNING


@pytest.mark.parametrize("root_at", [logging.DEBUG], indirect=True)
def test_no_sas_signature_token_or_client_secret_in_any_record_of_a_real_sync_at_debug(
    seeded: SandboxClient, root_at: Capture,
) -> None:
    configure_logging({"VAULTRELAY_SDK_LOG_LEVEL": "DEBUG"})  # every record of every SDK
    tag = uuid.uuid4().hex[:8]
    client_secret = os.environ["SANDBOX_SP_CLIENT_SECRET"]
    legacy = {"type": "azure.keyvault", "vault_name": "kv-source", "auth": {
        "client_id": "${SANDBOX_SP_CLIENT_ID}", "client_secret": "${SANDBOX_SP_CLIENT_SECRET}", "tenant_id": "${AZURE_TENANT_ID}"}}
    text = config_yaml(stores={"azure": mi_store(), "legacy": legacy}, state=state_block(f"lg{tag}"), envs={
        "app": {
            "ACCOUNT_SAS": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", sas_type="account",
                               permissions="rl", expiry="2h"),
            "CONTAINER_SAS": ref(resource_type="storage", account="sandboxstore", operation="generate_sas", container=f"logs{tag}",
                                 permissions="rl", expiry="1h"),
            "KEY": ref(resource_type="storage", account="sandboxstore", key="key1"),
            "PASSWORD": secret_ref("database-password"),
        },
        "legacy": {"VIA_SP": ref("legacy", secret="api-key")},
    }, targets={"vault": keyvault_target("app", prefix=f"lg{tag}-")})
    broker = StoreConnections(parse_config(text, "logs.yaml", environ=os.environ))
    report = SyncEngine(broker).sync(force_mint=True)
    assert report.ok and sorted(report.minted) == ["app/ACCOUNT_SAS", "app/CONTAINER_SAS"], report
    broker.resolve("legacy")  # a client-credentials token request (client_secret in its body)

    target = SecretClient(seeded.vault_url("kv-target"), seeded.admin_credential())
    tokens = [str(target.get_secret(f"lg{tag}-{name}").value) for name in ("account-sas", "container-sas")]
    signatures = [re.search(r"sig=([^&]+)", t).group(1) for t in tokens]  # type: ignore[union-attr]
    key = str(target.get_secret(f"lg{tag}-key").value)
    logged = root_at.text()
    assert len(root_at.records) > 100 and "urllib3" in logged  # the HTTP layer logged at DEBUG...
    assert "sig=REDACTED" in logged  # ...including the SAS verification requests, redacted
    for signature in signatures:
        for form in {signature, signature.replace("%2B", "+").replace("%2F", "/").replace("%3D", "=")}:
            assert form not in logged
    assert not re.search(r"(?i)\bsig(=|%3D)(?!REDACTED)", logged)
    assert key not in logged and client_secret not in logged
    assert not re.search(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ", logged)  # no token
    assert not re.search(r"(?i)bearer\s+(?!REDACTED)[A-Za-z0-9]", logged)
    configure_logging({})


@pytest.mark.parametrize(("text", "kept"), [
    ("GET /c?restype=container&sv=2024-08-04&sig=AbC%2Bd%3D&se=2030 HTTP/1.1", "restype=container&sv=2024-08-04&sig=REDACTED&se=2030"),
    ("Authorization: Bearer eyJ0eXAi.eyJhdWQi.c2ln", "Authorization: Bearer REDACTED"),
    ("grant_type=client_credentials&client_secret=p%40ss&scope=x", "grant_type=client_credentials&client_secret=REDACTED&scope=x"),
    ('{"token_type": "Bearer", "access_token": "abc.def"}', '"access_token": "REDACTED"'),
    ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k/ey==;EndpointSuffix=core", "AccountKey=REDACTED;EndpointSuffix=core"),
    ("Server=tcp:s;Password={p;w};Database=d", "Password=REDACTED;Database=d"),
    ("the design signature is fine", "the design signature is fine"),
])
def test_redaction(text: str, kept: str) -> None:
    assert kept in redact(text)
