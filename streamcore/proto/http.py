"""Server side of one HTTP/1.1 connection, sans-I/O.

A request cycle starts on the fast path (:mod:`.fasthead`, issue 14): a complete, plain
head with no body or a Content-Length one, and its response, without an ``h11.Connection``.
Every cycle the fast path declines is h11's from its first byte, as before it existed: h11
parses request heads and bodies and keeps the connection's state; we add what it leaves to
its user:

* the head size bound whatever the segmentation (h11's ``max_incomplete_event_size`` only
  applies while a head is incomplete, so a large head that arrives in one read passes it);
* request smuggling: RFC 9112 section 6.3 makes a message with both Transfer-Encoding and
  Content-Length, or with an invalid or duplicated Content-Length, unrecoverable for a server
  ("MUST respond with 400 and then close"); h11 reconciles identical duplicates and lets
  Transfer-Encoding win, and would go on to parse whatever followed;
* body size and header count bounds, checked as soon as the number is known; the request
  line's (414), the version (505), the Host value (400), a chunk's declared size and the
  number of chunks of a body;
* bounded parsing work per call: at most :data:`EVENTS_PER_CALL` h11 events, then
  :attr:`HTTPSession.backlog` says there is more to parse (:meth:`HTTPSession.parse_more`),
  so that one peer's burst of tiny chunks cannot hold the event loop for seconds;
* chunked framing of streamed bodies done here, not through ``h11.Connection.send(Data)``
  per token (about 2 us each): h11 is told the response head and its end, and its state
  stays exact because chunked framing carries no length for h11 to check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from ..errors import SHOWN_CHARS, BodyTooLarge, HeadTooLarge, ProtocolError, shown
from ..limits import Limits

# (CRLF, REASONS, http_date and error_response live in fasthead.py, with the other heads
# written without h11; the rest of proto/ and aio/ import them from here, as before.)
from .fasthead import CRLF as CRLF
from .fasthead import HOST as _HOST
from .fasthead import REASONS as REASONS
from .fasthead import complete_head, parse_head
from .fasthead import error_response as error_response
from .fasthead import http_date as http_date
from .state import State, Table

LAST_CHUNK = b"0\r\n\r\n"


#: h11 events parsed per :meth:`HTTPSession.receive` (or :meth:`~HTTPSession.parse_more`)
#: before the session hands the loop back: a few milliseconds of work at most (a tiny
#: chunk costs h11 about 3 us), whatever one read of the socket holds.
EVENTS_PER_CALL = 512
#: The HTTP versions we speak.  A higher minor version of HTTP/1 (h11 reads one digit each,
#: RFC 9112 section 2.3) is served as HTTP/1.1; any other major version gets 505.
VERSIONS = (b"1.1", b"1.0")
#: A chunk declared larger than this (more than 16 hex digits' worth) is a framing error,
#: not a big chunk: 400 at once, not a wait for the body deadline.
MAX_CHUNK_SIZE = (1 << 63) - 1


def _unparsed(conn: h11.Connection) -> int:
    """Bytes h11 holds unparsed, without the copy ``trailing_data`` makes of all of them
    (per pipelined request, that copy was most of the cost).  h11's receive buffer has a
    length; ``tests/test_adversarial.py`` pins this use of it."""
    return len(conn._receive_buffer)


def _declared_chunk(conn: h11.Connection) -> int:
    """The declared size of the chunk h11 is in the middle of (0 if none), read from h11's
    chunked reader (pinned by the same test)."""
    return int(getattr(conn._reader, "_bytes_in_chunk", 0) or 0)


def _unparsed_head(conn: h11.Connection, size: int) -> bytes:
    """The first ``size`` unparsed bytes h11 holds (the same pin)."""
    return bytes(memoryview(conn._receive_buffer._data)[:size])


@dataclass(slots=True, eq=False)
class Request:
    """One complete request: head and (bounded) body."""

    method: str
    target: bytes
    path: str
    query: str
    #: ``(name, value)`` pairs, names lowercased, in received order.
    headers: Sequence[tuple[bytes, bytes]]
    body: bytes = b""
    http_version: bytes = b"1.1"
    #: The first value of each field, by name: made once (by the fast path as it
    #: parses, else at the first :meth:`header`), so a lookup is a dict's.
    fields: dict[bytes, bytes] | None = field(default=None, repr=False)

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lowercase), or None."""
        fields = self.fields
        if fields is None:
            # reversed: the first of repeated names is the one a dict keeps.
            fields = self.fields = dict(reversed(self.headers))
        return fields.get(name)

    def lookup(self) -> dict[bytes, bytes]:
        """:attr:`fields`, made if need be: for several lookups in one call."""
        fields = self.fields
        if fields is None:
            fields = self.fields = dict(reversed(self.headers))
        return fields

    def header_tokens(self, name: bytes) -> list[bytes]:
        """The comma-separated tokens of every ``name`` header, lowercased."""
        return [
            token.strip().lower()
            for key, value in self.headers
            if key == name
            for token in value.split(b",")
            if token.strip()
        ]


