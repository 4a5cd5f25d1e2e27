"""Token signing-key fetches against the sandbox's Entra stand-in while it hangs (issue 14, item 5),
with the discovery and JWKS requests counted by the sandbox.

* No keys cached and the authority hanging: a burst of requests (random key ids and valid tokens)
  causes one discovery request, every request is answered (503) without waiting for the
  authority, and after the failed fetch requests are answered at once for the back-off, with no
  new fetch; then one fetch serves again.
* Keys cached: 100 tokens with random key ids cause one refresh, and valid tokens are answered
  from the cache while that refresh hangs.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from core.access import AuthError, SigningKeys, TokenValidator
from core.runtime import LiveRuntime
from core.state.audit import MemoryAuditSink
from sandbox.client import SandboxClient
from tests.functions.apihelpers import AUDIENCE, foreign_token, get_env, serving, write_config

HANG = {"service": "login", "latency_ms": 8_000}  # longer than any fetch (3 s) or wait (5 s) vaultrelay allows


def login_requests(sandbox: SandboxClient, expected: dict[str, int] | None = None) -> dict[str, int]:
    """Requests the login stand-in received, by operation.  The sandbox counts a request when it
    has answered it, so a hung one is counted once its latency is over: with `expected`, wait
    (up to the latency and a bit) until the counts are those."""
    deadline = time.monotonic() + (HANG["latency_ms"] / 1000 + 5 if expected is not None else 0)
    while True:
        found = {k.split(":", 1)[1]: n for k, n in hung_counts(sandbox).items()}
        if expected is None or found == expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def hung_counts(sandbox: SandboxClient) -> dict[str, int]:
    return {k: n for k, n in sandbox.counters()["by_endpoint"].items() if k.startswith("login:")}


@pytest.fixture()
def hung(seeded: SandboxClient, clean_faults: SandboxClient) -> Iterator[SandboxClient]:
    yield seeded
    seeded.clear_faults()


def test_no_keys_cached_and_a_hanging_authority_one_fetch_then_back_off(
    functions: dict[str, Any], hung: SandboxClient, tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "vaultrelay.yaml", hung)
    api = LiveRuntime(environ={**os.environ, "VAULTRELAY_CONFIG": str(config)}, audit=MemoryAuditSink())
    valid = hung.issue_token("caller", AUDIENCE)
    tokens = [foreign_token(hung, kid=f"random-{uuid.uuid4().hex}") for _ in range(100)] + [valid] * 4
    hung.set_faults([{**HANG, "operation": "OpenIdConfigurationV2"}])
    hung.reset_counters()
    with serving(api), ThreadPoolExecutor(max_workers=26) as pool:
        began = time.monotonic()
        statuses = list(pool.map(lambda token: get_env(functions, "production", token).status_code, tokens))
        assert statuses == [503] * len(tokens)
        assert time.monotonic() - began < HANG["latency_ms"] / 1000  # nobody waited for the authority's answer
        keys = api.current().authenticator().validator.keys
        assert keys.wait_for_fetch(10) and (keys.attempts, keys.fetches) == (1, 0)  # the hung fetch gave up on its own
        failed_at = time.monotonic()

        statuses = list(pool.map(lambda token: get_env(functions, "production", token).status_code, tokens))
        assert statuses == [503] * len(tokens) and keys.attempts == 1  # backing off: answered at once, no fetch
        assert login_requests(hung, {"OpenIdConfigurationV2": 1}) == {"OpenIdConfigurationV2": 1}  # 208 requests, one fetch

        hung.clear_faults()
        time.sleep(max(0.0, keys.failure_backoff_s - (time.monotonic() - failed_at)) + 0.2)
        assert get_env(functions, "production", valid).status_code == 200
        assert login_requests(hung) == {"OpenIdConfigurationV2": 2, "OpenIdConfigurationV1": 1, "Jwks": 1}
    api.close()


def test_cached_keys_keep_serving_while_random_key_ids_wait_on_one_hung_refresh(hung: SandboxClient) -> None:
    keys = SigningKeys(hung.env["SANDBOX_AUTHORITY"], hung.tenant_id, min_refresh_s=0.5)
    validator = TokenValidator(keys, [AUDIENCE])
    valid = hung.issue_token("caller", AUDIENCE)
    assert validator.validate(valid).object_id == hung.identities["caller"].object_id
    time.sleep(0.6)  # the refresh interval has passed: the next unknown key id may refresh
    hung.set_faults([HANG])
    hung.reset_counters()
    with ThreadPoolExecutor(max_workers=20) as pool:
        unknown = [pool.submit(validator.validate, foreign_token(hung, kid=f"random-{i}")) for i in range(100)]
        while not keys.fetching:
            time.sleep(0.01)
        for _ in range(4):
            assert validator.validate(valid).object_id == hung.identities["caller"].object_id
        assert keys.fetching  # answered from the cache while the refresh still hangs
        outcomes = [f.exception() for f in unknown]
    assert all(isinstance(o, AuthError) and o.status == 401 for o in outcomes)
    assert keys.attempts == 2  # the first fetch and the one refresh the 100 unknown key ids caused
    assert login_requests(hung, {"OpenIdConfigurationV2": 1}) == {"OpenIdConfigurationV2": 1}
