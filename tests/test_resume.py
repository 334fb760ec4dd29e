"""Resume with Last-Event-ID, judged over real sockets by httpx + httpx-sse.

Every SSE event carries ``id: <stream id>-<seq>`` (seq from 1) and the response the
``X-Stream-Id`` header.  A stream request carrying ``Last-Event-ID`` (the same stream route,
or ``GET /v1/streams/{id}`` on the gateway) reads the existing stream from seq + 1: what it
missed from the log, then the live tail, then the route's end marker.  These tests cut
clients off mid-stream and check that what they get over all their connections is the
whole stream, exactly once, in order; and they check the bounds: grace, retention, the
retention budget, the log ring (fell behind) and the producer's memory during grace.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx_sse
import orjson
import pytest
from conftest import FAST_LIMITS, Served, assert_openai_error, wait_for

import streamcore
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.proto import pipe
from streamcore.proto.cursor import parse_cursor
from streamcore.sources.synthetic import SyntheticModel

MESSAGES = [{"role": "user", "content": "please explain in plain words how a server can "
             "resume a token stream for a client that lost its connection half way"}]
DONE = "[DONE]"


# ------------------------------------------------------------------------------- helpers


@dataclass
class Got:
    """One streamed response as a client saw it."""

    status: int
    stream_id: str | None
    events: list[httpx_sse.ServerSentEvent] = field(default_factory=list)
    body: bytes = b""
    #: Whether the client stopped reading (and dropped the connection) before the end.
    cut: bool = False


def read_stream(client: httpx.Client, method: str, url: str, *, json: Any = None,
                last_event_id: str | None = None, stop_after: int | None = None) -> Got:
    """Read a stream; with ``stop_after``, drop the connection after that many events
    (httpx closes a connection whose response was closed before its end)."""
    # As bytes: a test may send a non-ASCII id (as UTF-8, as a browser would).
    headers = ({"Last-Event-ID": last_event_id.encode()} if last_event_id is not None
               else {})
    with httpx_sse.connect_sse(client, method, url, json=json,
                               headers=headers) as source:  # type: ignore[arg-type]
        response = source.response
        if response.status_code != 200:
            response.read()
            return Got(response.status_code, None, body=response.content)
        assert response.headers["content-type"].startswith("text/event-stream")
        got = Got(200, response.headers.get("x-stream-id"))
        for event in source.iter_sse():
            got.events.append(event)
            if stop_after is not None and len(got.events) >= stop_after:
                got.cut = True
                break
        return got


def seq_of(event: httpx_sse.ServerSentEvent, stream_id: str) -> int:
    position = parse_cursor(event.id)
    assert position is not None, event.id
    assert position.stream == stream_id, f"event id {event.id!r} is not of stream {stream_id!r}"
    return position.seq


def error_of(event: httpx_sse.ServerSentEvent) -> dict[str, Any] | None:
    if not event.data.startswith("{"):
        return None
    doc = orjson.loads(event.data)
    return assert_openai_error(event.data.encode()) if "error" in doc else None


def check_whole(events: list[httpx_sse.ServerSentEvent], stream_id: str, *,
                end: str | None = DONE) -> list[httpx_sse.ServerSentEvent]:
    """``events`` (gathered over one or more connections) are one whole stream: seqs
    1..n, each once and in order, no error, and the end marker once, last.  Returns the
    data events."""
    if end is not None:
        markers = [i for i, e in enumerate(events) if e.data == end]
        assert markers == [len(events) - 1], f"{end!r} must come once, last: {markers}"
        events = events[:-1]
    seqs = [seq_of(e, stream_id) for e in events]
    assert seqs == list(range(1, len(events) + 1)), f"not contiguous from 1: {seqs}"
    errors = [error_of(e) for e in events if error_of(e) is not None]
    assert not errors, errors
    return events


def content_of(events: list[httpx_sse.ServerSentEvent]) -> str:
    text = []
    for event in events:
        if event.data == DONE:
            continue
        for choice in orjson.loads(event.data)["choices"]:
            text.append(choice["delta"].get("content") or "")
    return "".join(text)


def completion(client: httpx.Client, url: str, body: dict[str, Any]) -> str:
    """The same request, not streamed: the synthetic model's text is deterministic."""
    response = client.post(f"{url}/v1/chat/completions", json={**body, "stream": False})
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    assert content
    return content


