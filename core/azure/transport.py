"""A lean azure-core transport on urllib3, for the Key Vault clients' small JSON exchanges.

azure-core's `RequestsTransport` sends every request through requests, which re-merges session
settings, cookies, hooks and environment per request and then hands the request to urllib3
anyway: about a fifth of a Key Vault read's client CPU, under the one interpreter lock that a
resolve's threads share.  `Urllib3Transport` hands azure-core's request to a urllib3 pool
directly, with the same behaviour where it matters:

* the same shared trust (one SSL context per CA bundle for the process, certificate and host
  name verified), no redirects followed (azure-core's redirect policy decides), no retries
  (azure-core's retry policy decides), the same connect/read timeouts per call;
* the same errors: connection failures raise `ServiceRequestError` (timeouts
  `ServiceRequestTimeoutError`), failures after the request went out `ServiceResponseError`
  (timeouts `ServiceResponseTimeoutError`), so retries and vaultrelay's error translation see
  exactly what they saw before;
* anything this transport does not handle itself goes to the requests transport it wraps: a
  proxy (from the per-call `proxies` or the environment's proxy variables), a client
  certificate or a custom `connection_verify`, file uploads, streamed request bodies, and
  azure-core's legacy request type.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from azure.core.exceptions import (
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpTransport
from azure.core.rest import HttpRequest as RestHttpRequest
from azure.core.rest._http_response_impl import HttpResponseImpl
from azure.core.utils import case_insensitive_dict
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

DEFAULT_TIMEOUT_S = 300.0  # azure-core's ConnectionConfiguration defaults (connect and read)
BLOCK_SIZE = 4096


class Urllib3Response(HttpResponseImpl):  # type: ignore[misc]
    """An `azure.core.rest.HttpResponse` over a urllib3 response (read at once unless streamed)."""

    def __init__(self, *, request: Any, internal_response: Any, block_size: int, stream: bool) -> None:
        headers = case_insensitive_dict(internal_response.headers.items())
        super().__init__(
            request=request, internal_response=internal_response, block_size=block_size,
            status_code=internal_response.status, reason=internal_response.reason or "",
            content_type=headers.get("Content-Type"), headers=headers, stream_download_generator=_stream_download,
        )
        if not stream:
            with _reading(internal_response):
                self._content = internal_response.data
            self._is_stream_consumed = True
            self._is_closed = True

    def close(self) -> None:
        if not self.is_closed:
            self._is_closed = True
            self._internal_response.release_conn()


def _stream_download(response: Urllib3Response, pipeline: Any, decompress: bool = True, **_: Any) -> Iterator[bytes]:
    raw = response._internal_response
    with _reading(raw):
        yield from raw.stream(response._block_size, decode_content=decompress)


@contextlib.contextmanager
def _reading(raw: Any) -> Iterator[None]:
    """Errors while reading a response body raised as azure-core's; the connection goes back to
    the pool afterwards either way."""
    try:
        yield
    except ReadTimeoutError as exc:
        raise ServiceResponseTimeoutError(exc, error=exc) from exc
    except (ProtocolError, HTTPError) as exc:
        raise ServiceResponseError(exc, error=exc) from exc
    finally:
        raw.release_conn()


class Urllib3Transport(HttpTransport):  # type: ignore[misc]
    """Sends `azure.core.rest` requests through a shared urllib3 pool; see the module docstring.

    `pool` is shared by every transport of one `AzureClients` (closing a transport leaves it
    open); `fallback` is the requests transport over the same settings; `environment_proxies`
    gives the environment's proxies for a URL (the requests session's, read once per origin).
    """

    def __init__(self, pool: urllib3.PoolManager, fallback: Any, environment_proxies: Callable[[str], Mapping[str, str]]) -> None:
        self._pool = pool
        self._fallback = fallback
        self._environment_proxies = environment_proxies

    def __enter__(self) -> Urllib3Transport:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def open(self) -> None:
        self._fallback.open()

    def close(self) -> None:
        self._fallback.close()

    def send(self, request: Any, **kwargs: Any) -> Any:
        body = getattr(request, "data", None)
        if (
            not isinstance(request, RestHttpRequest) or getattr(request, "files", None)
            or not (body is None or isinstance(body, bytes | str))
            or kwargs.get("proxies") or kwargs.get("connection_cert") is not None
            or kwargs.get("connection_verify", True) is not True
            or not self._direct(request.url)
        ):
            return self._fallback.send(request, **kwargs)
        stream = bool(kwargs.get("stream", False))
        connect_s = kwargs.get("connection_timeout", DEFAULT_TIMEOUT_S)
        if isinstance(connect_s, tuple):  # azure-core's deprecated (connect, read) form
            return self._fallback.send(request, **kwargs)
        timeout = urllib3.Timeout(connect=connect_s, read=kwargs.get("read_timeout", DEFAULT_TIMEOUT_S))
        try:
            response = self._pool.urlopen(
                request.method, request.url, body=body.encode() if isinstance(body, str) else body,
                headers=dict(request.headers), retries=False, redirect=False, timeout=timeout,
                preload_content=False, decode_content=True, enforce_content_length=True,
            )
        except ConnectTimeoutError as exc:
            raise ServiceRequestTimeoutError(exc, error=exc) from exc
        except (NewConnectionError, SSLError) as exc:
            raise ServiceRequestError(exc, error=exc) from exc
        except ReadTimeoutError as exc:
            raise ServiceResponseTimeoutError(exc, error=exc) from exc
        except ProtocolError as exc:
            raise ServiceResponseError(exc, error=exc) from exc
        except HTTPError as exc:
            raise ServiceRequestError(exc, error=exc) from exc
        return Urllib3Response(request=request, internal_response=response, block_size=BLOCK_SIZE, stream=stream)

    def _direct(self, url: str) -> bool:
        """Whether `url` is reached without a proxy (the environment's proxy variables and no_proxy)."""
        return urllib.parse.urlsplit(url).scheme not in self._environment_proxies(url)
