"""The HTTP/1.1 server over real sockets on 127.0.0.1: bounds, smuggling, timeouts,
admission, HTTP features, SSE framing, disconnects and handler failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import httpx
import httpx_sse
import orjson
import pytest
from conftest import (
    FAST_LIMITS,
    RawClient,
    Served,
    assert_openai_error,
    parse_responses,
    raw_exchange,
    status_lines,
    wait_for,
)

import streamcore
from streamcore import App, Limits, Request, Response
from streamcore.aio.stream import FLUSH_BYTES
from streamcore.proto.pipe import PAUSED

# ---------------------------------------------------------------------------- the test app


@dataclass
class State:
    """What the handlers saw, for the test thread to check."""

    finally_ran: threading.Event = field(default_factory=threading.Event)
    started: threading.Event = field(default_factory=threading.Event)
    produced: int = 0


def make_app(limits: Limits) -> tuple[App, State]:
    app = App(limits=limits)
    state = State()

    def arg(request: Request, name: str, default: float) -> float:
        values = parse_qs(request.query).get(name)
        return float(values[0]) if values else default

    @app.route("GET", "/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "ok"}

    @app.route("POST", "/echo")
    async def echo(request: Request) -> Response:
        return Response(request.body, content_type=b"application/octet-stream")

    @app.stream("GET", "/stream")
    async def stream(request: Request) -> AsyncIterator[str]:
        """``n`` tokens ``tok0..``, ``delay`` s apart, after ``first_delay`` s."""
        count = int(arg(request, "n", 5))
        delay = arg(request, "delay", 0.0)
        first_delay = arg(request, "first_delay", 0.0)
        state.started.set()
        try:
            if first_delay:
                await asyncio.sleep(first_delay)
            for i in range(count):
                if delay and i:
                    await asyncio.sleep(delay)
                state.produced += 1
                yield f"tok{i}"
        finally:
            state.finally_ran.set()

    @app.stream("GET", "/forever")
    async def forever(request: Request) -> AsyncIterator[bytes]:
        """1 KiB events as fast as they are taken, forever."""
        payload = b"x" * 1024
        state.started.set()
        try:
            while True:
                state.produced += 1
                yield payload
        finally:
            state.finally_ran.set()

    @app.stream("GET", "/sized")
    async def sized(request: Request) -> AsyncIterator[str]:
        """``n`` events of ``size`` bytes, numbered, unpaced."""
        count, size = int(arg(request, "n", 10)), int(arg(request, "size", 1000))
        for i in range(count):
            yield f"{i:06d}".ljust(size, "x")

    @app.stream("POST", "/json-stream")
    async def json_stream(request: Request) -> AsyncIterator[str]:
        """Reads its input inside the generator, as the README's embedding example does."""
        for word in request.json()["prompt"].split():
            yield word

    @app.stream("GET", "/fail")
    async def fail(request: Request) -> AsyncIterator[str]:
        yield "tok0"
        await asyncio.sleep(0.01)
        yield "tok1"
        raise RuntimeError("boom")

    return app, state


@pytest.fixture
def app_state() -> tuple[App, State]:
    return make_app(FAST_LIMITS)


@pytest.fixture
def served(serve: Callable[..., Served], app_state: tuple[App, State]) -> Served:
    return serve(app_state[0], FAST_LIMITS)


@pytest.fixture
def state(app_state: tuple[App, State]) -> State:
    return app_state[1]