def on_loop(served: Served, fn: Callable[[streamcore.Server], Any]) -> Any:
    """``fn(server)`` on the server's loop (its objects are not thread-safe)."""
    return served.call(lambda: fn(served.server))


def stream_state(served: Served, stream_id: str) -> dict[str, Any] | None:
    """What the server holds of a stream: None if it no longer knows it."""

    def look(server: streamcore.Server) -> dict[str, Any] | None:
        entry = server.store.find(stream_id)
        if entry is None:
            return None
        return {"readers": len(entry.readers), "finished": entry.log.closed,
                "next_seq": entry.log.next_seq, "first_seq": entry.log.first_seq,
                "held_bytes": entry.log.held_bytes,
                "live": any(e.id == stream_id for e in server.store.live())}

    result: dict[str, Any] | None = on_loop(served, look)
    return result


def wait_no_reader(served: Served, stream_id: str) -> None:
    """Until the server has seen the dropped connection go (the stream has no reader)."""
    wait_for(lambda: (stream_state(served, stream_id) or {"readers": 0})["readers"] == 0)


def gateway(serve: Callable[..., Served], limits: Limits, *, tokens_per_s: float = 0.0,
            default_tokens: int = 64) -> Served:
    model = SyntheticModel(tokens_per_s=tokens_per_s, default_tokens=default_tokens)
    return serve(build_app([model], limits), limits)


def chat_body(max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "synthetic", "messages": MESSAGES, "stream": True,
            "max_tokens": max_tokens, **extra}


class Ticks:
    """A custom App with ``GET /ticks``: an async generator yielding ``tick <i>`` (padded to
    ``size`` bytes) every ``interval`` seconds, counting what it produced and when its
    ``finally`` ran."""

    def __init__(self, n: int, interval: float, size: int = 0) -> None:
        self.n = n
        self.interval = interval
        self.size = size
        self.produced = 0
        self.started = 0
        self.closed = threading.Event()
        self.closed_at: float | None = None

    def item(self, i: int) -> str:
        return f"tick {i}".ljust(self.size, ".")

    def app(self, limits: Limits) -> streamcore.App:
        app = streamcore.App(limits=limits)

        @app.stream("GET", "/ticks")
        async def ticks(request: streamcore.Request) -> Any:
            self.started += 1
            try:
                for i in range(1, self.n + 1):
                    self.produced = i
                    yield self.item(i)
                    await asyncio.sleep(self.interval)
            finally:
                self.closed_at = time.monotonic()
                self.closed.set()

        return app


async def _cancel_live_streams(server: streamcore.Server) -> None:
    """Cancel the streams still running (in a grace, say) and wait for their producers:
    a task left pending on a loop that is then closed is finalised by the garbage
    collector at some later point of the test session, running the handler's code there."""
    tasks = []
    for entry in server.store.live():
        stream = entry.owner
        assert stream is not None
        task = getattr(getattr(stream, "source", None), "task", None)
        stream.cancel()
        if task is not None:
            tasks.append(task)
    if tasks:
        await asyncio.wait(tasks, timeout=2)


@pytest.fixture
def serve(serve: Callable[..., Served]) -> Iterator[Callable[..., Served]]:
    """conftest's ``serve``, that also cancels what still streams before the teardown."""
    started: list[Served] = []

    def start(app: streamcore.App, limits: Limits | None = None) -> Served:
        served = serve(app, limits)
        started.append(served)
        return served

    yield start
    for served in started:
        served.run(_cancel_live_streams(served.server))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


# --------------------------------------------------------------- disconnect, then resume


