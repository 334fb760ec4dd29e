"""streamcore.Paced: an embedder's items pushed at a rate on the loop's timer wheel (the
synthetic model's Pacer), through a real server and through the PushSource contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from conftest import Served
from test_stream import attach, new_stream, run
from websockets.sync.client import connect as ws_connect

import streamcore
from streamcore.proto import pipe
from streamcore.sources.paced import Paced


def paced_app() -> streamcore.App:
    app = streamcore.App()

    @app.route("GET", "/words")
    async def words(request: streamcore.Request) -> streamcore.EventStream:
        items: list[Any] = ["a", b"b", {"c": 1}, "d\ne"]
        return streamcore.EventStream(Paced(items, rate=100.0), sse_end=b"[DONE]")

    def broken() -> Iterator[str]:
        yield "ok"
        raise streamcore.RequestError("the source broke")

    @app.route("GET", "/broken")
    async def broken_route(request: streamcore.Request) -> streamcore.EventStream:
        return streamcore.EventStream(Paced(broken(), rate=100.0))

    @app.websocket("/ws")
    async def ws(socket: streamcore.WebSocket) -> None:
        async for message in socket:
            socket.stream(str(message), Paced([{"t": "x"}, {"t": "y"}], rate=100.0))

    return app


def test_paced_items_arrive_in_order_at_their_rate(serve: Callable[..., Served]) -> None:
    served = serve(paced_app())
    with httpx.Client(base_url=served.url, timeout=5) as client:
        start = time.monotonic()
        text = client.get("/words").text
        took = time.monotonic() - start
        data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert data == ["a", "b", '{"c":1}', "d", "e", "[DONE]"]
        assert took >= 0.03  # four items at 100/s: the last one 30 ms after the first
        broken = client.get("/broken").text
        assert "data: ok" in broken and "the source broke" in broken
    with ws_connect(served.url.replace("http", "ws") + "/ws") as socket:
        socket.send("r1")
        assert orjson.loads(socket.recv(timeout=5))["type"] == "stream"  # names it
        chunks = [orjson.loads(socket.recv(timeout=5)) for _ in range(2)]
        assert [(c["id"], c["chunk"]) for c in chunks] == [("r1", {"t": "x"}),
                                                          ("r1", {"t": "y"})]


def test_paced_follows_the_push_source_contract() -> None:
    """Paused by backpressure it waits for resume_push; cancelled it stops pulling."""
    async def main() -> None:
        pulled: list[int] = []

        def items() -> Iterator[bytes]:
            for i in range(1000):
                pulled.append(i)
                yield b"x" * 100

        source = Paced(items(), rate=5000.0)
        stream = new_stream(source, log_bytes=100_000, high=1000, low=200)
        reader = attach(stream)
        reader.conn.write_paused = True  # a client that reads nothing: the backlog grows
        stream.start()
        for _ in range(200):
            if stream.state is pipe.PAUSED:
                break
            await asyncio.sleep(0.002)
        assert stream.state is pipe.PAUSED
        at_pause = len(pulled)
        await asyncio.sleep(0.02)
        assert len(pulled) == at_pause  # not pulled while paused
        reader.conn.write_paused = False  # it reads again: the backlog drains, we resume
        reader.flush()
        await asyncio.sleep(0.02)
        assert len(pulled) > at_pause
        stream.cancel()
        cancelled_at = len(pulled)
        await asyncio.sleep(0.02)
        assert len(pulled) == cancelled_at and source.stream is None

    run(main)


def test_paced_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        Paced([], rate=0.0)