_H = "http"


class Phase:
    """Where an HTTP connection is (:data:`HTTP_STATES` has the transitions); the I/O layer
    arms the read deadline of each (:func:`read_timeout`)."""

    #: Between requests: the keep-alive deadline.
    IDLE = State(_H, "IDLE")
    #: Some bytes of a head received: the head deadline (slowloris).
    HEAD = State(_H, "HEAD")
    #: Head complete, body incomplete: the body deadline.
    BODY = State(_H, "BODY")
    #: Request complete, response not finished: no read deadline (the write-stall one).
    HANDLING = State(_H, "HANDLING")
    #: The connection belongs to a WebSocket now (RFC 9110 section 7.8).
    UPGRADED = State(_H, "UPGRADED", terminal=True)
    #: Closed in order: by either side between requests, or after a last response.
    CLOSED = State(_H, "CLOSED", terminal=True)
    #: The peer broke the protocol, or we failed: answered if possible, then closed.
    ERROR = State(_H, "ERROR", terminal=True)


_ENDS = {"close": Phase.CLOSED, "fail": Phase.ERROR}

#: One HTTP/1.1 connection's life.  ``data``: the first bytes of a head; ``head``: the head
#: is complete; ``body``: the request is complete; ``done``: its response is written and
#: the connection stays open; ``upgrade``: handed to a WebSocket; ``close``: closed in
#: order (keep-alive off, idle timeout, drain, the peer's EOF between requests); ``fail``:
#: a protocol error or a failure of ours.
HTTP_STATES = Table("http", Phase.IDLE, {
    Phase.IDLE: {"data": Phase.HEAD, **_ENDS},
    Phase.HEAD: {"head": Phase.BODY, **_ENDS},
    Phase.BODY: {"body": Phase.HANDLING, **_ENDS},
    Phase.HANDLING: {"done": Phase.IDLE, "upgrade": Phase.UPGRADED, **_ENDS},
    Phase.UPGRADED: {},
    Phase.CLOSED: {},
    Phase.ERROR: {},
})


def read_timeout(phase: State, limits: Limits) -> float | None:
    """The read deadline of ``phase`` in seconds, or None (no read deadline)."""
    if phase is Phase.IDLE:
        return limits.keepalive_timeout_s
    if phase is Phase.HEAD:
        return limits.head_timeout_s
    if phase is Phase.BODY:
        return limits.body_timeout_s
    return None




