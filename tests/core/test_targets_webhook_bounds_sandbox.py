"""A webhook receiver that misbehaves: it answers late, drips its headers or its body, or answers
with hundreds of megabytes.  With `timeout: T` each attempt must be over (connect, send, headers,
body) within T seconds and count as a failure, not a push; and at most 64 KiB of any answer is
read, whatever its size (memory measured with tracemalloc).  The receiver is an HTTPS server on
loopback with the sandbox's certificate."""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from core.azure.bounded_http import MAX_HEADER_BYTES, BoundedHttpError, request
from core.azure.clients import AzureClients
from core.config.cloud import resolve_cloud
from core.state.fingerprints import Fingerprinter
from core.targets.base import Change, DesiredItem, Snapshot, TargetContext
from core.targets.webhook import MAX_ANSWER_BYTES, WebhookTargetWriter
from core.values import SecretValue
from sandbox.client import SandboxClient
from sandbox.receiver import serve_https
from tests.configs import body_yaml, secret_ref, webhook_target
from tests.world import World

SLOW_S = 8.0  # how long the slow behaviours take in all; every timeout below is 1 s
HUGE = 400 * 1024 * 1024


class Misbehaving:
    """`POST /<behaviour>`: ok, late, drip-headers, drip-body, huge, huge-chunked."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}  # behaviour -> body bytes written before the client went away
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests += 1
                behaviour = self.path.strip("/")
                written = 0
                try:
                    if behaviour == "late":
                        time.sleep(SLOW_S)
                        self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0)
                    elif behaviour == "drip-headers":
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 40 + b"\r\nContent-Length: 0\r\n\r\n":
                            self._raw(bytes([byte]), SLOW_S / 80)
                    elif behaviour == "drip-body":
                        self._raw(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n", 0)
                        for _ in range(40):
                            self._raw(b"x", SLOW_S / 40)
                            written += 1
                    elif behaviour in ("huge", "huge-chunked"):
                        chunked = behaviour == "huge-chunked"
                        framing = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}".encode()
                        self._raw(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n\r\n", 0)
                        block = b"\0" * 65536
                        while written < HUGE:
                            self._raw(b"10000\r\n" + block + b"\r\n" if chunked else block, 0)
                            written += len(block)
                    elif behaviour == "headers-flood":
                        self._raw(b"HTTP/1.1 200 OK\r\n", 0)
                        while written < HUGE:
                            self._raw(b"X-Flood: " + b"y" * 1000 + b"\r\n", 0)
                            written += 1011
                    else:
                        self._raw(b"HTTP/1.1 204 No Content\r\n\r\n", 0)
                except OSError:
                    pass  # the client hung up: what it was meant to do
                receiver.sent[behaviour] = written
                self.close_connection = True

            def _raw(self, data: bytes, pause: float) -> None:
                if pause:
                    time.sleep(pause)
                self.wfile.write(data)
                self.wfile.flush()

        self.server = serve_https(Handler)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def receiver(sandbox: SandboxClient) -> Iterator[Misbehaving]:
    hook = Misbehaving()
    yield hook
    hook.close()


def writer(url: str, *, timeout: float = 1.0, retries: int = 0) -> WebhookTargetWriter:
    config = type("Hook", (), {"url": url, "timeout": timeout, "retries": retries, "payload": "bundle", "signing_key": "k"})()
    ctx = TargetContext(name="hook", clients=AzureClients(resolve_cloud(None, os.environ)), credential=None,
                        fingerprinter=Fingerprinter(b"0123456789abcdef"), resolve_value=lambda _: "signing-key-0123456789")
    return WebhookTargetWriter(config, ctx)


def push(hook: WebhookTargetWriter) -> Any:
    item = DesiredItem(name="A", value=SecretValue("a-value"), fingerprint="f")
    return hook.push("app", {"A": item}, Change(adds=frozenset({"A"})), Snapshot())


@pytest.mark.parametrize("behaviour", ["late", "drip-headers", "drip-body"])
def test_a_late_or_dripped_answer_is_a_failure_within_the_timeout(receiver: Misbehaving, behaviour: str) -> None:
    began = time.monotonic()
    with pytest.raises(Exception, match=r"target hook: webhook [^ ]+ did not answer within 1 s \(connect, send, headers and body\)"):
        push(writer(f"{receiver.base}/{behaviour}"))
    elapsed = time.monotonic() - began
    # Cut at the deadline: long before the receiver would have finished its answer.
    assert elapsed < SLOW_S / 2, f"{behaviour}: {elapsed:.1f} s"
    assert receiver.requests == 1


def test_a_huge_answer_is_read_only_to_64_kib(receiver: Misbehaving) -> None:
    for behaviour in ("huge", "huge-chunked"):
        hook = writer(f"{receiver.base}/{behaviour}", timeout=30)
        tracemalloc.start()
        try:
            push(hook)  # a 2xx: the push is acknowledged, the rest of the answer never read
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 4 * MAX_ANSWER_BYTES + 1024 * 1024, f"{behaviour}: {peak} bytes at peak"
        deadline = time.monotonic() + 10
        while behaviour not in receiver.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.sent[behaviour] < HUGE // 10, "the receiver could send its whole answer: it was read"


def test_headers_beyond_64_kib_are_refused_without_reading_them(receiver: Misbehaving) -> None:
    context = AzureClients(resolve_cloud(None, os.environ)).https_context()
    tracemalloc.start()
    try:
        with pytest.raises(BoundedHttpError) as caught:
            request("POST", f"{receiver.base}/headers-flood", body=b"{}", deadline_s=30, max_bytes=MAX_ANSWER_BYTES, ssl_context=context)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "protocol" and f"over {MAX_HEADER_BYTES} bytes" in str(caught.value)
    assert peak < 4 * MAX_HEADER_BYTES + 1024 * 1024



def test_a_late_receiver_is_not_recorded_as_pushed_and_the_next_run_pushes(world: World, receiver: Misbehaving) -> None:
    name = world.secret("hooked", "h-1")
    body = body_yaml(envs={"app": {"HOOKED": secret_ref(name)}},
                     targets={"hook": webhook_target("app", f"{receiver.base}/late", retries=1, timeout=1)})
    (late,) = world.engine(body).sync().targets
    assert late.outcome == "error" and late.writes == 0 and "did not answer within 1 s" in (late.error or "")
    assert receiver.requests == 2  # the retry, also cut at its deadline
    (ok,) = world.engine(body.replace("/late", "/ok")).sync().targets
    assert (ok.outcome, ok.writes) == ("pushed", 1)
