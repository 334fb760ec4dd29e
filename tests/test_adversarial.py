"""The adversarial-client suite (issue 12): each misbehaving peer is a real socket client on
loopback, run while a well-behaved client streams on another connection and a third polls
``/healthz``.  Each case asserts the documented answer, and that

* every well-behaved stream that ran meanwhile finished intact (every event, in order,
  and the end of the response), with its largest gap between events under GAP_S;
* ``/healthz`` answered every poll within HEALTH_S;
* the server's RSS grew by less than the case's bound.

The server runs in its own process (``tests/adversarial_server.py``) so that its event loop
and its memory are its own.  Bounds are generous for a shared two-core machine, and still
an order of magnitude under what the defects measured (13.9 s frozen, +145 MB).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamcore.proto.sse import Decoder

ROOT = Path(__file__).resolve().parent.parent
#: Largest gap between two events of the well-behaved stream (its events come every 20 ms).
GAP_S = 0.5
#: Slowest /healthz answer.
HEALTH_S = 0.5
#: Server limits for the whole module: small time bounds so that each case is quick.
LIMITS = {
    "write_stall_timeout_s": 2.0,
    "stream_idle_timeout_s": 1.0,
    "heartbeat_interval_s": 0.2,
    "max_connections_per_ip": 64,
}


# ------------------------------------------------------------------------- the server


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    stderr: list[bytes] = field(default_factory=list)

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "adversarial_server.py"), json.dumps(LIMITS)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stderr is not None
    port = int(proc.stdout.readline())
    srv = Server(proc, port)
    err = proc.stderr

    def drain() -> None:
        for line in iter(err.readline, b""):
            srv.stderr.append(line)

    threading.Thread(target=drain, daemon=True).start()
    yield srv
    proc.terminate()  # a normal exit (the server's SIGTERM handler): its coverage is saved
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def connect(port: int, source: str = "127.0.0.1", rcvbuf: int | None = None,
            timeout: float = 5.0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, bytes, bytes]:
    """One whole response (Content-Length or close-delimited) within ``timeout`` (then
    what came): status, head, body."""
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"\r\ncontent-length: (\d+)", head, re.I)
    if match:
        length = int(match.group(1))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    else:
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline and (chunk := sock.recv(65536)):
                body += chunk
    return int(head.split(b" ", 2)[1]), head, body


# ------------------------------------------------------------------- the bystanders


class Bystanders:
    """A well-behaved SSE client streaming /tick back to back on one keep-alive
    connection, and a /healthz poller, for as long as the case runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.streams = 0
        self.max_gap = 0.0
        self.max_health = 0.0
        self.health_polls = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._stream, daemon=True),
                        threading.Thread(target=self._health, daemon=True)]

    def __enter__(self) -> Bystanders:
        for thread in self.threads:
            thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)

    def _stream(self) -> None:
        n = 40
        try:
            sock = connect(self.port)
            while not self.stop.is_set() or self.streams == 0:
                sock.sendall(b"GET /tick?n=%d&ms=20 HTTP/1.1\r\nHost: a\r\n\r\n" % n)
                self._one_stream(sock, n)
                self.streams += 1
            sock.close()
        except Exception as exc:
            self.errors.append(f"stream: {exc!r}")

    def _one_stream(self, sock: socket.socket, n: int) -> None:
        decoder = Decoder()
        seen: list[int] = []
        buf = b""
        last = time.monotonic()
        done = False
        while not done:
            chunk = sock.recv(65536)
            now = time.monotonic()
            assert chunk, "the well-behaved stream was cut"
            buf += chunk
            if b"\r\n\r\n" in buf and not seen and buf.startswith(b"HTTP/"):
                head, _, buf = buf.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200"), head
            # Chunked framing: take whole chunks only.
            while True:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(buf[:line_end], 16)
                if len(buf) < line_end + 2 + size + 2:
                    break
                payload = buf[line_end + 2:line_end + 2 + size]
                buf = buf[line_end + 4 + size:]
                if size == 0:
                    done = True
                    break
                for event in decoder.feed(payload):
                    if event.data and event.data != "[DONE]":
                        seen.append(orjson.loads(event.data)["i"])
                        self.max_gap = max(self.max_gap, now - last)
                        last = now
        assert seen == list(range(1, n + 1)), seen

    def _health(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with connect(self.port) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                    status, _, _ = read_response(sock)
                assert status == 200
            except Exception as exc:
                self.errors.append(f"healthz: {exc!r}")
            self.max_health = max(self.max_health, time.monotonic() - start)
            self.health_polls += 1
            time.sleep(0.05)

    def check(self) -> None:
        assert not self.errors, self.errors
        assert self.streams >= 1
        assert self.max_gap < GAP_S, f"the well-behaved stream stalled {self.max_gap:.3f} s"
        assert self.max_health < HEALTH_S, f"/healthz took {self.max_health:.3f} s"


@contextlib.contextmanager
def bystanders(server: Server, rss_mb: float) -> Iterator[Bystanders]:
    """Run the case with the bystanders; check them, the RSS bound and the log after."""
    before = server.rss_kb()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], server.rss_kb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log_at = len(server.stderr)
    with Bystanders(server.port) as bys:
        yield bys
    stop.set()
    sampler.join(5)
    grown = (peak[0] - before) / 1024
    # The measured figures, for the record (pytest -s shows them).
    print(f"\nbounds: gap {bys.max_gap * 1000:.0f} ms, /healthz {bys.max_health * 1000:.0f} ms "
          f"({bys.health_polls} polls), {bys.streams} streams, RSS +{grown:.1f} MB")
    bys.check()
    assert grown < rss_mb, f"RSS grew {grown:.1f} MB (bound {rss_mb} MB)"
    new_log = b"".join(server.stderr[log_at:]).decode(errors="replace")
    assert "Traceback" not in new_log and "internal error" not in new_log, new_log[-2000:]


