"""The load generator: a fast asyncio (uvloop) raw-socket client for SSE and WebSocket.

Modes (all print one JSON object, to ``--out`` or stdout):

``validate``   one connection, two requests in a row (keep-alive / same socket), each fully
               parsed (HTTP chunked framing, WHATWG SSE fields; RFC 6455 frames): exactly T
               content chunks of the OpenAI shape, then ``[DONE]`` (SSE) or a ``done``
               message (WS).  Also the raw bytes of one response (for wrk's token count).
``throughput`` workload A: C connections, each requesting T-token streams back to back for
               ``--duration`` s, unpaced.  Counts content chunks by a byte pattern without
               parsing (the validator has checked the stream), per-stream time and TTFB.
``paced``      workload B: N streams (one per connection, started over ``--ramp`` s), T tokens
               each at ``--rate``/s; every chunk's arrival against the ideal schedule
               ``t0 + i / rate`` (t0: when the request was sent; for WebSocket, after the
               handshake), TTFB and first token; and jitter, the same against the
               stream's own first token (``t_first + i / rate``).
``idle``       workload C: N open streams that receive their first token and then idle;
               the server's RSS before and after, per connection (needs ``--server-pid``).
``slow``       workload D: K clients that send a request for a long unpaced stream and then
               read nothing; the server's RSS and CPU over ``--duration`` s.

The client reports its own CPU use (``client_cpu_util``: CPU seconds / wall seconds); near
1.0 means the client, not the server, was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import resource
import socket
import sys
import time
from array import array
from time import monotonic
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procstat

CONTENT = b'"delta":{"content":'  # one per content chunk (the role chunk has "role" first)
CHUNKED_END = b"\r\n0\r\n\r\n"
WS_DONE = b'"type":"done"'
CARRY = max(len(CONTENT), len(CHUNKED_END), len(WS_DONE)) - 1
DONE = b"[DONE]"
#: The stream's last ``data:`` field (strict_end): ``[DONE]``, then only line ends and
#: chunked framing (a CRLF after the chunk, ``0`` and the blank line that end the body).
LAST_DONE = re.compile(rb"data: ?\[DONE\](\r\n|\r|\n){2}(\r\n)?(0\r\n\r\n)?$")
TAIL = 128
WS_KEY = base64.b64encode(b"streamcore-bench").decode()


#: A prompt of 18 words: streamcore's synthetic model before aa62260 failed after 17 tokens on
#: a prompt of fewer than 16 words (it indexed a 32-word list built from the prompt).
PROMPT = ("Write a short story about a token stream that flows through a bounded pipe to "
          "every reader please")


def chat_body(tokens: int) -> bytes:
    return orjson.dumps({"model": "synthetic",
                         "messages": [{"role": "user", "content": PROMPT}],
                         "stream": True, "max_tokens": tokens})


def sse_request(port: int, tokens: int, path: str = "/v1/chat/completions") -> bytes:
    body = chat_body(tokens)
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def ws_handshake(port: int, path: str = "/v1/ws") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


def ws_client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (RFC 6455 5.3: a client masks every frame); the mask is zero,
    which is allowed and leaves the payload as is."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


def ws_request(request_id: str, tokens: int) -> bytes:
    message = b'{"type":"request","id":"%s","body":%s}' % (request_id.encode(),
                                                            chat_body(tokens))
    return ws_client_frame(message)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentiles(values: Any, ps: tuple[float, ...] = (50, 90, 99, 99.9)) -> dict[str, float]:
    if len(values) == 0:
        return {}
    try:
        import numpy as np

        arr = np.frombuffer(values, dtype=np.float64) if isinstance(values, array) else \
            np.asarray(values, dtype=np.float64)
        out = {f"p{p:g}": float(np.percentile(arr, p)) for p in ps}
        out["max"] = float(arr.max())
        out["mean"] = float(arr.mean())
        return out
    except ImportError:
        s = sorted(values)
        out = {f"p{p:g}": s[min(len(s) - 1, int(len(s) * p / 100))] for p in ps}
        out["max"] = s[-1]
        out["mean"] = sum(s) / len(s)
        return out


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- full validation (blocking sockets, strict parsing) ---------------------------------------


class Invalid(Exception):
    pass


def _recv_until(sock: socket.socket, buf: bytearray, marker: bytes) -> int:
    while True:
        i = buf.find(marker)
        if i >= 0:
            return i
        data = sock.recv(65536)
        if not data:
            raise Invalid(f"connection closed before {marker!r}")
        buf += data


def _recv_exact(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise Invalid("connection closed mid-message")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def _read_http_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str],
                                                                        bytes, int]:
    """(status, headers, body, raw size) of one response, de-chunked."""
    end = _recv_until(sock, buf, b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end + 4]
    raw = end + 4
    lines = head.split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = bytearray()
        while True:
            i = _recv_until(sock, buf, b"\r\n")
            size_line = bytes(buf[:i])
            size = int(size_line.split(b";")[0], 16)
            del buf[:i + 2]
            raw += i + 2
            data = _recv_exact(sock, buf, size + 2)
            raw += size + 2
            if data[-2:] != b"\r\n":
                raise Invalid("chunk not followed by CRLF")
            if size == 0:
                break
            body += data[:-2]
        return status, headers, bytes(body), raw
    if "content-length" in headers:
        n = int(headers["content-length"])
        return status, headers, _recv_exact(sock, buf, n), raw + n
    # Close-delimited.
    while True:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    body = bytes(buf)
    buf.clear()
    return status, headers, body, raw + len(body)


def parse_sse(body: bytes) -> list[dict[str, str]]:
    """WHATWG HTML 9.2.6: lines end in CRLF, LF or CR; a blank line dispatches."""
    events: list[dict[str, str]] = []
    data: list[str] = []
    fields: dict[str, str] = {}
    text = body.decode("utf-8")
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data or fields:
                event = dict(fields)
                if data:
                    event["data"] = "\n".join(data)
                events.append(event)
            data, fields = [], {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        else:
            fields[name] = value
    return events


def check_chunk(obj: Any, where: str) -> str | None:
    """A chat.completion.chunk; its content token if it carries one."""
    if not isinstance(obj, dict) or obj.get("object") != "chat.completion.chunk":
        raise Invalid(f"{where}: not a chat.completion.chunk: {str(obj)[:200]}")
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise Invalid(f"{where}: no choices list")
    if not choices:
        return None  # the usage chunk
    delta = choices[0].get("delta")
    if not isinstance(delta, dict):
        raise Invalid(f"{where}: no delta")
    if "role" in delta:
        return None
    content = delta.get("content")
    if content is None:
        return None
    if not isinstance(content, str):
        raise Invalid(f"{where}: content is not a string")
    return content


def validate_sse(port: int, tokens: int, rounds: int = 2) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    buf = bytearray()
    result: dict[str, Any] = {}
    try:
        for r in range(rounds):
            sock.sendall(sse_request(port, tokens))
            status, headers, body, raw = _read_http_response(sock, buf)
            if status != 200:
                raise Invalid(f"status {status}: {body[:200]!r}")
            if not headers.get("content-type", "").startswith("text/event-stream"):
                raise Invalid(f"content-type {headers.get('content-type')!r}")
            events = [e for e in parse_sse(body) if "data" in e]
            if not events or events[-1]["data"] != "[DONE]":
                raise Invalid("the stream does not end with data: [DONE]")
            count = 0
            for i, event in enumerate(events[:-1]):
                if event["data"] == "[DONE]":
                    raise Invalid(f"[DONE] at event {i}, before the end")
                if check_chunk(orjson.loads(event["data"]), f"event {i}") is not None:
                    count += 1
            if count != tokens:
                raise Invalid(f"{count} content chunks, expected {tokens}")
            fast = body.count(CONTENT)
            if fast != tokens:
                raise Invalid(f"the fast counter sees {fast} chunks, the parser {tokens}")
            if r == 0:
                result = {"ok": True, "tokens": count, "events": len(events),
                          "response_bytes": raw, "body_bytes": len(body),
                          "chunked": "chunked" in headers.get("transfer-encoding", ""),
                          "headers": headers}
            if headers.get("connection", "").lower() == "close":
                result["keep_alive"] = False
                break
        else:
            result["keep_alive"] = True
    finally:
        sock.close()
    return result


def _ws_read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    head = _recv_exact(sock, buf, 2)
    opcode, n = head[0] & 0x0F, head[1] & 0x7F
    if head[1] & 0x80:
        raise Invalid("the server masked a frame (RFC 6455 5.1)")
    if n == 126:
        n = int.from_bytes(_recv_exact(sock, buf, 2), "big")
    elif n == 127:
        n = int.from_bytes(_recv_exact(sock, buf, 8), "big")
    if not head[0] & 0x80:
        raise Invalid("fragmented message (not expected for small chunks)")
    return opcode, _recv_exact(sock, buf, n)


def ws_connect_blocking(port: int, timeout: float = 30) -> tuple[socket.socket, bytearray]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(ws_handshake(port))
    buf = bytearray()
    end = _recv_until(sock, buf, b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end + 4]
    status = int(head.split(" ")[1])
    if status != 101:
        sock.close()
        raise Invalid(f"WebSocket handshake answered {status}")
    return sock, buf


def validate_ws(port: int, tokens: int, rounds: int = 2) -> dict[str, Any]:
    sock, buf = ws_connect_blocking(port)
    result: dict[str, Any] = {}
    try:
        for r in range(rounds):
            request_id = f"r{r + 1}"
            sock.sendall(ws_request(request_id, tokens))
            count = messages = raw = 0
            last_seq = -1
            while True:
                opcode, payload = _ws_read_frame(sock, buf)
                raw += len(payload) + 2
                if opcode == 9:  # ping: answer (RFC 6455 5.5.3)
                    sock.sendall(ws_client_frame(payload, 10))
                    continue
                if opcode == 8:
                    raise Invalid(f"the server closed: {payload[:2].hex()} {payload[2:]!r}")
                if opcode != 1:
                    continue
                messages += 1
                obj = orjson.loads(payload)
                if obj.get("id") != request_id:
                    raise Invalid(f"message for id {obj.get('id')!r}, expected {request_id}")
                if obj.get("type") == "done":
                    break
                if obj.get("type") == "stream":  # which stream (for resume): first, no chunk
                    continue
                if obj.get("type") != "chunk":
                    raise Invalid(f"unexpected message type {obj.get('type')!r}")
                seq = obj.get("seq")
                if not isinstance(seq, int) or seq <= last_seq:
                    raise Invalid(f"seq {seq!r} after {last_seq}")
                last_seq = seq
                if check_chunk(obj.get("chunk"), f"message {messages}") is not None:
                    count += 1
            if count != tokens:
                raise Invalid(f"{count} content chunks, expected {tokens}")
            if r == 0:
                result = {"ok": True, "tokens": count, "messages": messages,
                          "response_bytes": raw}
        result["same_socket_requests"] = rounds
        sock.sendall(ws_client_frame(b"\x03\xe8", 8))
    finally:
        sock.close()
    return result


# -- the fast asyncio clients --------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.tokens = 0
        self.streams_done = 0
        self.stream_times = array("d")
        self.ttfb = array("d")
        self.ttft = array("d")
        self.lateness = array("d")
        self.jitter = array("d")
        self.errors: dict[str, int] = {}
        self.opened = 0
        self.first_token_streams = 0
        #: Streams that delivered exactly T content chunks and (with ``strict_end``)
        #: ended with ``data: [DONE]`` as their last event, seen once.
        self.streams_valid = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class Client(asyncio.Protocol):
    """One connection running streams one after another (SSE keep-alive or one WS)."""

    def __init__(self, stats: Stats, proto: str, port: int, tokens: int, *,
                 repeat_until: float = 0.0, rate: float = 0.0, loop: Any = None,
                 t0_connect: bool = False, repeat: int = 0, strict_end: bool = False,
                 skip_first: bool = False) -> None:
        self.stats = stats
        self.ws = proto == "ws"
        self.port = port
        self.tokens = tokens
        self.repeat_until = repeat_until
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.connected = loop.create_future()
        self.finished = loop.create_future()
        self.in_head = True
        self.handshaken = False
        self.head = bytearray()
        self.carry = b""
        self.remaining = -1  # content-length left, or -1 (chunked / WS)
        self.got = 0
        self.t0 = 0.0
        self.t_first = 0.0
        self.first = False
        self.requests = 0
        self.active = False
        #: Measure the first request from the TCP connection (includes the WebSocket
        #: handshake, and for both protocols the time to be accepted) instead of from the
        #: moment the request itself is sent.
        self.t0_connect = t0_connect
        self.t_conn = 0.0
        #: Paced: run this many streams back to back on the connection (keep-alive).
        self.repeat = repeat
        #: Paced: no latency samples from the connection's first stream (the ramp's, while
        #: fewer streams than in steady state are in flight); they are still validated.
        self.skip_first = skip_first
        self.sampled = True
        #: SSE: check that each stream's last event is ``data: [DONE]`` and that it comes
        #: once (the tail of the body is kept; a failed stream must not end with it).
        self.strict_end = strict_end and not self.ws
        self.tail = b""
        self.dones = 0
        self.carry_dones = 0
        self.dechunk = False
        self.chunk_left = 0
        self.chunk_crlf = 0
        self.chunk_last = False
        self.size_line = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t_conn = monotonic()
        self.transport = transport  # type: ignore[assignment]
        self.stats.opened += 1
        if self.ws:
            transport.write(ws_handshake(self.port))  # type: ignore[attr-defined]
        else:
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.active:
            self.stats.error("closed_mid_stream")
            self.active = False
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed during handshake"))
        if not self.finished.done():
            self.finished.set_result(None)

    def start(self) -> None:
        """Send one request."""
        transport = self.transport
        if transport is None:
            return
        self.requests += 1
        self.got = 0
        self.first = False
        self.carry = b""
        self.tail = b""
        self.dones = 0
        self.carry_dones = 0
        self.dechunk = False
        self.chunk_left = 0
        self.chunk_crlf = 0
        self.chunk_last = False
        self.size_line = b""
        self.active = True
        self.sampled = not (self.skip_first and self.requests == 1)
        self.t0 = self.t_conn if self.t0_connect and self.requests == 1 else monotonic()
        if self.ws:
            transport.write(ws_request(f"r{self.requests}", self.tokens))
            self.in_head = False
        else:
            self.in_head = True
            self.head.clear()
            transport.write(sse_request(self.port, self.tokens))

    def data_received(self, data: bytes) -> None:
        now = monotonic()  # not loop.time(): uvloop's clock has millisecond steps
        if self.ws and not self.handshaken:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                self.stats.error("ws_handshake")
                self.transport.close()
                return
            self.handshaken = True
            data = bytes(self.head[end + 4:])
            self.head.clear()
            self.connected.set_result(None)
            if not data:
                return
        if not self.active:
            return
        if not self.first:
            self.first = True
            if self.sampled:
                self.stats.ttfb.append(now - self.t0)
        if self.in_head:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.head[:end]).lower()
            if not head.startswith(b"http/1.1 200"):
                self.stats.error("status_" + head[9:12].decode())
                self.active = False
                self.transport.close()
                return
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
            self.remaining = int(m.group(1)) if m else -1
            # strict_end: de-chunk, so that a pattern split by a chunk boundary (a proxy
            # that relays reads as they come, nginx) is still seen whole.
            self.dechunk = self.strict_end and self.remaining < 0 and b"chunked" in head
            data = bytes(self.head[end + 4:])
            self.in_head = False
            if not data:
                return
        if self.dechunk:
            data, body_end = self.unchunk(data)
        buf = self.carry + data if self.carry else data
        n = buf.count(CONTENT)
        if n:
            got = self.got
            if got == 0:
                if self.sampled:
                    self.stats.ttft.append(now - self.t0)
                self.stats.first_token_streams += 1
                self.t_first = now
            if self.interval and self.sampled:
                # Against the ideal schedule from the request (t0), and from the stream's
                # own first token (jitter: what the server's pacing and batching add).
                lateness = self.stats.lateness
                jitter = self.stats.jitter
                base = self.t0 - now
                base1 = self.t_first - now
                iv = self.interval
                for i in range(got, got + n):
                    lateness.append(-(base + i * iv))
                    jitter.append(-(base1 + i * iv))
            self.got = got + n
            self.stats.tokens += n
        if self.ws:
            end = WS_DONE in buf
        elif self.remaining >= 0:
            self.remaining -= len(data)
            end = self.remaining <= 0
        elif self.dechunk:
            end = body_end
        else:
            end = CHUNKED_END in buf
        self.carry = buf[-CARRY:]
        if self.strict_end:
            self.dones += buf.count(DONE) - self.carry_dones
            self.carry_dones = self.carry.count(DONE)
            self.tail = (self.tail + data)[-TAIL:]
        if end:
            self.stream_end(now)

    def unchunk(self, data: bytes) -> tuple[bytes, bool]:
        """HTTP/1.1 chunked framing (RFC 9112 7.1) off, incrementally: (payload, ended)."""
        if self.size_line:
            data, self.size_line = self.size_line + data, b""
        out = []
        pos, n = 0, len(data)
        while pos < n:
            if self.chunk_left:
                take = min(self.chunk_left, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.chunk_crlf = 2
            elif self.chunk_crlf:
                take = min(self.chunk_crlf, n - pos)
                pos += take
                self.chunk_crlf -= take
                if not self.chunk_crlf and self.chunk_last:
                    return b"".join(out), True
            else:
                i = data.find(b"\r\n", pos)
                if i < 0:
                    self.size_line = data[pos:]
                    break
                size = int(data[pos:i].split(b";")[0], 16)
                pos = i + 2
                if size:
                    self.chunk_left = size
                else:  # the last chunk: its CRLF (no trailers) ends the body
                    self.chunk_last = True
                    self.chunk_crlf = 2
        return b"".join(out), False

    def stream_end(self, now: float) -> None:
        self.active = False
        stats = self.stats
        stats.streams_done += 1
        stats.stream_times.append(now - self.t0)
        valid = True
        if self.got != self.tokens:
            stats.error("short_stream")
            valid = False
        if self.strict_end:
            last = self.tail.rfind(b"data:")
            if self.dones != 1 or last < 0 or not LAST_DONE.match(self.tail, last):
                stats.error("no_done_last")
                valid = False
        if valid:
            stats.streams_valid += 1
        if self.repeat and self.requests < self.repeat:
            self.start()
            return
        if self.repeat_until and now < self.repeat_until:
            self.start()
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.active = False
            self.transport.close()
        if not self.finished.done():
            self.finished.set_result(None)


async def open_clients(n: int, make: Any, port: int, stats: Stats, parallel: int = 256,
                       on_open: Any = None) -> list[Client]:
    """Open n connections, ``parallel`` at a time (the listen backlog is finite)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(parallel)
    clients: list[Client] = []

    async def one(i: int) -> None:
        async with sem:
            for attempt in range(3):
                try:
                    _, client = await loop.create_connection(make, "127.0.0.1", port)
                    await client.connected
                    clients.append(client)
                    if on_open is not None:
                        on_open(client)
                    return
                except OSError:
                    stats.error("connect")
                    await asyncio.sleep(0.05 * (attempt + 1))

    await asyncio.gather(*(one(i) for i in range(n)))
    return clients


