"""The HTTP session differential of issue 14: the same bytes, cut the same way, answered
the same way, into an ``HTTPSession`` on its fast path and one forced onto h11
(``fast=False``): what each says at every step -- requests, refusals (status and message),
response bytes, keep-alive, phase, bytes held, backlog, 100 Continue -- must be the same.

Used by ``fuzz/fuzz_http.py`` (atheris) and ``tests/test_http_fastpath.py`` (hypothesis).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field

from streamcore.errors import ProtocolError
from streamcore.limits import Limits
from streamcore.proto.http import HTTPSession, Request

#: Small bounds, so that generated heads reach them.
LIMITS = Limits(max_head_bytes=512, max_request_line_bytes=160, max_header_count=8,
                max_body_bytes=64, max_body_chunks=16)

#: How a request is answered, by index: (kind, status, headers, body).  "whole" is
#: ``respond`` (response_head, response_body, end_response), "stream" is ``stream_head``,
#: "upgrade" is ``take_upgrade_tail``.  Some are what h11 writes or refuses on its own: no
#: Content-Length (h11 frames it), a Transfer-Encoding, a value h11 refuses, a body shorter
#: than said, an unknown status.
JSON = (b"content-type", b"application/json")
ANSWERS: list[tuple[str, int, list[tuple[bytes, bytes]], bytes]] = [
    ("whole", 200, [JSON, (b"content-length", b"8")], b'{"ok":1}'),
    ("stream", 200, [(b"content-type", b"text/event-stream")], b""),
    ("whole", 200, [JSON, (b"content-length", b"2"), (b"connection", b"close")], b"{}"),
    ("stream", 200, [(b"content-type", b"text/event-stream"), (b"connection", b"close")], b""),
    ("whole", 204, [(b"access-control-allow-origin", b"*")], b""),
    ("whole", 404, [JSON, (b"content-length", b"3"), (b"X-Mixed", b"a b")], b"404"),
    ("whole", 200, [JSON], b"unframed"),
    ("whole", 200, [(b"x-bad", b"a\r\nb"), (b"content-length", b"0")], b""),
    ("whole", 200, [(b"content-length", b"5")], b"abc"),
    ("whole", 200, [(b"transfer-encoding", b"chunked")], b"chunked"),
    ("whole", 299, [(b"content-length", b"1"), (b"Connection", b"close")], b"x"),
    ("upgrade", 0, [], b""),
]

_DATE = re.compile(rb"date: [^\r]*")


@dataclass
class Plan:
    """How the bytes are delivered and answered."""

    cuts: list[int]
    #: Per request (cycling): an index into ANSWERS, and how many more chunks are
    #: delivered before it is answered (pipelined bytes while HANDLING).
    answers: list[int] = field(default_factory=lambda: [0])
    delays: list[int] = field(default_factory=lambda: [0])
    eof: bool = False


def random_plan(rng: random.Random, size: int) -> Plan:
    mode = rng.randrange(20)
    if mode < 8 or size == 0:  # whole: the fast path's case
        cuts: list[int] = []
    elif mode < 11 and size <= 1024:
        cuts = list(range(1, size))  # byte by byte
    else:  # a cut or two (often in a body), or many
        count = rng.randint(1, 2) if mode < 16 else rng.randint(3, 12)
        cuts = sorted(rng.sample(range(1, size + 1), min(size, count)))
    answers = [rng.choice([0, 0, 1, 1, rng.randrange(len(ANSWERS))]) for _ in range(4)]
    delays = [rng.choice([0, 0, 1, 2]) for _ in range(4)]
    return Plan(cuts, answers, delays, rng.random() < 0.3)


def key(request: Request) -> tuple[object, ...]:
    return (request.method, request.target, request.path, request.query,
            list(request.headers), request.body, request.http_version)


def transcript(data: bytes, plan: Plan, fast: bool,
               limits: Limits = LIMITS) -> tuple[list[tuple[object, ...]], int]:
    """Everything the session says, step by step; and how many requests it took on its
    fast path (parsed without h11)."""
    session = HTTPSession(limits, fast=fast)
    bounds = [0, *[c for c in plan.cuts if 0 < c < len(data)], len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    if plan.eof:
        chunks.append(b"")
    out: list[tuple[object, ...]] = []
    taken = 0
    handled = 0
    pending: list[object] = []  # [request, answer index, chunks still to deliver first]
    i = 0

    def state(what: tuple[object, ...]) -> None:
        out.append((*what, session.phase.name, session.pipelined_bytes, session.backlog,
                    tuple(session.outbox)))
        session.outbox.clear()

    def got(request: Request | None) -> None:
        nonlocal handled, taken
        if request is None:
            return
        if session._conn is None:
            taken += 1
        n = handled
        handled += 1
        pending[:] = [request, plan.answers[n % len(plan.answers)],
                      plan.delays[n % len(plan.delays)]]
        state(("request", key(request)))

    while True:
        if pending and (pending[2] == 0 or i >= len(chunks)):
            request, answer, _ = pending
            assert isinstance(request, Request) and isinstance(answer, int)
            pending.clear()
            if not answer_it(session, request, answer, state):
                return out, taken
            try:
                keep, pipelined = session.next_cycle()
            except ProtocolError as exc:
                state(("refused", exc.status, str(exc)))
                return out, taken
            state(("cycle", keep))
            got(pipelined)
            continue
        try:
            if session.backlog:
                got(session.parse_more())
                state(("parsed",))
                continue
            if i >= len(chunks):
                return out, taken
            chunk = chunks[i]
            i += 1
            if pending:
                pending[2] = int(pending[2]) - 1  # type: ignore[call-overload]
            got(session.receive(chunk))
            state(("received", len(chunk)))
        except ProtocolError as exc:
            state(("refused", exc.status, str(exc)))
            session.fail()
            return out, taken


def answer_it(session: HTTPSession, request: Request, answer: int, state: object) -> bool:
    """Answer as ANSWERS[answer] says; False when that ends the session."""
    assert callable(state)
    kind, status, headers, body = ANSWERS[answer]
    if kind == "upgrade":
        state(("upgraded", session.take_upgrade_tail()))
        return False
    try:
        if kind == "stream":
            head, chunked = session.stream_head(list(headers), method=request.method)
            state(("streamed", _DATE.sub(b"date: -", head), chunked))
            return True
        bufs = [session.response_head(status, list(headers), method=request.method),
                session.response_body(body), session.end_response()]
    except Exception as exc:  # what HTTPConnection.respond logs, then aborts
        state(("unanswerable", type(exc).__name__, str(exc)))
        return False
    state(("answered", _DATE.sub(b"date: -", b"".join(bufs))))
    return True