# ------------------------------------------------------------------- WebSocket helpers

WS_HANDSHAKE = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def ws_connect(port: int, **kw: Any) -> socket.socket:
    sock = connect(port, **kw)
    sock.sendall(WS_HANDSHAKE)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101"), data
    return sock


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (mask 0: the payload goes as it is)."""
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        head = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return head + b"\0\0\0\0" + payload


def read_close_code(sock: socket.socket, timeout: float = 5.0) -> int:
    """Read frames until the server's Close; its code."""
    sock.settimeout(timeout)
    buf = b""
    while True:
        while len(buf) >= 2:
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + length:
                break
            if buf[0] & 0x0F == 8:
                return int(struct.unpack("!H", buf[offset:offset + 2])[0])
            buf = buf[offset + length:]
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError("closed without a Close frame")
        buf += chunk


def send_all_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)


# ------------------------------------------------------------------------------ cases


def test_ws_fragment_flood_is_closed_1009_without_freezing_others(server: Server) -> None:
    """Defect 1: a million 2-byte continuation frames (a 2 MB message, under the byte
    limit) used to freeze every other stream for 14 s.  Now: 1009 after ws_max_fragments."""
    flood = frame(1, b"ab", fin=False) + frame(0, b"ab", fin=False) * 1_000_000
    with bystanders(server, rss_mb=40) as bys:
        sock = ws_connect(server.port)
        started = time.monotonic()
        sender = threading.Thread(target=send_all_ignoring_reset, args=(sock, flood))
        sender.start()
        assert read_close_code(sock) == 1009
        took = time.monotonic() - started
        sock.close()
        sender.join(10)
        time.sleep(0.3)
    assert took < 2.0, took
    assert bys.streams >= 1


def test_chunked_body_of_tiny_chunks_is_refused_early(server: Server) -> None:
    """Defect 2: 1M two-byte chunks (7 MB on the wire) cost 8 s of CPU before a 400.  Now:
    a 400 after max_body_chunks, with the parse work split across loop iterations."""
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"2\r\nab\r\n" * 1_000_000
    with bystanders(server, rss_mb=40):
        cpu = server.cpu_s()
        sock = connect(server.port)
        started = time.monotonic()
        sender = threading.Thread(target=send_all_ignoring_reset, args=(sock, head + body))
        sender.start()
        status, _, answer = read_response(sock)
        took = time.monotonic() - started
        sock.close()
        sender.join(10)
        cpu = server.cpu_s() - cpu
    assert status == 400 and b"too_many_chunks" in answer, answer
    assert took < 2.0, took
    assert cpu < 3.0, cpu  # bystanders included


