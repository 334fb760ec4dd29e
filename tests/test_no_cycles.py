"""A finished stream is freed by reference counting, on every path: no cyclic garbage per
stream (``tune_gc`` makes full collections rare on purpose, so a cycle per stream would
hold every finished stream and its log until one comes).

The collector is disabled (after a collection) while real clients run streams on every
path against a real server; then the server's per-stream objects still in memory are
counted: objects in unreachable cycles are still listed by ``gc.get_objects()`` until a
collection, so any cycle shows up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import Served, wait_for
from upstreams import Exchange, ScriptedUpstream
from websockets.sync.client import connect as ws_connect

import streamcore
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel
from streamcore.sources.upstream_server import Upstream

#: No retention: an ended stream's entry leaves the store at once, so that nothing but a
#: cycle can keep it.
LIMITS = Limits(resume_retention_s=0.0, heartbeat_interval_s=60.0, ws_ping_interval_s=60.0)
MESSAGES = [{"role": "user", "content": "count the cycles"}]
#: The per-stream (and per-connection) classes of the server.
WATCHED = {"Stream", "Entry", "TokenLog", "ChatStream", "Run", "GeneratorSource",
           "UpstreamChat", "UpstreamRelay", "SSEReader", "WSReader", "HTTPConnection",
           "WebSocketConnection", "WebSocket", "Request", "Cursor"}
ROUNDS = 4


@contextlib.contextmanager
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def live_objects() -> Counter[str]:
    return Counter(name for obj in gc.get_objects()
                   if (name := type(obj).__name__) in WATCHED
                   and type(obj).__module__.startswith("streamcore"))


def user_app() -> streamcore.App:
    app = streamcore.App(limits=LIMITS)

    @app.stream("GET", "/gen")
    async def gen(request: streamcore.Request) -> AsyncIterator[bytes]:
        for i in range(50):
            yield orjson.dumps({"i": i})
            if i % 10 == 0:
                await asyncio.sleep(0)

    @app.websocket("/ws")
    async def ws(socket: streamcore.WebSocket) -> None:
        async for message in socket:
            for i in range(20):
                await socket.send(f"{message!r} {i}")
            await socket.send("end")

    return app


def paths(gateway: Served, user: Served, upstream_url: str) -> dict[str, Callable[[], Any]]:
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 30}

    def sse(url: str, **extra: Any) -> Callable[[], Any]:
        def go() -> None:
            with httpx.Client(timeout=5) as client:
                got = client.post(f"{url}/v1/chat/completions", json={**body, **extra})
                assert got.status_code == 200 and got.text.endswith("data: [DONE]\n\n")
        return go

    def gateway_ws(model: str) -> Callable[[], Any]:
        def go() -> None:
            with ws_connect(gateway.url.replace("http", "ws") + "/v1/ws") as socket:
                socket.send(orjson.dumps({"type": "request", "id": "r", "body": {
                    **body, "model": model}}).decode())
                while orjson.loads(socket.recv(timeout=5))["type"] != "done":
                    pass
        return go

    def generator() -> None:
        with httpx.Client(timeout=5) as client:
            assert client.get(f"{user.url}/gen").text.count("data:") == 50

    def websocket() -> None:
        with ws_connect(user.url.replace("http", "ws") + "/ws") as socket:
            socket.send("hi")
            while socket.recv(timeout=5) != "end":
                pass

    return {
        "synthetic SSE": sse(gateway.url, model="synthetic"),
        "paced synthetic SSE": sse(gateway.url, model="paced"),
        "synthetic WebSocket": gateway_ws("synthetic"),
        "upstream SSE": sse(gateway.url, model="m"),
        "upstream WebSocket": gateway_ws("m"),
        "generator handler": generator,
        "WebSocket handler": websocket,
    }


@pytest.mark.parametrize("path", ["synthetic SSE", "paced synthetic SSE", "synthetic WebSocket",
                                  "upstream SSE", "upstream WebSocket", "generator handler",
                                  "WebSocket handler"])
def test_finished_streams_are_freed_without_the_collector(
        serve: Callable[..., Served], path: str) -> None:
    async def script(ex: Exchange) -> None:
        await ex.chat_stream([f"t{i} " for i in range(30)])

    upstream = ScriptedUpstream(script)
    try:
        models = [SyntheticModel(), SyntheticModel(name="paced", tokens_per_s=2000.0)]
        gateway = serve(build_app(models, LIMITS, upstreams=[Upstream.parse(upstream.spec())]),
                        LIMITS)
        user = serve(user_app(), LIMITS)
        run = paths(gateway, user, upstream.url)[path]
        run()  # warm: caches, the upstream's pooled connection, the Pacer
        idle = lambda: not gateway.server.connections and not user.server.connections  # noqa: E731
        wait_for(idle)
        with collector_off():
            before = live_objects()
            for _ in range(ROUNDS):
                run()
            wait_for(idle)
            after = live_objects()
        grown = {name: n - before[name] for name, n in after.items() if n > before[name]}
        assert not grown, f"{path}: alive after {ROUNDS} streams: {grown}"
    finally:
        upstream.close()
