"""Pause and resume on every output path, with an intercepting transport
(:mod:`fake_transport`): the test plays the kernel, calling the protocol's
``pause_writing`` and ``resume_writing``, and checks what was written, byte for byte.

Paths: SSE from an async generator, SSE from a push source, a stream over WebSocket,
``await ws.send()`` in a WebSocket handler; and the output side's deadlines (the write
stall, the close).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest
from fake_transport import (
    FakeTransport,
    client_close,
    client_frame,
    connect,
    make_server,
    server_closed,
    spin,
    split_head,
    sse_events,
    unchunk,
    until,
    upgrade,
    ws_client_events,
)
from loops import LOOPS, run_in
from wsproto.events import CloseConnection

import streamcore
from streamcore.aio.stream import Stream
from streamcore.aio.websocket import WebSocketClosed, WebSocketConnection
from streamcore.gateway import build_app
from streamcore.proto import pipe
from streamcore.proto.sse import encode_event

# High water 2 KiB: a paused stream's producer stops once its reader's backlog passes it.
# (A push looks at the backlog only past flush_bytes = log / 4 = 1 KiB, below the mark.)
LIMITS = streamcore.Limits(disconnect_policy="cancel",
                           write_high_water_bytes=2048, write_low_water_bytes=512,
                           stream_log_bytes=4096, write_stall_timeout_s=5.0,
                           ws_ping_interval_s=60.0, heartbeat_interval_s=60.0)
HIGH = 2048
GET = b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n"

loop_names = pytest.mark.parametrize("loop_name", sorted(LOOPS))


def item(i: int) -> str:
    return f"item {i:05d} " + "." * 40  # 51 bytes


ITEM_SIZE = len(item(0))
#: What one item counts in a stream's log and backlogs: its payload and its overhead.
ITEM_COST = ITEM_SIZE + pipe.FRAME_OVERHEAD_BYTES


def run(loop_name: str, main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 10)
    return run_in(loop_name, bounded)


def the_stream(server: streamcore.Server) -> Stream:
    """The one stream of an SSE test (resumable: in the store)."""
    (entry,) = server.store.live()
    assert isinstance(entry.owner, Stream)
    return entry.owner


def ws_stream(conn: WebSocketConnection, key: bytes | None = None) -> Stream:
    """A WebSocket connection's stream (not resumable: found through its reader)."""
    owner = conn.readers[key].entry.owner
    assert isinstance(owner, Stream)
    return owner




# -- (a) SSE from an async generator ------------------------------------------------------


def generator_app(count: int, pulled: list[int]) -> streamcore.App:
    app = streamcore.App(limits=LIMITS)

    @app.stream("GET", "/gen")
    async def gen(request: streamcore.Request) -> AsyncIterator[str]:
        for i in range(count):
            pulled.append(i)
            yield item(i)
            await asyncio.sleep(0)  # one item per loop iteration: a paced source

    return app