def test_ws_ping_flood_gets_one_pong_per_read_not_one_per_ping(server: Server) -> None:
    """Defect 3: 100 MiB of pings from a peer that reads nothing queued every pong (RSS
    +143 MB).  Now one Pong answers the latest of the Pings parsed together (RFC 6455
    section 5.5.3), so a ping flood costs parsing, not memory: here the peer reads
    everything, and gets a Pong for fewer than 1 % of its Pings."""
    ping = frame(9, b"p" * 125)
    count = 16 * 1024 * 1024 // len(ping)  # 16 MiB of pings
    with bystanders(server, rss_mb=30):
        sock = ws_connect(server.port)
        sock.settimeout(10)
        received = bytearray()

        def read() -> None:
            with contextlib.suppress(OSError):
                while chunk := sock.recv(1 << 20):
                    received.extend(chunk)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        send_all_ignoring_reset(sock, ping * count)
        send_all_ignoring_reset(sock, frame(8, b"\x03\xe8"))
        reader.join(15)
        sock.close()
    pongs = bytes(received).count(b"\x8a\x7d" + b"p" * 125)
    assert 1 <= pongs < count // 100, (pongs, count)


def test_ws_peer_that_never_reads_is_not_read_while_our_output_is_full(
        server: Server) -> None:
    """The other half of defect 3: while our output to a peer is full we read nothing of
    it (its TCP window closes), so its pings cannot queue work; the stall limit ends it."""
    stall = LIMITS["write_stall_timeout_s"]
    big = frame(2, b"m" * 60000)
    with bystanders(server, rss_mb=40):
        sock = ws_connect(server.port, rcvbuf=4096)
        sock.settimeout(stall + 6)
        started = time.monotonic()
        sent = 0
        total = 64 << 20  # echoed messages fill our output; then nothing more is read
        with contextlib.suppress(OSError):
            while sent < total:
                sock.sendall(big)
                sent += len(big)
        took = time.monotonic() - started
        sock.close()
    assert sent < 16 << 20, f"the server read {sent >> 20} MiB from a peer reading none"
    assert took < stall + 6, took


def test_pipelined_flood_is_read_only_under_the_cap(server: Server) -> None:
    """Defect 4, on the wire: 1 MiB of pipelined GETs is answered in order while the others
    go on (the cap itself: test_pipelining_cap_holds)."""
    request = b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"
    count = (1 << 20) // len(request)
    with bystanders(server, rss_mb=40):
        sock = connect(server.port, timeout=20)
        sender = threading.Thread(target=send_all_ignoring_reset, args=(sock, request * count))
        sender.start()
        received = b""
        while received.count(b"HTTP/1.1 200") < count:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed"
            received += chunk
        sock.close()
        sender.join(10)


@pytest.mark.parametrize("value", ["abc-1²".encode(), b"abc-" + b"9" * 5000,
                                   b"\xff\xfe-1", b"-" * 3000])
