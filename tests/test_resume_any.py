"""Resume on every transport with one cursor (issue 10, docs/resume.md), over real sockets.

A stream started over SSE or WebSocket is continued on either; the WebSocket ``resume``
message; the epoch; the snapshot for a cursor the log no longer holds (and the exact-replay
error instead, when asked); the disconnect policies ``cancel``, ``linger`` and ``detach``;
the SSE ``retry:`` field.  The clients are raw sockets (``resume_clients``), cut anywhere:
between events, mid-event, mid-chunk, mid-frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import resume_clients as rc
from conftest import FAST_LIMITS, Served, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_metrics import scrape, value

import streamcore
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel

#: The default disconnect policy (linger), with the tests' short timeouts.
LINGER = FAST_LIMITS.replace(disconnect_policy=Limits().disconnect_policy)

MESSAGES = [{"role": "user", "content": "tell me how a stream is resumed on another "
             "transport after its connection was cut at some random byte"}]


def chat(max_tokens: int = 60, **extra: Any) -> dict[str, Any]:
    return {"model": "synthetic", "messages": MESSAGES, "stream": True,
            "max_tokens": max_tokens, **extra}


def expected_text(served: Served, body: dict[str, Any]) -> str:
    response = httpx.post(f"{served.url}/v1/chat/completions",
                          json={**body, "stream": False}, timeout=10)
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def gateway(serve: Callable[..., Served], limits: Limits, tokens_per_s: float = 0.0) -> Served:
    return serve(build_app([SyntheticModel(tokens_per_s=tokens_per_s)], limits), limits)


def entry_of(served: Served, stream_id: str) -> dict[str, Any] | None:
    def look(server: streamcore.Server) -> dict[str, Any] | None:
        entry = server.store.find(stream_id)
        if entry is None:
            return None
        return {"readers": len(entry.readers), "closed": entry.log.closed,
                "error": entry.error, "next_seq": entry.log.next_seq,
                "first_seq": entry.log.first_seq, "live": entry.owner is not None}

    result: dict[str, Any] | None = served.call(lambda: look(served.server))
    return result


@pytest.fixture(scope="module")
def shared() -> Iterator[Served]:
    """One gateway for the hypothesis examples (the default policy: linger 5 s)."""
    limits = LINGER.replace(keepalive_timeout_s=5.0)
    served = Served(build_app([SyntheticModel(tokens_per_s=1500.0)], limits), limits)
    yield served
    served.close()


# ---------------------------------------------------------- cut anywhere, resume anywhere

cuts = st.lists(st.tuples(st.sampled_from(["sse", "ws"]), st.integers(0, 6000),
                          st.booleans(), st.booleans()), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=st.sampled_from(["sse", "ws"]), cuts=cuts, last=st.sampled_from(["sse", "ws"]),
       tokens=st.integers(5, 60))
def test_cut_anywhere_and_resume_on_either_transport_gives_the_whole_text_once(
        shared: Served, first: str, cuts: list[tuple[str, int, bool, bool]], last: str,
        tokens: int) -> None:
    """The client is cut after a random number of bytes (between events, mid-event,
    mid-chunk or mid-frame; by FIN or RST), any number of times, and reconnects with the
    last event it received whole, on SSE or WebSocket at random (by Last-Event-ID or the
    ``starting_after`` query on SSE): the text equals an uninterrupted run's, every seq
    once, in order, then the end."""
    body = chat(tokens)
    port = shared.port
    # The first connection starts the stream and is cut (after the head / stream message).
    kind, offset, reset, _ = cuts[0]
    if first == "sse":
        got = rc.sse(port, "POST", "/v1/chat/completions", body=body, cut_after=offset,
                     reset=reset)
    else:
        got = rc.ws(port, {"type": "request", "id": "r0", "body": body},
                    cut_after=200 + offset, reset=reset)
    assert got.stream and got.epoch, got
    sid, epoch = got.stream, got.epoch
    chunks = list(got.chunks)
    ended = got.done
    plan = [(k, o, r, q) for k, o, r, q in cuts[1:]] + [(last, -1, False, False)]
    for i, (kind, offset, reset, by_query) in enumerate(plan):
        if ended:
            break
        after = chunks[-1][0] if chunks else 0
        cut = None if offset < 0 else offset
        if kind == "sse":
            if by_query or after == 0:
                got = rc.sse(port, "GET", f"/v1/streams/{sid}?starting_after={after}"
                             f"&epoch={epoch}", cut_after=cut, reset=reset)
            else:
                got = rc.sse(port, "GET", f"/v1/streams/{sid}",
                             headers=[("last-event-id", f"{sid}-{epoch}-{after}")],
                             cut_after=cut, reset=reset)
            if got.status == 204:
                # Positioned at the end of an ended stream: the client had every event
                # (the error event, if any, is one with an id) and was cut before the
                # end marker, which has none: 204 is that end (checked below).
                ended = True
                break
            assert got.status == 200, got
        else:
            got = rc.ws(port, {"type": "resume", "id": f"r{i + 1}", "stream": sid,
                               "after": after, "epoch": epoch}, cut_after=cut, reset=reset)
        assert got.error is None, got.error
        assert got.snapshot is None, "the log holds the whole stream: no snapshot"
        assert got.stream in (None, sid) and got.epoch in (None, epoch)
        chunks += got.chunks
        ended = got.done
    assert ended, "the last connection was not cut: it must end with the end marker"
    seqs = [seq for seq, _ in chunks]
    assert seqs == list(range(1, len(seqs) + 1)), f"duplicates or gaps: {seqs}"
    assert len(seqs) == 1 + tokens + 1  # role, tokens, finish
    assert rc.text_of(chunks) == expected_text(shared, body)


def test_a_stream_started_on_one_transport_continues_on_the_other(
        serve: Callable[..., Served]) -> None:
    served = gateway(serve, LINGER, tokens_per_s=400.0)
    port = served.port
    body = chat(40)
    text = expected_text(served, body)
    # WebSocket first: the stream message names it, then chunks; cut after 5 chunks' worth.
    first = rc.ws(port, {"type": "request", "id": "a", "body": body}, cut_after=1000)
    assert first.cut and first.stream and first.epoch and first.chunks
    n = first.chunks[-1][0]
    rest = rc.sse(port, "GET", f"/v1/streams/{first.stream}",
                  headers=[("last-event-id", f"{first.stream}-{first.epoch}-{n}")])
    assert rest.status == 200 and rest.done and rest.error is None
    assert [s for s, _ in first.chunks + rest.chunks] == list(range(1, 43))
    assert rc.text_of(first.chunks + rest.chunks) == text
    # SSE first, then a WebSocket resume: the stream message, the missed chunks, done.
    first = rc.sse(port, "POST", "/v1/chat/completions", body=body, cut_after=800)
    assert first.cut and first.stream
    n = first.chunks[-1][0] if first.chunks else 0
    rest = rc.ws(port, {"type": "resume", "id": "b", "stream": first.stream, "after": n})
    assert rest.stream == first.stream and rest.epoch == first.epoch
    assert rest.done and rest.error is None
    assert [s for s, _ in first.chunks + rest.chunks] == list(range(1, 43))
    assert rc.text_of(first.chunks + rest.chunks) == text


def test_websocket_resume_errors(serve: Callable[..., Served]) -> None:
    served = gateway(serve, LINGER)
    port = served.port
    got = rc.ws(port, {"type": "resume", "id": "x", "stream": "0123456789abcdef", "after": 3})
    assert got.error["code"] == "stream_not_found" and got.error["param"] == "stream"
    for bad, param in (({"stream": "a b"}, "stream"), ({"stream": "s", "after": -1}, "after"),
                       ({"stream": "s", "after": True}, "after"),
                       ({"stream": "s", "epoch": "XY"}, "epoch"),
                       ({"stream": "s", "replay": "some"}, "replay")):
        got = rc.ws(port, {"type": "resume", "id": "x", **bad})
        assert got.error["code"] == "invalid_value" and got.error["param"] == param, bad
    # A resume at the end of an ended stream: the stream message, then done at once.
    whole = rc.ws(port, {"type": "request", "id": "w", "body": chat(5)})
    assert whole.done and len(whole.chunks) == 7
    again = rc.ws(port, {"type": "resume", "id": "x", "stream": whole.stream, "after": 7})
    assert again.done and again.chunks == [] and again.stream == whole.stream


# ------------------------------------------------------------------- epoch and snapshot


def test_a_cursor_the_log_no_longer_holds_gets_a_snapshot_then_the_tail(
        serve: Callable[..., Served]) -> None:
    """A small log: a reader resuming from seq 2 after it wrapped gets a ``snapshot`` event
    (the text so far and the finish state, with its cursor), then the tail; with
    ``replay=exact`` the plain ``fell_behind`` error instead."""
    limits = LINGER.replace(stream_log_bytes=4096)
    served = gateway(serve, limits, tokens_per_s=300.0)
    port = served.port
    body = chat(300)
    text = expected_text(served, body)
    first = rc.sse(port, "POST", "/v1/chat/completions", body=body, cut_after=300,
                   headers=[("x-disconnect-policy", "detach")])
    sid, epoch = first.stream, first.epoch
    assert sid and epoch
    # Live (detached, it runs on): wait until the log dropped seq 2, then resume from 1.
    wait_for(lambda: (entry_of(served, sid) or {}).get("first_seq", 0) > 40)
    live = rc.sse(port, "GET", f"/v1/streams/{sid}",
                  headers=[("last-event-id", f"{sid}-{epoch}-1")])
    assert live.status == 200 and live.error is None and live.done, live
    assert live.snapshot is not None
    seq, snap = live.snapshot
    assert snap["object"] == "chat.completion.snapshot"
    assert [s for s, _ in live.chunks] == list(range(seq + 1, 303))
    so_far = snap["choices"][0]["message"]["content"]
    assert so_far + rc.text_of(live.chunks) == text
    # Ended: the snapshot holds all of it and the finish state; then only [DONE].
    wait_for(lambda: (entry_of(served, sid) or {}).get("closed"))
    for via in ("sse", "ws"):
        if via == "sse":
            got = rc.sse(port, "GET", f"/v1/streams/{sid}?starting_after=1&epoch={epoch}")
        else:
            got = rc.ws(port, {"type": "resume", "id": "s", "stream": sid, "after": 1,
                               "epoch": epoch})
        assert got.done and got.error is None and got.chunks == [], via
        assert got.snapshot is not None and got.snapshot[0] == 302
        choice = got.snapshot[1]["choices"][0]
        assert choice["message"]["content"] == text and choice["finish_reason"] == "length"
    # Exact replay only: the plain error, on both transports.
    exact = rc.sse(port, "GET", f"/v1/streams/{sid}?starting_after=1&replay=exact")
    assert exact.snapshot is None and exact.error["code"] == "fell_behind"
    exact = rc.ws(port, {"type": "resume", "id": "e", "stream": sid, "after": 1,
                         "replay": "exact"})
    assert exact.snapshot is None and exact.error["code"] == "fell_behind"


def test_a_cursor_of_another_epoch_gets_a_snapshot_or_history_lost(
        serve: Callable[..., Served]) -> None:
    """The history a cursor counts in was lost (its epoch is not the stream's): a snapshot
    of the history the stream has, never its events numbered as if they were the
    client's; ``replay=exact``: 410 ``history_lost`` (SSE), the error message (WS)."""
    served = gateway(serve, LINGER)
    port = served.port
    body = chat(20)
    whole = rc.sse(port, "POST", "/v1/chat/completions", body=body)
    sid, epoch = whole.stream, whole.epoch
    assert sid and epoch and whole.done
    other = "0" if epoch != "0" else "1"
    got = rc.sse(port, "GET", f"/v1/streams/{sid}",
                 headers=[("last-event-id", f"{sid}-{other}-5")])
    assert got.status == 200 and got.snapshot is not None and got.done
    assert got.snapshot[0] == 22 and got.epoch == epoch
    assert got.snapshot[1]["choices"][0]["message"]["content"] == rc.text_of(whole.chunks)
    ws_got = rc.ws(port, {"type": "resume", "id": "x", "stream": sid, "after": 5,
                          "epoch": other})
    assert ws_got.snapshot == got.snapshot and ws_got.done
    exact = rc.sse(port, "GET", f"/v1/streams/{sid}?replay=exact",
                   headers=[("last-event-id", f"{sid}-{other}-5")])
    assert exact.status == 410
    ws_exact = rc.ws(port, {"type": "resume", "id": "x", "stream": sid, "after": 5,
                            "epoch": other, "replay": "exact"})
    assert ws_exact.error["code"] == "history_lost"
    # Counted by outcome and transport (issue 15: resumes from a snapshot, failed by reason).
    samples = scrape(served.url)
    for transport in ("sse", "websocket"):
        assert value(samples, "streamcore_resumes_total", transport=transport,
                     outcome="snapshot") == 1
        assert value(samples, "streamcore_resumes_total", transport=transport,
                     outcome="history_lost") == 1


# ------------------------------------------------------------------ disconnect policies


class Ticks:
    """``GET /ticks``: ``n`` items ``interval`` apart; when its ``finally`` ran."""

    def __init__(self, n: int, interval: float) -> None:
        self.n = n
        self.interval = interval
        self.produced = 0
        self.closed_at: float | None = None

    def app(self, limits: Limits) -> streamcore.App:
        import asyncio

        app = streamcore.App(limits=limits)

        @app.stream("GET", "/ticks")
        async def ticks(request: streamcore.Request) -> Any:
            try:
                for i in range(1, self.n + 1):
                    self.produced = i
                    yield f"tick {i}"
                    await asyncio.sleep(self.interval)
            finally:
                self.closed_at = time.monotonic()

        return app


def cut_ticks(served: Served, headers: list[tuple[str, str]] | None = None) -> tuple[str, float]:
    got = rc.sse(served.port, "GET", "/ticks", headers=headers, cut_after=60)
    assert got.stream
    wait_for(lambda: (entry_of(served, got.stream or "") or {"readers": 0})["readers"] == 0)
    return got.stream, time.monotonic()


def test_policy_cancel_stops_at_once(serve: Callable[..., Served]) -> None:
    ticks = Ticks(1000, 0.01)
    limits = LINGER.replace(disconnect_policy="cancel")
    served = serve(ticks.app(limits), limits)
    cut_ticks(served)
    wait_for(lambda: ticks.closed_at is not None, timeout=1.0)


def test_policy_linger_is_the_default_and_cancels_after_its_window(
        serve: Callable[..., Served]) -> None:
    assert Limits().disconnect_policy == "linger" and Limits().resume_grace_s == 5.0
    ticks = Ticks(10_000, 0.01)
    limits = LINGER.replace(resume_grace_s=0.5)
    served = serve(ticks.app(limits), limits)
    sid, left = cut_ticks(served)
    time.sleep(0.25)
    assert ticks.closed_at is None, "cancelled inside the linger window"
    wait_for(lambda: ticks.closed_at is not None, timeout=2.0)
    assert ticks.closed_at is not None and 0.4 < ticks.closed_at - left < 1.5
    state = entry_of(served, sid)
    assert state is not None and state["closed"] and b'"cancelled"' in state["error"]


def test_policy_per_request_header_and_bad_value(serve: Callable[..., Served]) -> None:
    """The server says cancel; a request asking ``X-Disconnect-Policy: linger`` lingers."""
    ticks = Ticks(10_000, 0.01)
    limits = LINGER.replace(disconnect_policy="cancel", resume_grace_s=0.5)
    served = serve(ticks.app(limits), limits)
    cut_ticks(served, headers=[("x-disconnect-policy", "linger")])
    time.sleep(0.2)
    assert ticks.closed_at is None
    bad = httpx.get(f"{served.url}/ticks", headers={"x-disconnect-policy": "forever"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Disconnect-Policy"


def test_policy_detach_runs_to_the_end_past_the_log_for_a_later_reader(
        serve: Callable[..., Served]) -> None:
    """Detached, the generation is not paused for want of a reader: it runs to its end,
    the log keeping the newest frames and the snapshot the text before them; a reader
    coming later gets the snapshot, then the rest and [DONE]."""
    limits = LINGER.replace(stream_log_bytes=4096, resume_grace_s=0.2)
    served = gateway(serve, limits, tokens_per_s=3000.0)
    body = chat(400)
    text = expected_text(served, body)
    first = rc.sse(served.port, "POST", "/v1/chat/completions", body=body, cut_after=300,
                   headers=[("x-disconnect-policy", "detach")])
    sid = first.stream
    assert sid
    wait_for(lambda: (entry_of(served, sid) or {}).get("closed"), timeout=5.0)
    state = entry_of(served, sid)
    assert state is not None and state["error"] is None, "it ran to its end"
    assert state["next_seq"] == 403 and state["first_seq"] > 100  # past the log
    later = rc.sse(served.port, "GET", f"/v1/streams/{sid}",
                   headers=[("last-event-id", f"{sid}-{first.epoch}-3")])
    assert later.snapshot is not None and later.done
    assert later.snapshot[1]["choices"][0]["message"]["content"] == text
    # A linger (0.2 s) for the same: cancelled, not run to its end.
    first = rc.sse(served.port, "POST", "/v1/chat/completions", body=chat(3000),
                   cut_after=300)
    assert first.stream
    wait_for(lambda: (entry_of(served, first.stream or "") or {}).get("closed"), timeout=3.0)
    state = entry_of(served, first.stream)
    assert state is not None and b'"cancelled"' in state["error"]


def test_policy_detach_without_room_lingers(serve: Callable[..., Served]) -> None:
    """The detach budget (resume_budget_bytes over log + snapshot) is full: the stream
    lingers instead of running on for nobody."""
    ticks = Ticks(10_000, 0.01)
    limits = LINGER.replace(disconnect_policy="detach", resume_grace_s=0.3,
                                 resume_budget_bytes=1000)
    served = serve(ticks.app(limits), limits)
    cut_ticks(served)
    wait_for(lambda: ticks.closed_at is not None, timeout=2.0)


def test_sse_responses_tell_an_eventsource_when_to_come_back(
        serve: Callable[..., Served]) -> None:
    served = gateway(serve, LINGER.replace(resume_grace_s=5.0))
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=chat(3)) as response:
        raw = b"".join(response.iter_raw())
    assert raw.count(b"retry: 1000\n") == 1 and raw.startswith(b"id: "), raw[:80]
    quick = gateway(serve, LINGER.replace(resume_grace_s=0.0))
    with httpx.stream("POST", f"{quick.url}/v1/chat/completions", json=chat(3)) as response:
        raw = b"".join(response.iter_raw())
    assert b"retry:" not in raw