class HTTPSession:
    """Requests in, response bytes out, for one connection.

    Each request cycle starts on the fast path (:mod:`.fasthead`): a complete, plain head
    in the bytes at hand is parsed there, its Content-Length body collected here and its
    response head written there, without an ``h11.Connection``.  A cycle the fast path
    declines is h11's from its first byte, exactly as it always was; h11 stays for the
    cycles after it while it holds their bytes, and is let go when a cycle starts with
    nothing held.  ``fast=False`` (for the differential tests) puts every cycle on h11.
    """

    __slots__ = ("_body", "_body_left", "_body_size", "_chunks", "_client_close",
                 "_conn", "_cycle_fed", "_eof", "_fast", "_head_bytes", "_http11", "_keep",
                 "_raw", "_remaining", "_request", "_verb", "backlog", "head_only", "limits",
                 "outbox", "phase", "pipelined_bytes")

    def __init__(self, limits: Limits, *, fast: bool = True) -> None:
        self.limits = limits
        self._fast = fast
        #: h11's state, while h11 has the connection's bytes (None on the fast path, and
        #: while a long response streams: its state object is about 1.3 KiB).
        self._conn: h11.Connection | None = None if fast else self._new_h11()
        #: Without h11: whether to keep the connection open after this response...
        self._keep = True
        self._client_close = False
        self._http11 = True
        #: ... and the bytes received past the current request (pipelined), with the
        #: peer's EOF if it came meanwhile.
        self._raw = bytearray()
        self._eof = False
        self.phase = Phase.IDLE
        #: The first bytes of this request cycle (at most max_head_bytes + 1 of them): the
        #: raw head, for the checks h11's normalised headers cannot make.
        self._head_bytes = bytearray()
        #: Bytes given to h11 in this cycle (with those it held when it began).
        self._cycle_fed = 0
        self._request: Request | None = None
        #: The body, in one buffer (not one object per chunk).
        self._body = bytearray()
        self._body_size = 0
        self._chunks = 0
        #: Fast path: body bytes still to come, response body bytes still to be sent, the
        #: request's method (for h11, should the response need it).
        self._body_left = 0
        self._remaining = 0
        self._verb = b"GET"
        #: The last call stopped after EVENTS_PER_CALL events: call parse_more.
        self.backlog = False
        #: Bytes held past the request while HANDLING (pipelined): the I/O layer stops
        #: reading above max_pipelined_bytes.
        self.pipelined_bytes = 0
        #: Bytes to send that the session produced on its own (100 Continue).
        self.outbox: list[bytes] = []
        #: The response being made answers a HEAD request (RFC 9110 section 9.3.2).
        self.head_only = False

    # -- receiving -------------------------------------------------------------------

    def receive(self, data: bytes) -> Request | None:
        """Feed bytes (``b""`` for end of input); returns a complete request, if one is.

        Only one request is returned at a time: the bytes of a pipelined next request stay
        buffered until :meth:`end_response` (RFC 9112 section 9.3.2: responses in order).
        Raises :class:`ProtocolError` with the status to answer with.
        """
        phase = self.phase
        if phase.terminal:
            return None
        conn = self._conn
        if phase is Phase.HANDLING:
            self.pipelined_bytes += len(data)
            if conn is not None:
                conn.receive_data(data)
            elif data:
                self._raw += data
            else:
                self._eof = True
            return None
        if conn is None:
            if phase is Phase.BODY:
                return self._take_body(data)
            # IDLE, nothing held: a new cycle.  (h11 says ConnectionClosed to an EOF here.)
            if not data:
                self._to("close")
                return None
            return self._begin(data)
        if phase is not Phase.BODY:
            self._take_head_bytes(data)
            if data and phase is Phase.IDLE:
                self._to("data")
        conn.receive_data(data)
        return self._advance()

    def parse_more(self) -> Request | None:
        """Go on parsing what :meth:`receive` left (:attr:`backlog`)."""
        if self.phase.terminal or self.phase is Phase.HANDLING or self._conn is None:
            self.backlog = False
            return None
        return self._advance()

    def _begin(self, buf: bytes | bytearray) -> Request | None:
        """A cycle starts with ``buf`` (the bytes just received, or ``_raw``): on the fast
        path if it takes the head, else on h11."""
        head = parse_head(buf, self.limits) if self._fast else None
        if head is None:
            data = bytes(buf)
            self._raw.clear()
            return self._decline(data)
        method, target, version, headers, fields, length, close, end = head
        # IDLE -> HEAD -> BODY (a pipelined request's cycle is in HEAD already).
        phase = self.phase
        if phase is Phase.IDLE:
            phase = HTTP_STATES.next(phase, "data")
        self.phase = phase = HTTP_STATES.next(phase, "head")
        self._http11 = version == b"1.1"
        self._client_close = close
        # h11's rule: HTTP/1.0 closes (no keep-alive), and so does "Connection: close".
        self._keep = self._http11 and not close
        self._verb = method
        path, _, query = target.partition(b"?")
        request = Request(method.decode("ascii"), target, path.decode("latin-1"),
                          query.decode("latin-1"), headers, b"", version, fields)
        available = len(buf) - end
        if available < length:  # the rest of the body is to come: the BODY phase
            self._request = request
            self._body = bytearray(buf[end:])
            self._body_left = length - available
            self._raw.clear()
            if self._eof:
                raise self._cut_body()
            return None
        if length:
            request.body = bytes(buf[end:end + length])
        end += length
        if buf is self._raw:
            del self._raw[:end]  # from the front: CPython moves its start, no copy
        elif end < len(buf):
            self._raw += memoryview(buf)[end:]
        self.phase = HTTP_STATES.next(phase, "body")
        self.pipelined_bytes = len(self._raw)
        return request

    def _decline(self, data: bytes) -> Request | None:
        """The cycle is h11's, from its first byte, as every cycle was before the fast
        path."""
        conn = self._conn = self._new_h11()
        self._take_head_bytes(data)
        if self.phase is Phase.IDLE:
            self._to("data")
        conn.receive_data(data)
        if self._eof:
            conn.receive_data(b"")
        return self._advance()

    def _take_body(self, data: bytes) -> Request | None:
        """A fast-path request's Content-Length body, as it comes."""
        if not data:
            raise self._cut_body()
        left = self._body_left
        if len(data) < left:
            self._body += data
            self._body_left = left - len(data)
            return None
        view = memoryview(data)
        self._body += view[:left]
        self._raw += view[left:]
        request = self._request
        assert request is not None
        self._request = None  # the handler owns it now
        request.body = bytes(self._body)
        self._body = bytearray()
        self._to("body")
        self.pipelined_bytes = len(self._raw)
        return request

    def _cut_body(self) -> ProtocolError:
        """The peer's EOF inside a body: 400, in h11's words."""
        got = len(self._body)
        return ProtocolError(
            "malformed request: peer closed connection without sending complete message "
            f"body (received {got} bytes, expected {got + self._body_left})")

    def _take_head_bytes(self, data: bytes) -> None:
        self._cycle_fed += len(data)
        # Never full here: while the head is incomplete h11 holds every byte of the cycle,
        # and refuses (431) once it holds more than max_head_bytes; a complete head ends
        # the head phase (and a session that raised is fed no more).
        self._head_bytes += data[:self.limits.max_head_bytes + 1 - len(self._head_bytes)]
        # RFC 9112 section 3: a request line longer than we read is 414, told as soon as
        # it is known, whatever the segmentation.
        limit = self.limits.max_request_line_bytes
        if len(self._head_bytes) > limit and b"\n" not in self._head_bytes[:limit + 1]:
            raise ProtocolError(f"request line over {limit} bytes", status=414,
                                code="uri_too_long")

    def _advance(self) -> Request | None:
        conn = self._conn
        assert conn is not None
        self.backlog = False
        budget = EVENTS_PER_CALL
        try:
            while True:
                budget -= 1
                if budget < 0:
                    self.backlog = True
                    return None
                event = conn.next_event()
                # (Never h11.PAUSED: each request's end returns, and the next cycle starts
                # before h11 is asked again; PAUSED would be answered like NEED_DATA.)
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    if self.phase is Phase.BODY:
                        self._check_chunk()
                        if conn.they_are_waiting_for_100_continue:
                            self.outbox.append(self._informational(100))
                    return None
                if isinstance(event, h11.Request):
                    self._on_head(event)
                elif isinstance(event, h11.Data):
                    self._body_size += len(event.data)
                    if self._body_size > self.limits.max_body_bytes:
                        raise BodyTooLarge(self._body_size, self.limits.max_body_bytes)
                    if event.chunk_start:
                        self._chunks += 1
                        if self._chunks > self.limits.max_body_chunks:
                            raise ProtocolError(
                                f"more than {self.limits.max_body_chunks} chunks in one "
                                f"request body", code="too_many_chunks")
                    self._body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    request = self._request
                    assert request is not None
                    self._request = None  # the handler owns it now: a stream may not need it
                    request.body = bytes(self._body)
                    self._body = bytearray()
                    self._to("body")
                    self.pipelined_bytes = _unparsed(conn)
                    return request
                else:  # h11.ConnectionClosed, the only other event of a client: EOF
                    self._to("close")  # between requests
                    return None
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            # h11's message may quote the offending bytes: cut, never echoed in full.
            raise ProtocolError(f"malformed request: {str(exc)[:SHOWN_CHARS]}",
                                status=status) from None

    def _check_chunk(self) -> None:
        """A chunk h11 waits for: refused now if its declared size cannot be (400: more
        than 63 bits, RFC 9112 section 7.1 leaves the bound to us) or would pass the body
        limit (413), instead of at the body deadline."""
        assert self._conn is not None
        declared = _declared_chunk(self._conn)
        if declared > MAX_CHUNK_SIZE:
            raise ProtocolError("chunk size out of range", code="bad_chunk")
        if self._body_size + declared > self.limits.max_body_bytes:
            raise BodyTooLarge(self._body_size + declared, self.limits.max_body_bytes)

    def _on_head(self, event: h11.Request) -> None:
        limits = self.limits
        assert self._conn is not None
        head_size = self._cycle_fed - _unparsed(self._conn)
        if head_size > limits.max_head_bytes:
            raise HeadTooLarge(head_size, limits.max_head_bytes)
        raw_head = bytes(self._head_bytes[:head_size])
        self._head_bytes = bytearray()
        # (A request line over max_request_line_bytes never gets here: _take_head_bytes
        # answered 414 when its bytes came.)
        version = event.http_version
        if version not in VERSIONS:
            if not version.startswith(b"1."):
                # RFC 9110 section 15.6.6: 505 refuses the *major* version (HTTP/0.9,
                # HTTP/2.0 and up written as an HTTP/1 request line).
                raise ProtocolError(
                    f"HTTP/{version.decode('latin-1')} is not supported "
                    f"(HTTP/1.1 and HTTP/1.0 are)", status=505, code="http_version")
            # RFC 9110 section 2.5: a recipient of a higher minor version of a major
            # version it implements "SHOULD process the message as if it were in the
            # highest minor version ... to which the recipient is conformant": HTTP/1.2
            # is served as HTTP/1.1 (and answered in HTTP/1.1, the same section).
            version = b"1.1"
        # A plain list, once: h11's Headers is a Sequence whose iteration goes through
        # __getitem__ in Python, and a request's headers are looked at several times.
        headers = list(event.headers)
        if len(headers) > limits.max_header_count:
            raise HeadTooLarge(len(headers), limits.max_header_count, "header count")
        _check_framing(raw_head, headers)
        self._http11 = event.http_version != b"1.0"
        # RFC 9112 section 9.3: the client asks us to close after this response, with the
        # "close" connection option (a token of the field's list, RFC 9110 section 7.6.1;
        # "x-close" is another option): h11's own rule for a complete response.
        self._client_close = any(
            name == b"connection" and b"close" in (t.strip() for t in value.lower().split(b","))
            for name, value in headers)
        target = event.target
        path, _, query = target.partition(b"?")
        self._request = Request(
            method=event.method.decode("ascii"),
            target=target,
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=headers,
            http_version=version,
        )
        self._body_size = 0
        self._chunks = 0
        length = self._request.header(b"content-length")
        if length is not None and int(length) > limits.max_body_bytes:
            # Refused before a byte of it is read (RFC 9110 section 15.5.14).
            raise BodyTooLarge(int(length), limits.max_body_bytes)
        self._to("head")

    # -- state -------------------------------------------------------------------------

    def _to(self, event: str) -> None:
        self.phase = HTTP_STATES.next(self.phase, event)

    def fail(self) -> None:
        """A protocol error or a failure of ours: nothing more is parsed or sent but the
        error response the caller makes (:func:`error_response`, without h11)."""
        if not self.phase.terminal:
            self._to("fail")

    def close(self) -> None:
        """Closed in order (idle timeout, drain)."""
        phase = self.phase
        if not phase.terminal:
            self.phase = HTTP_STATES.next(phase, "close")

    # -- responding ------------------------------------------------------------------

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]], *,
                      method: str = "GET") -> bytes:
        """The head of a complete response (its body has a Content-Length): written here
        on the fast path as h11 would write it, else by h11."""
        self.head_only = method == "HEAD"
        conn = self._conn
        reason = REASONS.get(status, b"")
        if conn is None:
            made = complete_head(status, headers, reason, http_date(), not self._keep)
            if made is not None:
                head, length, we_close = made
                self._remaining = 0 if self.head_only else length
                self._keep = self._keep and not we_close
                return head
            conn = self._h11_for_response()
        all_headers = [(b"date", http_date()), *headers]
        out = conn.send(h11.Response(status_code=status, headers=all_headers, reason=reason))
        return out or b""

    def stream_head(self, headers: list[tuple[bytes, bytes]], *, method: str = "GET",
                    fixed: bytes = b"") -> tuple[bytes, bool]:
        """A streamed 200's head, made here, and whether its body is chunked: the rest of
        the response is the caller's to frame (:class:`~streamcore.proto.sse.SSEFramer`),
        so h11 (if it had this request) is let go until the next request.  Framing as RFC
        9112 section 6.3 has it: chunked for an HTTP/1.1 client, close-delimited for
        HTTP/1.0 (which cannot read chunks); a HEAD response has no body at all.
        ``fixed``: the first fields, already written by :func:`field_lines` (the fields
        every stream of a server carries, made once, not per stream)."""
        self.head_only = method == "HEAD"
        http11 = self._http11
        we_close = (b"connection", b"close") in headers
        keep = self._keep = http11 and not self._client_close and not we_close
        head = b"".join([b"HTTP/1.1 200 OK\r\ndate: ", http_date(), CRLF, fixed,
                         field_lines(headers),
                         b"transfer-encoding: chunked\r\n" if http11 else b"",
                         b"" if keep or we_close else b"connection: close\r\n", CRLF])
        conn = self._conn
        if conn is not None:
            data, self._eof = conn.trailing_data
            self._raw += data
            self._conn = None
        return head, http11 and not self.head_only

    def response_body(self, body: bytes) -> bytes:
        """A whole (Content-Length) body: once per response, not per token."""
        if not body or self.head_only:
            return b""
        conn = self._conn
        if conn is None:
            # h11's ContentLengthWriter's rule (RFC 9112 section 6.2: the length said).
            if len(body) > self._remaining:
                raise h11.LocalProtocolError("Too much data for declared Content-Length")
            self._remaining -= len(body)
            return body
        return conn.send(h11.Data(data=body)) or b""

    def end_response(self) -> bytes:
        """The end of a complete response's body (a streamed body's end is its
        framer's)."""
        conn = self._conn
        if conn is None:
            if self._remaining:
                raise h11.LocalProtocolError("Too little data for declared Content-Length")
            return b""
        return conn.send(h11.EndOfMessage()) or b""

    def next_cycle(self) -> tuple[bool, Request | None]:
        """After a response has been written: ``(keep_open, pipelined_request)``."""
        conn = self._conn
        if conn is None:  # a fast-path cycle, or one whose response was streamed
            if not self._keep:
                self._to("close")
                return False, None
            self._new_cycle()
            if not self._raw:
                return True, None
            self._to("data")
            return True, self._begin(self._raw)
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
            self._to("close")
            return False, None
        conn.start_next_cycle()
        pending = _unparsed(conn)
        self._new_cycle()
        if not pending:
            if self._fast:  # h11 holds nothing: the next cycle starts on the fast path
                self._conn = None
                self._eof = conn.trailing_data[1]
            return True, None
        # Only the first max_head_bytes + 1 bytes are kept as the raw head: a copy of all
        # of them per request made a long pipeline quadratic.
        leftover = _unparsed_head(conn, self.limits.max_head_bytes + 1)
        self._to("data")
        self._take_head_bytes(leftover)
        self._cycle_fed = pending
        return True, self._advance()

    def _new_cycle(self) -> None:
        if self._cycle_fed:  # (h11's cycle kept the raw head)
            self._head_bytes = bytearray()
            self._cycle_fed = 0
        self.pipelined_bytes = 0
        self.phase = HTTP_STATES.next(self.phase, "done")

    def take_upgrade_tail(self) -> bytes:
        """Bytes received after an upgrade request's head (the peer's first frames)."""
        conn = self._conn or self._h11_for_response()
        self._to("upgrade")
        return conn.trailing_data[0]

    def _h11_for_response(self) -> h11.Connection:
        """h11 for the rest of a fast-path cycle, for a response only h11 writes: told a
        request of the same method, version and Connection (all its response side reads),
        then the bytes held past it."""
        conn = self._conn = self._new_h11()
        conn.receive_data(b"%s / HTTP/%s\r\nhost: h\r\n%s\r\n" % (
            self._verb, b"1.1" if self._http11 else b"1.0",
            b"connection: close\r\n" if self._client_close else b""))
        conn.next_event()  # the Request
        conn.next_event()  # its EndOfMessage
        conn.receive_data(bytes(self._raw))
        self._raw.clear()
        if self._eof:
            conn.receive_data(b"")
        return conn

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)

    def _informational(self, status: int) -> bytes:
        assert self._conn is not None
        return self._conn.send(h11.InformationalResponse(status_code=status, headers=[])) or b""


