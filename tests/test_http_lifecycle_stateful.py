"""A hypothesis state machine over one HTTP connection's life (``proto/http.py``
``HTTPSession``): well-formed and malformed requests queued on the wire, delivered in
random segments, pipelined behind a request being answered, answered whole or streamed,
the client's EOF, a close of ours.

Checked after every step: each transition goes through ``HTTP_STATES`` (a recording
table: a ``data``, ``head``, ``body`` per request, in that order, then ``done`` or an end)
and the phase is the one the bytes delivered so far call for (IDLE between requests, HEAD
inside a head, BODY inside a body, HANDLING while a request is answered, CLOSED after a
last response or EOF, ERROR after a refusal); every request comes out once, in order, as
sent; every malformed one is refused with its status once its bytes are in, and nothing
after it is parsed; a connection-closing request is the last one answered; the bytes held
while a request is answered are counted (``pipelined_bytes``, which the I/O layer pauses
reading on) and the raw head copy stays under ``max_head_bytes + 1``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streamcore.errors import ProtocolError
from streamcore.limits import Limits
from streamcore.proto import http as http_mod
from streamcore.proto.http import HTTPSession, Phase, Request
from streamcore.proto.state import State, Table

LIMITS = Limits(max_head_bytes=512, max_body_bytes=800, max_header_count=8,
                max_request_line_bytes=256, max_body_chunks=700)


@dataclass
class Sent:
    name: str
    data: bytes
    head_len: int
    #: (method, path, body, version) for a request to accept; None for one to refuse.
    expect: tuple[str, str, bytes, bytes] | None
    status: int = 0  # the refusal's status
    closes: bool = False  # the connection ends after its response
    start: int = 0  # offset on the wire


def _req(name: str, head: bytes, body: bytes, expect: tuple[str, str, bytes, bytes] | None,
         status: int = 0, closes: bool = False) -> Sent:
    return Sent(name, head + body, len(head), expect, status, closes)


CHUNKS = b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefghij") + b"0\r\n\r\n"
#: More h11 events than one parse call takes (EVENTS_PER_CALL): the backlog, parse_more.
MANY = b"z" * 600
MANY_CHUNKS = b"".join(b"1\r\n%c\r\n" % c for c in MANY) + b"0\r\n\r\n"
GOOD = {
    "get": lambda: _req("get", b"GET /g?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", b"",
                        ("GET", "/g", b"", b"1.1")),
    "post_cl": lambda: _req("post_cl", b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5"
                            b"\r\n\r\n", b"hello", ("POST", "/p", b"hello", b"1.1")),
    "post_chunked": lambda: _req("post_chunked", b"POST /c HTTP/1.1\r\nHost: h\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n", CHUNKS,
                                 ("POST", "/c", b"abcdefghij", b"1.1")),
    "many_chunks": lambda: _req("many_chunks", b"POST /m HTTP/1.1\r\nHost: h\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n", MANY_CHUNKS,
                                ("POST", "/m", MANY, b"1.1")),
    "head": lambda: _req("head", b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", b"",
                         ("HEAD", "/h", b"", b"1.1")),
    "expect": lambda: _req("expect", b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue"
                           b"\r\nContent-Length: 2\r\n\r\n", b"hi",
                           ("POST", "/e", b"hi", b"1.1")),
    "http12": lambda: _req("http12", b"GET /n HTTP/1.2\r\nHost: h\r\n\r\n", b"",
                           ("GET", "/n", b"", b"1.1")),
    "close": lambda: _req("close", b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                          b"", ("GET", "/x", b"", b"1.1"), closes=True),
    "http10": lambda: _req("http10", b"GET /o HTTP/1.0\r\n\r\n", b"",
                           ("GET", "/o", b"", b"1.0"), closes=True),
}
BAD = {
    "cl_te": lambda: _req("cl_te", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\n", None, 400),
    "dup_cl": lambda: _req("dup_cl", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
                           b"Content-Length: 1\r\n\r\n", b"x", None, 400),
    "http2": lambda: _req("http2", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", b"", None, 505),
    "bad_host": lambda: _req("bad_host", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", b"",
                             None, 400),
    "no_host": lambda: _req("no_host", b"GET / HTTP/1.1\r\n\r\n", b"", None, 400),
    "big_head": lambda: _req("big_head", b"GET / HTTP/1.1\r\nHost: h\r\nX: "
                             + b"a" * 600 + b"\r\n\r\n", b"", None, 431),
    "many_headers": lambda: _req("many_headers", b"GET / HTTP/1.1\r\nHost: h\r\n"
                                 + b"".join(b"X%d: 1\r\n" % i for i in range(9)) + b"\r\n",
                                 b"", None, 431),
    "big_body": lambda: _req("big_body", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 801"
                             b"\r\n\r\n", b"a" * 801, None, 413),
    "big_chunks": lambda: _req("big_chunks", b"POST / HTTP/1.1\r\nHost: h\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n",
                               b"320\r\n" + b"a" * 800 + b"\r\n1\r\nb\r\n0\r\n\r\n", None,
                               413),
    "too_many_chunks": lambda: _req("too_many_chunks", b"POST / HTTP/1.1\r\nHost: h\r\n"
                                    b"Transfer-Encoding: chunked\r\n\r\n",
                                    b"1\r\nq\r\n" * 701 + b"0\r\n\r\n", None, 400),
    "bad_chunk": lambda: _req("bad_chunk", b"POST / HTTP/1.1\r\nHost: h\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n", b"zz\r\nab\r\n0\r\n\r\n",
                              None, 400),
    "long_line": lambda: _req("long_line", b"GET /" + b"l" * 300 + b" HTTP/1.1\r\nHost: h"
                              b"\r\n\r\n", b"", None, 414),
}


class RecordingTable(Table):
    """HTTP_STATES, recording every transition it allows."""

    def __init__(self) -> None:
        super().__init__("http", Phase.IDLE, http_mod.HTTP_STATES.transitions)
        self.log: list[str] = []

    def next(self, state: State, event: str) -> State:
        target = super().next(state, event)
        self.log.append(event)
        return target


class HTTPLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = RecordingTable()
        self._saved = http_mod.HTTP_STATES
        http_mod.HTTP_STATES = self.table
        self.session = HTTPSession(LIMITS)
        self.wire = b""  # everything queued
        self.fed = 0  # bytes of it delivered
        self.queue: list[Sent] = []  # sent, not yet parsed (or refused)
        self.in_hand: tuple[Sent, Request] | None = None
        self.fed_in_hand = 0  # bytes delivered while a request was answered
        self.ended: str | None = None  # "closed", "error"
        self.eof = False
        self.answered = 0

    def teardown(self) -> None:
        http_mod.HTTP_STATES = self._saved

    # -- the client ---------------------------------------------------------------------

    @precondition(lambda self: not self.eof)
    @rule(kind=st.sampled_from(sorted(GOOD)))
    def send_good(self, kind: str) -> None:
        self._queue(GOOD[kind]())

    @precondition(lambda self: not self.eof)
    @rule(kind=st.sampled_from(sorted(BAD)))
    def send_bad(self, kind: str) -> None:
        self._queue(BAD[kind]())

    def _queue(self, sent: Sent) -> None:
        sent.start = len(self.wire)
        self.wire += sent.data
        self.queue.append(sent)

    @precondition(lambda self: not self.eof and self.fed < len(self.wire))
    @rule(size=st.one_of(st.integers(1, 300), st.just(1 << 20)))  # a few bytes, or all
    def deliver(self, size: int) -> None:
        data = self.wire[self.fed:self.fed + size]
        self.fed += len(data)
        if self.ended is not None:
            assert self.session.receive(data) is None  # nothing is parsed any more
            return
        if self.in_hand is not None:
            self.fed_in_hand += len(data)
        self._outcome(lambda: self.session.receive(data))

    @precondition(lambda self: not self.eof and self.fed == len(self.wire)
                  and self.in_hand is None)
    @rule()
    def close_input(self) -> None:
        """The client's EOF: between requests an orderly close, inside one a refusal."""
        self.eof = True
        if self.ended is not None:
            assert self.session.receive(b"") is None
            return
        mid_request = bool(self.queue) and self.fed > self.queue[0].start
        self._outcome(lambda: self.session.receive(b""), eof_mid_request=mid_request)
        if not mid_request:
            assert self.ended is None and self.session.phase is Phase.CLOSED
            self.ended = "closed"

    @rule()
    def parse_more(self) -> None:
        if self.session.backlog and self.ended is None:
            self._outcome(self.session.parse_more)

    # -- the server ---------------------------------------------------------------------

    @precondition(lambda self: self.in_hand is not None)
    @rule(streamed=st.booleans())
    def respond(self, streamed: bool) -> None:
        assert self.in_hand is not None
        sent, request = self.in_hand
        session = self.session
        assert session.pipelined_bytes == self.fed_in_hand + self._held_at_request
        if streamed:
            head, chunked = session.stream_head([(b"content-type", b"text/event-stream")],
                                                method=request.method)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert chunked == (request.http_version == b"1.1" and request.method != "HEAD")
        else:
            session.response_head(200, [(b"content-length", b"2")], method=request.method)
            session.response_body(b"ok")
            session.end_response()
        self.in_hand = None
        self.fed_in_hand = 0
        self.answered += 1
        before = len(self.table.log)
        keep: list[bool] = []

        def next_cycle() -> Request | None:
            kept, pipelined = session.next_cycle()
            keep.append(kept)
            return pipelined

        self._outcome(next_cycle)
        if keep and not keep[0]:
            assert sent.closes, sent.name
            assert self.table.log[before:] == ["close"]
            self.ended = "closed"
        elif keep:
            assert not sent.closes, sent.name
            assert self.table.log[before] == "done"

    @precondition(lambda self: self.ended is None and self.in_hand is None)
    @rule()
    def idle_close(self) -> None:
        """Ours: the keep-alive or head deadline, a drain."""
        self.session.close()
        assert self.session.phase is Phase.CLOSED
        self.ended = "closed"

    # -- the model ----------------------------------------------------------------------

    _held_at_request = 0

    def _outcome(self, call: object, eof_mid_request: bool = False) -> None:
        assert callable(call)
        try:
            request = call()
        except ProtocolError as exc:
            assert self.queue, "a refusal with nothing sent"
            sent = self.queue[0]
            if eof_mid_request and sent.expect is not None:
                assert exc.status == 400, exc
            else:
                assert sent.expect is None, (sent.name, exc)
                assert exc.status == sent.status, (sent.name, exc.status, exc)
            assert self.fed > sent.start
            self.session.fail()
            assert self.session.phase is Phase.ERROR
            self.ended = "error"
            return
        if request is None:
            return
        sent = self.queue.pop(0)
        assert sent.expect is not None, f"{sent.name} was accepted"
        assert (request.method, request.path, request.body, request.http_version) == \
            sent.expect
        assert len(request.body) <= LIMITS.max_body_bytes
        assert len(request.headers) <= LIMITS.max_header_count
        assert self.fed >= sent.start + len(sent.data)
        self.in_hand = (sent, request)
        # What was delivered past this request is held (pipelined) from now on.
        self._held_at_request = self.fed - (sent.start + len(sent.data))
        self.fed_in_hand = 0

    @invariant()
    def phase_follows_the_bytes(self) -> None:
        session = self.session
        phase = session.phase
        if self.ended == "error":
            assert phase is Phase.ERROR
            return
        if self.ended == "closed":
            assert phase is Phase.CLOSED
            return
        if self.in_hand is not None:
            assert phase is Phase.HANDLING
            return
        if session.backlog:
            return  # more to parse: parse_more decides
        if not self.queue or self.fed <= self.queue[0].start:
            assert phase is Phase.IDLE, phase
            return
        sent = self.queue[0]
        if sent.expect is None:
            # A refusal comes once the request's bytes are in, if not before.
            assert self.fed < sent.start + len(sent.data), sent.name
            assert phase in (Phase.HEAD, Phase.BODY)
            return
        if self.fed < sent.start + sent.head_len:
            assert phase is Phase.HEAD, (sent.name, phase)
        else:
            assert self.fed < sent.start + len(sent.data), sent.name
            assert phase is Phase.BODY, (sent.name, phase)

    @invariant()
    def transitions_come_in_order(self) -> None:
        """Per request data, head, body, then done (or an end); an end is last."""
        expected_next = {"data": {"head", "close", "fail"}, "head": {"body", "close", "fail"},
                         "body": {"done", "close", "fail", "upgrade"},
                         "done": {"data", "close", "fail"}}
        log = self.table.log
        for a, b in itertools.pairwise(log):
            assert b in expected_next.get(a, set()), log
        if log:
            assert log[0] in ("data", "close", "fail")

    @invariant()
    def bounds(self) -> None:
        assert len(self.session._head_bytes) <= LIMITS.max_head_bytes + 1
        for text in self.session.outbox:
            assert text.startswith(b"HTTP/1.1 100 ")


HTTPLifecycle.TestCase.settings = settings(max_examples=120, stateful_step_count=30,
                                           deadline=None)
test_http_lifecycle = HTTPLifecycle.TestCase