@pytest.mark.parametrize("how", ["GET /v1/streams/{id}", "re-POST"])
def test_resume_mid_stream_gets_the_whole_stream_exactly_once(
        serve: Callable[..., Served], client: httpx.Client, how: str) -> None:
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=2.0)
    served = gateway(serve, limits, tokens_per_s=80.0)
    body = chat_body(60)
    url = f"{served.url}/v1/chat/completions"

    first = read_stream(client, "POST", url, json=body, stop_after=8)
    assert first.cut and first.stream_id
    sid = first.stream_id
    last_id = first.events[-1].id
    assert seq_of(first.events[-1], sid) == 8
    wait_no_reader(served, sid)
    time.sleep(0.15)  # the stream goes on without a reader (grace)
    state = stream_state(served, sid)
    assert state is not None and state["readers"] == 0
    assert not state["finished"], "too slow to test the live tail: the stream already ended"
    assert state["next_seq"] > 9, "nothing was produced during the grace"

    if how == "re-POST":
        second = read_stream(client, "POST", url, json=body, last_event_id=last_id)
    else:
        second = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}",
                             last_event_id=last_id)
    assert second.status == 200, second.body
    assert second.stream_id == sid
    assert seq_of(second.events[0], sid) == 9, "the resume starts right after Last-Event-ID"

    events = check_whole(first.events + second.events, sid)
    assert len(events) == 1 + 60 + 1  # role, 60 tokens, finish
    assert content_of(events) == completion(client, served.url, body)

    # The same stream read again from the start (retained, finished): the same events.
    again = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}")
    assert [(e.id, e.data) for e in again.events] == \
        [(e.id, e.data) for e in first.events + second.events]


def test_resume_after_the_stream_finished_and_after_retention(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=2.0,
                                 resume_retention_s=0.6)
    served = gateway(serve, limits, tokens_per_s=400.0)
    body = chat_body(40)
    url = f"{served.url}/v1/chat/completions"

    first = read_stream(client, "POST", url, json=body, stop_after=5)
    sid = first.stream_id
    assert sid
    wait_for(lambda: (stream_state(served, sid) or {}).get("finished"))  # ran to its end
    state = stream_state(served, sid)
    assert state is not None and not state["live"], "a finished stream is only retained"

    rest = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}",
                       last_event_id=f"{sid}-5")
    assert rest.status == 200, rest.body
    events = check_whole(first.events + rest.events, sid)
    assert content_of(events) == completion(client, served.url, body)
    # At the end of a stream that ended: 204, which tells an EventSource to stop
    # reconnecting (WHATWG HTML 9.2.3), on either path.
    for method, path, payload in (("POST", "/v1/chat/completions", body),
                                  ("GET", f"/v1/streams/{sid}", None)):
        tail = read_stream(client, method, f"{served.url}{path}", json=payload,
                           last_event_id=events[-1].id)
        assert tail.status == 204 and not tail.events, (method, tail)

    time.sleep(0.8)  # past resume_retention_s
    for method, path, payload in (("GET", f"/v1/streams/{sid}", None),
                                  ("POST", "/v1/chat/completions", body)):
        gone = read_stream(client, method, f"{served.url}{path}", json=payload,
                           last_event_id=f"{sid}-5")
        assert gone.status == 404, (method, gone.status, gone.events)
        assert assert_openai_error(gone.body)["code"] == "stream_not_found"
    assert stream_state(served, sid) is None