def field_lines(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """Fields as :meth:`HTTPSession.stream_head` writes them, each line with its CRLF:
    its ``fixed`` argument."""
    return b"".join([name + b": " + value + CRLF for name, value in headers])


def chunk_head(size: int) -> bytes:
    """The chunk-size line of a chunk of ``size`` bytes (RFC 9112 section 7.1)."""
    return b"%x\r\n" % size


def _check_framing(raw_head: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Reject what makes a request's length ambiguous (RFC 9112 section 6.3, 6.1) that h11
    lets through.  (h11 itself refuses a Content-Length that is not digits, and a missing
    or repeated Host, RFC 9112 section 3.2, before we see the head.)"""
    names = [name for name, _ in headers]
    if b"transfer-encoding" in names and b"content-length" in names:
        raise ProtocolError("both Transfer-Encoding and Content-Length")
    lowered = raw_head.lower()
    # h11 folds identical duplicates ("5" twice, or "5, 5") into one; we refuse them.
    lengths = [line for line in lowered.split(b"\n") if line.startswith(b"content-length:")]
    if len(lengths) > 1 or (lengths and b"," in lengths[0]):
        raise ProtocolError("duplicate Content-Length")
    for name, value in headers:
        if name == b"host" and _HOST.match(value) is None:
            # RFC 9112 section 3.2: 400 for "a Host header field with an invalid value".
            raise ProtocolError(f"invalid Host {shown(value.decode('latin-1'))}")