def summary(stats: Stats, wall: float, cpu: float) -> dict[str, Any]:
    return {
        "tokens": stats.tokens,
        "wall_s": wall,
        "tokens_per_s": stats.tokens / wall if wall > 0 else 0.0,
        "streams_done": stats.streams_done,
        "streams_valid": stats.streams_valid,
        "connections": stats.opened,
        "errors": stats.errors,
        "stream_time_s": percentiles(stats.stream_times),
        "ttfb_s": percentiles(stats.ttfb),
        "ttft_s": percentiles(stats.ttft),
        "client_cpu_s": cpu,
        "client_cpu_util": cpu / wall if wall > 0 else 0.0,
    }


async def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    clients = await open_clients(
        args.concurrency,
        lambda: Client(stats, args.proto, args.port, args.tokens, repeat_until=1.0, loop=loop,
                       strict_end=args.strict_end),
        args.port, stats)
    cpu0, t0 = cpu_now(), monotonic()
    deadline = t0 + args.duration
    for c in clients:
        c.repeat_until = deadline
        c.start()
    # Streams in flight at the deadline are cut: their tokens so far still count.
    remaining = deadline - monotonic()
    if remaining > 0:
        await asyncio.wait([c.finished for c in clients], timeout=remaining)
    wall = monotonic() - t0
    cpu = cpu_now() - cpu0
    for c in clients:
        c.active = False
        c.close()
    await asyncio.sleep(0.05)
    out = summary(stats, wall, cpu)
    out["mode"] = "throughput"
    return out


