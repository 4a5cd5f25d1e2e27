"""An in-process Event Grid webhook for tests and the demo.

`EventReceiver` is a small threaded HTTP server on loopback that answers Event Grid's validation
handshakes, records the events it receives (and their delivery headers), calls an optional
Python callback per event, and can be told to fail the first N deliveries to prove retries.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Callback = Callable[[dict[str, Any], dict[str, str]], None]


def serve_https(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A threaded HTTPS server on a free loopback port, with the sandbox's server certificate.

    The certificate sits next to the CA bundle the sandbox's env file names in
    `REQUESTS_CA_BUNDLE`, so clients that trust the sandbox trust this server too. The server runs
    on a daemon thread; stop it with `shutdown()` and `server_close()`.

    Raises:
        KeyError: `REQUESTS_CA_BUNDLE` is not set (the sandbox's env is not loaded).
    """
    pki = Path(os.environ["REQUESTS_CA_BUNDLE"]).parent
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server-cert.pem", pki / "server-key.pem")
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class EventReceiver:
    """A webhook at `self.url` recording deliveries; use as a context manager."""

    def __init__(self, callback: Callback | None = None, *, fail_first: int = 0) -> None:
        self.callback = callback
        self.fail_first = fail_first
        self.events: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.validations = 0
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_OPTIONS(self) -> None:  # CloudEvents abuse-protection handshake
                with receiver._lock:
                    receiver.validations += 1
                self.send_response(200)
                self.send_header("WebHook-Allowed-Origin", self.headers.get("WebHook-Request-Origin", "*"))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length) or b"null")
                kind = self.headers.get("aeg-event-type", "")
                if kind == "SubscriptionValidation":
                    with receiver._lock:
                        receiver.validations += 1
                    code = payload[0]["data"]["validationCode"]
                    self._answer(200, {"validationResponse": code})
                    return
                with receiver._lock:
                    if receiver.fail_first > 0:
                        receiver.fail_first -= 1
                        self._answer(500, {"error": "failing on purpose"})
                        return
                events = payload if isinstance(payload, list) else [payload]
                headers = {k.lower(): v for k, v in self.headers.items()}
                for event in events:
                    if receiver.callback is not None:
                        receiver.callback(event, headers)
                    with receiver._lock:
                        receiver.events.append(event)
                        receiver.headers.append(headers)
                        receiver._lock.notify_all()
                self._answer(200, {})

            def _answer(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/events"
        self._thread = threading.Thread(target=self._server.serve_forever, name="event-receiver", daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The events once at least `count` arrived.

        Raises:
            TimeoutError: fewer arrived within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.events) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self.events)} of {count} events arrived")
                self._lock.wait(remaining)
            return list(self.events)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EventReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribe(sandbox: Any, receiver: EventReceiver, **options: Any) -> dict[str, Any]:
    """Register `receiver` with the sandbox's Event Grid (options as the control API takes)."""
    return dict(sandbox.call("POST", "/eventgrid/subscriptions", {"endpoint": receiver.url, **options}))
