"""WebSocket over real sockets on 127.0.0.1: the ``websockets`` library as the client (and a
raw socket for what it will not do), against the gateway's ``/v1/ws`` protocol and against
embedded apps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import httpx
import httpx_sse
import orjson
import pytest
from conftest import Served, wait_for
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.typing import Subprotocol
from ws_helpers import CLOSE, PING, RawWS, close_payload, deflate_raw, frame

import streamcore
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel

LIMITS = Limits(
    write_stall_timeout_s=0.5,
    ws_ping_interval_s=0.2,
    ws_ping_timeout_s=0.3,
    ws_close_timeout_s=1.0,
    ws_max_concurrent_requests=3,
    ws_max_message_bytes=64 * 1024,
    ws_max_frame_bytes=64 * 1024,
    drain_timeout_s=2.0,
)

LONG_PROMPT = ("please explain in plain words how a server can stream tokens to many "
               "readers at once without growing memory")


def run(coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
    """Run a client coroutine on its own loop, with a generous overall timeout."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def body(prompt: str = "tell me about token streams", model: str = "synthetic",
         **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "stream": True, **extra}


def ws_url(served: Served, path: str = "/v1/ws") -> str:
    return f"ws://127.0.0.1:{served.port}{path}"


def client(served: Served, path: str = "/v1/ws", **kw: Any) -> connect:
    kw.setdefault("ping_interval", None)  # liveness is the server's job in these tests
    kw.setdefault("open_timeout", 5)
    kw.setdefault("close_timeout", 5)
    return connect(ws_url(served, path), **kw)


def extensions_header(ws: ClientConnection) -> str | None:
    """What the server answered in Sec-WebSocket-Extensions (None: no extension)."""
    assert ws.response is not None
    value: str | None = ws.response.headers.get("Sec-WebSocket-Extensions")
    return value