def test_unknown_stream_is_404(serve: Callable[..., Served], client: httpx.Client) -> None:
    served = gateway(serve, FAST_LIMITS)
    got = read_stream(client, "GET", f"{served.url}/v1/streams/0123456789abcdef")
    assert got.status == 404
    assert assert_openai_error(got.body)["code"] == "stream_not_found"
    got = read_stream(client, "POST", f"{served.url}/v1/chat/completions",
                      json=chat_body(3), last_event_id="0123456789abcdef-3")
    assert got.status == 404
    assert assert_openai_error(got.body)["code"] == "stream_not_found"
    # A Last-Event-ID that is no event id of ours is a 400 naming it (a silent replay
    # from the start would repeat the answer), whatever its digits or length.
    for junk in ("3", "abc", "abc-", "-3", "abc-\u00b2", "abc-" + "9" * 2000, "a b-1"):
        got = read_stream(client, "POST", f"{served.url}/v1/chat/completions",
                          json=chat_body(3), last_event_id=junk)
        assert got.status == 400, (junk[:40], got.status, got.body[:200])
        error = assert_openai_error(got.body)
        assert error["code"] == "invalid_last_event_id" and error["param"] == "Last-Event-ID"
        assert len(got.body) < 1000  # the junk is not echoed whole
    # One that names another stream than the path's: 400 too.
    fresh = read_stream(client, "POST", f"{served.url}/v1/chat/completions", json=chat_body(3))
    other = read_stream(client, "GET", f"{served.url}/v1/streams/{fresh.stream_id}",
                        last_event_id="0123456789abcdef-2")
    assert other.status == 400
    assert assert_openai_error(other.body)["code"] == "invalid_last_event_id"


# ---------------------------------------------------------------- grace 0, grace expiry


def test_no_grace_cancels_at_once_and_resume_says_cancelled(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    ticks = Ticks(n=500, interval=0.01)
    limits = FAST_LIMITS.replace(resume_grace_s=0.0)
    served = serve(ticks.app(limits), limits)

    first = read_stream(client, "GET", f"{served.url}/ticks", stop_after=5)
    sid = first.stream_id
    assert sid
    cut_at = time.monotonic()
    assert ticks.closed.wait(2.0), "the handler's finally did not run after the client left"
    assert ticks.closed_at is not None and ticks.closed_at - cut_at < 0.5
    produced = ticks.produced
    time.sleep(0.1)
    assert ticks.produced == produced, "the generation went on after the cancel"
    assert produced < 50

    rest = read_stream(client, "GET", f"{served.url}/ticks", last_event_id=f"{sid}-5")
    assert rest.status == 200 and rest.stream_id == sid
    *items, cancelled = rest.events
    error = error_of(cancelled)
    assert error is not None and error["code"] == "cancelled", cancelled.data
    assert error["type"] == "stream_error"
    everything = check_whole(first.events + items, sid, end=None)
    assert [e.data for e in everything] == [ticks.item(i) for i in range(1, len(everything) + 1)]
    assert len(everything) <= produced
    assert ticks.started == 1, "a resume must not start the handler again"


def test_grace_expiry_cancels_and_resume_says_cancelled(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    ticks = Ticks(n=1000, interval=0.01)
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=0.4)
    served = serve(ticks.app(limits), limits)

    first = read_stream(client, "GET", f"{served.url}/ticks", stop_after=5)
    sid = first.stream_id
    assert sid
    wait_no_reader(served, sid)
    left_at = time.monotonic()
    time.sleep(0.2)
    assert not ticks.closed.is_set(), "cancelled before the grace was over"
    assert ticks.closed.wait(2.0), "not cancelled after the grace"
    assert ticks.closed_at is not None and 0.2 < ticks.closed_at - left_at < 1.0
    assert ticks.produced > 10, "the stream did not go on during the grace"

    rest = read_stream(client, "GET", f"{served.url}/ticks", last_event_id=f"{sid}-5")
    *items, cancelled = rest.events
    error = error_of(cancelled)
    assert error is not None and error["code"] == "cancelled", cancelled.data
    everything = check_whole(first.events + items, sid, end=None)
    assert [e.data for e in everything] == [ticks.item(i) for i in range(1, len(everything) + 1)]
    assert len(everything) == ticks.produced


# -------------------------------------------------------------------------- fell behind


def test_resume_from_a_seq_the_log_no_longer_holds_fell_behind(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    limits = FAST_LIMITS.replace(stream_log_bytes=4096)
    served = gateway(serve, limits, default_tokens=1000)
    body = chat_body(300)
    first = read_stream(client, "POST", f"{served.url}/v1/chat/completions", json=body)
    sid = first.stream_id
    assert sid
    # A reader that keeps up never falls off a small log.
    events = check_whole(first.events, sid)
    assert len(events) == 302
    assert content_of(events) == completion(client, served.url, body)
    state = stream_state(served, sid)
    assert state is not None and state["first_seq"] > 2, f"the log did not wrap: {state}"

    # Exact replay only (the default is a snapshot: tests/test_resume_any.py).
    for last_event_id in (None, f"{sid}-1"):  # from seq 1, from seq 2
        got = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}?replay=exact",
                          last_event_id=last_event_id)
        assert got.status == 200
        data = [e.data for e in got.events]
        # The error event ends it: never a [DONE] after a failure (a reader that stops
        # at [DONE] would take the truncated answer for a whole one).
        assert len(data) == 1, data
        error = error_of(got.events[0])
        assert error is not None and error["code"] == "fell_behind", data[0]

    # From a seq the log still holds: the rest, exactly.
    from_seq = state["first_seq"] + 1
    got = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}",
                      last_event_id=f"{sid}-{from_seq - 1}")
    assert [(e.id, e.data) for e in got.events[:-1]] == \
        [(e.id, e.data) for e in first.events[from_seq - 1:-1]]
    assert got.events[-1].data == DONE


