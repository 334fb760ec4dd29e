"""The HTTP and WebSocket connections' edges, with the intercepting transport
(:mod:`fake_transport`): a connection lost while a handler runs, a drain that arrives mid
response, a response h11 refuses, pipelining against a lost connection, inbound flow
control, a stream handler's refusal."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest
from conftest import parse_responses
from fake_transport import (
    client_close,
    client_frame,
    connect,
    make_server,
    server_closed,
    spin,
    until,
    upgrade,
    ws_client_events,
)
from loops import run_in
from wsproto.events import CloseConnection

import streamcore
from streamcore.aio.handler import Response, to_response
from streamcore.aio.websocket import WebSocketClosed

LIMITS = streamcore.Limits(write_stall_timeout_s=5.0, ws_ping_interval_s=60.0,
                           heartbeat_interval_s=60.0)


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 10)
    return run_in("uvloop", bounded)


def get(path: str, *extra: bytes) -> bytes:
    return b"GET %b HTTP/1.1\r\nHost: x\r\n%b\r\n" % (path.encode(), b"".join(
        h + b"\r\n" for h in extra))


def test_a_stream_handler_refusing_its_input_gets_its_status() -> None:
    """README: a RequestError raised before the first item is answered with its status
    (the head waits one loop iteration for it), not a 200 and an error event."""

    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.stream("POST", "/s")
        async def s(request: streamcore.Request) -> AsyncIterator[str]:
            request.json()
            yield "never"

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n{nope"
                       + get("/s"))
        await until(lambda: transport.calls)
        await spin(10)
        responses = parse_responses(transport.data, strict=False)
        assert responses[0].status == 400
        assert responses[0].json()["error"]["code"] == "invalid_json"
        assert not transport.closing  # a refused request keeps the connection
        assert len(responses) == 2 and responses[1].status == 405

    run(main)


def test_connection_lost_cancels_a_plain_handler() -> None:
    async def main() -> None:
        events: list[str] = []
        app = streamcore.App(limits=LIMITS)

        @app.route("GET", "/slow")
        async def slow(request: streamcore.Request) -> str:
            try:
                await asyncio.sleep(60)
            finally:
                events.append("finally")
            return "late"

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(get("/slow"))
        await spin(5)
        transport.lose()
        await spin(5)
        assert events == ["finally"] and transport.data == b""
        assert server.admission.connections == set()

    run(main)


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_a_handler_that_outlives_its_connection_writes_nothing(outcome: str) -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.route("GET", "/stubborn")
        async def stubborn(request: streamcore.Request) -> str:
            with contextlib.suppress(asyncio.CancelledError):  # swallowed: it goes on
                await asyncio.sleep(60)
            # ... and awaits again (its cleanup, say): the connection learns of its end
            # from a step after the cancellation's.
            await asyncio.sleep(0)
            if outcome == "raises":
                raise ValueError("after the loss")
            return "nobody listens"

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(get("/stubborn"))
        await spin(5)
        transport.lose()
        await spin(5)
        assert transport.data == b""

    run(main)


def test_a_drain_during_a_plain_handler_closes_after_its_response() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        app = streamcore.App(limits=LIMITS)

        @app.route("GET", "/wait")
        async def wait(request: streamcore.Request) -> dict[str, bool]:
            await gate.wait()
            return {"ok": True}

        server = make_server(app)
        conn, transport = connect(server)
        transport.feed(get("/wait"))
        await spin(5)
        assert conn.close_idle() is False  # busy: closes after the response
        gate.set()
        await until(lambda: transport.lost)
        (response,) = parse_responses(transport.data)
        assert response.header(b"connection") == b"close" and response.json() == {"ok": True}

    run(main)


def test_a_drain_before_a_stream_commits_sends_connection_close() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.stream("GET", "/s")
        async def s(request: streamcore.Request) -> AsyncIterator[str]:
            yield "a"
            yield "b"

        server = make_server(app)
        conn, transport = connect(server)
        transport.feed(get("/s"))
        conn.close_idle()  # before the first flush writes the head
        await until(lambda: transport.lost)
        (response,) = parse_responses(transport.data)
        assert response.header(b"connection") == b"close"
        assert b"data: a\n\n" in response.body and b"data: b\n\n" in response.body

    run(main)


def test_a_response_h11_refuses_resets_the_connection() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.route("GET", "/bad")
        async def bad(request: streamcore.Request) -> Response:
            return Response(b"x", headers=[(b"x-bad", b"line\r\nbreak")])

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(get("/bad"))
        await until(lambda: transport.lost)
        assert transport.aborted and transport.data == b""

    run(main)


def test_a_pipelined_request_after_the_connection_is_lost_is_dropped() -> None:
    async def main() -> None:
        handled: list[str] = []
        app = streamcore.App(limits=LIMITS)
        transport_box: list[Any] = []

        @app.route("GET", "/one")
        async def one(request: streamcore.Request) -> str:
            handled.append("one")
            asyncio.get_running_loop().call_soon(transport_box[0].lose)
            return "1"

        @app.route("GET", "/two")
        async def two(request: streamcore.Request) -> str:
            handled.append("two")
            return "2"

        server = make_server(app)
        _, transport = connect(server)
        transport_box.append(transport)
        transport.feed(get("/one") + get("/two"))
        await spin(20)
        assert handled == ["one"] and transport.lost

    run(main)


def test_too_many_pipelined_bytes_pause_reading_until_the_response() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        app = streamcore.App(limits=LIMITS.replace(max_pipelined_bytes=100))

        @app.route("GET", "/wait")
        async def wait(request: streamcore.Request) -> str:
            await gate.wait()
            return "ok"

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(get("/wait"))
        await spin(3)
        transport.feed(get("/wait", b"x-pad: " + b"p" * 100))
        assert transport.reading_calls == ["pause"]
        transport.feed(b"GET")  # a reader may still deliver a little: no second pause
        assert transport.reading_calls == ["pause"]
        gate.set()
        await until(lambda: transport.reading_calls == ["pause", "resume"])

    run(main)


def test_request_accessors_and_to_response() -> None:
    async def main() -> None:
        seen: dict[str, Any] = {}
        app = streamcore.App(limits=LIMITS)

        @app.route("POST", "/echo")
        async def echo(request: streamcore.Request) -> Response:
            seen.update(method=request.method, path=request.path, query=request.query,
                        headers=list(request.headers), body=request.body,
                        json=request.json(), again=request.json(),
                        header=request.header("X-Thing"), missing=request.header("nope"))
            with pytest.raises(streamcore.RequestError, match="no message channel"):
                request.messages()
            return Response.json({"got": True}, status=201)

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(b"POST /echo?a=1 HTTP/1.1\r\nHost: x\r\nX-Thing: t\r\n"
                       b"Content-Length: 7\r\n\r\n{\"k\":1}")
        await until(lambda: transport.calls)
        (response,) = parse_responses(transport.data)
        assert response.status == 201 and response.json() == {"got": True}
        assert seen["method"] == "POST" and seen["path"] == "/echo" and seen["query"] == "a=1"
        assert (b"x-thing", b"t") in seen["headers"] and seen["body"] == b'{"k":1}'
        assert seen["json"] == seen["again"] == {"k": 1}
        assert seen["header"] == "t" and seen["missing"] is None

    run(main)


def test_to_response() -> None:
    assert to_response(b"raw").content_type == b"application/octet-stream"
    assert to_response("text").content_type == b"text/plain; charset=utf-8"
    assert to_response({"a": 1}).body == b'{"a":1}'
    response = Response(b"x")
    assert to_response(response) is response


# -- WebSocket ------------------------------------------------------------------------------


def test_ws_handler_helpers_and_stream_end_message() -> None:
    async def main() -> None:
        state: dict[str, Any] = {}
        app = streamcore.App(limits=LIMITS)

        async def items() -> AsyncIterator[str]:
            yield '"a"'

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            state["subprotocol"] = ws.subprotocol
            await ws.send_json({"hello": 1})
            ws.stream("k1", items(), end=lambda: b'{"type":"end"}')
            ws.stream("k2", items(), end=lambda: None)
            state["active"] = ws.active
            state["cancel_unknown"] = ws.cancel("nope")
            message = await ws.receive()
            state["received"] = message
            await ws.close(1000, "done")

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(20)
        transport.feed(client_frame("bye"))
        await spin(10)
        transport.feed(client_close())
        await until(lambda: transport.lost)
        events = ws_client_events(transport.data)
        assert events[0] == '{"hello":1}'
        assert '{"type":"end"}' in events
        chunks = [orjson.loads(e) for e in events if isinstance(e, str) and '"chunk"' in e]
        assert {c["id"] for c in chunks} == {"k1", "k2"}
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
        assert state == {"subprotocol": None, "active": 2, "cancel_unknown": False,
                         "received": "bye"}

    run(main)


def test_ws_handler_that_returns_while_a_stream_runs_closes_after_it() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        app = streamcore.App(limits=LIMITS)

        async def items() -> AsyncIterator[str]:
            await gate.wait()
            yield '"late"'

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            ws.stream("k", items())

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(10)
        assert not server_closed(transport)
        gate.set()
        await until(lambda: server_closed(transport))
        events = ws_client_events(transport.data)
        assert orjson.loads(events[0])["type"] == "stream"  # names it, for a resume
        assert orjson.loads(events[1])["chunk"] == "late"

    run(main)


def test_ws_plain_stream_route_failing_is_1011() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.stream("GET", "/s")
        async def s(request: streamcore.Request) -> AsyncIterator[str]:
            yield "one"
            raise ValueError("boom")

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/s"))
        await until(lambda: server_closed(transport))
        events = ws_client_events(transport.data)
        assert events[0] == "one"
        assert orjson.loads(events[1])["error"]["message"] == "the stream failed: ValueError"
        assert events[-1].code == 1011

    run(main)


def test_ws_keyed_stream_failing_is_an_error_message() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        async def items() -> AsyncIterator[str]:
            yield "1"
            raise streamcore.RequestError("refused midway", code="nope")

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            ws.stream("r", items())
            await ws.receive()

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await until(lambda: b'"type":"error"' in transport.data)
        events = ws_client_events(transport.data)
        assert orjson.loads(events[-1]) == {
            "type": "error", "id": "r",
            "error": {"message": "refused midway", "type": "invalid_request_error",
                      "param": None, "code": "nope"}}
        transport.lose()

    run(main)


def test_ws_send_after_our_close_raises() -> None:
    async def main() -> None:
        result: dict[str, Any] = {}
        app = streamcore.App(limits=LIMITS)

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            await ws.close()
            try:
                await ws.send("after close")
            except WebSocketClosed as exc:
                result["code"] = exc.code

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(10)
        assert result == {"code": 1006}
        transport.lose()

    run(main)


def test_ws_handler_closed_exception_is_not_an_error() -> None:
    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            await ws.receive()  # raises WebSocketClosed when the peer closes

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(5)
        transport.feed(client_close(1001))
        await until(lambda: transport.lost)
        events = ws_client_events(transport.data)
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1001

    run(main)


@pytest.mark.parametrize("kind", ["raises", "not_a_coroutine"])
def test_ws_handler_failing_before_its_first_await_is_1011(kind: str) -> None:
    """A handler registered with @app.websocket that fails when called (a plain function
    that raises, or returns something that cannot be awaited) is a bug of the handler's:
    the socket is closed with 1011, like any other handler failure."""

    async def main() -> None:
        app = streamcore.App(limits=LIMITS)

        def broken(ws: streamcore.WebSocket) -> Any:
            if kind == "raises":
                raise RuntimeError("broken handler")
            return "not awaitable"

        app.websocket("/h")(broken)
        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await until(lambda: server_closed(transport))
        events = ws_client_events(transport.data)
        assert isinstance(events[-1], CloseConnection) and events[-1].code == 1011
        transport.feed(client_close(1011))
        await until(lambda: transport.lost)

    run(main)


def tiny_chunked_post(path: str, n: int) -> bytes:
    """A chunked POST of ``n`` one-byte chunks: more h11 events than one read's slice."""
    return (b"POST %b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            % path.encode() + b"1\r\nx\r\n" * n + b"0\r\n\r\n")


def test_a_pipelined_request_too_long_for_one_slice_is_parsed_after_the_response() -> None:
    """The next request's bytes came during a response and hold more events than one
    slice: next_cycle parses one, reading stays paused, the rest follows a loop iteration
    at a time, and the request is answered."""

    async def main() -> None:
        from streamcore.proto.http import EVENTS_PER_CALL

        app = streamcore.App(limits=LIMITS.replace(max_body_chunks=10_000))

        @app.route("GET", "/a")
        async def a(request: streamcore.Request) -> str:
            await asyncio.sleep(0)
            return "a"

        @app.route("POST", "/count")
        async def count(request: streamcore.Request) -> dict[str, int]:
            return {"bytes": len(request.body)}

        server = make_server(app)
        _, transport = connect(server)
        n = 3 * EVENTS_PER_CALL
        transport.feed(get("/a") + tiny_chunked_post("/count", n))
        await until(lambda: len(parse_responses(transport.data, strict=False)) == 2)
        first, second = parse_responses(transport.data)
        assert first.body == b"a" and second.json() == {"bytes": n}
        assert "pause" in transport.reading_calls and transport.reading
        assert not transport.closing

    run(main)


def test_a_connection_lost_with_a_parse_slice_pending_parses_nothing_more() -> None:
    async def main() -> None:
        calls: list[int] = []
        app = streamcore.App(limits=LIMITS.replace(max_body_chunks=10_000))

        @app.route("POST", "/count")
        async def count(request: streamcore.Request) -> str:
            calls.append(len(request.body))
            return "counted"

        server = make_server(app)
        conn, transport = connect(server)
        transport.feed(tiny_chunked_post("/count", 600))  # a whole request, in two slices
        assert conn.session.backlog and transport.reading_calls == ["pause"]
        transport.lose()  # before the loop runs the second slice
        await spin(10)
        assert calls == [] and transport.data == b""
        assert transport.reading_calls == ["pause"]

    run(main)


def test_ws_a_pong_held_while_our_output_is_full_goes_out_when_it_drains() -> None:
    """RFC 6455 section 5.5.3 and issue 12: a Ping that comes while our output is full is
    not answered then (a peer that pings and never reads must not fill our memory with
    Pongs); the latest one is answered once the output drains, once."""

    async def main() -> None:
        from wsproto.connection import Connection, ConnectionType
        from wsproto.events import Ping

        app = streamcore.App(limits=LIMITS)

        @app.websocket("/h")
        async def h(ws: streamcore.WebSocket) -> None:
            async for _ in ws:
                pass

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(5)
        ws_conn = transport.protocol
        ws_conn.pause_writing()
        peer = Connection(ConnectionType.CLIENT)
        transport.feed(peer.send(Ping(b"one")) + peer.send(Ping(b"two")))
        await spin(5)
        assert not any(data[:1] == b"\x8a" for _, data in transport.calls)
        ws_conn.resume_writing()
        pongs = [data for _, data in transport.calls if data[:1] == b"\x8a"]
        assert pongs == [b"\x8a\x03two"]
        transport.lose()

    run(main)


@pytest.mark.parametrize("step", ["receive", "parse_more"])
def test_ws_a_session_that_fails_aborts_the_connection(
        step: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The error boundary of reading: a bug of ours in the session (on a read, or on a
    later slice of a flood) resets the connection, logged, never leaves it half-alive."""

    async def main() -> None:
        from streamcore.proto import ws

        app = streamcore.App(limits=LIMITS)

        @app.websocket("/h")
        async def h(sock: streamcore.WebSocket) -> None:
            async for _ in sock:
                pass

        server = make_server(app)
        _, transport = connect(server)
        transport.feed(upgrade("/h"))
        await spin(5)

        def broken(self: Any, *args: Any) -> Any:
            raise RuntimeError("a bug of ours")

        monkeypatch.setattr(ws.WSSession, step, broken)
        frames = b"".join(client_frame(str(i)) for i in range(2 * ws.EVENTS_PER_CALL))
        if step == "parse_more":
            transport.feed(frames)  # the first slice parses; the next one fails
        else:
            transport.feed(frames[:20])
        await until(lambda: transport.lost)
        assert transport.aborted
        assert "session failed" in caplog.text and "a bug of ours" in caplog.text

    run(main)


def test_the_read_deadline_moves_without_losing_a_timer() -> None:
    """The read timer is not re-armed on every change of phase (aio/connection.py): one
    that fires before the keep-alive deadline of a later response waits for it, one that
    fires while a request is handled does nothing, and a head deadline earlier than the
    timer re-arms it (a 408 for a slow head)."""

    async def main() -> None:
        limits = streamcore.Limits(keepalive_timeout_s=0.3, head_timeout_s=0.1,
                                   write_stall_timeout_s=5.0, heartbeat_interval_s=60.0)
        app = streamcore.App(limits=limits)

        @app.route("GET", "/fast")
        async def fast(request: streamcore.Request) -> str:
            return "fast"

        @app.route("GET", "/slow")
        async def slow(request: streamcore.Request) -> str:
            await asyncio.sleep(0.45)  # past the keep-alive timer armed at connect
            return "late"

        server = make_server(app, limits)
        loop = asyncio.get_running_loop()
        _, transport = connect(server)  # the keep-alive timer: 0.3 s from now
        await asyncio.sleep(0.1)
        transport.feed(get("/fast"))
        await until(lambda: b"fast" in transport.data, timeout=3)
        answered = loop.time()
        # The timer fires first (0.2 s from now); the deadline counts from the response
        # (0.3 s from now): open until then, closed after it.
        await asyncio.sleep(0.25)
        if loop.time() - answered < 0.28:  # (a loop stalled this long proves nothing)
            assert not transport.closing
        await until(lambda: transport.closing, timeout=3)
        assert loop.time() - answered >= 0.25

        _, transport = connect(server)
        transport.feed(get("/slow"))
        await until(lambda: b"late" in transport.data, timeout=3)
        assert not transport.closing  # the timer that fired mid-request did nothing

        _, transport = connect(server)  # keep-alive 0.3 s armed, then a head begun
        transport.feed(b"GET /slow HTTP/1.1\r\n")
        await until(lambda: transport.closing, timeout=3)
        assert transport.data.startswith(b"HTTP/1.1 408 ")

    run(main)
