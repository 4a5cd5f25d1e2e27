"""Storage clients (blob, tables) retry within vaultrelay's budget, not the storage SDKs' minutes."""

from __future__ import annotations

import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError

from core.azure.clients import AzureClients
from core.azure.retry import RetrySettings
from core.config.cloud import resolve_cloud
from sandbox.client import SandboxClient


def _attempts(sandbox: SandboxClient) -> int:
    return sum(n for key, n in sandbox.counters()["by_endpoint"].items() if key.startswith("storage:"))


@pytest.mark.parametrize("kind", ["blob", "table"])
def test_a_failing_storage_call_gives_up_after_the_retry_budget_in_seconds(clean_faults: SandboxClient, kind: str) -> None:
    clients = AzureClients(resolve_cloud(None), retry=RetrySettings(total=3, backoff_factor=0.2))
    credential = clean_faults.admin_credential()
    clean_faults.set_faults(rules=[{"service": "storage", "error_rate": 1.0, "error_status": 503}])
    clean_faults.reset_counters()
    began = time.monotonic()
    with pytest.raises(HttpResponseError):
        if kind == "blob":
            service = clients.blob_service("sandboxstore", credential)
            service.get_container_client(f"retry-{uuid.uuid4().hex[:8]}").get_container_properties()
        else:
            service = clients.table_service("sandboxstore", credential)
            service.get_table_client(f"retry{uuid.uuid4().hex[:8]}").get_entity("p", "r")
    elapsed = time.monotonic() - began
    clean_faults.clear_faults()
    assert _attempts(clean_faults) == 4  # the first try and exactly `total` retries
    # The storage SDKs' own defaults wait 15 s (blob) or 0.8 x 2^n s (tables) per retry.
    assert elapsed < 12, f"{kind}: {elapsed:.1f}s for 3 retries"
