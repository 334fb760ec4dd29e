"""Shared helpers: real servers on 127.0.0.1 ephemeral ports, real clients.

* :func:`serve` (fixture): runs a :class:`streamcore.App` in a background thread on its own
  uvloop event loop and returns a :class:`Served` handle (``.url``, ``.port``, ``.server``,
  ``.call(fn)`` to run code on the server's loop).
* :func:`serve_cli`: ``python -m streamcore serve`` as a subprocess on a free port, waiting
  until ``/healthz`` answers.
* :func:`raw_exchange` / :class:`RawClient`: raw sockets, for what HTTP clients will not send.
* :func:`parse_responses`: a small, strict HTTP/1.1 response parser (Content-Length,
  chunked and close-delimited bodies) for raw socket output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

import streamcore

ROOT = Path(__file__).resolve().parent.parent

#: Small bounds so that every timeout test runs in well under a second or two.
FAST_LIMITS = streamcore.Limits(
    head_timeout_s=0.5,
    body_timeout_s=0.5,
    keepalive_timeout_s=0.5,
    write_stall_timeout_s=0.5,
    heartbeat_interval_s=0.1,
    drain_timeout_s=2.0,
    max_head_bytes=4096,
    max_header_count=20,
    max_body_bytes=64 * 1024,
    # A generation stops when its client leaves (the tests of disconnects expect that);
    # the default policy, linger, is tested where its window matters (test_resume_any).
    disconnect_policy="cancel",
)


# ----------------------------------------------------------------------- in-process server


class Served:
    """A streamcore Server running on its own uvloop loop in a daemon thread."""

    def __init__(self, app: streamcore.App, limits: streamcore.Limits | None,
                 ssl: Any = None) -> None:
        self.app = app
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="streamcore-test-loop",
                                        daemon=True)
        self._thread.start()
        self.server: streamcore.Server = self.run(
            streamcore.start(app, "127.0.0.1", 0, limits=limits, ssl=ssl))
        self.port = self.server.port
        self.url = f"{'https' if ssl is not None else 'http'}://127.0.0.1:{self.port}"
        self.limits = self.server.limits

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn()`` on the server's loop (its objects are not thread-safe)."""

        async def wrapper() -> Any:
            return fn()

        return self.run(wrapper(), timeout)

    def close(self, drain_timeout: float = 0.5) -> None:
        try:
            self.run(self.server.close(drain_timeout), timeout=drain_timeout + 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self.loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(app, limits=None, ssl=None) -> Served``; every server is closed at teardown.
    With an ``ssl.SSLContext`` it serves TLS (and ``.url`` is https)."""
    started: list[Served] = []

    def start(app: streamcore.App, limits: streamcore.Limits | None = None,
              ssl: Any = None) -> Served:
        served = Served(app, limits, ssl)
        started.append(served)
        return served

    yield start
    for served in reversed(started):
        served.close()


def wait_for(predicate: Callable[[], Any], timeout: float = 3.0, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` is truthy; returns its value, or fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


# ----------------------------------------------------------------------- CLI subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class CLIServer:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None = None,
                 timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"server exited with {proc.returncode}: {err.decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url}/healthz did not answer within {timeout}s")


@contextlib.contextmanager
def serve_cli(*args: str, env: dict[str, str] | None = None,
              port: int | None = None, command: str = "serve") -> Iterator[CLIServer]:
    """``python -m streamcore serve --port <free> *args`` until /healthz answers.

    With ``port`` given, no ``--port`` flag is passed (e.g. to test STREAMCORE_PORT).
    ``command``: another command that serves (``chaos``).
    """
    argv = [sys.executable, "-m", "streamcore", command]
    if port is None:
        port = free_port()
        argv += ["--port", str(port)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen([*argv, *args], env=full_env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        cli = CLIServer(proc, port)
        wait_healthy(cli.url, proc)
        yield cli
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        proc.communicate()


# ----------------------------------------------------------------------- raw sockets


@dataclass
class Raw:
    """What a raw exchange got back: the bytes, and whether the server closed (FIN or RST)."""

    data: bytes
    closed: bool
    reset: bool = False


class RawClient:
    """A raw TCP client: send bytes; read until close, a marker, or a timeout."""

    def __init__(self, port: int, *, rcvbuf: int | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so that the advertised window (and its scale) follows it.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buffer = bytearray()
        self.closed = False
        self.reset = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_once(self, timeout: float) -> bool:
        """One recv with a timeout; False on timeout or close."""
        if self.closed:
            return False
        ready, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not ready:
            return False
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            self.closed = self.reset = True
            return False
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def read_until_close(self, timeout: float = 3.0) -> Raw:
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._recv_once(deadline - time.monotonic())
        return Raw(bytes(self.buffer), self.closed, self.reset)

    def read_until(self, marker: bytes, timeout: float = 3.0, count: int = 1) -> bytes:
        """Read until ``marker`` occurs ``count`` times in everything received so far."""
        deadline = time.monotonic() + timeout
        while self.buffer.count(marker) < count:
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(
                    f"{marker!r} x{count} not received (closed={self.closed}); "
                    f"got {bytes(self.buffer)[-500:]!r}")
            self._recv_once(deadline - time.monotonic())
        return bytes(self.buffer)

    def read_for(self, seconds: float) -> bytes:
        """Everything that arrives in ``seconds`` (or until close)."""
        deadline = time.monotonic() + seconds
        while not self.closed and time.monotonic() < deadline:
            self._recv_once(deadline - time.monotonic())
        return bytes(self.buffer)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> Raw:
    """Connect, send ``data``, read the whole response until close or ``timeout``."""
    with RawClient(port) as client:
        if data:
            client.send(data)
        return client.read_until_close(timeout)


# ----------------------------------------------------------------------- response parsing


@dataclass
class ParsedResponse:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    #: "length", "chunked", "close" or "none" (HEAD, 1xx, 204, 304).
    framing: str = "none"
    #: The chunk payloads, for a chunked body.
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body)


def parse_responses(data: bytes, *, head_requests: int | tuple[int, ...] = (),
                    strict: bool = True) -> list[ParsedResponse]:
    """Every response in ``data`` (what a raw client received), in order.

    ``head_requests``: indexes of responses that answer HEAD requests (no body).  A body
    with neither Content-Length nor chunked framing runs to the end of ``data``.
    """
    if isinstance(head_requests, int):
        head_requests = (head_requests,)
    responses: list[ParsedResponse] = []
    pos = 0
    index = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            if strict:
                raise AssertionError(f"incomplete response head: {data[pos:pos + 300]!r}")
            break
        lines = data[pos:end].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status_text, _, reason = rest.partition(b" ")
        assert version.startswith(b"HTTP/"), f"not a status line: {lines[0]!r}"
        status = int(status_text)
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"bad header line {line!r}"
            headers.append((name.strip().lower(), value.strip()))
        response = ParsedResponse(status, reason, version, headers)
        pos = end + 4
        if 100 <= status < 200:
            responses.append(response)
            continue  # an interim response: the final one follows
        names = dict(headers)
        if index in head_requests or status in (204, 304):
            response.framing = "none"
        elif names.get(b"transfer-encoding", b"").lower() == b"chunked":
            response.framing = "chunked"
            body = bytearray()
            while True:
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    response.complete = False
                    break
                size = int(data[pos:line_end].split(b";")[0], 16)
                pos = line_end + 2
                if size == 0:
                    trailer_end = data.find(b"\r\n", pos)
                    if trailer_end != pos:
                        response.complete = False
                        pos = len(data)
                        break
                    pos += 2
                    break
                if pos + size + 2 > len(data):
                    response.complete = False
                    body += data[pos:]
                    pos = len(data)
                    break
                chunk = data[pos:pos + size]
                assert data[pos + size:pos + size + 2] == b"\r\n", "chunk not CRLF-terminated"
                response.chunks.append(chunk)
                body += chunk
                pos += size + 2
            response.body = bytes(body)
        elif b"content-length" in names:
            response.framing = "length"
            length = int(names[b"content-length"])
            response.body = data[pos:pos + length]
            response.complete = len(response.body) == length
            pos += length
        else:
            response.framing = "close"
            response.body = data[pos:]
            pos = len(data)
        responses.append(response)
        index += 1
    return responses


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5][0-9][0-9] [^\r\n]*\r\n")


def status_lines(data: bytes) -> list[bytes]:
    """Everything in ``data`` that looks like a status line, wherever it is (to count
    responses without trusting any framing)."""
    return _STATUS_LINE.findall(data)


def assert_openai_error(body: bytes) -> dict[str, Any]:
    """The body is ``{"error": {"message", "type", "param", "code"}}``; returns the error."""
    import orjson

    doc = orjson.loads(body)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    error = doc["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error