def test_odd_last_event_id_is_a_400(server: Server, value: bytes) -> None:
    """Defect 5: a Last-Event-ID ending in '2' as a superscript, or of thousands of digits,
    was a 500 and a traceback per request.  It is not one of our cursors: a 400 naming the
    header (never a silent replay), its value not echoed whole."""
    with bystanders(server, rss_mb=20), connect(server.port) as sock:
        sock.sendall(b"GET /tick?n=2&ms=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                     b"Last-Event-ID: " + value + b"\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 400, (status, body[:300])
    assert b'"code":"invalid_last_event_id"' in body and len(body) < 1000


@pytest.mark.parametrize("kind", ["tuple", "bytes", "str"])
def test_item_with_line_breaks_is_one_event(server: Server, kind: str) -> None:
    """Defect 6: a handler's item holding "\\nid: x\\nevent: y" arrives as one event with
    multi-line data; no id or event field is injected."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /inject?kind=%s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                     % kind.encode())
        status, _, body = read_response(sock)
    assert status == 200
    payload = b""
    while body:  # de-chunk
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        payload += rest[:size]
        body = rest[size + 2:]
        if size == 0:
            break
    events = [e for e in Decoder().feed(payload) + Decoder().close() if e.data]
    assert len(events) == 1, events
    event = events[0]
    assert event.event in ("", "message", None), event
    assert event.id != "x" and re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{6}-1", event.id or ""), event
    assert "\nid: x\nevent: y\ndata: z" in event.data


LENIENT = [
    (b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n", 505),
    (b"GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 17
     + b"\r\n", 400),
    (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n", 413),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
]


@pytest.mark.parametrize("request_bytes,status", LENIENT,
                         ids=["9.9", "2.0", "host-list", "host-space", "chunk-17-digits",
                              "chunk-over-body-limit", "request-line-9k"])
def test_lenient_shapes_are_refused_at_once(server: Server, request_bytes: bytes,
                                            status: int) -> None:
    """Defect 7: each gets its status at once (not at the 60 s body deadline), and closes."""
    started = time.monotonic()
    with connect(server.port) as sock:
        sock.sendall(request_bytes)
        got, _, body = read_response(sock, timeout=3)
    assert got == status, (got, body)
    assert time.monotonic() - started < 1.0
    assert len(body) < 600, body


def test_http_1_2_is_served_as_http_1_1(server: Server) -> None:
    """Defect 7 asked for 505 to HTTP/1.2; RFC 9110 section 2.5 says a server "SHOULD
    process the message as if it were in the highest minor version within that major
    version to which the recipient is conformant", and 505 refuses a *major* version
    (section 15.6.6).  So HTTP/1.2 is answered as HTTP/1.1, kept alive: two requests on
    one connection, each answered in HTTP/1.1."""
    with connect(server.port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.2\r\nHost: a\r\n\r\n")
            status, head, _ = read_response(sock, timeout=3)
            assert status == 200 and head.startswith(b"HTTP/1.1 200"), head
            assert b"connection: close" not in head.lower()


def test_request_line_over_the_limit_whatever_the_segmentation(server: Server) -> None:
    """414 as soon as 8 KiB of request line have come without its end."""
    with connect(server.port) as sock:
        sock.sendall(b"GET /" + b"a" * 5000)
        time.sleep(0.05)
        sock.sendall(b"a" * 5000)
        got, _, _ = read_response(sock, timeout=3)
    assert got == 414


def test_error_bodies_do_not_echo_unbounded_input(server: Server) -> None:
    with connect(server.port) as sock:
        sock.sendall(b"GET /" + b"z" * 7000 + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 404
    assert len(body) < 600 and b"z" * 201 not in body, body


def open_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def test_clients_that_read_nothing_are_closed_within_the_stall_limit(server: Server) -> None:
    """Defect 8: 50 clients that read nothing of a 500 KB answer were never closed: the
    answer fits in the kernel's buffers, so our write-stall timer never armed.  The kernel
    (TCP_USER_TIMEOUT = write_stall_timeout_s) now times them out, and the server lets go
    of their sockets (counted as the server process's open descriptors)."""
    stall = LIMITS["write_stall_timeout_s"]
    with bystanders(server, rss_mb=60):
        time.sleep(0.2)
        baseline = open_fds(server)
        socks = [connect(server.port, rcvbuf=4096) for _ in range(50)]
        for sock in socks:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        started = time.monotonic()
        time.sleep(0.3)
        assert open_fds(server) >= baseline + 50
        deadline = started + stall + 4
        while time.monotonic() < deadline and open_fds(server) > baseline + 2:
            time.sleep(0.1)
        took = time.monotonic() - started
        left = open_fds(server) - baseline
        for sock in socks:
            sock.close()
    assert left <= 2, f"{left} of 50 non-reading clients still held after {took:.1f} s"
    assert took < stall + 4


def test_per_ip_connection_cap(server: Server) -> None:
    """Defect 9: one address may hold max_connections_per_ip connections; the next gets
    503 with Retry-After; other addresses are served meanwhile."""
    cap = LIMITS["max_connections_per_ip"]
    with bystanders(server, rss_mb=20):
        held = [connect(server.port, source="127.0.0.3") for _ in range(cap)]
        time.sleep(0.2)
        with connect(server.port, source="127.0.0.3") as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            status, head, _ = read_response(extra)
        assert status == 503 and b"retry-after: 1" in head.lower()
        with connect(server.port, source="127.0.0.4") as other:
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert read_response(other)[0] == 200
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with connect(server.port, source="127.0.0.3") as again:  # released: admitted again
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert read_response(again)[0] == 200


def test_silent_handler_ends_with_an_idle_error(server: Server) -> None:
    """Defect 10: a handler that yields nothing was kept open by heartbeats forever; after
    stream_idle_timeout_s it ends with a stream_idle error event."""
    idle = LIMITS["stream_idle_timeout_s"]
    started = time.monotonic()
    with connect(server.port) as sock:
        sock.sendall(b"GET /silent HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(sock, timeout=idle * 3 + 2)
    took = time.monotonic() - started
    assert status == 200
    assert b": " in body or b":\n" in body  # heartbeats came meanwhile
    assert b'"code":"stream_idle"' in body, body[-400:]
    assert idle <= took < idle * 1.25 + 1.0, took


# ----------------------------------------------------------- in-process checks of the cap


class FakeTransport:
    """Records pause/resume of reading (the intercepting-transport style of tests/)."""

    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, bufs: list[bytes]) -> None:
        self.written.extend(bytes(b) for b in bufs)

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_pipelining_cap_holds() -> None:
    """Defect 4: reading resumed after every response, so max_pipelined_bytes held nothing.
    Now it resumes only once what is held of the next requests is under the cap."""
    import asyncio

    from streamcore import App, Limits
    from streamcore.aio.admission import Admission
    from streamcore.aio.connection import HTTPConnection
    from streamcore.aio.context import Context
    from streamcore.aio.sse import Heartbeat
    from streamcore.aio.stream import Flusher
    from streamcore.store.memory import MemoryStore

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        limits = Limits(max_pipelined_bytes=1024)
        app = App(limits=limits)
        gate = asyncio.Event()

        @app.route("GET", "/slow")
        async def slow(request: Any) -> str:
            await gate.wait()
            return "ok"

        ctx = Context(loop, limits, app, Admission(limits), Flusher(loop),
                      MemoryStore(loop.time, 60, 1 << 20), Heartbeat(loop, 15))
        conn = HTTPConnection(ctx)
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        request = b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n"
        conn.data_received(request * 200)  # one handled, ~6 KiB held
        await asyncio.sleep(0)
        assert not transport.reading, "held more than the cap and still reading"
        for _ in range(150):  # responses go out; the held bytes shrink, still over 1 KiB
            gate.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            gate.clear()
            held = conn.session.pipelined_bytes
            assert transport.reading == (held <= limits.max_pipelined_bytes) or \
                conn.session.phase.name != "HANDLING", held
        conn.connection_lost(None)

    asyncio.run(scenario())


def test_h11_internals_we_read_are_still_there() -> None:
    """proto/http.py reads h11's receive buffer length and its chunked reader's declared
    chunk size (to avoid a copy per request, and to refuse a chunk size at once): pinned
    here, so that an h11 upgrade that moves them fails this test, not production."""
    import h11

    from streamcore.proto.http import _declared_chunk, _unparsed, _unparsed_head

    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"ff\r\nabc")
    assert isinstance(conn.next_event(), h11.Request)
    assert _unparsed(conn) == len(b"ff\r\nabc")
    assert _unparsed_head(conn, 2) == b"ff"
    assert isinstance(conn.next_event(), h11.Data)
    assert _declared_chunk(conn) == 0xFF - 3
