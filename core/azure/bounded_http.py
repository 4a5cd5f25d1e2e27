"""HTTPS requests bounded in time and in bytes, for peers vaultrelay does not control: webhook
receivers and the authority that publishes token signing keys.

`request` gives the whole exchange one deadline: name resolution, connecting, TLS, sending the
request, the status line and headers, and the body.  It runs on a worker thread; when the
deadline passes, a watchdog shuts the socket down, so a peer that answers late or drips its
answer a byte at a time can hold neither the caller nor the worker past it.  At most
`MAX_HEADER_BYTES` of status line and headers and `max_bytes` of body are read; the rest of a
longer body is never read (the connection is closed, not reused).  Proxies come from the
environment (`HTTPS_PROXY`, `NO_PROXY`), as urllib and requests read them.

Errors never carry what the peer sent: only the kind of failure and the exception type.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_HEADER_BYTES = 64 * 1024
_CHUNK_FRAMING_SLACK = 64 * 1024  # chunk-size lines of a chunked body, counted with the body


@dataclass(frozen=True)
class BoundedResponse:
    status: int
    headers: dict[str, str]  # lowercase names
    body: bytes
    truncated: bool  # more body was sent than was read


class BoundedHttpError(OSError):
    """The exchange did not complete.  `kind`: "timeout" (the deadline passed), "connect" (no
    connection or TLS session), "protocol" (not a well-formed HTTP answer, headers over
    MAX_HEADER_BYTES, or the connection dropped)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _OverBudget(Exception):
    pass


class _CountingReader:
    """The response's socket file, refusing to read more than `budget` bytes in all."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self.budget = budget

    def _take(self, data: bytes) -> bytes:
        self.budget -= len(data)
        if self.budget < 0:
            raise _OverBudget()
        return data

    def readline(self, limit: int = -1) -> bytes:
        cap = self.budget + 1 if limit < 0 else min(limit, self.budget + 1)
        return self._take(self._raw.readline(cap))

    def read(self, amount: int | None = None) -> bytes:
        cap = self.budget + 1 if amount is None or amount < 0 else min(amount, self.budget + 1)
        return self._take(self._raw.read(cap))

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if len(view) > self.budget + 1:
            view = view[: self.budget + 1]
        count = int(self._raw.readinto(view))
        self.budget -= count
        if self.budget < 0:
            raise _OverBudget()
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _response_class(budget: int) -> type[http.client.HTTPResponse]:
    class CountedResponse(http.client.HTTPResponse):
        def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(sock, *args, **kwargs)
            self.fp = _CountingReader(self.fp, budget)  # type: ignore[assignment]

    return CountedResponse


def _proxy(host: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, CONNECT headers) of the environment's HTTPS proxy for `host`, if any."""
    if urllib.request.proxy_bypass(host):
        return None
    url = urllib.request.getproxies().get("https")
    if not url:
        return None
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    headers: dict[str, str] = {}
    if parts.username:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    return str(parts.hostname), parts.port or 8080, headers


class _Exchange:
    def __init__(self, method: str, url: str, body: bytes, headers: Mapping[str, str], deadline_s: float,
                 max_bytes: int, ssl_context: ssl.SSLContext) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("only https:// URLs are requested")
        self.host, self.port = parts.hostname, parts.port or 443
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.method, self.body, self.headers = method, body, dict(headers)
        self.deadline_s, self.max_bytes, self.context = deadline_s, max_bytes, ssl_context
        self.response: BoundedResponse | None = None
        self.error: BoundedHttpError | None = None
        self._connection: http.client.HTTPSConnection | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            connection = self._connection
        sock = connection.sock if connection is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def run(self) -> None:
        stage = "connect"
        connection: http.client.HTTPSConnection | None = None
        try:
            proxy = _proxy(self.host)
            if proxy is None:
                connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.deadline_s, context=self.context)
            else:
                connection = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=self.deadline_s, context=self.context)
                connection.set_tunnel(self.host, self.port, headers=proxy[2])
            connection.response_class = _response_class(MAX_HEADER_BYTES)
            with self._lock:
                if self._aborted:
                    return
                self._connection = connection
            connection.connect()
            stage = "protocol"
            connection.request(self.method, self.target, body=self.body, headers=self.headers)
            try:
                answer = connection.getresponse()
            except _OverBudget:
                raise BoundedHttpError("protocol", f"status line and headers over {MAX_HEADER_BYTES} bytes") from None
            reader = answer.fp
            if isinstance(reader, _CountingReader):
                reader.budget = self.max_bytes + _CHUNK_FRAMING_SLACK  # the body's own budget
            chunks: list[bytes] = []
            total, truncated = 0, False
            try:
                while total < self.max_bytes:
                    chunk = answer.read(min(65536, self.max_bytes - total))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
            except _OverBudget:
                truncated = True
            truncated = truncated or (total >= self.max_bytes and not answer.isclosed())
            self.response = BoundedResponse(answer.status, {k.lower(): v for k, v in answer.getheaders()}, b"".join(chunks), truncated)
        except BoundedHttpError as exc:
            self.error = exc
        except Exception as exc:  # every failure is reported by kind only
            timed_out = self._aborted or isinstance(exc, TimeoutError)
            kind = "timeout" if timed_out else stage
            # The OS's words for it (Connection refused), never the exception's text, which may name the URL.
            why = f" ({exc.strerror})" if isinstance(exc, OSError) and isinstance(exc.strerror, str) else ""
            self.error = BoundedHttpError(kind, f"{'no connection' if kind == 'connect' else 'no complete answer'}: {type(exc).__name__}{why}")
        finally:
            if connection is not None:
                connection.close()


def request(method: str, url: str, *, body: bytes = b"", headers: Mapping[str, str] | None = None, deadline_s: float,
            max_bytes: int, ssl_context: ssl.SSLContext) -> BoundedResponse:
    """Send one HTTPS request and read its answer, all within `deadline_s` seconds.

    Raises:
        ValueError: `url` is not https.
        BoundedHttpError: the deadline passed, no connection, or no well-formed answer.
    """
    exchange = _Exchange(method, url, body, headers or {}, deadline_s, max_bytes, ssl_context)
    worker = threading.Thread(target=exchange.run, name="vaultrelay-bounded-http", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        exchange.abort()
        worker.join(1.0)  # the socket is shut down: the worker returns at once (or after name resolution)
        raise BoundedHttpError("timeout", f"no complete answer within {deadline_s:g} s")
    if exchange.error is not None:
        raise exchange.error
    assert exchange.response is not None
    return exchange.response