def get(path: str, *extra: bytes, version: bytes = b"1.1") -> bytes:
    lines = [b"GET " + path.encode() + b" HTTP/" + version, b"Host: t", *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: t",
             b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def sse_events(body: bytes) -> list[dict[str, str]]:
    """Events of an SSE body (id and data fields only; comments skipped)."""
    events = []
    for block in body.split(b"\n\n"):
        fields: dict[str, str] = {}
        for line in block.split(b"\n"):
            if not line or line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            key = name.decode()
            fields[key] = fields[key] + "\n" + value.decode() if key in fields else value.decode()
        if fields:
            events.append(fields)
    return events


def single_error(raw: bytes, status: int) -> dict[str, object]:
    """``raw`` holds exactly one response, with ``status`` and an OpenAI error body."""
    assert len(status_lines(raw)) == 1, raw
    (response,) = parse_responses(raw)
    assert response.status == status, raw
    assert response.complete
    assert response.header(b"content-type") == b"application/json"
    return assert_openai_error(response.body)


# ---------------------------------------------------------------------------- head bounds


def big_head(size: int) -> bytes:
    start = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


def test_head_too_large_in_one_write(served: Served) -> None:
    result = raw_exchange(served.port, big_head(FAST_LIMITS.max_head_bytes * 2))
    single_error(result.data, 431)
    assert result.closed


def test_head_too_large_dribbled(served: Served) -> None:
    """One byte per write: refused as soon as the bound is passed, before the head ends."""
    head = big_head(FAST_LIMITS.max_head_bytes * 2)[: FAST_LIMITS.max_head_bytes + 1]
    with RawClient(served.port) as client:
        for i in range(len(head)):
            client.send(head[i:i + 1])
        result = client.read_until_close(3.0)
    single_error(result.data, 431)
    assert result.closed


def test_too_many_headers(served: Served) -> None:
    extra = [b"X-H%d: v" % i for i in range(FAST_LIMITS.max_header_count + 1)]
    result = raw_exchange(served.port, get("/healthz", *extra))
    single_error(result.data, 431)
    assert result.closed


def test_body_too_large_is_refused_before_the_body_is_sent(served: Served) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n"
    with RawClient(served.port) as client:
        client.send(head)  # and not a byte of the body
        result = client.read_until_close(3.0)
    error = single_error(result.data, 413)
    assert "1000000000" in str(error["message"])
    assert result.closed


def test_chunked_body_too_large(served: Served) -> None:
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n"
                    for _ in range(FAST_LIMITS.max_body_bytes // len(chunk) + 1))
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    result = raw_exchange(served.port, head + body + b"0\r\n\r\n")
    single_error(result.data, 413)
    assert result.closed


# ---------------------------------------------------------------------------- smuggling

SMUGGLING = {
    "cl_and_te": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                    b"Content-Length: 5\r\n\r\nhello",
    "duplicate_cl_list": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\n"
                         b"hello",
    "non_numeric_cl": b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello",
    "missing_host": b"GET /healthz HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two_hosts": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n",
}

NEXT = get("/healthz")


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_gets_400_and_close_and_nothing_after_it_is_parsed(
        served: Served, name: str) -> None:
    result = raw_exchange(served.port, SMUGGLING[name] + NEXT)
    single_error(result.data, 400)
    assert result.closed


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_pipelined_after_a_valid_request(served: Served, name: str) -> None:
    """A valid request, then a smuggling one, then another, in one write: the first is
    answered, the second gets 400, and the connection closes without a third answer."""
    result = raw_exchange(served.port, NEXT + SMUGGLING[name] + NEXT, timeout=1.5)
    statuses = [int(line.split()[1]) for line in status_lines(result.data)]
    assert statuses == [200, 400], result.data
    assert result.closed


def test_smuggling_pipelined_after_a_stream(served: Served) -> None:
    """The same, behind a streamed (SSE) response."""
    result = raw_exchange(served.port, get("/stream?n=2") + SMUGGLING["cl_and_te"] + NEXT,
                          timeout=1.5)
    statuses = [int(line.split()[1]) for line in status_lines(result.data)]
    assert statuses == [200, 400], result.data
    assert result.closed


def test_head_too_large_pipelined_after_a_valid_request(served: Served) -> None:
    result = raw_exchange(served.port, NEXT + big_head(FAST_LIMITS.max_head_bytes * 2),
                          timeout=1.5)
    statuses = [int(line.split()[1]) for line in status_lines(result.data)]
    assert statuses == [200, 431], result.data
    assert result.closed


# ---------------------------------------------------------------------------- time bounds


def test_slowloris_half_a_head_gets_408(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        result = client.read_until_close(FAST_LIMITS.head_timeout_s + 3.0)
    single_error(result.data, 408)
    assert result.closed
    assert time.monotonic() - started < FAST_LIMITS.head_timeout_s + 3.0


def test_slowloris_dribbling_bytes_does_not_extend_the_head_deadline(served: Served) -> None:
    """A byte every 50 ms: the head deadline runs from the first byte, not the last."""
    head = get("/healthz", b"X-Slow: " + b"s" * 200)
    with RawClient(served.port) as client:
        deadline = time.monotonic() + FAST_LIMITS.head_timeout_s + 3.0
        sent = 0
        while sent < len(head) and time.monotonic() < deadline:
            client.send(head[sent:sent + 1])
            sent += 1
            if client.read_for(0.05):
                break
        result = client.read_until_close(3.0)
    assert sent < len(head), "the whole head was accepted at 20 bytes/s"
    single_error(result.data, 408)
    assert result.closed


def test_body_timeout_gets_408(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        result = client.read_until_close(FAST_LIMITS.body_timeout_s + 3.0)
    single_error(result.data, 408)
    assert result.closed


def test_idle_keepalive_connection_is_closed(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(get("/healthz"))
        first = client.read_until(b'"ok"}')
        assert len(status_lines(first)) == 1
        result = client.read_until_close(FAST_LIMITS.keepalive_timeout_s + 3.0)
    assert result.closed
    assert result.data == first  # closed silently: no 408 for an idle connection


def test_connection_with_no_byte_at_all_is_closed(served: Served) -> None:
    with RawClient(served.port) as client:
        result = client.read_until_close(FAST_LIMITS.keepalive_timeout_s + 3.0)
    assert result.closed


# ---------------------------------------------------------------------------- admission


def test_over_max_connections_gets_503_while_existing_streams_finish(
        serve: Callable[..., Served]) -> None:
    limits = FAST_LIMITS.replace(max_connections=2, keepalive_timeout_s=5.0)
    app, _ = make_app(limits)
    served = serve(app, limits)
    stream_request = get("/stream?n=20&delay=0.03", b"Connection: close")
    with RawClient(served.port) as one, RawClient(served.port) as two:
        one.send(stream_request)
        two.send(stream_request)
        one.read_until(b"data: tok0")
        two.read_until(b"data: tok0")
        # Connect only, send nothing: a refused connection is answered at once.
        refused = raw_exchange(served.port, b"", timeout=3.0)
        error = single_error(refused.data, 503)
        assert error["code"] == "overloaded"
        (response,) = parse_responses(refused.data)
        assert response.header(b"retry-after") == str(limits.retry_after_s).encode()
        assert refused.closed
        for client in (one, two):
            result = client.read_until_close(5.0)
            (response,) = parse_responses(result.data)
            assert response.status == 200 and response.complete
            assert [e["data"] for e in sse_events(response.body)] == [
                f"tok{i}" for i in range(20)]
    # Freed slots are reusable.
    wait_for(lambda: served.call(lambda: len(served.server.connections)) == 0)
    assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200


def test_over_buffered_bytes_budget_new_requests_get_503(serve: Callable[..., Served]) -> None:
    limits = FAST_LIMITS.replace(max_buffered_bytes_total=1, write_stall_timeout_s=1.5,
                                 write_high_water_bytes=16 * 1024,
                                 write_low_water_bytes=4 * 1024)
    app, _ = make_app(limits)
    served = serve(app, limits)
    with RawClient(served.port, rcvbuf=4096) as stalled:
        stalled.send(get("/forever"))
        wait_for(lambda: served.call(lambda: served.server.admission.paused_bytes > 0))
        response = httpx.get(f"{served.url}/healthz", timeout=5)
        assert response.status_code == 503
        assert response.headers["retry-after"] == str(limits.retry_after_s)
        assert assert_openai_error(response.content)["code"] == "overloaded"
        # Once the stalled client is cut, the budget is free again.
        wait_for(lambda: served.call(lambda: served.server.admission.paused_bytes) == 0,
                 timeout=5)
    assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200


# ---------------------------------------------------------------------------- routing errors


def test_wrong_method_gets_405_with_allow(served: Served) -> None:
    response = httpx.get(f"{served.url}/echo", timeout=5)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert assert_openai_error(response.content)["code"] == "method_not_allowed"
    response = httpx.post(f"{served.url}/healthz", timeout=5)
    assert response.status_code == 405
    assert [m.strip() for m in response.headers["allow"].split(",")] == ["GET", "HEAD"]
    assert_openai_error(response.content)


def test_unknown_path_gets_404(served: Served) -> None:
    response = httpx.get(f"{served.url}/nope", timeout=5)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert assert_openai_error(response.content)["code"] == "not_found"


def test_error_responses_keep_the_connection_for_request_errors(served: Served) -> None:
    """404/405 are the client's request, not its protocol: the connection stays usable."""
    with RawClient(served.port) as client:
        client.send(get("/nope") + get("/echo") + get("/healthz", b"Connection: close"))
        result = client.read_until_close(3.0)
    responses = parse_responses(result.data)
    assert [r.status for r in responses] == [404, 405, 200]
    for response in responses[:2]:
        assert_openai_error(response.body)


# ---------------------------------------------------------------------------- slow readers


@pytest.fixture
def stall_served(serve: Callable[..., Served]) -> tuple[Served, State]:
    limits = FAST_LIMITS.replace(write_stall_timeout_s=1.5, write_high_water_bytes=16 * 1024,
                                 write_low_water_bytes=4 * 1024, stream_log_bytes=64 * 1024)
    app, state = make_app(limits)
    return serve(app, limits), state


def stalled_connection(served: Served) -> object:
    """The server's connection that is streaming (there is only one in these tests)."""
    conns = [c for c in served.server.connections if getattr(c, "reader", None) is not None]
    return conns[0] if conns else None


def test_client_that_stops_reading_is_bounded_then_cut(
        stall_served: tuple[Served, State]) -> None:
    served, state = stall_served
    limits = served.limits
    with RawClient(served.port, rcvbuf=4096) as client:
        client.send(get("/forever"))  # and never read

        def paused() -> bool:
            conn = stalled_connection(served)
            return (conn is not None and conn.write_paused
                    and conn.reader.entry.owner.state is PAUSED)

        wait_for(lambda: served.call(paused), timeout=3.0)

        def sample() -> tuple[int, int, int, int]:
            conn = stalled_connection(served)
            log = conn.reader.entry.log
            return (log.held_bytes, conn.reader.cursor.backlog_bytes,
                    conn.transport.get_write_buffer_size(), state.produced)

        held, backlog, buffered, produced = served.call(sample)
        assert held <= limits.stream_log_bytes
        # The producer stopped near the high-water mark: not a byte more than one flush.
        assert backlog <= limits.write_high_water_bytes + FLUSH_BYTES + 2048
        assert buffered <= limits.write_high_water_bytes + FLUSH_BYTES + 8192
        time.sleep(0.2)
        held2, backlog2, buffered2, produced2 = served.call(sample)
        assert produced2 == produced, "the source was still pulled while the client stalled"
        assert (held2, backlog2, buffered2) == (held, backlog, buffered)
        # Cut after write_stall_timeout_s; the handler's finally runs.
        assert state.finally_ran.wait(limits.write_stall_timeout_s + 3.0)
        wait_for(lambda: served.call(lambda: len(served.server.connections)) == 0)
        assert served.call(lambda: served.server.admission.paused_bytes) == 0
        result = client.read_until_close(3.0)
    assert result.closed


def test_a_stalled_client_does_not_disturb_another_stream(
        stall_served: tuple[Served, State]) -> None:
    served, state = stall_served
    with RawClient(served.port, rcvbuf=4096) as stalled, \
            httpx.Client(timeout=5) as client:
        stalled.send(get("/forever"))
        assert state.started.wait(3.0)
        with httpx_sse.connect_sse(client, "GET", f"{served.url}/stream?n=300") as events:
            data = [event.data for event in events.iter_sse()]
        assert data == [f"tok{i}" for i in range(300)]
        assert client.get(f"{served.url}/healthz").json() == {"status": "ok"}


def test_a_broken_connection_does_not_disturb_another_stream(served: Served) -> None:
    with httpx.Client(timeout=5) as client, \
            httpx_sse.connect_sse(client, "GET",
                                  f"{served.url}/stream?n=10&delay=0.02") as events:
        iterator = events.iter_sse()
        first = next(iterator).data
        for bad in (b"\x00garbage\r\n\r\n", big_head(10_000), SMUGGLING["cl_and_te"]):
            assert raw_exchange(served.port, bad).closed
        rest = [event.data for event in iterator]
    assert [first, *rest] == [f"tok{i}" for i in range(10)]


# ---------------------------------------------------------------------------- HTTP features


def test_keepalive_two_requests_on_one_connection(served: Served) -> None:
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{served.url}/healthz").json() == {"status": "ok"}
        assert client.post(f"{served.url}/echo", content=b"abc").content == b"abc"
        with client.stream("GET", f"{served.url}/stream?n=3") as response:
            body = response.read()
        assert [e["data"] for e in sse_events(body)] == ["tok0", "tok1", "tok2"]
        assert client.get(f"{served.url}/healthz").status_code == 200
        assert served.call(lambda: len(served.server.connections)) == 1


def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    data = (get("/healthz") + post("/echo", b"first") + get("/stream?n=3")
            + post("/echo", b"second") + get("/nope") + get("/healthz", b"Connection: close"))
    result = raw_exchange(served.port, data)
    assert result.closed
    responses = parse_responses(result.data)
    assert [r.status for r in responses] == [200, 200, 200, 200, 404, 200]
    assert responses[0].json() == {"status": "ok"}
    assert responses[1].body == b"first"
    assert responses[2].framing == "chunked" and responses[2].complete
    assert [e["data"] for e in sse_events(responses[2].body)] == ["tok0", "tok1", "tok2"]
    assert responses[3].body == b"second"
    assert responses[5].header(b"connection") == b"close"


def test_many_pipelined_requests_behind_a_stream(serve: Callable[..., Served]) -> None:
    """Far more pipelined bytes than max_pipelined_bytes behind a slow stream: the server
    stops reading, then answers every request, in order."""
    limits = FAST_LIMITS.replace(max_pipelined_bytes=1024)
    app, _ = make_app(limits)
    served = serve(app, limits)
    count = 300
    data = (get("/stream?n=5&delay=0.05")
            + b"".join(post("/echo", b"%d" % i) for i in range(count))
            + get("/healthz", b"Connection: close"))
    with RawClient(served.port) as client:
        client.send(data)
        result = client.read_until_close(10.0)
    assert result.closed
    responses = parse_responses(result.data)
    assert len(responses) == count + 2
    assert [e["data"] for e in sse_events(responses[0].body)] == [f"tok{i}" for i in range(5)]
    assert [r.body for r in responses[1:-1]] == [b"%d" % i for i in range(count)]
    assert responses[-1].json() == {"status": "ok"}


def test_pipelined_requests_byte_by_byte(served: Served) -> None:
    data = get("/healthz") + post("/echo", b"x" * 100) + get("/healthz", b"Connection: close")
    with RawClient(served.port) as client:
        for i in range(len(data)):
            client.send(data[i:i + 1])
        result = client.read_until_close(3.0)
    assert [r.status for r in parse_responses(result.data)] == [200, 200, 200]


def test_head_request(served: Served) -> None:
    data = (b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
            + b"HEAD /stream?n=3 HTTP/1.1\r\nHost: t\r\n\r\n"
            + get("/healthz", b"Connection: close"))
    result = raw_exchange(served.port, data)
    responses = parse_responses(result.data, head_requests=(0, 1))
    assert [r.status for r in responses] == [200, 200, 200]
    head_plain, head_stream, plain = responses
    assert head_plain.header(b"content-length") == plain.header(b"content-length")
    assert head_plain.body == b""
    assert head_stream.header(b"content-type").startswith(b"text/event-stream")
    assert plain.json() == {"status": "ok"}


def test_http10_gets_a_close_delimited_sse_body(served: Served) -> None:
    result = raw_exchange(served.port, get("/stream?n=3", version=b"1.0"))
    assert result.closed
    (response,) = parse_responses(result.data)
    assert response.status == 200
    assert response.header(b"transfer-encoding") is None
    assert response.header(b"content-length") is None
    assert response.framing == "close"
    assert response.body.startswith(b"id: ")
    assert [e["data"] for e in sse_events(response.body)] == ["tok0", "tok1", "tok2"]
    assert b"0\r\n\r\n" not in response.body


def test_http10_plain_response(served: Served) -> None:
    result = raw_exchange(served.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert result.closed
    (response,) = parse_responses(result.data)
    assert response.status == 200 and response.json() == {"status": "ok"}


def test_expect_100_continue(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                    b"Content-Length: 5\r\nConnection: close\r\n\r\n")
        interim = client.read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        client.send(b"hello")
        result = client.read_until_close(3.0)
    responses = parse_responses(result.data)
    assert [r.status for r in responses] == [100, 200]
    assert responses[1].body == b"hello"


def test_expect_100_continue_with_a_body_too_large(served: Served) -> None:
    result = raw_exchange(served.port, b"POST /echo HTTP/1.1\r\nHost: t\r\n"
                          b"Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n")
    single_error(result.data, 413)  # and no 100 before it
    assert result.closed


# ---------------------------------------------------------------------------- SSE


def test_sse_headers_and_ids(served: Served) -> None:
    with httpx.Client(timeout=5) as client, \
            httpx_sse.connect_sse(client, "GET", f"{served.url}/stream?n=5") as events:
        response = events.response
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["transfer-encoding"] == "chunked"
        stream_id = response.headers["x-stream-id"]
        epoch = response.headers["x-stream-epoch"]
        received = list(events.iter_sse())
    assert [e.data for e in received] == [f"tok{i}" for i in range(5)]
    # <stream id>-<epoch>-<sequence number>, from 1 (README, "curl").
    assert [e.id for e in received] == [f"{stream_id}-{epoch}-{seq}" for seq in range(1, 6)]


def test_heartbeats_while_waiting_for_the_first_token(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(get("/stream?n=2&first_delay=0.6", b"Connection: close"))
        result = client.read_until_close(5.0)
    (response,) = parse_responses(result.data)
    assert response.status == 200 and response.complete
    before_first = response.body.split(b"data: tok0")[0]
    assert before_first.count(b":\n") >= 2, response.chunks
    # Heartbeats are comments: an SSE parser sees only the two events.
    assert [e["data"] for e in sse_events(response.body)] == ["tok0", "tok1"]
    # Each heartbeat is its own chunk, with nothing else in it.
    assert b":\n" in response.chunks


def test_multiline_items_become_one_data_line_per_line(serve: Callable[..., Served]) -> None:
    app = App(limits=FAST_LIMITS)

    @app.stream("GET", "/lines")
    async def lines(request: Request) -> AsyncIterator[object]:
        yield "one\ntwo\r\nthree"
        yield {"k": "v\nw"}
        yield b"plain"

    served = serve(app, FAST_LIMITS)
    with httpx.Client(timeout=5) as client, \
            httpx_sse.connect_sse(client, "GET", f"{served.url}/lines") as events:
        data = [e.data for e in events.iter_sse()]
    assert data == ["one\ntwo\nthree", '{"k":"v\\nw"}', "plain"]


def test_fast_reader_with_a_small_stream_log_gets_every_event(
        serve: Callable[..., Served]) -> None:
    """An unpaced source and a client that reads at once; the log is smaller than what the
    producer appends before its first flush."""
    limits = FAST_LIMITS.replace(stream_log_bytes=8 * 1024)
    app, _ = make_app(limits)
    served = serve(app, limits)
    with httpx.Client(timeout=5) as client, httpx_sse.connect_sse(
            client, "GET", f"{served.url}/sized?n=100&size=1000") as events:
        data = [e.data[:6] for e in events.iter_sse()]
    assert data == [f"{i:06d}" for i in range(100)]


def test_slow_origin_reader_with_a_small_stream_log_gets_every_event(
        serve: Callable[..., Served]) -> None:
    """The origin reader is carried by backpressure, not by the replay log: a reader that
    is slow (but reads) must get the whole stream even when the log is small."""
    limits = FAST_LIMITS.replace(stream_log_bytes=8 * 1024, write_stall_timeout_s=5.0)
    app, _ = make_app(limits)
    served = serve(app, limits)
    count = 300
    with RawClient(served.port, rcvbuf=4096) as client:
        client.send(get(f"/sized?n={count}&size=1000", b"Connection: close"))
        time.sleep(0.3)  # let the server fill every buffer on the way
        result = client.read_until_close(5.0)
    (response,) = parse_responses(result.data)
    assert response.complete
    data = [e["data"] for e in sse_events(response.body)]
    assert [d[:6] for d in data] == [f"{i:06d}" for i in range(count)], data[-1][:200]


def test_stream_handler_refusing_its_input_says_why(served: Served) -> None:
    """A stream handler that raises RequestError (invalid JSON) before its first item: the
    client learns the RequestError's own message, type and code -- as a 4xx if the head is
    not sent yet, or at least in the error event -- not a generic server error."""
    response = httpx.post(f"{served.url}/json-stream", content=b"{not json", timeout=5)
    if response.status_code == 200:
        events = sse_events(response.content)
        assert events, response.content
        error = orjson.loads(events[-1]["data"])["error"]
    else:
        assert response.status_code == 400
        error = assert_openai_error(response.content)
    assert error["type"] == "invalid_request_error", error
    assert error["code"] == "invalid_json", error


# ---------------------------------------------------------------------------- disconnects


def test_client_disconnect_runs_the_handler_finally_promptly(
        served: Served, state: State) -> None:
    with httpx.Client(timeout=5) as client, \
            client.stream("GET", f"{served.url}/stream?n=1000&delay=0.05") as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:")) == "data: tok0"
    # The response and the client are closed: the connection with them.
    assert state.finally_ran.wait(1.0), "the handler's finally did not run after disconnect"
    assert state.produced < 1000
    wait_for(lambda: served.call(lambda: len(served.server.connections)) == 0)


def test_raw_disconnect_while_waiting_for_the_first_token(
        served: Served, state: State) -> None:
    with RawClient(served.port) as client:
        client.send(get("/stream?n=5&first_delay=30"))
        client.read_until(b"\r\n\r\n")
        assert state.started.wait(2.0)
    assert state.finally_ran.wait(1.0)
    assert state.produced == 0


def test_half_close_after_the_request_mid_stream(served: Served, state: State) -> None:
    """A client that shuts down its write side mid-stream is treated as gone."""
    import socket as socket_module

    with RawClient(served.port) as client:
        client.send(get("/stream?n=1000&delay=0.05"))
        client.read_until(b"data: tok0")
        client.sock.shutdown(socket_module.SHUT_WR)
        assert state.finally_ran.wait(1.0)


# ---------------------------------------------------------------------------- failures


def test_handler_raising_mid_stream_sends_an_error_event_and_ends_cleanly(
        served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(get("/fail"))
        data = client.read_until(b"0\r\n\r\n")
        (response,) = parse_responses(data)
        assert response.status == 200
        assert response.framing == "chunked" and response.complete
        events = sse_events(response.body)
        assert [e["data"] for e in events[:2]] == ["tok0", "tok1"]
        assert len(events) == 3
        error = orjson.loads(events[2]["data"])["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert "RuntimeError" in error["message"]
        assert "boom" not in error["message"], "an exception's text may hold secrets"
        # The stream ended cleanly: the same connection serves the next request.
        client.send(get("/healthz", b"Connection: close"))
        result = client.read_until_close(3.0)
    responses = parse_responses(result.data)
    assert [r.status for r in responses] == [200, 200]
    assert responses[1].json() == {"status": "ok"}


def test_plain_handler_raising_gets_500_json(serve: Callable[..., Served]) -> None:
    app = App(limits=FAST_LIMITS)

    @app.route("GET", "/boom")
    async def boom(request: Request) -> dict[str, str]:
        raise ValueError("secret")

    served = serve(app, FAST_LIMITS)
    with httpx.Client(timeout=5) as client:
        response = client.get(f"{served.url}/boom")
        assert response.status_code == 500
        error = assert_openai_error(response.content)
        assert "secret" not in error["message"]
        assert client.get(f"{served.url}/boom").status_code == 500  # still serving


def test_invalid_json_in_a_handler_is_a_400(serve: Callable[..., Served]) -> None:
    app = App(limits=FAST_LIMITS)

    @app.route("POST", "/json")
    async def json_handler(request: Request) -> object:
        return request.json()

    served = serve(app, FAST_LIMITS)
    response = httpx.post(f"{served.url}/json", content=b"{nope", timeout=5)
    assert response.status_code == 400
    assert assert_openai_error(response.content)["code"] == "invalid_json"
    response = httpx.post(f"{served.url}/json", content=b'{"a": [1]}', timeout=5)
    assert response.json() == {"a": [1]}


# ---------------------------------------------------------------------------- shutdown


def test_close_drains_an_in_flight_stream(served: Served, state: State) -> None:
    with httpx.Client(timeout=5) as client, httpx_sse.connect_sse(
            client, "GET", f"{served.url}/stream?n=10&delay=0.03") as events:
        iterator = events.iter_sse()
        first = next(iterator).data
        closing = asyncio.run_coroutine_threadsafe(served.server.close(5.0), served.loop)
        rest = [e.data for e in iterator]
        closing.result(5.0)
    assert [first, *rest] == [f"tok{i}" for i in range(10)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{served.url}/healthz", timeout=2)


def test_heartbeats_go_on_while_draining(served: Served) -> None:
    """A stream still waiting for its first token during a drain keeps its heartbeats
    (a proxy would otherwise cut it before it can finish)."""
    with RawClient(served.port) as client:
        client.send(get("/stream?n=2&first_delay=0.8"))
        client.read_until(b"\r\n\r\n")
        closing = asyncio.run_coroutine_threadsafe(served.server.close(5.0), served.loop)
        result = client.read_until_close(5.0)
        closing.result(5.0)
    (response,) = parse_responses(result.data)
    assert response.complete
    assert [e["data"] for e in sse_events(response.body)] == ["tok0", "tok1"]
    before_first = response.body.split(b"data: tok0")[0]
    assert before_first.count(b":\n") >= 2, response.chunks


def test_close_cuts_streams_after_the_drain_timeout(served: Served, state: State) -> None:
    with httpx.Client(timeout=5) as client, client.stream(
            "GET", f"{served.url}/stream?n=1000&delay=0.05") as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data:")) == "data: tok0"
        started = time.monotonic()
        served.run(served.server.close(0.3))
        assert time.monotonic() - started < 3.0
        assert state.finally_ran.wait(1.0)
        # The stream ends with an error event saying why (and where to resume), not
        # with a body cut mid-way that a client could take for a network fault.
        rest = [line for line in lines if line.startswith("data:")]
        assert rest and '"code":"server_shutdown"' in rest[-1], rest[-3:]
    assert state.produced < 1000


def test_close_closes_idle_keepalive_connections_at_once(served: Served) -> None:
    with RawClient(served.port) as client:
        client.send(get("/healthz"))
        client.read_until(b'"ok"}')
        started = time.monotonic()
        served.run(served.server.close(5.0))
        assert time.monotonic() - started < 2.0
        assert client.read_until_close(2.0).closed


# ---------------------------------------------------------------------------- no globals


def test_two_apps_in_one_process(serve: Callable[..., Served]) -> None:
    first, second = App(limits=FAST_LIMITS, name="a"), App(limits=FAST_LIMITS, name="b")

    @first.route("GET", "/who")
    async def who_a(request: Request) -> str:
        return "a"

    @second.route("GET", "/who")
    async def who_b(request: Request) -> str:
        return "b"

    @second.stream("GET", "/only-b")
    async def only_b(request: Request) -> AsyncIterator[str]:
        yield "b"

    server_a = serve(first, FAST_LIMITS)
    server_b = serve(second, FAST_LIMITS.replace(max_body_bytes=10))
    assert server_a.port != server_b.port
    assert httpx.get(f"{server_a.url}/who", timeout=5).text == "a"
    assert httpx.get(f"{server_b.url}/who", timeout=5).text == "b"
    assert httpx.get(f"{server_a.url}/only-b", timeout=5).status_code == 404
    assert "data: b" in httpx.get(f"{server_b.url}/only-b", timeout=5).text
    # Each server has its own limits.
    assert httpx.post(f"{server_b.url}/who", content=b"x" * 11, timeout=5).status_code == 413
    assert httpx.post(f"{server_a.url}/who", content=b"x" * 11, timeout=5).status_code == 405


def test_two_apps_on_one_loop(serve: Callable[..., Served]) -> None:
    """Both servers on the same event loop (as in an embedding service)."""
    first, _ = make_app(FAST_LIMITS)
    served = serve(first, FAST_LIMITS)
    second = App(limits=FAST_LIMITS)

    @second.route("GET", "/two")
    async def two(request: Request) -> str:
        return "two"

    server_two = served.run(streamcore.start(second, "127.0.0.1", 0, limits=FAST_LIMITS))
    try:
        assert httpx.get(f"http://127.0.0.1:{server_two.port}/two", timeout=5).text == "two"
        assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{server_two.port}/healthz",
                         timeout=5).status_code == 404
    finally:
        served.run(server_two.close(0.5))


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    before = threading.active_count()
    yield
    wait_for(lambda: threading.active_count() <= before, timeout=5)