# ------------------------------------------------------------------------- two readers


def test_two_readers_at_once_both_get_every_event_in_order(
        serve: Callable[..., Served]) -> None:
    served = gateway(serve, FAST_LIMITS, tokens_per_s=100.0)
    body = chat_body(40)

    async def main() -> tuple[list[Any], list[Any], list[Any], bool]:
        async with httpx.AsyncClient(timeout=10) as aclient:
            origin: list[httpx_sse.ServerSentEvent] = []
            sid_known: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            async def read_origin() -> None:
                async with httpx_sse.aconnect_sse(
                        aclient, "POST", f"{served.url}/v1/chat/completions",
                        json=body) as source:
                    assert source.response.status_code == 200
                    async for event in source.aiter_sse():
                        origin.append(event)
                        if len(origin) == 3:
                            sid_known.set_result(source.response.headers["x-stream-id"])

            async def read_by_id(last_event_id: str | None) -> list[Any]:
                sid = await sid_known
                headers = {"Last-Event-ID": f"{sid}-{last_event_id}"} if last_event_id else {}
                async with httpx_sse.aconnect_sse(
                        aclient, "GET", f"{served.url}/v1/streams/{sid}",
                        headers=headers) as source:
                    assert source.response.status_code == 200
                    return [event async for event in source.aiter_sse()]

            task = asyncio.ensure_future(read_origin())
            await sid_known
            origin_running = not any(e.data == DONE for e in origin)
            second, third = await asyncio.gather(read_by_id(None), read_by_id("2"))
            await task
            return origin, second, third, origin_running

    origin, second, third, origin_running = asyncio.run(main())
    assert origin_running, "the second reader came after the end: no concurrency tested"
    sid = origin[0].id.partition("-")[0]
    events = check_whole(origin, sid)
    assert len(events) == 42
    pairs = [(e.id, e.data) for e in origin]
    assert [(e.id, e.data) for e in second] == pairs
    assert [(e.id, e.data) for e in third] == pairs[2:]


# ------------------------------------------------------------------------------ budget


