"""Idle WebSocket memory (issue 14): the Python heap an idle socket holds, per connection.

A real server in this process (uvloop, 127.0.0.1); a real client in a child process (so
that none of its objects are in our heap) opens N sockets, has one exchange on each and
holds them silent.  ``tracemalloc`` before and while they are held, after a warm-up batch
(caches and code objects made once are not counted), gives bytes per connection.  Not a
timing assertion: a count of bytes, which a per-socket task, deque or timer handle back in
the idle path pushes over the bound (benchmarks/ws_idle_memory.py shows where they go).
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from loops import run_in

import streamcore
from streamcore.gateway import build_app
from streamcore.sources.synthetic import SyntheticModel

N = 500
#: The daemon's /v1/ws with one running request (its stream, paced at a token per 20 s,
#: after its first chunk): 13.4 KB before issue 14's cuts (a handler task and coroutine
#: frames, wsproto's parser and its empty event deque, the inbox deque, a loop timer per
#: socket), 7.9 KB after (about 4.4 KB of it the stream, which an SSE reader holds too).
DAEMON_BOUND = 9 * 1024
#: A socket of a message handler (``@app.websocket(messages=True)``) after one echo: the
#: connection, uvloop's transport and the upgrade request; no task, no parser at rest.
#: About 3.7 KB measured; 5.6 KB as a loop handler (``async for message in ws``), its
#: task and frames waiting (8.8 KB before issue 14's cuts).
MESSAGES_BOUND = 4608

LIMITS = streamcore.Limits(max_connections=10_000, max_connections_per_ip=0)

CLIENT = r"""
import base64, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
request, marker = sys.argv[3].encode(), sys.argv[4].encode()
key = base64.b64encode(b"0123456789abcdef").decode()
head = (f"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
size = (bytes((0x80 | len(request),)) if len(request) < 126  # RFC 6455 5.2, zero mask
        else bytes((0x80 | 126,)) + len(request).to_bytes(2, "big"))
frame = b"\x81" + size + b"\0\0\0\0" + request
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(head + frame)
    buf = b""
    while marker not in buf:
        data = s.recv(65536)
        if not data:
            sys.exit("closed before the answer")
        buf += data
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

CHAT = (b'{"type":"request","id":"r","body":{"model":"synthetic","stream":true,'
        b'"max_tokens":2,"messages":[{"role":"user","content":"' + b"hello " * 30 + b'"}]}}')


def echo_app(messages: bool) -> streamcore.App:
    app = streamcore.App(limits=LIMITS)
    if messages:
        @app.websocket("/v1/ws", messages=True)
        async def echo(ws: streamcore.WebSocket, message: str | bytes) -> None:
            await ws.send(message)
    else:
        @app.websocket("/v1/ws")
        async def echo_loop(ws: streamcore.WebSocket) -> None:
            async for message in ws:
                await ws.send(message)
    return app


def heap_per_socket(app: Any, request: bytes, marker: bytes) -> float:
    async def main() -> float:
        server = await streamcore.start(app, "127.0.0.1", 0, limits=LIMITS)
        loop = asyncio.get_running_loop()

        async def batch(n: int) -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, str(server.port), str(n), request.decode(),
                marker.decode(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
            return proc

        async def done(proc: asyncio.subprocess.Process) -> None:
            assert proc.stdin is not None
            proc.stdin.close()
            await proc.wait()
            deadline = loop.time() + 10
            while server.connections and loop.time() < deadline:
                await asyncio.sleep(0.01)

        try:
            await done(await batch(50))  # warm-up: what is made once is not counted
            gc.collect()
            tracemalloc.start()
            try:
                before = tracemalloc.take_snapshot()
                proc = await batch(N)
                await asyncio.sleep(0.2)
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert len(server.connections) == N
            await done(proc)
            return sum(s.size_diff for s in after.compare_to(before, "filename")) / N
        finally:
            await server.close(0.5)

    result: float = run_in("uvloop", main)
    return result


def test_daemon_idle_ws_stream_heap_is_bounded() -> None:
    app = build_app([SyntheticModel(tokens_per_s=0.05)], LIMITS)
    per_socket = heap_per_socket(app, CHAT, b'"chunk"')
    assert per_socket < DAEMON_BOUND, per_socket


@pytest.mark.parametrize("messages", [True, False])
def test_idle_message_handler_socket_heap_is_bounded(messages: bool) -> None:
    per_socket = heap_per_socket(echo_app(messages), b"hello", b"hello")
    if messages:
        assert per_socket < MESSAGES_BOUND, per_socket
    else:  # the same socket with a task waiting in it: the bound catches that
        assert per_socket > MESSAGES_BOUND, per_socket
