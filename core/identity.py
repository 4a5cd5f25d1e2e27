"""The only place credentials are built.

One credential per distinct identity, shared by every client that uses it (azure-identity caches
tokens per credential instance and per scope).  `BufferedTokenCredential` adds the config's
`cache.token_cache`: a token is reused until `buffer` seconds before it expires, concurrent
requests for the same scope wait for one fetch (single flight), and the number of fetches is
counted for status and benchmarks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AccessToken, TokenCredential


@dataclass
class TokenCacheStats:
    requests: int = 0
    fetches: int = 0


class BufferedTokenCredential:
    """Wraps a TokenCredential; caches each scope's token until `buffer_s` before expiry.

    With `enabled=False` every call goes to the wrapped credential (which may still cache
    on its own, as azure-identity's credentials do).
    """

    def __init__(
        self, inner: TokenCredential, *, buffer_s: float = 300.0, enabled: bool = True,
        clock: Callable[[], float] = time.time, description: str = "",
    ) -> None:
        self.inner = inner
        self.buffer_s = buffer_s
        self.enabled = enabled
        self.description = description
        self._clock = clock
        self._tokens: dict[tuple[Any, ...], AccessToken] = {}
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._guard = threading.Lock()
        self.stats = TokenCacheStats()

    def get_token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
        enable_cae: bool = False, **kwargs: Any,
    ) -> AccessToken:
        """A token for `scopes`, from the cache while it is fresh enough.

        Raises:
            azure.core.exceptions.ClientAuthenticationError: the identity could not get a token.
        """
        self.stats.requests += 1
        if not self.enabled or claims:
            # A claims challenge (CAE) always needs a fresh token.
            self.stats.fetches += 1
            return self.inner.get_token(*scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
        key = (scopes, tenant_id, enable_cae)
        token = self._fresh(key)
        if token is not None:
            return token
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            token = self._fresh(key)
            if token is not None:
                return token
            self.stats.fetches += 1
            token = self.inner.get_token(*scopes, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs)
            self._tokens[key] = token
            return token

    def _fresh(self, key: tuple[Any, ...]) -> AccessToken | None:
        token = self._tokens.get(key)
        if token is not None and token.expires_on - self._clock() > self.buffer_s:
            return token
        return None

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