@loop_names
def test_sse_generator_pauses_and_resumes(loop_name: str) -> None:
    count = 400

    async def main() -> None:
        pulled: list[int] = []
        server = make_server(generator_app(count, pulled))
        conn, transport = connect(server)
        transport.feed(GET % b"/gen")
        await until(lambda: len(pulled) >= 10 and transport.calls)
        await spin(2)
        stream = the_stream(server)
        conn.pause_writing()
        assert server.admission.paused_bytes == LIMITS.write_high_water_bytes
        writes, at_pause = len(transport.calls), len(pulled)
        await until(lambda: stream.state is pipe.PAUSED)
        await spin(50)
        # Nothing more is written while paused, and the generator is no longer pulled once
        # the backlog passed the high-water mark (and not before it).
        assert len(transport.calls) == writes
        backlog = stream.origin.cursor.backlog_bytes  # type: ignore[union-attr]
        assert HIGH < backlog <= HIGH + ITEM_COST
        stopped = len(pulled)
        assert stream.log.next_seq - 1 == stopped < count  # every item pulled is in the log
        assert stopped - at_pause in (backlog // ITEM_COST - 1, backlog // ITEM_COST)
        conn.resume_writing()
        assert server.admission.paused_bytes == 0
        await until(lambda: transport.data.endswith(b"0\r\n\r\n"))
        assert len(pulled) == count
        head, events, ended = sse_events(transport.data)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and ended
        # Complete, in order and byte-exact.
        _, body = split_head(transport.data)
        payload, _ = unchunk(body)
        assert payload == b"".join(encode_event(item(i), id=stream.entry.cursor(i + 1))
                                   for i in range(count))
        assert [e.data for e in events] == [item(i) for i in range(count)]
        assert stream.state is pipe.COMPLETED

    run(loop_name, main)


@loop_names
def test_sse_paused_before_the_first_byte_writes_nothing_until_resumed(loop_name: str) -> None:
    """A generator that never awaits, on a connection paused from the start: not even the
    head is written, and the generator stops past the high-water mark."""

    async def main() -> None:
        pulled: list[int] = []
        app = streamcore.App(limits=LIMITS)

        @app.stream("GET", "/burst")
        async def burst(request: streamcore.Request) -> AsyncIterator[str]:
            for i in range(1000):
                pulled.append(i)
                yield item(i)

        server = make_server(app)
        conn, transport = connect(server)
        conn.pause_writing()
        transport.feed(GET % b"/burst")
        await spin(30)
        assert transport.calls == []
        assert HIGH // ITEM_COST < len(pulled) <= HIGH // ITEM_COST + 2
        assert the_stream(server).state is pipe.PAUSED
        conn.resume_writing()
        await until(lambda: transport.data.endswith(b"0\r\n\r\n"))
        _, events, ended = sse_events(transport.data)
        assert ended and [e.data for e in events] == [item(i) for i in range(1000)]

    run(loop_name, main)


# -- (b) SSE from a push source --------------------------------------------------------------


class PushSource:
    """A push source driven by the test: ``produce(n)`` pushes n frames."""

    def __init__(self) -> None:
        self.stream: Stream | None = None
        self.seq = 0
        self.results: list[bool] = []
        self.resumed = 0
        self.cancelled = 0

    def start_push(self, stream: Stream) -> None:
        self.stream = stream

    def produce(self, n: int) -> list[bool]:
        assert self.stream is not None
        out = []
        for _ in range(n):
            data = item(self.seq).encode()
            self.seq += 1
            out.append(self.stream.push((data,), len(data)))
        self.results += out
        return out

    def resume_push(self) -> None:
        self.resumed += 1

    def cancel_push(self) -> None:
        self.cancelled += 1


@loop_names
def test_sse_push_source_pauses_and_resumes(loop_name: str) -> None:
    async def main() -> None:
        source = PushSource()
        app = streamcore.App(limits=LIMITS)
        app.stream("GET", "/push", sse_end=b"[DONE]")(lambda request: source)
        server = make_server(app)
        conn, transport = connect(server)
        transport.feed(GET % b"/push")
        await until(lambda: source.stream is not None)
        assert source.produce(5) == [True] * 5
        await until(lambda: transport.calls)
        await spin(2)
        conn.pause_writing()
        writes = len(transport.calls)
        # push returns True until the backlog passes the high-water mark, then False.
        results = source.produce(HIGH // ITEM_COST + 3)
        first_false = HIGH // ITEM_COST  # the push that takes the backlog past HIGH
        assert results == [True] * first_false + [False] * 3
        assert source.stream is not None and source.stream.state is pipe.PAUSED
        await spin(20)
        assert len(transport.calls) == writes and source.resumed == 0
        conn.resume_writing()
        assert source.resumed == 1
        assert source.stream.state is pipe.RUNNING
        assert source.produce(2) == [True, True]
        source.stream.end()
        await until(lambda: transport.data.endswith(b"0\r\n\r\n"))
        _, events, ended = sse_events(transport.data)
        assert ended
        assert [e.data for e in events] == [item(i) for i in range(source.seq)] + ["[DONE]"]
        assert [e.id for e in events[:-1]] == [source.stream.entry.cursor(i + 1)
                                               for i in range(source.seq)]
        assert source.cancelled == 0

    run(loop_name, main)


# -- (c) a stream over WebSocket ----------------------------------------------------------


@loop_names
def test_websocket_stream_pauses_and_resumes(loop_name: str) -> None:
    count = 300

    async def main() -> None:
        pulled: list[int] = []
        server = make_server(generator_app(count, pulled))
        http_conn, transport = connect(server)
        transport.feed(upgrade("/gen"))
        conn = transport.protocol
        assert isinstance(conn, WebSocketConnection) and conn is not http_conn
        assert server.admission.connections == {conn}
        await until(lambda: len(pulled) >= 10)
        await spin(2)
        stream = ws_stream(conn)
        conn.pause_writing()
        writes, at_pause = len(transport.calls), len(pulled)
        await spin(80)
        assert len(transport.calls) == writes
        stopped = len(pulled)
        assert at_pause < stopped < count
        assert (stopped - at_pause) * ITEM_COST <= HIGH + ITEM_COST
        assert stream.state is pipe.PAUSED
        conn.resume_writing()
        await until(lambda: server_closed(transport))
        transport.feed(client_close())
        await until(lambda: transport.lost)
        events = ws_client_events(transport.data)
        assert events[:-1] == [item(i) for i in range(count)]
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000

    run(loop_name, main)


def test_websocket_gateway_pauses_and_resumes() -> None:
    """The gateway's /v1/ws: the synthetic model is a push source; paused, it stops
    producing; resumed, every chunk arrives in order, then ``done``."""
    async def main() -> None:
        app = build_app(limits=LIMITS.replace(write_high_water_bytes=1024,
                                              write_low_water_bytes=256))
        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/v1/ws"))
        conn = transport.protocol
        conn.pause_writing()
        request = {"type": "request", "id": "r1",
                   "body": {"model": "synthetic", "max_tokens": 200,
                            "messages": [{"role": "user", "content": "hi " * 50}]}}
        transport.feed(client_frame(orjson.dumps(request).decode()))
        await spin(30)
        stream = ws_stream(conn, b'"r1"')
        assert stream.state is pipe.PAUSED
        written = len(transport.data)
        # Only the 101 and the request's stream message so far (which names it), no chunk.
        assert b'"type":"chunk"' not in split_head(transport.data)[1]
        await spin(30)
        assert len(transport.data) == written
        conn.resume_writing()
        await until(lambda: b'"type":"done"' in transport.data)
        messages = [orjson.loads(m) for m in ws_client_events(transport.data)]
        chunks = [m for m in messages if m["type"] == "chunk"]
        assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
        assert messages[-1]["type"] == "done" and messages[-1]["id"] == "r1"
        assert stream.state is pipe.COMPLETED

    run("uvloop", main)


# -- (d) await ws.send() -------------------------------------------------------------------


def sender_app(progress: list[str], count: int = 3) -> streamcore.App:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/send")
    async def send(ws: streamcore.WebSocket) -> None:
        for i in range(count):
            progress.append(f"sending {i}")
            try:
                await ws.send(f"m{i}")
            except WebSocketClosed as exc:
                progress.append(f"closed {exc.code}")
                return
            progress.append(f"sent {i}")

    return app


@loop_names
def test_websocket_send_waits_while_paused(loop_name: str) -> None:
    async def main() -> None:
        progress: list[str] = []
        server = make_server(sender_app(progress))
        _, transport = connect(server)
        transport.feed(upgrade("/send"))
        conn = transport.protocol
        conn.pause_writing()  # before the handler's first step
        await spin(20)
        assert progress == ["sending 0"]  # the message is written; send() waits for a drain
        assert ws_client_events(transport.data) == ["m0"]
        conn.resume_writing()
        await spin(5)
        assert progress[:3] == ["sending 0", "sent 0", "sending 1"]
        await until(lambda: transport.lost is False and len(progress) == 6)
        assert progress == ["sending 0", "sent 0", "sending 1", "sent 1", "sending 2", "sent 2"]
        transport.feed(client_close())
        await until(lambda: transport.lost)
        events = ws_client_events(transport.data)
        assert events[:3] == ["m0", "m1", "m2"] and isinstance(events[-1], CloseConnection)

    run(loop_name, main)


@loop_names
def test_websocket_send_returns_when_the_connection_is_lost_while_waiting(
        loop_name: str) -> None:
    """A send() waiting for a drain in a task of its own (not the handler's, which is
    cancelled with the connection) returns when the connection is lost; the next send()
    raises WebSocketClosed(1006)."""

    async def main() -> None:
        progress: list[str] = []
        senders: list[asyncio.Task[None]] = []
        app = streamcore.App(limits=LIMITS)

        async def send_loop(ws: streamcore.WebSocket) -> None:
            for i in range(3):
                progress.append(f"sending {i}")
                try:
                    await ws.send(f"m{i}")
                except WebSocketClosed as exc:
                    progress.append(f"closed {exc.code}")
                    return
                progress.append(f"sent {i}")

        @app.websocket("/bg")
        async def bg(ws: streamcore.WebSocket) -> None:
            senders.append(asyncio.get_running_loop().create_task(send_loop(ws)))
            async for _ in ws:
                pass

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/bg"))
        conn = transport.protocol
        conn.pause_writing()
        await spin(20)
        assert progress == ["sending 0"]
        transport.lose(ConnectionResetError())
        (sender,) = senders
        await asyncio.wait_for(sender, 1)
        assert progress == ["sending 0", "sent 0", "sending 1", "closed 1006"]
        assert conn._task is not None and conn._task.done()
        assert server.admission.paused_bytes == 0
        assert server.admission.connections == set()

    run(loop_name, main)


@loop_names
def test_two_senders_waiting_on_one_paused_websocket_both_go_on_when_it_drains(
        loop_name: str) -> None:
    """Two tasks of one handler send while the output is full: both wait for the same
    drain, and both go on (in order) once the transport takes bytes again."""

    async def main() -> None:
        progress: list[str] = []
        app = streamcore.App(limits=LIMITS)

        async def send_one(ws: streamcore.WebSocket, name: str) -> None:
            await ws.send(name)
            progress.append(f"sent {name}")

        @app.websocket("/two")
        async def two(ws: streamcore.WebSocket) -> None:
            await asyncio.gather(send_one(ws, "a"), send_one(ws, "b"))
            async for _ in ws:
                pass

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/two"))
        conn = transport.protocol
        conn.pause_writing()
        await spin(20)
        assert progress == []  # both written, both waiting for the drain
        assert ws_client_events(transport.data) == ["a", "b"]
        conn.resume_writing()
        await until(lambda: len(progress) == 2)
        assert progress == ["sent a", "sent b"]
        transport.feed(client_close())
        await until(lambda: transport.lost)

    run(loop_name, main)


# -- (e) the write-stall deadline --------------------------------------------------------------


@loop_names
def test_write_stall_aborts_and_releases_the_paused_bytes(loop_name: str) -> None:
    async def main() -> None:
        limits = LIMITS.replace(write_stall_timeout_s=0.05)
        pulled: list[int] = []
        server = make_server(generator_app(10_000, pulled), limits)
        conn, transport = connect(server)
        transport.feed(GET % b"/gen")
        await until(lambda: len(pulled) > 3)
        conn.pause_writing()
        assert server.admission.paused_bytes == limits.write_high_water_bytes
        await asyncio.sleep(0.02)
        assert not transport.aborted
        await until(lambda: transport.lost, timeout=1)
        assert transport.aborted
        assert server.admission.paused_bytes == 0
        assert server.admission.connections == set()
        await spin(5)
        assert len(pulled) < 10_000  # the generation was cancelled with its only reader

    run(loop_name, main)


@loop_names
def test_resume_in_time_cancels_the_stall_timer(loop_name: str) -> None:
    async def main() -> None:
        limits = LIMITS.replace(write_stall_timeout_s=0.05)
        server = make_server(generator_app(5, []), limits)
        conn, transport = connect(server)
        conn.pause_writing()
        await asyncio.sleep(0.01)
        conn.resume_writing()
        await asyncio.sleep(0.08)
        assert not transport.aborted and not transport.lost
        assert server.admission.paused_bytes == 0

    run(loop_name, main)


@loop_names
def test_write_stall_on_a_websocket(loop_name: str) -> None:
    async def main() -> None:
        limits = LIMITS.replace(write_stall_timeout_s=0.05)
        pulled: list[int] = []
        server = make_server(generator_app(10_000, pulled), limits)
        _, transport = connect(server)
        transport.feed(upgrade("/gen"))
        await until(lambda: len(pulled) > 3)
        transport.protocol.pause_writing()
        await until(lambda: transport.lost, timeout=1)
        assert transport.aborted and server.admission.paused_bytes == 0

    run(loop_name, main)


def test_a_pause_carries_over_an_upgrade() -> None:
    """Paused while still HTTP: the WebSocket owns the pause (and its bytes) from then on."""

    async def main() -> None:
        progress: list[str] = []
        server = make_server(sender_app(progress))
        http_conn, transport = connect(server)
        http_conn.pause_writing()
        transport.feed(upgrade("/send"))
        conn = transport.protocol
        assert conn.write_paused and server.admission.paused_bytes == LIMITS.write_high_water_bytes
        await spin(20)
        assert progress == ["sending 0"]
        conn.resume_writing()
        await until(lambda: len(progress) == 6)
        assert server.admission.paused_bytes == 0

    run("uvloop", main)


# -- (f) the close deadline --------------------------------------------------------------------


@loop_names
def test_close_deadline_aborts_a_close_that_never_finishes(loop_name: str) -> None:
    async def main() -> None:
        limits = LIMITS.replace(write_stall_timeout_s=0.05)
        app = streamcore.App(limits=limits)

        @app.route("GET", "/hi")
        async def hi(request: streamcore.Request) -> dict[str, str]:
            return {"hi": "there"}

        server = make_server(app)
        _conn, transport = connect(server, close_completes=False)
        transport.feed(b"GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await until(lambda: transport.closing)
        assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert transport.data.endswith(b'{"hi":"there"}')
        assert not transport.aborted
        await until(lambda: transport.lost, timeout=1)
        assert transport.aborted  # reset: the peer never let the close drain
        assert server.admission.connections == set()

    run(loop_name, main)


@loop_names
def test_a_close_that_finishes_is_not_reset(loop_name: str) -> None:
    async def main() -> None:
        limits = LIMITS.replace(write_stall_timeout_s=0.05)
        app = streamcore.App(limits=limits)

        @app.route("GET", "/hi")
        async def hi(request: streamcore.Request) -> str:
            return "hi"

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(b"GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await until(lambda: transport.lost)
        await asyncio.sleep(0.08)
        assert not transport.aborted

    run(loop_name, main)


def test_websocket_close_deadline_aborts_a_peer_that_never_answers() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS.replace(ws_close_timeout_s=0.05))

        @app.websocket("/bye")
        async def bye(ws: streamcore.WebSocket) -> None:
            await ws.close(1000, "bye")

        server = make_server(app)
        _, transport = connect(server, close_completes=False)
        transport.feed(upgrade("/bye"))
        await spin(10)
        events = ws_client_events(transport.data)
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
        assert not transport.lost
        await until(lambda: transport.lost, timeout=1)
        assert transport.aborted

    run("uvloop", main)


def test_fake_transport_records_each_call() -> None:
    async def main() -> None:
        transport = FakeTransport(asyncio.get_running_loop())
        transport.write(b"a")
        transport.writelines([b"b", b"c"])
        assert transport.calls == [("write", b"a"), ("writelines", b"bc")]

    run("asyncio", main)
