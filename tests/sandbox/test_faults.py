"""Contract: the sandbox's faults, throttling and counters, as the unmodified SecretClient sees them.

Every test uses a vault of its own, so counters and token buckets start from nothing.  The SDK's
challenge cache is per process and per vault host: the first request this process sends to a
vault is a bodiless 401 challenge, later clients (even with other credentials) go straight to an
authorized request.  Each test warms its vault up before injecting faults and zeroing counters,
so what is counted afterwards is exactly what the test's own calls caused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import pytest
from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError
from azure.core.rest import HttpResponse
from azure.keyvault.secrets import SecretClient

from sandbox.client import SandboxClient
from tests.sandbox.helpers import unique

KV_GET = "keyvault:GetSecret"


@dataclass
class Vault:
    name: str
    url: str
    secret: str


@pytest.fixture(scope="module")
def admin_role(sandbox: SandboxClient) -> None:
    sandbox.assign_role("admin", "Key Vault Administrator")


def _new_vault(sandbox: SandboxClient) -> Vault:
    """A vault this process never talked to, holding one secret (this warms its challenge up)."""
    name = unique("kvf")
    sandbox.create_resource("vault", name)
    url = sandbox.vault_url(name)
    secret = unique("s")
    SecretClient(url, sandbox.admin_credential()).set_secret(secret, "value")
    return Vault(name, url, secret)


@pytest.fixture()
def vault(clean_faults: SandboxClient, admin_role: None) -> Vault:
    return _new_vault(clean_faults)


@pytest.fixture()
def other_vault(clean_faults: SandboxClient, admin_role: None) -> Vault:
    return _new_vault(clean_faults)


def _client(sandbox: SandboxClient, vault: Vault, **kwargs: Any) -> SecretClient:
    """A SecretClient with a token already in hand (so no identity-endpoint call is counted later)."""
    client = SecretClient(vault.url, sandbox.admin_credential(), **kwargs)
    assert client.get_secret(vault.secret).value == "value"
    return client


def _retry_after(error: HttpResponseError) -> str:
    assert error.response is not None
    return str(cast(HttpResponse, error.response).headers["Retry-After"])


def _statuses(sandbox: SandboxClient) -> dict[str, int]:
    return dict(sandbox.counters()["by_endpoint_status"])


def test_default_keyvault_budget_is_azures(clean_faults: SandboxClient) -> None:
    throttle = clean_faults.call("GET", "/faults")["throttles"]["keyvault"]
    assert (throttle["capacity"], throttle["window_s"], throttle["enabled"]) == (4000, 10.0, True)


def test_429_retry_after_is_honoured_by_the_sdk_retry(clean_faults: SandboxClient, vault: Vault) -> None:
    client = _client(clean_faults, vault)
    clean_faults.set_faults(throttles={"keyvault": {"capacity": 1, "window_s": 1}})  # 1 request/s, Retry-After: 1
    clean_faults.reset_counters()
    client.get_secret(vault.secret)  # takes the bucket's only token

    started = time.monotonic()
    assert client.get_secret(vault.secret).value == "value"  # 429, sleeps Retry-After, then 200
    elapsed = time.monotonic() - started

    assert elapsed >= 1.0
    assert _statuses(clean_faults) == {f"{KV_GET}:200": 2, f"{KV_GET}:429": 1}
    counters = clean_faults.counters()
    assert counters["throttled"] == 1
    assert counters["total"] == 3


@pytest.mark.parametrize("window_s", [1, 3])
def test_429_without_retries_raises_with_retry_after(clean_faults: SandboxClient, vault: Vault, window_s: int) -> None:
    client = _client(clean_faults, vault, retry_total=0)
    clean_faults.set_faults(throttles={"keyvault": {"capacity": 1, "window_s": window_s}})
    clean_faults.reset_counters()
    client.get_secret(vault.secret)
    with pytest.raises(HttpResponseError) as info:
        client.get_secret(vault.secret)
    error = info.value
    assert error.status_code == 429
    assert _retry_after(error) == str(window_s)  # the time until the bucket has a token again
    assert error.error is not None and error.error.code == "Throttled"
    assert _statuses(clean_faults) == {f"{KV_GET}:200": 1, f"{KV_GET}:429": 1}


def test_scaled_down_bucket_overflows(clean_faults: SandboxClient, vault: Vault, other_vault: Vault) -> None:
    client = _client(clean_faults, vault, retry_total=0)
    other = _client(clean_faults, other_vault, retry_total=0)
    capacity, requests = 5, 12
    clean_faults.set_faults(throttles={"keyvault": {"capacity": capacity, "window_s": 60}})  # refills 1 per 12 s
    clean_faults.reset_counters()

    outcomes: list[int] = []
    for _ in range(requests):
        try:
            client.get_secret(vault.secret)
            outcomes.append(200)
        except HttpResponseError as error:
            outcomes.append(error.status_code or 0)
            assert int(_retry_after(error)) >= 1
    assert outcomes == [200] * capacity + [429] * (requests - capacity)
    assert clean_faults.counters()["throttled"] == requests - capacity
    assert other.get_secret(other_vault.secret).value == "value"  # buckets are per vault
    assert _statuses(clean_faults) == {f"{KV_GET}:200": capacity + 1, f"{KV_GET}:429": requests - capacity}


def test_added_latency_is_observed(clean_faults: SandboxClient, vault: Vault) -> None:
    client = _client(clean_faults, vault)
    clean_faults.set_faults([{"service": "keyvault", "target": vault.name, "latency_ms": 400}])
    clean_faults.reset_counters()
    started = time.monotonic()
    client.get_secret(vault.secret)
    assert time.monotonic() - started >= 0.4
    assert _statuses(clean_faults) == {f"{KV_GET}:200": 1}


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_rate_fails_after_exactly_retry_total_plus_one_requests(clean_faults: SandboxClient, vault: Vault, status: int) -> None:
    no_retry = _client(clean_faults, vault, retry_total=0)
    retrying = _client(clean_faults, vault, retry_total=2, retry_backoff_factor=0.01)
    clean_faults.set_faults([{"service": "keyvault", "target": vault.name, "error_rate": 1.0, "error_status": status}])

    clean_faults.reset_counters()
    with pytest.raises(HttpResponseError) as info:
        no_retry.get_secret(vault.secret)
    assert info.value.status_code == status
    assert _statuses(clean_faults) == {f"{KV_GET}:{status}": 1}

    clean_faults.reset_counters()
    with pytest.raises(HttpResponseError) as info:
        retrying.get_secret(vault.secret)
    assert info.value.status_code == status
    assert _statuses(clean_faults) == {f"{KV_GET}:{status}": 3}


def test_dropped_connections_surface_as_service_errors(clean_faults: SandboxClient, vault: Vault) -> None:
    no_retry = _client(clean_faults, vault, retry_total=0)
    retrying = _client(clean_faults, vault, retry_total=2, retry_backoff_factor=0.01)
    clean_faults.set_faults([{"service": "keyvault", "target": vault.name, "drop_rate": 1.0}])

    clean_faults.reset_counters()
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        no_retry.get_secret(vault.secret)
    assert _statuses(clean_faults) == {f"{KV_GET}:dropped": 1}

    clean_faults.reset_counters()
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        retrying.get_secret(vault.secret)
    assert _statuses(clean_faults) == {f"{KV_GET}:dropped": 3}

    clean_faults.clear_faults()
    assert no_retry.get_secret(vault.secret).value == "value"  # the client recovers once drops stop


def test_counters_are_exact_per_endpoint_vault_and_identity(clean_faults: SandboxClient, admin_role: None) -> None:
    sandbox = clean_faults
    name = unique("kvc")
    created = sandbox.create_resource("vault", name)
    url = sandbox.vault_url(name)
    k = 4

    # A vault host this process never saw: the first request is the 401 challenge, sent without a token.
    sandbox.reset_counters()
    admin = SecretClient(url, sandbox.admin_credential())
    admin.set_secret("counted", "v")
    for _ in range(k):
        assert admin.get_secret("counted").value == "v"
    counters = sandbox.counters()
    assert counters["by_endpoint_status"] == {
        "keyvault:SetSecret:401": 1, "keyvault:SetSecret:200": 1, f"{KV_GET}:200": k,
        "identity:GetManagedIdentityToken:200": 1,
    }
    assert counters["by_target"] == {f"keyvault:{name}": k + 2, "identity:admin": 1}
    assert counters["by_identity"] == {"anonymous": 1, "admin": k + 2}
    assert counters["total"] == k + 3

    # Identity Y = "app" with its own client and credential: the challenge is cached for the host
    # (per process), so only its token request and its K reads are counted, and nothing elsewhere.
    sandbox.assign_role("app", "Key Vault Secrets User", created["id"])
    sandbox.reset_counters()
    app = SecretClient(url, sandbox.credential("app"))
    for _ in range(k):
        assert app.get_secret("counted").value == "v"
    counters = sandbox.counters()
    assert counters["by_endpoint_status"] == {f"{KV_GET}:200": k, "identity:GetManagedIdentityToken:200": 1}
    assert counters["by_endpoint"] == {KV_GET: k, "identity:GetManagedIdentityToken": 1}
    assert counters["by_target"] == {f"keyvault:{name}": k, "identity:app": 1}
    assert counters["by_identity"] == {"app": k + 1}
    assert counters["total"] == k + 1
    assert counters["tokens_issued"] == 1

    sandbox.reset_counters()
    assert sandbox.counters()["total"] == 0


def test_faults_scoped_to_one_vault_leave_another_alone(clean_faults: SandboxClient, vault: Vault, other_vault: Vault) -> None:
    faulty = _client(clean_faults, vault, retry_total=0)
    healthy = _client(clean_faults, other_vault, retry_total=0)
    clean_faults.set_faults([
        {"service": "keyvault", "target": vault.name, "latency_ms": 300, "error_rate": 1.0, "error_status": 503},
        {"service": "keyvault", "target": other_vault.name, "operation": "SetSecret", "error_rate": 1.0},
    ])
    clean_faults.reset_counters()

    for _ in range(3):
        started = time.monotonic()
        assert healthy.get_secret(other_vault.secret).value == "value"  # only its SetSecret is faulty
        assert time.monotonic() - started < 0.3  # and the other vault's latency is not added
    with pytest.raises(HttpResponseError) as info:
        healthy.set_secret(other_vault.secret, "new")
    assert info.value.status_code == 503
    started = time.monotonic()
    with pytest.raises(HttpResponseError) as info:
        faulty.get_secret(vault.secret)
    assert info.value.status_code == 503
    assert time.monotonic() - started >= 0.3

    counters = clean_faults.counters()
    assert counters["by_target"] == {f"keyvault:{other_vault.name}": 4, f"keyvault:{vault.name}": 1}
    assert counters["by_endpoint_status"] == {f"{KV_GET}:200": 3, "keyvault:SetSecret:503": 1, f"{KV_GET}:503": 1}


def test_an_injected_429_carries_the_rules_retry_after(clean_faults: SandboxClient, vault: Vault) -> None:
    client = _client(clean_faults, vault, retry_total=0)
    clean_faults.set_faults([{"service": "keyvault", "target": vault.name, "error_rate": 1.0, "error_status": 429, "retry_after_s": 42}])
    with pytest.raises(HttpResponseError) as info:
        client.get_secret(vault.secret)
    assert info.value.status_code == 429 and _retry_after(info.value) == "42"
    assert info.value.error is not None and info.value.error.code == "Throttled"