async def run_paced(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats = Stats()
    n = args.concurrency
    clients: list[Client] = []
    begin = monotonic() + 0.05
    cpu0 = cpu_now()

    async def one(i: int) -> None:
        await asyncio.sleep(max(0.0, begin + i * args.ramp / n - monotonic()))
        for attempt in range(3):
            try:
                _, client = await loop.create_connection(
                    lambda: Client(stats, args.proto, args.port, args.tokens,
                                   rate=args.rate, loop=loop,
                                   t0_connect=args.t0 == "connect", repeat=args.repeat,
                                   strict_end=args.strict_end,
                                   skip_first=args.skip_first), "127.0.0.1", args.port)
                await client.connected
                clients.append(client)
                client.start()
                return
            except OSError:
                stats.error("connect")
                await asyncio.sleep(0.05 * (attempt + 1))

    await asyncio.gather(*(one(i) for i in range(n)))
    limit = args.limit or max(1, args.repeat) * args.tokens / args.rate + args.ramp + 30.0
    pending = [c.finished for c in clients]
    if pending:
        await asyncio.wait(pending, timeout=limit)
    wall = monotonic() - begin
    cpu = cpu_now() - cpu0
    for c in clients:
        c.close()
    out = summary(stats, wall, cpu)
    out.update(mode="paced", rate=args.rate, lateness_s=percentiles(stats.lateness),
               jitter_s=percentiles(stats.jitter), late_samples=len(stats.lateness),
               ramp_s=args.ramp)
    return out


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    """C: open N streams; once each has its first token, measure; hold; close."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    pid = args.server_pid
    rss0 = procstat.rss_bytes(pid) if pid else 0
    t0 = monotonic()
    clients = await open_clients(
        args.concurrency,
        lambda: Client(stats, args.proto, args.port, args.tokens, rate=0.0, loop=loop),
        args.port, stats, on_open=lambda c: c.start())
    deadline = monotonic() + 60
    while stats.first_token_streams < len(clients) and monotonic() < deadline:
        await asyncio.sleep(0.1)
    opened_s = monotonic() - t0
    await asyncio.sleep(min(1.0, args.hold))  # let allocators settle
    pids = procstat.tree(pid) if pid else []
    cpu_a = procstat.cpu_seconds(pid, pids) if pid else 0.0
    rss1 = procstat.rss_bytes(pid, pids) if pid else 0
    await asyncio.sleep(args.hold)
    cpu_b = procstat.cpu_seconds(pid, pids) if pid else 0.0
    rss2 = procstat.rss_bytes(pid, pids) if pid else 0
    live = sum(1 for c in clients if c.transport is not None)
    for c in clients:
        c.close()
    # What the server still holds once the streams are gone (freed memory the allocator
    # keeps, or state retained on purpose, such as logs kept for resume).
    await asyncio.sleep(1.0)
    rss3 = procstat.rss_bytes(pid, pids) if pid else 0
    n = max(1, stats.first_token_streams)
    return {"mode": "idle", "requested": args.concurrency, "connections": len(clients),
            "streams_open": stats.first_token_streams, "still_open_after_hold": live,
            "open_s": opened_s, "rss_before": rss0, "rss_open": rss1, "rss_after_hold": rss2,
            "rss_per_conn": (rss2 - rss0) / n, "idle_cpu_util": (cpu_b - cpu_a) / args.hold,
            "rss_after_close": rss3, "rss_kept_per_closed_conn": (rss3 - rss0) / n,
            "hold_s": args.hold, "errors": stats.errors, "tokens": stats.tokens}


def run_slow(args: argparse.Namespace) -> dict[str, Any]:
    """D: K clients ask for a long unpaced stream and never read; sample the server."""
    pid = args.server_pid
    pids = procstat.tree(pid)
    rss0 = procstat.rss_bytes(pid, pids)
    cpu0 = procstat.cpu_seconds(pid, pids)
    socks = []
    for _ in range(args.concurrency):
        if args.proto == "ws":
            s, _ = ws_connect_blocking(args.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(ws_request("r1", args.tokens))
        else:
            s = socket.socket()
            # A small receive window: the server's writes back up into its own buffers.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", args.port))
            s.sendall(sse_request(args.port, args.tokens))
        socks.append(s)
    t0 = time.monotonic()
    samples = []
    cpu_mid = None
    while True:
        t = time.monotonic() - t0
        if t >= args.duration:
            break
        samples.append((round(t, 2), procstat.rss_bytes(pid, pids),
                        procstat.cpu_seconds(pid, pids) - cpu0))
        if cpu_mid is None and t >= args.duration / 2:
            cpu_mid = (t, procstat.cpu_seconds(pid, pids))
        time.sleep(0.25)
    t_end = time.monotonic() - t0
    cpu_end = procstat.cpu_seconds(pid, pids)
    rss_end = procstat.rss_bytes(pid, pids)
    # Which connections did the server close (a write-stall timeout, say)?
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            s.send(b"")
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            closed += 1 if err else 0
        except OSError:
            closed += 1
        s.close()
    second_half = (cpu_end - cpu_mid[1]) / (t_end - cpu_mid[0]) if cpu_mid else 0.0
    return {"mode": "slow", "clients": args.concurrency, "duration_s": t_end,
            "rss_before": rss0, "rss_end": rss_end, "rss_growth": rss_end - rss0,
            "rss_growth_per_conn": (rss_end - rss0) / max(1, args.concurrency),
            "rss_peak": max(s[1] for s in samples) if samples else rss_end,
            "cpu_s": cpu_end - cpu0, "cpu_util_second_half": second_half,
            "closed_by_server": closed, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["validate", "throughput", "paced", "idle", "slow"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proto", choices=["sse", "ws"], default="sse")
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--tokens", "-t", type=int, default=1000)
    parser.add_argument("--duration", "-d", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=20.0, help="paced: tokens/s per stream")
    parser.add_argument("--ramp", type=float, default=1.0, help="paced: seconds to start all")
    parser.add_argument("--t0", choices=["request", "connect"], default="request",
                        help="paced: the schedule starts when the request is sent (default; "
                             "for WebSocket after the handshake) or when TCP connected")
    parser.add_argument("--repeat", type=int, default=0,
                        help="paced: streams run back to back on each connection (keep-alive)")
    parser.add_argument("--skip-first", action="store_true",
                        help="paced: no latency samples from each connection's first stream "
                             "(opened during the ramp); with --repeat >= 2 and --ramp = one "
                             "stream's duration, what is left is steady load with spread "
                             "arrivals")
    parser.add_argument("--limit", type=float, default=0.0,
                        help="paced: seconds to wait for the streams to end (default: their "
                             "duration + ramp + 30 s); streams still open are cut")
    parser.add_argument("--strict-end", action="store_true",
                        help="SSE: a stream counts as valid only if its last event is "
                             "data: [DONE], seen once (streams_valid)")
    parser.add_argument("--hold", type=float, default=3.0, help="idle: seconds to hold")
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args()
    raise_nofile()
    if args.mode == "validate":
        try:
            result = (validate_ws if args.proto == "ws" else validate_sse)(args.port,
                                                                            args.tokens)
        except (Invalid, OSError, ValueError) as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    elif args.mode == "slow":
        result = run_slow(args)
    else:
        import uvloop

        run = {"throughput": run_throughput, "paced": run_paced, "idle": run_idle}[args.mode]
        result = uvloop.run(run(args))
    result["proto"] = args.proto
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    if args.out == "-":
        print(text)
    else:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
