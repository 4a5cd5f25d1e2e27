"""Key Vault token prefetch: the token round trip overlaps the vault's challenge round trip.

These drive `BufferedTokenCredential` over a counting stand-in credential; the cold resolve end
to end (one token request per audience, the prefetched token used) is in test_resolve_concurrency.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from core.identity import PREFETCH_FAILURE_TTL_S, BufferedTokenCredential

SCOPE = "https://vault.azure.net/.default"
HOME = "72f988bf-86f1-41af-91ab-2d7cd011db47"


class CountingCredential:
    """Issues JWT-shaped tokens in tenant `tid` (or fails), counting calls; optionally slow."""

    def __init__(self, tid: str = HOME, *, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.tid = tid
        self.delay_s = delay_s
        self.error = error
        self.calls: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append((scopes, kwargs))
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        expires = int(time.time()) + 3600
        return AccessToken(jwt.encode({"tid": self.tid, "exp": expires, "n": len(self.calls)}, "k" * 32, algorithm="HS256"), expires)


def test_a_prefetched_token_serves_the_challenge_tenant_it_was_issued_in() -> None:
    inner = CountingCredential()
    credential = BufferedTokenCredential(inner)
    assert not credential.has_token(SCOPE)
    credential.prefetch(SCOPE)
    assert credential.has_token(SCOPE)
    # What Key Vault's challenge policy asks after the 401: the challenge's tenant, CAE enabled.
    token = credential.get_token(SCOPE, tenant_id=HOME.upper(), enable_cae=True)
    assert len(inner.calls) == 1 and inner.calls[0] == ((SCOPE,), {"tenant_id": None, "enable_cae": True})
    assert credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True) == token
    assert (credential.stats.requests, credential.stats.fetches) == (3, 1)


def test_a_token_from_another_tenant_is_not_handed_out() -> None:
    inner = CountingCredential(tid="11111111-1111-1111-1111-111111111111")
    credential = BufferedTokenCredential(inner)
    credential.prefetch(SCOPE)
    credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True)
    assert [call[1]["tenant_id"] for call in inner.calls] == [None, HOME]


def test_the_challenge_waits_for_a_prefetch_in_flight_instead_of_fetching_twice() -> None:
    inner = CountingCredential(delay_s=0.3)
    credential = BufferedTokenCredential(inner)
    prefetch = threading.Thread(target=credential.prefetch, args=(SCOPE,))
    prefetch.start()
    time.sleep(0.05)  # the prefetch holds the scope's lock now
    credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True)
    prefetch.join()
    assert len(inner.calls) == 1


def test_a_failed_prefetch_is_reported_by_the_request_that_needed_it_without_a_second_attempt() -> None:
    clock = [1000.0]
    inner = CountingCredential(error=ClientAuthenticationError("no managed identity endpoint"))
    credential = BufferedTokenCredential(inner, clock=lambda: clock[0])
    credential.prefetch(SCOPE)  # never raises
    with pytest.raises(ClientAuthenticationError, match="no managed identity endpoint"):
        credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True)
    assert len(inner.calls) == 1
    # Reported once; a later request tries again, as does one long after a failed prefetch.
    with pytest.raises(ClientAuthenticationError):
        credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True)
    assert len(inner.calls) == 2
    credential.prefetch(SCOPE)
    clock[0] += PREFETCH_FAILURE_TTL_S + 1
    with pytest.raises(ClientAuthenticationError):
        credential.get_token(SCOPE, tenant_id=HOME, enable_cae=True)
    assert len(inner.calls) == 4


def test_no_prefetch_when_the_token_cache_is_off() -> None:
    inner = CountingCredential()
    BufferedTokenCredential(inner, enabled=False).prefetch(SCOPE)
    assert not inner.calls