async def recv_json(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The next message, the ``stream`` message of a request left out (it names the stream
    for a resume: tests/test_resume_any.py)."""
    while True:
        message = await asyncio.wait_for(ws.recv(), timeout)
        assert isinstance(message, str), "the gateway speaks text messages"
        doc = orjson.loads(message)
        assert isinstance(doc, dict)
        if doc.get("type") != "stream":
            return doc


async def collect(ws: ClientConnection, ids: set[str], *,
                  until: Callable[[dict[str, Any]], bool] | None = None,
                  timeout: float = 20.0) -> list[dict[str, Any]]:
    """Messages until every id in ``ids`` got a final message (done or error), or
    ``until(message)``."""
    pending = set(ids)
    got: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while pending or until is not None:
        left = deadline - asyncio.get_running_loop().time()
        try:
            message = await recv_json(ws, max(left, 0.001))
        except TimeoutError:
            raise AssertionError(f"no final message for {pending or 'until'} within "
                                 f"{timeout}s; got {got[-5:]}") from None
        got.append(message)
        if message["type"] in ("done", "error", "cancelled"):
            pending.discard(message.get("id"))
        if until is not None and until(message):
            break
    return got


def assert_error(message: dict[str, Any], *, id: str | None, param: str | None,
                 code: str | None = None) -> dict[str, Any]:
    assert message["type"] == "error", message
    assert set(message) == {"type", "id", "error"}, message
    assert message["id"] == id, message
    error: dict[str, Any] = message["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


def sse_chunks(served: Served, payload: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=10) as http, httpx_sse.connect_sse(
            http, "POST", f"{served.url}/v1/chat/completions", json=payload) as source:
        assert source.response.status_code == 200
        events = [e.data for e in source.iter_sse()]
    assert events[-1] == "[DONE]"
    return [orjson.loads(data) for data in events[:-1]]


def content_tokens(chunks: list[dict[str, Any]]) -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks
            if c["choices"] and "content" in c["choices"][0]["delta"]
            and "role" not in c["choices"][0]["delta"]]


def shape(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk without what differs between two generations (id, created)."""
    return {k: v for k, v in chunk.items() if k not in ("id", "created")}


@pytest.fixture
def gateway(serve: Callable[..., Served]) -> Served:
    models = [SyntheticModel(), SyntheticModel(name="paced", tokens_per_s=50.0),
              SyntheticModel(name="fast-paced", tokens_per_s=400.0)]
    return serve(build_app(models, LIMITS), LIMITS)


# ------------------------------------------------------------------------------- /v1/ws


def test_concurrent_requests_on_one_socket_match_sse(gateway: Served) -> None:
    prompts = {"a": "tell me about token streams", "b": LONG_PROMPT,
               "c": "short one"}
    extra: dict[str, dict[str, Any]] = {
        "a": {}, "b": {"max_tokens": 10}, "c": {"stream_options": {"include_usage": True}}}

    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            for key, prompt in prompts.items():
                await ws.send(orjson.dumps({"type": "request", "id": key,
                                            "body": body(prompt, **extra[key])}).decode())
            return await collect(ws, set(prompts))

    messages = run(main())
    for key, prompt in prompts.items():
        mine = [m for m in messages if m.get("id") == key]
        chunks = [m for m in mine if m["type"] == "chunk"]
        assert mine[-1]["type"] == "done", mine[-1]
        assert [m["type"] for m in mine] == ["chunk"] * len(chunks) + ["done"]
        assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
        for m in chunks:
            assert set(m) == {"type", "id", "seq", "chunk"}
        ws_chunks = [m["chunk"] for m in chunks]
        sse = sse_chunks(gateway, body(prompt, **extra[key]))
        assert content_tokens(ws_chunks) == content_tokens(sse)
        assert [shape(c) for c in ws_chunks] == [shape(c) for c in sse]
        assert len({c["id"] for c in ws_chunks}) == 1  # one completion id per request
        done = mine[-1]
        assert set(done) == {"type", "id", "finish_reason", "usage"}
        finish = [c for c in sse if c["choices"] and c["choices"][0]["finish_reason"]]
        assert done["finish_reason"] == finish[0]["choices"][0]["finish_reason"]
        usage = done["usage"]
        assert usage["completion_tokens"] == len(content_tokens(ws_chunks))
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    b_done = next(m for m in messages if m.get("id") == "b" and m["type"] == "done")
    assert b_done["finish_reason"] == "length"
    assert b_done["usage"]["completion_tokens"] == 10
    c_chunks = [m["chunk"] for m in messages if m.get("id") == "c" and m["type"] == "chunk"]
    assert c_chunks[-1]["choices"] == [] and c_chunks[-1]["usage"]["completion_tokens"] > 0


def test_requests_interleave(gateway: Served) -> None:
    """Two paced requests on one socket progress together, not one after the other."""
    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            for key in ("x", "y"):
                await ws.send(orjson.dumps({"type": "request", "id": key, "body": body(
                    key, model="fast-paced", max_tokens=20)}).decode())
            return await collect(ws, {"x", "y"})

    order = [m["id"] for m in run(main()) if m["type"] == "chunk"]
    first_y = order.index("y")
    assert first_y < len(order) - 1 and "x" in order[first_y:], "streams did not interleave"


def test_cancel_mid_stream(gateway: Served) -> None:
    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            await ws.send(orjson.dumps({"type": "request", "id": "slow",
                                        "body": body(LONG_PROMPT, model="paced")}).decode())
            await ws.send(orjson.dumps({"type": "request", "id": "other", "body": body(
                "other", model="paced", max_tokens=15)}).decode())
            got = await collect(ws, set(), until=lambda m: m["id"] == "slow" and m[
                "type"] == "chunk" and m["seq"] >= 4)
            await ws.send(orjson.dumps({"type": "cancel", "id": "slow"}).decode())
            got += await collect(ws, {"slow", "other"})
            # Nothing more for "slow" after the other request is done either.
            await asyncio.sleep(0.3)
            await ws.send(orjson.dumps({"type": "cancel", "id": "slow"}).decode())
            got.append(await recv_json(ws))
            return got

    messages = run(main())
    acks = [i for i, m in enumerate(messages) if m["type"] == "cancelled"]
    assert len(acks) == 1
    assert messages[acks[0]] == {"type": "cancelled", "id": "slow"}
    after = messages[acks[0] + 1:]
    assert not [m for m in after if m.get("id") == "slow" and m["type"] == "chunk"]
    assert not [m for m in messages if m.get("id") == "slow" and m["type"] == "done"]
    other = [m for m in messages if m.get("id") == "other"]
    assert other[-1]["type"] == "done" and other[-1]["usage"]["completion_tokens"] == 15
    assert [m["seq"] for m in other if m["type"] == "chunk"] == list(range(1, 15 + 3))
    # Cancelling what no longer runs is a typed error naming the id.
    assert_error(messages[-1], id="slow", param="id", code="not_found")


def test_cancel_stops_the_generation(gateway: Served) -> None:
    """After a cancel the server holds no reader and no stream for that id."""
    async def main() -> None:
        async with client(gateway) as ws:
            await ws.send(orjson.dumps({"type": "request", "id": "r",
                                        "body": body(model="paced")}).decode())
            await collect(ws, set(), until=lambda m: m["type"] == "chunk")
            await ws.send(orjson.dumps({"type": "cancel", "id": "r"}).decode())
            await collect(ws, {"r"})

            def readers() -> int:
                return sum(len(getattr(c, "readers", ())) for c in
                           gateway.server.connections)
            assert gateway.call(readers) == 0

    run(main())


def test_over_max_concurrent_requests(gateway: Served) -> None:
    limit = LIMITS.ws_max_concurrent_requests

    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            for i in range(limit):
                await ws.send(orjson.dumps({"type": "request", "id": f"r{i}", "body": body(
                    f"p{i}", model="fast-paced", max_tokens=20)}).decode())
            await ws.send(orjson.dumps({"type": "request", "id": "extra", "body": body(
                model="fast-paced", max_tokens=20)}).decode())
            got = await collect(ws, {f"r{i}" for i in range(limit)} | {"extra"})
            # Once they are done there is room again.
            await ws.send(orjson.dumps({"type": "request", "id": "later", "body": body(
                max_tokens=3)}).decode())
            got += await collect(ws, {"later"})
            return got

    messages = run(main())
    extra = [m for m in messages if m.get("id") == "extra"]
    assert len(extra) == 1
    assert_error(extra[0], id="extra", param=None, code="too_many_requests")
    for i in range(limit):
        mine = [m for m in messages if m.get("id") == f"r{i}"]
        assert mine[-1]["type"] == "done" and mine[-1]["usage"]["completion_tokens"] == 20
    assert [m for m in messages if m.get("id") == "later"][-1]["type"] == "done"


def test_duplicate_running_id_is_refused(gateway: Served) -> None:
    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            for _ in range(2):
                await ws.send(orjson.dumps({"type": "request", "id": "same", "body": body(
                    model="fast-paced", max_tokens=10)}).decode())
            return await collect(ws, set(), until=lambda m: m["type"] == "done")

    messages = run(main())
    errors = [m for m in messages if m["type"] == "error"]
    assert len(errors) == 1
    assert_error(errors[0], id="same", param=None, code="duplicate_id")
    # role + 10 tokens + finish: one stream, numbered once.
    assert [m["seq"] for m in messages if m["type"] == "chunk"] == list(range(1, 13))


@pytest.mark.parametrize("request_id", ["50%off", "%d%s", "a\"quote\\", "\u00e9\u2603",
                                        "x" * 256])
def test_any_request_id_is_echoed(gateway: Served, request_id: str) -> None:
    """The id is the client's free-form string: every chunk and the done message carry
    it back exactly (a ``%`` in it must not be taken for a format directive)."""
    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            await ws.send(orjson.dumps({"type": "request", "id": request_id,
                                        "body": body(max_tokens=3)}).decode())
            return await collect(ws, {request_id}, timeout=5)

    messages = run(main())
    assert [m["type"] for m in messages] == ["chunk"] * 5 + ["done"]
    assert all(m["id"] == request_id for m in messages)


BAD_MESSAGES: list[tuple[Any, str | None, str | None, str | None]] = [
    # (message, id in the error, param, code)
    ("{not json", None, None, "invalid_json"),
    ("[1, 2]", None, None, "invalid_type"),
    ({"type": "request", "body": body()}, None, "id", "invalid_value"),
    ({"type": "request", "id": "", "body": body()}, None, "id", "invalid_value"),
    ({"type": "request", "id": 7, "body": body()}, None, "id", "invalid_value"),
    ({"type": "request", "id": "x" * 257, "body": body()}, None, "id", "invalid_value"),
    ({"type": "bogus", "id": "t1"}, "t1", "type", "invalid_value"),
    ({"id": "t2", "body": body()}, "t2", "type", "invalid_value"),
    ({"type": "request", "id": "m1", "body": {"model": "synthetic"}}, "m1", "messages",
     "missing_required_parameter"),
    ({"type": "request", "id": "m2", "body": {"messages": [{"role": "user",
                                                           "content": "x"}]}},
     "m2", "model", "missing_required_parameter"),
    ({"type": "request", "id": "m3", "body": body(max_tokens=0)}, "m3", "max_tokens",
     "invalid_value"),
    ({"type": "request", "id": "m4", "body": {"model": "synthetic", "messages": [
        {"role": "wizard", "content": "x"}]}}, "m4", "messages[0].role", "invalid_value"),
    ({"type": "request", "id": "m5", "body": "not an object"}, "m5", None, "invalid_type"),
    ({"type": "request", "id": "m6"}, "m6", None, "invalid_type"),
    ({"type": "request", "id": "u1", "body": body(model="gpt-nonexistent")}, "u1", "model",
     "model_not_found"),
    ({"type": "cancel", "id": "c1"}, "c1", "id", "not_found"),
]


def test_bad_messages_get_typed_errors_and_the_socket_stays_usable(gateway: Served) -> None:
    async def main() -> list[dict[str, Any]]:
        async with client(gateway) as ws:
            got = []
            for message, *_ in BAD_MESSAGES:
                await ws.send(message if isinstance(message, str)
                              else orjson.dumps(message).decode())
                got.append(await recv_json(ws))
            # Binary messages are JSON too; and after all that the socket still works.
            await ws.send(orjson.dumps({"type": "request", "id": "ok",
                                        "body": body(max_tokens=2)}))
            got += await collect(ws, {"ok"})
            return got

    messages = run(main())
    for (message, id_, param, code), got in zip(BAD_MESSAGES, messages, strict=False):
        error = assert_error(got, id=id_, param=param, code=code)
        assert error["type"] == "invalid_request_error", (message, got)
    assert messages[-1]["type"] == "done" and messages[-1]["id"] == "ok"


@pytest.mark.parametrize("fragmented", [False, True])
def test_oversize_message_is_closed_with_1009(gateway: Served, fragmented: bool) -> None:
    big = "x" * (LIMITS.ws_max_message_bytes + 1)

    async def main() -> int | None:
        async with client(gateway) as ws:
            if fragmented:
                async def pieces() -> AsyncIterator[str]:
                    for i in range(0, len(big), 8192):
                        yield big[i:i + 8192]
                await ws.send(pieces())
            else:
                await ws.send(big)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            assert ws.close_code is not None
            return ws.close_code

    assert run(main()) == 1009


def test_message_at_the_limit_is_accepted(gateway: Served) -> None:
    """A request message of exactly ws_max_message_bytes is read (and refused only for
    what it says)."""
    async def main() -> dict[str, Any]:
        async with client(gateway) as ws:
            doc = {"type": "request", "id": "big", "body": body(), "pad": ""}
            size = len(orjson.dumps(doc))
            doc["pad"] = "p" * (LIMITS.ws_max_message_bytes - size)
            data = orjson.dumps(doc).decode()
            assert len(data) == LIMITS.ws_max_message_bytes
            await ws.send(data)
            return (await collect(ws, {"big"}))[-1]

    assert run(main())["type"] == "done"


def test_gateway_over_http_is_426(gateway: Served) -> None:
    response = httpx.get(f"{gateway.url}/v1/ws")
    assert response.status_code == 426
    assert response.headers["upgrade"].lower() == "websocket"


# ------------------------------------------------------------------------------ origins


def test_origin_allow_list(serve: Callable[..., Served]) -> None:
    app = build_app(limits=LIMITS)
    app.ws_origins = frozenset({"https://good.example"})
    served = serve(app, LIMITS)

    async def attempt(origin: str | None) -> int:
        try:
            async with client(served, origin=origin) as ws:
                await ws.send(orjson.dumps({"type": "request", "id": "o",
                                            "body": body(max_tokens=1)}).decode())
                assert (await collect(ws, {"o"}))[-1]["type"] == "done"
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert run(attempt("https://evil.example")) == 403
    assert run(attempt(None)) == 403
    assert run(attempt("https://good.example")) == 101


def test_subprotocol_negotiated_end_to_end(serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)
    app.ws_subprotocols = ("streamcore.v1",)

    @app.websocket("/sub")
    async def sub(ws: Any) -> None:
        await ws.send(ws.subprotocol or "none")

    served = serve(app, LIMITS)

    async def main(offer: list[Subprotocol]) -> tuple[str | None, str | bytes]:
        async with client(served, "/sub", subprotocols=offer) as ws:
            return ws.subprotocol, await ws.recv()

    offer = [Subprotocol("other"), Subprotocol("streamcore.v1")]
    assert run(main(offer)) == ("streamcore.v1", "streamcore.v1")


@pytest.mark.parametrize("ours", ["Chat.V1", "chat.v1"])
def test_mixed_case_subprotocol(serve: Callable[..., Served], ours: str) -> None:
    """Subprotocol names are compared exactly by clients (RFC 6455 section 4.1: the
    client fails a connection whose subprotocol it did not offer): a client offering
    ``Chat.V1`` must get ``Chat.V1`` back, or none -- never ``chat.v1``."""
    app = streamcore.App(limits=LIMITS)
    app.ws_subprotocols = (ours,)

    @app.websocket("/sub")
    async def sub(ws: Any) -> None:
        await ws.send(ws.subprotocol or "none")

    served = serve(app, LIMITS)

    async def main() -> tuple[str | None, str | bytes]:
        async with client(served, "/sub", subprotocols=[Subprotocol("Chat.V1")]) as ws:
            return ws.subprotocol, await ws.recv()

    expected = "Chat.V1" if ours == "Chat.V1" else None
    assert run(main()) == (expected, expected or "none")


# ------------------------------------------------------------------ slow reader, memory


def test_client_that_stops_reading_is_closed_and_memory_stays_bounded(
        serve: Callable[..., Served]) -> None:
    # No pings: a client that reads nothing also answers no ping, and a slow run (under
    # coverage) must not be cut by the ping timeout before the socket fills.
    limits = LIMITS.replace(write_stall_timeout_s=1.0, write_high_water_bytes=16 * 1024,
                            write_low_water_bytes=4 * 1024, stream_log_bytes=64 * 1024,
                            ws_ping_interval_s=60.0)
    total = 2_000_000
    produced = {"count": 0, "closed": False}
    app = streamcore.App(limits=limits)

    @app.stream("GET", "/fast")
    async def fast(request: streamcore.Request) -> AsyncIterator[str]:
        try:
            for i in range(total):
                produced["count"] += 1
                yield f"token {i:08d} " + "x" * 80
        finally:
            produced["closed"] = True

    served = serve(app, limits)
    with RawWS(served.port, "/fast", rcvbuf=4096) as raw:
        # The server fills the socket, then its transport buffer, then pauses.
        wait_for(lambda: served.call(lambda: served.server.admission.paused_bytes > 0), timeout=5)

        def snapshot() -> tuple[int, int, int, list[int]]:
            server = served.server
            logs = [r.entry.log.held_bytes for c in server.connections
                    for r in getattr(c, "readers", {}).values()]
            return (produced["count"], server.admission.paused_bytes, len(server.connections),
                    logs)

        count1, paused, conns, held = served.call(snapshot)
        time.sleep(0.2)
        count2, _, _, _ = served.call(snapshot)
        assert conns == 1
        assert paused <= limits.write_high_water_bytes * conns
        assert held and all(h <= limits.stream_log_bytes for h in held), held
        assert count2 == count1, "the producer kept running while the socket was paused"
        # What was produced fits in the kernel's socket buffers plus our high-water mark
        # and log: a few MiB on loopback at most, not the whole answer.
        assert count1 < total // 20, f"{count1} tokens produced for a client reading none"
        # After write_stall_timeout_s the server gives up on it, and lets everything go.
        wait_for(lambda: served.call(lambda: not served.server.connections), timeout=10)
        wait_for(lambda: produced["closed"], timeout=5)
        assert served.call(lambda: served.server.admission.paused_bytes) == 0
        assert raw.wait_closed(5), "the server did not close the stalled socket"
    assert produced["count"] < total // 20


def numbers_app(limits: Limits, count: int) -> streamcore.App:
    app = streamcore.App(limits=limits)

    @app.stream("GET", "/numbers")
    async def numbers(request: streamcore.Request) -> AsyncIterator[str]:
        for i in range(count):
            yield f"{i:06d}" + "." * 100

    return app


async def read_all(served: Served, path: str, *, pause_every: int = 0,
                   **kw: Any) -> tuple[list[str], int | None]:
    got = []
    async with client(served, path, **kw) as ws:
        try:
            while True:
                message = await asyncio.wait_for(ws.recv(), 10)
                assert isinstance(message, str)
                got.append(message)
                if pause_every and len(got) % pause_every == 0:
                    await asyncio.sleep(0.05)
        except ConnectionClosed:
            pass
        return got, ws.close_code


def test_slow_reader_gets_everything_in_order(serve: Callable[..., Served]) -> None:
    """Backpressure pauses the producer but loses nothing: a client that reads slowly
    gets every item, in order, and a clean close."""
    limits = LIMITS.replace(write_high_water_bytes=8 * 1024, write_low_water_bytes=2 * 1024,
                            stream_log_bytes=256 * 1024, write_stall_timeout_s=5.0,
                            ws_ping_interval_s=60.0)  # a paused client answers no ping
    count = 3000
    served = serve(numbers_app(limits, count), limits)
    got, code = run(read_all(served, "/numbers", pause_every=500, max_queue=1))
    assert [int(m[:6]) for m in got] == list(range(count))
    assert code == 1000


@pytest.mark.parametrize("log_kib", [16, 32])
def test_small_stream_log_does_not_fail_the_origin_reader(
        serve: Callable[..., Served], log_kib: int) -> None:
    """stream_log_bytes is the replay buffer for *resume*; a small one must not fail the
    live reader.  The producer only looks at its reader's backlog once more than
    FLUSH_BYTES (32 KiB, streamcore/aio/stream.py) is pending, so with a log of 32 KiB or
    less the live reader's next frame is trimmed before it is ever written:
    FellBehind, a 1011 close and nothing delivered (the same happens over SSE)."""
    limits = LIMITS.replace(stream_log_bytes=log_kib * 1024, write_stall_timeout_s=5.0,
                            ws_ping_interval_s=60.0)  # not a liveness test: no pings
    count = 3000
    served = serve(numbers_app(limits, count), limits)
    got, code = run(read_all(served, "/numbers", max_size=None))
    assert code == 1000, f"closed with {code}; first message {got[:1]}"
    assert [int(m[:6]) for m in got] == list(range(count))


def test_gateway_messages_stay_json_when_a_stream_fails(serve: Callable[..., Served]) -> None:
    """Whatever ends a request, the client gets JSON objects.  A small stream log makes
    the reader fall off the log's tail (see the test above); the error message built for
    that must still be ``{"type":"error","id":..,"error":{..}}``, not the exception text
    spliced into it."""
    limits = LIMITS.replace(stream_log_bytes=16 * 1024)
    served = serve(build_app([SyntheticModel(default_tokens=2000)], limits), limits)

    async def main() -> list[str | bytes]:
        got: list[str | bytes] = []
        async with client(served) as ws:
            await ws.send(orjson.dumps({"type": "request", "id": "a",
                                        "body": body()}).decode())
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), 3)
                except TimeoutError:
                    break
                got.append(message)
                if b'"type":"done"' in (message.encode() if isinstance(message, str)
                                        else message):
                    break
        return got

    messages = run(main())
    assert messages
    for raw in messages:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise AssertionError(f"not JSON: {raw[:200]!r}") from None
        assert isinstance(doc, dict) and doc["id"] == "a"
        if doc["type"] == "error":
            assert_error(doc, id="a", param=None)
    assert orjson.loads(messages[-1])["type"] in ("done", "error")


