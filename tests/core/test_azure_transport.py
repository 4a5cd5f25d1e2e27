"""core.azure.transport.Urllib3Transport: azure-core's transport contract over a urllib3 pool.

A small local HTTP server stands in for a service; the transport is driven the way an SDK
pipeline drives it (`azure.core.rest.HttpRequest` in, `azure.core.rest.HttpResponse` out).
Key Vault reads through it against the sandbox are covered by the resolve and failure tests.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import urllib3
from azure.core.exceptions import ServiceRequestError, ServiceResponseError, ServiceResponseTimeoutError
from azure.core.pipeline.transport import HttpRequest as LegacyHttpRequest
from azure.core.rest import HttpRequest

from core.azure.clients import _environment_once_session
from core.azure.transport import Urllib3Transport


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append({"method": self.command, "path": self.path, "body": body, "headers": dict(self.headers),
                          "peer": self.client_address[1]})
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        if self.path.startswith("/short"):  # promises more than it sends, then hangs up
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only this")
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        payload = json.dumps({"path": self.path, "method": self.command, "received": body.decode()}).encode()
        self.send_response(201 if self.command == "PUT" else 200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("X-Ms-Request-Id", "req-1")
        if self.path.startswith("/gzip"):
            payload = gzip.compress(payload)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = _answer


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("RecordingHandler", (Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


class RecordingFallback:
    """The requests transport's stand-in: records what was handed over."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.opened = self.closed = 0

    def send(self, request: Any, **kwargs: Any) -> str:
        self.sent.append((request, kwargs))
        return "fallback"

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Urllib3Transport, RecordingFallback]]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    pool = urllib3.PoolManager(maxsize=4, retries=False)
    fallback = RecordingFallback()
    yield Urllib3Transport(pool, fallback, _environment_once_session().environment_proxies), fallback
    pool.clear()


def test_requests_and_responses_follow_azure_core_rest(server: tuple[str, list[dict[str, Any]]], transport: Any) -> None:
    url, seen = server
    sender, fallback = transport
    response = sender.send(HttpRequest("GET", f"{url}/secrets/a?api-version=7.6", headers={"Accept": "application/json"}))
    assert response.status_code == 200 and response.reason == "OK"
    assert response.headers["x-ms-request-id"] == "req-1"  # case-insensitive, as azure-core promises
    assert response.content_type.startswith("application/json")
    assert response.json() == {"path": "/secrets/a?api-version=7.6", "method": "GET", "received": ""}
    assert response.text() == response.content.decode()
    assert response.is_closed and response.is_stream_consumed

    put = sender.send(HttpRequest("PUT", f"{url}/secrets/b", json={"value": "x"}))
    assert put.status_code == 201 and json.loads(put.json()["received"]) == {"value": "x"}
    assert seen[-1]["headers"]["Content-Length"] == str(len(seen[-1]["body"]))
    post = sender.send(HttpRequest("POST", f"{url}/keys/c/regenerate", content="plain text"))
    assert post.json()["received"] == "plain text"

    assert len({request["peer"] for request in seen}) == 1  # one kept-alive connection for all three
    assert not fallback.sent


def test_streamed_and_compressed_responses(server: tuple[str, list[dict[str, Any]]], transport: Any) -> None:
    url, _ = server
    sender, _ = transport
    streamed = sender.send(HttpRequest("GET", f"{url}/big"), stream=True)
    assert not streamed.is_stream_consumed
    assert json.loads(b"".join(streamed.iter_bytes()))["path"] == "/big"
    compressed = sender.send(HttpRequest("GET", f"{url}/gzip"))
    assert compressed.json()["path"] == "/gzip"  # decoded, as requests would


def test_transport_errors_become_the_azure_core_errors_retries_act_on(server: tuple[str, list[dict[str, Any]]], transport: Any) -> None:
    url, _ = server
    sender, _ = transport
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(ServiceRequestError):
        sender.send(HttpRequest("GET", f"http://127.0.0.1:{closed_port}/x"), connection_timeout=2)
    with pytest.raises(ServiceResponseTimeoutError):
        sender.send(HttpRequest("GET", f"{url}/slow"), read_timeout=0.2)
    with pytest.raises(ServiceResponseError):
        sender.send(HttpRequest("GET", f"{url}/short"))
    assert sender.send(HttpRequest("GET", f"{url}/after")).status_code == 200  # the pool recovers


def test_what_it_does_not_handle_goes_to_the_requests_transport(
    server: tuple[str, list[dict[str, Any]]], transport: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, seen = server
    sender, fallback = transport
    cases = [
        (HttpRequest("GET", f"{url}/p"), {"proxies": {"http": "http://proxy.internal:3128"}}),
        (HttpRequest("GET", f"{url}/c"), {"connection_cert": "/client.pem"}),
        (HttpRequest("GET", f"{url}/v"), {"connection_verify": "/other-bundle.pem"}),
        (HttpRequest("POST", f"{url}/f", files={"file": b"data"}), {}),
        (HttpRequest("PUT", f"{url}/s", content=iter([b"chunk"])), {}),
        (LegacyHttpRequest("GET", f"{url}/legacy"), {}),
    ]
    for request, kwargs in cases:
        assert sender.send(request, **kwargs) == "fallback"
    assert [sent[0] for sent in fallback.sent] == [case[0] for case in cases]
    assert not seen

    # A proxy from the environment (read once per origin) sends the origin through requests too;
    # no_proxy keeps it direct.
    proxied = type(sender)(urllib3.PoolManager(retries=False), fallback, _environment_once_session().environment_proxies)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert proxied.send(HttpRequest("GET", f"{url}/env-proxy")) == "fallback"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    direct = type(sender)(urllib3.PoolManager(retries=False), fallback, _environment_once_session().environment_proxies)
    assert direct.send(HttpRequest("GET", f"{url}/no-proxy")).status_code == 200
    assert [request["path"] for request in seen] == ["/no-proxy"]

    sender.open()
    sender.close()
    assert (fallback.opened, fallback.closed) == (1, 1)