def test_retention_budget_evicts_the_oldest_finished_streams(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    body = chat_body(20)
    # Measure what one such stream's log holds (the same prompt: the same sizes).
    probe = gateway(serve, FAST_LIMITS)
    events = read_stream(client, "POST", f"{probe.url}/v1/chat/completions", json=body).events
    # (each frame counted with its overhead: what holds it in memory)
    held = sum(len(e.data) + pipe.FRAME_OVERHEAD_BYTES for e in events if e.data != DONE)
    assert held > 1000

    limits = FAST_LIMITS.replace(resume_budget_bytes=int(held * 1.5))
    served = gateway(serve, limits)
    sids = []
    for _ in range(3):
        got = read_stream(client, "POST", f"{served.url}/v1/chat/completions", json=body)
        assert got.stream_id
        check_whole(got.events, got.stream_id)
        sids.append(got.stream_id)
        if len(sids) == 1:
            state = stream_state(served, sids[0])
            assert state is not None and state["held_bytes"] == held

    *old, newest = sids
    for sid in old:
        got = read_stream(client, "GET", f"{served.url}/v1/streams/{sid}")
        assert got.status == 404, f"stream {sid} should have been evicted"
        assert assert_openai_error(got.body)["code"] == "stream_not_found"
    got = read_stream(client, "GET", f"{served.url}/v1/streams/{newest}")
    assert got.status == 200
    assert content_of(check_whole(got.events, newest)) == completion(client, served.url, body)


# ------------------------------------------------------------------------- grace bound


def test_grace_without_reader_produces_at_most_half_the_log(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """Nobody reconnects during a long grace: the producer stops once half the log is
    filled (memory stays bounded), and a late resume still gets everything once."""
    log_bytes, size = 8192, 100
    ticks = Ticks(n=120, interval=0.005, size=size)
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=30.0,
                                 stream_log_bytes=log_bytes)
    served = serve(ticks.app(limits), limits)

    first = read_stream(client, "GET", f"{served.url}/ticks", stop_after=5)
    sid = first.stream_id
    assert sid
    wait_no_reader(served, sid)
    at_leave = ticks.produced
    # Half the log, counted from the start or from where the reader left: either way at
    # most this many items (the last one crosses the half; each counts its overhead too).
    cost = size + pipe.FRAME_OVERHEAD_BYTES
    bound = at_leave + log_bytes // 2 // cost + 1
    wait_for(lambda: ticks.produced >= log_bytes // 2 // cost)
    time.sleep(0.4)  # unbounded, it would produce ~70 more items in this time
    assert ticks.produced <= bound, f"{ticks.produced} items produced without a reader"
    state = stream_state(served, sid)
    assert state is not None and not state["finished"]
    assert state["held_bytes"] <= log_bytes, "the log evicted frames nobody read"
    assert state["first_seq"] == 1
    assert not ticks.closed.is_set()

    rest = read_stream(client, "GET", f"{served.url}/ticks", last_event_id=f"{sid}-5")
    events = check_whole(first.events + rest.events, sid, end=None)
    assert [e.data for e in events] == [ticks.item(i) for i in range(1, ticks.n + 1)]


def test_grace_goes_on_after_a_reader_left_a_well_filled_log(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """Limits.resume_grace_s: "After its last client left, a stream goes on this long
    (paused once half its log is unread)".  A client that read more than half the log
    before it left: what it read is not unread, so the stream must still go on."""
    log_bytes, size = 8192, 100
    ticks = Ticks(n=200, interval=0.005, size=size)
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=30.0,
                                 stream_log_bytes=log_bytes)
    served = serve(ticks.app(limits), limits)

    read = 60  # 6000 bytes read: more than half the log
    first = read_stream(client, "GET", f"{served.url}/ticks", stop_after=read)
    sid = first.stream_id
    assert sid
    wait_no_reader(served, sid)
    at_leave = ticks.produced
    time.sleep(0.4)  # ~80 items' time: room for ~40 unread items in half the log
    produced_in_grace = ticks.produced - at_leave
    assert produced_in_grace >= 20, (
        f"only {produced_in_grace} items produced during the grace after the reader left "
        f"at item {read}: Stream._may_produce counts the log's held bytes (read ones "
        "included), not the unread ones")

    rest = read_stream(client, "GET", f"{served.url}/ticks", last_event_id=f"{sid}-{read}")
    events = check_whole(first.events + rest.events, sid, end=None)
    assert [e.data for e in events] == [ticks.item(i) for i in range(1, ticks.n + 1)]


def test_server_close_cancels_a_stream_in_grace(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """A stream in its grace has no connection, so the drain does not see it; once
    ``Server.close()`` has returned, its generation must not go on (nobody can resume it
    any more) and its handler's ``finally`` must have run."""
    ticks = Ticks(n=10_000, interval=0.01)
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=30.0)
    served = serve(ticks.app(limits), limits)
    first = read_stream(client, "GET", f"{served.url}/ticks", stop_after=3)
    assert first.stream_id
    wait_no_reader(served, first.stream_id)
    served.run(served.server.close(0.5))
    assert ticks.closed.wait(1.0), (
        "Server.close() returned and the stream in grace still runs (until resume_grace_s "
        "ends): its handler's finally has not run")


def test_a_stream_cut_by_shutdown_says_so_with_its_cursor(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """SIGTERM's drain over, the streams still running end with a ``server_shutdown``
    error event naming where to resume from, before their connections close; no [DONE]."""
    ticks = Ticks(n=1000, interval=0.02)
    limits = FAST_LIMITS.replace(resume_grace_s=0.0)
    served = serve(ticks.app(limits), limits)
    got: list[httpx_sse.ServerSentEvent] = []
    reading = threading.Thread(target=lambda: got.extend(
        read_stream(client, "GET", f"{served.url}/ticks").events))
    reading.start()
    wait_for(lambda: ticks.produced >= 5)
    served.run(served.server.close(0.2))
    reading.join(10)
    assert not reading.is_alive()
    *items, last = got
    error = error_of(last)
    assert error is not None and error["code"] == "server_shutdown", last.data
    assert f"after event {items[-1].id}" in error["message"]
    assert seq_of(items[-1], items[0].id.partition("-")[0]) == len(items)
    assert [e.data for e in items] == [ticks.item(i) for i in range(1, len(items) + 1)]
    assert all(e.data != DONE for e in got)


# ------------------------------------------------------- the cursor's epoch, starting_after


def test_starting_after_and_epoch_in_the_query(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """``GET /v1/streams/{id}?starting_after=N[&epoch=E]`` is the cursor ``<id>-<E>-<N>`` in
    the query; Last-Event-ID wins over it (an EventSource resends its URL unchanged)."""
    served = gateway(serve, FAST_LIMITS)
    first = read_stream(client, "POST", f"{served.url}/v1/chat/completions",
                        json=chat_body(10))
    sid = first.stream_id
    assert sid
    events = check_whole(first.events, sid)
    epoch = parse_cursor(events[0].id).epoch  # type: ignore[union-attr]
    base = f"{served.url}/v1/streams/{sid}"
    for query in (f"starting_after=4&epoch={epoch}", "starting_after=4"):
        got = read_stream(client, "GET", f"{base}?{query}")
        assert [(e.id, e.data) for e in got.events] == \
            [(e.id, e.data) for e in first.events[4:]], query
    got = read_stream(client, "GET", f"{base}?starting_after=2",
                      last_event_id=events[6].id)
    assert [e.id for e in got.events[:-1]] == [e.id for e in events[7:]]
    end = read_stream(client, "GET", f"{base}?starting_after={len(events)}")
    assert end.status == 204
    for query in ("starting_after=x", "epoch=XYZ", "replay=sometimes"):
        bad = read_stream(client, "GET", f"{base}?{query}")
        assert bad.status == 400, query
        assert assert_openai_error(bad.body)["code"] == "invalid_value"


def test_a_cursor_of_another_epoch_is_history_lost_for_exact_replay(
        serve: Callable[..., Served], client: httpx.Client) -> None:
    """A cursor whose epoch is not the stream's counts in a history that was lost: with
    ``replay=exact`` that is a 410 ``history_lost`` (a seq of one history is never served
    as if of another)."""
    served = gateway(serve, FAST_LIMITS)
    first = read_stream(client, "POST", f"{served.url}/v1/chat/completions",
                        json=chat_body(10))
    sid = first.stream_id
    assert sid
    epoch = parse_cursor(first.events[0].id).epoch  # type: ignore[union-attr]
    other = "0" if epoch != "0" else "1"
    for method, url, payload in (
            ("GET", f"{served.url}/v1/streams/{sid}?replay=exact", None),
            ("POST", f"{served.url}/v1/chat/completions?replay=exact", chat_body(10))):
        got = read_stream(client, method, url, json=payload, last_event_id=f"{sid}-{other}-3")
        assert got.status == 410, (method, got)
        error = assert_openai_error(got.body)
        assert error["code"] == "history_lost" and error["param"] == "epoch"