# --------------------------------------------------------------------------- liveness


def test_silent_peer_is_closed_after_ping_timeout(serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/echo")
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    served = serve(app, LIMITS)
    with RawWS(served.port, "/echo") as raw:
        start = time.monotonic()
        frames = raw.recv_frames(timeout=5)
        assert frames and frames[0][0] == PING, frames
        assert raw.wait_closed(5), "a peer that never answers pings was not closed"
        elapsed = time.monotonic() - start
    floor = LIMITS.ws_ping_interval_s + LIMITS.ws_ping_timeout_s
    assert elapsed >= floor * 0.8, f"closed after {elapsed:.2f}s, before ping + timeout"
    wait_for(lambda: served.call(lambda: not served.server.connections), timeout=5)


def test_raw_peer_answering_pings_stays_open(serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/echo")
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    served = serve(app, LIMITS)
    pongs = 0
    with RawWS(served.port, "/echo") as raw:
        deadline = time.monotonic() + 3 * (LIMITS.ws_ping_interval_s
                                           + LIMITS.ws_ping_timeout_s)
        while time.monotonic() < deadline:
            for opcode, _, payload in raw.recv_frames(timeout=0.1):
                if opcode == PING:
                    raw.send_frame(0xA, payload)
                    pongs += 1
        assert not raw.closed and pongs >= 2
        raw.send_frame(0x1, b"still here")
        frames = [f for f in raw.recv_frames(timeout=3, count=3) if f[0] == 0x1]
        assert frames and frames[0][2] == b"still here"


def test_websockets_client_stays_connected(serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/echo")
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    served = serve(app, LIMITS)

    async def main() -> str:
        # The client sends no pings of its own; it only answers the server's.
        async with client(served, "/echo") as ws:
            await asyncio.sleep(4 * (LIMITS.ws_ping_interval_s + LIMITS.ws_ping_timeout_s))
            await ws.send("alive")
            reply = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(reply, str)
            return reply

    assert run(main()) == "alive"


# -------------------------------------------------------------------------- embedding


def embedding_app(limits: Limits) -> streamcore.App:
    app = streamcore.App(limits=limits)

    @app.stream("POST", "/v1/generate")
    async def generate(request: streamcore.Request) -> AsyncIterator[str]:
        for word in request.json()["prompt"].split():
            yield word

    @app.stream("POST", "/v1/chat")
    async def chat(request: streamcore.Request) -> AsyncIterator[str]:
        prefix = request.json()["prefix"]
        yield prefix + "start"
        async for message in request.messages():
            assert isinstance(message, str)
            if message == "bye":
                break
            yield prefix + message.upper()
            await asyncio.sleep(0)
            yield prefix + "token"
        yield prefix + "end"

    @app.websocket("/echo")
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return app


def test_stream_route_over_websocket(serve: Callable[..., Served]) -> None:
    served = serve(embedding_app(LIMITS), LIMITS)
    prompt = "the quick brown fox jumps over the lazy dog"

    async def main() -> tuple[list[str], int | None]:
        async with client(served, "/v1/generate") as ws:
            await ws.send(orjson.dumps({"prompt": prompt}).decode())
            got = []
            with pytest.raises(ConnectionClosed):
                while True:
                    message = await asyncio.wait_for(ws.recv(), 5)
                    assert isinstance(message, str)
                    got.append(message)
            return got, ws.close_code

    got, code = run(main())
    assert got == prompt.split()
    assert code == 1000
    # And the same route still speaks SSE.
    with httpx.Client(timeout=5) as http, httpx_sse.connect_sse(
            http, "POST", f"{served.url}/v1/generate", json={"prompt": prompt}) as source:
        assert [e.data for e in source.iter_sse()] == prompt.split()


def test_stream_route_reads_client_messages_while_streaming(
        serve: Callable[..., Served]) -> None:
    served = serve(embedding_app(LIMITS), LIMITS)

    async def main() -> tuple[list[str | bytes], int | None]:
        async with client(served, "/v1/chat") as ws:
            await ws.send(orjson.dumps({"prefix": "> "}).decode())
            got = [await asyncio.wait_for(ws.recv(), 5)]
            for word in ("hello", "world"):
                await ws.send(word)
                got.append(await asyncio.wait_for(ws.recv(), 5))
                got.append(await asyncio.wait_for(ws.recv(), 5))
            await ws.send("bye")
            with pytest.raises(ConnectionClosed):
                while True:
                    got.append(await asyncio.wait_for(ws.recv(), 5))
            return got, ws.close_code

    got, code = run(main())
    assert got == ["> start", "> HELLO", "> token", "> WORLD", "> token", "> end"]
    assert code == 1000


def test_bad_first_message_on_stream_route(serve: Callable[..., Served]) -> None:
    """A first message that is not JSON is the client's fault: a policy close (1008) or
    an error, never a 1011 internal error."""
    served = serve(embedding_app(LIMITS), LIMITS)

    async def main() -> int | None:
        async with client(served, "/v1/generate") as ws:
            await ws.send("{not json")
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    code = run(main())
    assert code in (1007, 1008), code


def test_client_close_mid_stream_releases_the_generator(serve: Callable[..., Served]) -> None:
    state = {"closed": False}
    app = streamcore.App(limits=LIMITS)

    @app.stream("GET", "/forever")
    async def forever(request: streamcore.Request) -> AsyncIterator[str]:
        try:
            while True:
                yield "tick"
                await asyncio.sleep(0.01)
        finally:
            state["closed"] = True

    served = serve(app, LIMITS)

    async def main() -> None:
        async with client(served, "/forever") as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "tick"

    run(main())
    wait_for(lambda: state["closed"], timeout=5)
    wait_for(lambda: served.call(lambda: not served.server.connections), timeout=5)


# --------------------------------------------------------------------------- shutdown


def test_server_shutdown_closes_sockets_with_1001(gateway: Served) -> None:
    async def main() -> list[int | None]:
        async with client(gateway) as busy, client(gateway) as idle:
            await busy.send(orjson.dumps({"type": "request", "id": "long",
                                          "body": body(LONG_PROMPT, model="paced")}).decode())
            await collect(busy, set(), until=lambda m: m["type"] == "chunk")
            closing = asyncio.create_task(asyncio.to_thread(
                gateway.run, gateway.server.close(3.0), 15))
            codes = []
            for ws in (busy, idle):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                codes.append(ws.close_code)
            await closing
            return codes

    assert run(main()) == [1001, 1001]
    assert gateway.call(lambda: len(gateway.server.connections)) == 0


def test_shutdown_reaches_raw_socket_with_a_close_frame(serve: Callable[..., Served]) -> None:
    served = serve(embedding_app(LIMITS), LIMITS)
    with RawWS(served.port, "/echo") as raw:
        raw.send_frame(0x1, b"ping?")
        assert raw.recv_frames(timeout=3)[0][2] == b"ping?"
        thread = threading.Thread(target=served.run, args=(served.server.close(3.0), 15))
        thread.start()
        frames = raw.recv_frames(timeout=5, until_close=True)
        closes = [f for f in frames if f[0] == CLOSE]
        assert closes and closes[0][2][:2] == (1001).to_bytes(2, "big"), frames
        raw.send_frame(CLOSE, close_payload(1001))
        assert raw.wait_closed(5)
        thread.join(15)
        assert not thread.is_alive()


# --------------------------------------------------------------------- permessage-deflate


def deflate_app() -> tuple[streamcore.App, Limits]:
    limits = LIMITS.replace(ws_max_message_bytes=8 << 20, ws_max_frame_bytes=8 << 20)
    app = embedding_app(limits)
    app.ws_deflate = True
    return app, limits


def test_deflate_negotiated_and_round_trips(serve: Callable[..., Served]) -> None:
    app, limits = deflate_app()
    served = serve(app, limits)
    text = "a compressible sentence about streams. " * 50_000  # ~2 MiB
    blob = bytes(range(256)) * 8192  # 2 MiB of binary

    async def main() -> tuple[str | None, list[Any]]:
        async with client(served, "/echo", max_size=None) as ws:
            header = extensions_header(ws)
            got = []
            for message in (text, blob, "small", b""):
                await ws.send(message)
                got.append(await asyncio.wait_for(ws.recv(), 10))
            return header, got

    header, got = run(main())
    assert header is not None and header.split(";")[0].strip() == "permessage-deflate"
    assert got == [text, blob, "small", b""]


@pytest.mark.parametrize("client_max_window_bits", [True, None])
def test_deflate_negotiated_for_every_offer_shape(serve: Callable[..., Served],
                                                  client_max_window_bits: Any) -> None:
    """``websockets`` offers ``permessage-deflate; client_max_window_bits`` by default;
    with client_max_window_bits=None it offers a bare ``permessage-deflate`` (as Firefox
    does).  Both must be accepted."""
    app, limits = deflate_app()
    served = serve(app, limits)
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=client_max_window_bits)

    async def main() -> tuple[str | None, str]:
        async with client(served, "/echo", extensions=[factory], compression=None) as ws:
            await ws.send("hello " * 1000)
            reply = await asyncio.wait_for(ws.recv(), 5)
            assert isinstance(reply, str)
            return extensions_header(ws), reply

    header, reply = run(main())
    assert reply == "hello " * 1000
    assert header is not None and header.startswith("permessage-deflate"), header


def test_deflate_bomb_over_the_socket_is_1009(serve: Callable[..., Served]) -> None:
    app, _ = deflate_app()
    limits = LIMITS.replace(ws_max_message_bytes=1 << 20, ws_max_frame_bytes=1 << 20)
    served = serve(app, limits)
    payload = deflate_raw([b"\x00" * (1 << 20)] * 50)

    async def main() -> int | None:
        async with client(served, "/echo") as ws:
            assert "permessage-deflate" in (extensions_header(ws) or "")
            # The websockets client compresses for us; send the raw compressed bytes as
            # they would come from a hostile peer instead.
            transport = ws.transport
            transport.write(frame(0x2, payload, rsv=4))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code

    assert run(main()) == 1009


def test_gateway_with_deflate(serve: Callable[..., Served]) -> None:
    app = build_app([SyntheticModel()], LIMITS)
    app.ws_deflate = True
    served = serve(app, LIMITS)

    async def main() -> list[dict[str, Any]]:
        async with client(served) as ws:
            assert "permessage-deflate" in (extensions_header(ws) or "")
            await ws.send(orjson.dumps({"type": "request", "id": "z",
                                        "body": body(max_tokens=5)}).decode())
            await ws.send("{bad")
            return await collect(ws, {"z", None})  # type: ignore[arg-type]

    messages = run(main())
    assert [m["type"] for m in messages if m.get("id") == "z"][-1] == "done"
    assert any(m["type"] == "error" and m["id"] is None for m in messages)


# ------------------------------------------------------------------ raw wire behaviour


@pytest.fixture
def echo(serve: Callable[..., Served]) -> Served:
    return serve(embedding_app(LIMITS), LIMITS)


def test_frames_sent_with_the_handshake_are_not_lost(echo: Served) -> None:
    """A client may send its first frames right behind the upgrade request, in the same
    TCP segment (RFC 6455 section 4.1 lets it only after the 101, but pipelining clients
    do it); the server must parse them."""
    with RawWS(echo.port, "/echo",
               first=frame(0x1, b"first") + frame(0x1, b"second")) as raw:
        got = raw.recv_frames(timeout=3, count=2)
        assert [(op, payload) for op, _, payload in got if op == 0x1] == [
            (0x1, b"first"), (0x1, b"second")]


@pytest.mark.parametrize("bad, code", [
    (frame(0x1, b"unmasked", masked=False), 1002),
    (frame(0x1, b"rsv", rsv=2), 1002),
    (frame(0x3, b"opcode"), 1002),
    (frame(0x9, b"ab", fin=False), 1002),
    (frame(0x1, b"\xff\xfe"), 1007),
    (frame(0x2, b"z" * (LIMITS.ws_max_frame_bytes + 1)), 1009),
])
def test_protocol_errors_get_the_right_close_code(echo: Served, bad: bytes,
                                                  code: int) -> None:
    with RawWS(echo.port, "/echo") as raw:
        raw.send_frame(0x1, b"before")
        assert raw.recv_frames(timeout=3)[0][2] == b"before"
        raw.send(bad)
        frames = raw.recv_frames(timeout=5, until_close=True)
        closes = [payload for op, _, payload in frames if op == CLOSE]
        assert closes, frames
        assert int.from_bytes(closes[0][:2], "big") == code
        # The server closes the TCP connection after a failure (RFC 6455 section 7.1.7).
        assert raw.wait_closed(5)
    wait_for(lambda: echo.call(lambda: not echo.server.connections), timeout=5)


def test_client_close_is_echoed_and_tcp_closed(echo: Served) -> None:
    with RawWS(echo.port, "/echo") as raw:
        raw.send_frame(0x9, b"are you there")
        assert raw.recv_frames(timeout=3)[0] == (0xA, True, b"are you there")
        raw.send_frame(CLOSE, close_payload(4000, "done"))
        frames = raw.recv_frames(timeout=3, until_close=True)
        assert (CLOSE, True, close_payload(4000, "done")) in frames
        assert raw.wait_closed(3)


def test_peer_that_never_answers_our_close_is_dropped(serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/bye")
    async def bye(ws: Any) -> None:
        await ws.send("bye")

    served = serve(app, LIMITS)
    with RawWS(served.port, "/bye") as raw:
        frames = raw.recv_frames(timeout=3, until_close=True)
        assert (0x1, True, b"bye") in frames
        assert (CLOSE, True, close_payload(1000)) in frames
        # We never answer the Close: ws_close_timeout_s later the server gives up.
        assert raw.wait_closed(LIMITS.ws_close_timeout_s + 5)
    wait_for(lambda: served.call(lambda: not served.server.connections), timeout=5)


def test_handler_failure_is_1011_and_request_error_is_1008(
        serve: Callable[..., Served]) -> None:
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/boom")
    async def boom(ws: Any) -> None:
        await ws.receive()
        raise RuntimeError("bug")

    @app.websocket("/refuse")
    async def refuse(ws: Any) -> None:
        await ws.receive()
        raise streamcore.RequestError("not allowed")

    served = serve(app, LIMITS)

    async def main(path: str) -> tuple[int | None, str | None]:
        async with client(served, path) as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            return ws.close_code, ws.close_reason

    assert run(main("/boom"))[0] == 1011
    code, reason = run(main("/refuse"))
    assert code == 1008 and reason == "not allowed"


def test_message_handler_in_order_no_task_while_idle_and_its_failures(
        serve: Callable[..., Served]) -> None:
    """@app.websocket(path, messages=True): one call per message, in order, each awaited
    before the next (a slow first message does not let the second pass it); no task once
    the messages are handled; the request kept (its headers packed); an exception is the
    close code of a loop handler's."""
    app = streamcore.App(limits=LIMITS)
    tasks: list[Any] = []

    @app.websocket("/m", messages=True)
    async def on_message(ws: Any, message: str | bytes) -> None:
        tasks.append(asyncio.current_task())
        if message == "slow":
            await asyncio.sleep(0.05)
        elif message == "boom":
            raise RuntimeError("bug")
        elif message == "refuse":
            raise streamcore.RequestError("not allowed")
        await ws.send(f"{message} {ws.request.header('x-user')}")

    served = serve(app, LIMITS)

    async def main(messages: list[str]) -> tuple[list[Any], int | None, str | None]:
        async with client(served, "/m", additional_headers={"X-User": "ann"}) as ws:
            for message in messages:
                await ws.send(message)
            answers = []
            try:
                while True:
                    answers.append(await asyncio.wait_for(ws.recv(), 5))
                    if len(answers) == len(messages):
                        conns = served.call(lambda: list(served.server.connections))
                        assert all(c._task is None for c in conns)  # idle: no task
                        return answers, None, None
            except ConnectionClosed:
                return answers, ws.close_code, ws.close_reason

    answers, code, _ = run(main(["slow", "two", "three"]))
    assert answers == ["slow ann", "two ann", "three ann"] and code is None
    assert all(task is not None for task in tasks)  # each call in a real task
    answers, code, _ = run(main(["one", "boom", "never"]))
    assert answers == ["one ann"] and code == 1011
    answers, code, reason = run(main(["refuse"]))
    assert answers == [] and code == 1008 and reason == "not allowed"


@pytest.mark.parametrize("extra, version, status", [
    ((), b"8", 426),
    ((), b"13", 403),
])
def test_handshake_rejections_over_the_socket(serve: Callable[..., Served], extra: Any,
                                              version: bytes, status: int) -> None:
    from conftest import RawClient, parse_responses

    app = embedding_app(LIMITS)
    app.ws_origins = frozenset({"https://good.example"})
    served = serve(app, LIMITS)
    request = (b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Origin: https://evil.example\r\n"
               b"Sec-WebSocket-Version: " + version + b"\r\n\r\n")
    with RawClient(served.port) as raw:
        raw.send(request)
        result = raw.read_until_close(5)
    assert result.closed
    response = parse_responses(result.data)[0]
    assert response.status == status
    if status == 426:
        assert response.header(b"sec-websocket-version") == b"13"


def test_missing_key_and_unknown_path(echo: Served) -> None:
    from conftest import RawClient, parse_responses

    no_key = (b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with RawClient(echo.port) as raw:
        raw.send(no_key)
        assert parse_responses(raw.read_until_close(5).data)[0].status == 400

    async def unknown() -> int:
        try:
            async with client(echo, "/nowhere"):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    assert run(unknown()) == 404


def test_unread_client_messages_do_not_make_a_live_peer_look_dead(
        serve: Callable[..., Served]) -> None:
    """A stream handler that does not read ``request.messages()`` while a client keeps
    sending: the server stops reading the socket (inbound backpressure) -- and must then
    not judge the peer's liveness by bytes it has chosen not to read (its pongs are in
    the unread socket buffer)."""
    app = streamcore.App(limits=LIMITS)
    ticks = 40

    @app.stream("GET", "/ticks")
    async def slow(request: streamcore.Request) -> AsyncIterator[str]:
        for i in range(ticks):
            yield f"tick {i}"
            await asyncio.sleep(0.05)  # 2 s in all: several ping intervals

    served = serve(app, LIMITS)

    async def main() -> tuple[list[str], int | None]:
        got: list[str] = []
        async with client(served, "/ticks") as ws:
            for i in range(200):  # more than the inbox holds: reading gets paused
                await ws.send(f"typing {i}")
            try:
                while True:
                    message = await asyncio.wait_for(ws.recv(), 5)
                    assert isinstance(message, str)
                    got.append(message)
            except ConnectionClosed:
                pass
            return got, ws.close_code

    got, code = run(main())
    assert code == 1000, f"closed with {code} after {len(got)} of {ticks} items"
    assert got == [f"tick {i}" for i in range(ticks)]


def test_messages_sent_in_one_loop_iteration_arrive_whole_and_in_order(
        serve: Callable[..., Served]) -> None:
    """``await ws.send`` batches what one loop iteration sends into one write (and writes
    at once past FLUSH_BYTES): every message arrives, in order, before the close, with
    JSON (send_json: its UTF-8 framed as it is) and binary ones among them."""
    app = streamcore.App(limits=LIMITS)

    @app.websocket("/burst")
    async def burst(ws: Any) -> None:
        async for message in ws:
            for i in range(200):  # ~200 KiB: several early flushes, never yielding
                await ws.send(f"{message!s}-{i}-" + "x" * 1000)
            await ws.send_json({"n": "\u00e9"})
            await ws.send(b"\x00bin")
            await ws.close()

    served = serve(app, LIMITS)

    async def main() -> list[str | bytes]:
        async with client(served, "/burst") as ws:
            await ws.send("m")
            return [message async for message in ws]

    got = run(main())
    assert got[:200] == [f"m-{i}-" + "x" * 1000 for i in range(200)]
    assert got[200:] == ['{"n":"\u00e9"}', b"\x00bin"]
