"""streamcore.proto.http.HTTPSession, sans-I/O: the same bytes give the same requests
however they are cut, and every bound and smuggling shape is refused with its status."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore.errors import BodyTooLarge, HeadTooLarge, ProtocolError
from streamcore.limits import Limits
from streamcore.proto.http import HTTPSession, Phase, Request, field_lines

LIMITS = Limits(max_head_bytes=1024, max_header_count=10, max_body_bytes=100)


def key(request: Request) -> tuple[object, ...]:
    return (request.method, request.target, request.path, request.query,
            [tuple(h) for h in request.headers], request.body, request.http_version)


def run_session(chunks: list[bytes], limits: Limits = LIMITS) -> list[Request]:
    """Feed ``chunks``; answer each request (an empty 200) and go on to the next, as the
    I/O layer does.  Returns every request, in order."""
    session = HTTPSession(limits)
    out: list[Request] = []
    for chunk in chunks:
        request = session.receive(chunk)
        while request is not None:
            out.append(request)
            session.response_head(200, [(b"content-length", b"0")], method=request.method)
            session.end_response()
            keep_open, request = session.next_cycle()
            if not keep_open:
                assert request is None
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(points)), len(data)]
    # No empty chunk: receive(b"") means end of input.
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


GET = (b"GET /v1/models?limit=2&x=%20y HTTP/1.1\r\nHost: example.com\r\n"
       b"User-Agent: test/1.0\r\nAccept: */*\r\n\r\n")
# A body that looks like the end of a head and a next request: it is body, nothing else.
CL_BODY = b'{"a": "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"}'
POST_CL = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CL_BODY)
           + CL_BODY)
POST_CHUNKED = (b"POST /echo HTTP/1.1\r\nhost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\n")
EMPTY_POST = b"POST /empty HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
HTTP10 = b"GET /old HTTP/1.0\r\n\r\n"

PIPELINE = GET + POST_CL + POST_CHUNKED + EMPTY_POST + HTTP10


def test_pipeline_all_at_once_gives_the_expected_requests() -> None:
    requests = run_session([PIPELINE])
    assert [r.method for r in requests] == ["GET", "POST", "POST", "POST", "GET"]
    get, post, chunked, empty, old = requests
    assert get.path == "/v1/models" and get.query == "limit=2&x=%20y"
    assert get.target == b"/v1/models?limit=2&x=%20y"
    assert [tuple(h) for h in get.headers] == [
        (b"host", b"example.com"), (b"user-agent", b"test/1.0"), (b"accept", b"*/*")]
    assert get.body == b""
    assert post.body == CL_BODY
    assert post.header(b"content-length") == b"%d" % len(CL_BODY)
    assert chunked.body == b"hello world!"
    assert chunked.header(b"transfer-encoding") == b"chunked"
    assert empty.path == "/empty" and empty.body == b""
    assert old.http_version == b"1.0" and old.path == "/old"


@pytest.mark.parametrize("request_bytes", [GET, POST_CL, POST_CHUNKED, EMPTY_POST, HTTP10,
                                           PIPELINE])
def test_byte_by_byte_equals_all_at_once(request_bytes: bytes) -> None:
    whole = [key(r) for r in run_session([request_bytes])]
    assert whole
    assert [key(r) for r in run_session(byte_by_byte(request_bytes))] == whole


@settings(max_examples=300, deadline=None)
@given(data=st.data(),
       parts=st.lists(st.sampled_from([GET, POST_CL, POST_CHUNKED, EMPTY_POST]),
                      min_size=1, max_size=5),
       close_with_10=st.booleans())
def test_random_cuts_give_the_same_requests(data: st.DataObject, parts: list[bytes],
                                            close_with_10: bool) -> None:
    stream = b"".join(parts) + (HTTP10 if close_with_10 else b"")
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    whole = [key(r) for r in run_session([stream])]
    assert len(whole) == len(parts) + close_with_10
    assert [key(r) for r in run_session(cut(stream, points))] == whole


def test_phase_transitions() -> None:
    session = HTTPSession(LIMITS)
    head_end = POST_CL.index(b"\r\n\r\n") + 4
    assert session.receive(POST_CL[:10]) is None
    assert session.phase is Phase.HEAD
    assert session.receive(POST_CL[10:head_end]) is None
    assert session.phase is Phase.BODY
    request = session.receive(POST_CL[head_end:])
    assert request is not None and session.phase is Phase.HANDLING
    # Pipelined bytes while handling: counted, not parsed yet.
    assert session.receive(GET[:20]) is None
    assert session.pipelined_bytes == 20
    session.response_head(200, [(b"content-length", b"2")])
    session.response_body(b"ok")
    session.end_response()
    keep_open, pipelined = session.next_cycle()
    assert keep_open and pipelined is None
    assert session.phase is Phase.HEAD  # the partial head continues
    request = session.receive(GET[20:])
    assert request is not None and key(request) == key(run_session([GET])[0])


def test_connection_close_ends_the_cycle() -> None:
    session = HTTPSession(LIMITS)
    request = session.receive(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                              + GET)
    assert request is not None
    session.response_head(200, [(b"content-length", b"0")])
    session.end_response()
    assert session.next_cycle() == (False, None)
    assert session.phase is Phase.CLOSED
    assert session.receive(GET) is None


def test_expect_100_continue_goes_to_the_outbox() -> None:
    session = HTTPSession(LIMITS)
    head = (b"POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
            b"Content-Length: 4\r\n\r\n")
    assert session.receive(head) is None
    assert len(session.outbox) == 1 and session.outbox[0].startswith(b"HTTP/1.1 100 ")
    session.outbox.clear()
    request = session.receive(b"body")
    assert request is not None and request.body == b"body"
    assert session.outbox == []


# ----------------------------------------------------------------------------- errors


def feed_expecting_error(chunks: list[bytes], limits: Limits = LIMITS) -> tuple[
        ProtocolError, int]:
    """Feed until the session raises; returns the error and how many bytes had been fed
    (including the chunk that raised)."""
    session = HTTPSession(limits)
    fed = 0
    for chunk in chunks:
        fed += len(chunk)
        try:
            request = session.receive(chunk)
            while request is not None:
                session.response_head(200, [(b"content-length", b"0")])
                session.end_response()
                _, request = session.next_cycle()
        except ProtocolError as exc:
            return exc, fed
    raise AssertionError("no ProtocolError raised")


def head_of(size: int, extra: bytes = b"") -> bytes:
    """A GET head of exactly ``size`` bytes."""
    start = b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"X-Pad: "
    pad = size - len(start) - 4
    assert pad >= 0
    head = start + b"a" * pad + b"\r\n\r\n"
    assert len(head) == size
    return head


@pytest.mark.parametrize("mode", ["burst", "dribble"])
def test_head_at_the_limit_passes(mode: str) -> None:
    head = head_of(LIMITS.max_head_bytes)
    chunks = [head] if mode == "burst" else byte_by_byte(head)
    assert len(run_session(chunks)) == 1


@pytest.mark.parametrize("size", [LIMITS.max_head_bytes + 1, 3 * LIMITS.max_head_bytes])
@pytest.mark.parametrize("mode", ["burst", "dribble"])
def test_head_too_large(size: int, mode: str) -> None:
    head = head_of(size)
    chunks = [head] if mode == "burst" else byte_by_byte(head)
    exc, fed = feed_expecting_error(chunks)
    assert isinstance(exc, ProtocolError) and exc.status == 431
    if mode == "burst":
        assert isinstance(exc, HeadTooLarge)
    else:
        # Refused as soon as the bound is passed, not after the whole head was buffered.
        assert fed <= LIMITS.max_head_bytes + 1


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_head_too_large_at_random_cuts(data: st.DataObject) -> None:
    head = head_of(LIMITS.max_head_bytes + 200)
    points = data.draw(st.lists(st.integers(0, len(head)), max_size=20))
    exc, _ = feed_expecting_error(cut(head, points))
    assert exc.status == 431


def test_head_too_large_in_a_pipelined_request() -> None:
    exc, _ = feed_expecting_error([GET + head_of(LIMITS.max_head_bytes + 1)])
    assert exc.status == 431


def many_headers(count: int) -> bytes:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
    return b"GET / HTTP/1.1\r\nHost: h\r\n" + lines + b"\r\n"


def test_header_count_at_the_limit_passes() -> None:
    assert len(run_session([many_headers(LIMITS.max_header_count)])) == 1


@pytest.mark.parametrize("mode", ["burst", "dribble"])
def test_too_many_headers(mode: str) -> None:
    head = many_headers(LIMITS.max_header_count + 1)
    exc, _ = feed_expecting_error([head] if mode == "burst" else byte_by_byte(head))
    assert isinstance(exc, HeadTooLarge) and exc.status == 431


def test_content_length_over_the_limit_is_refused_at_the_head() -> None:
    head = (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
            % (LIMITS.max_body_bytes + 1))
    session = HTTPSession(LIMITS)
    with pytest.raises(BodyTooLarge) as info:
        session.receive(head)  # no body byte fed
    assert info.value.status == 413


def test_content_length_at_the_limit_passes() -> None:
    body = b"b" * LIMITS.max_body_bytes
    request = (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body)
               + body)
    assert run_session([request])[0].body == body


def chunked_body(sizes: list[int]) -> bytes:
    head = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n" % n + b"c" * n + b"\r\n" for n in sizes) + b"0\r\n\r\n"


@pytest.mark.parametrize("mode", ["burst", "dribble"])
def test_chunked_body_over_the_limit(mode: str) -> None:
    data = chunked_body([60, 60])
    exc, _ = feed_expecting_error([data] if mode == "burst" else byte_by_byte(data))
    assert isinstance(exc, BodyTooLarge) and exc.status == 413


def test_chunked_body_at_the_limit_passes() -> None:
    assert len(run_session([chunked_body([50, 50])])[0].body) == 100


SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                 b"Content-Length: 5\r\n\r\n0\r\n\r\n",
    "duplicate_cl_lines": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                          b"Content-Length: 5\r\n\r\nhello",
    "duplicate_cl_list": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
    "duplicate_cl_list_nospace": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,5\r\n\r\n"
                                 b"hello",
    "conflicting_cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
                      b"Content-Length: 6\r\n\r\nhello!",
    "non_numeric_cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
    "signed_cl": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello",
    "missing_host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two_hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two_hosts_same": b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
    "two_hosts_http10": b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x00\x01\x02 hello there\r\n\r\n",
    "no_version": b"GET /\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "bad_chunk_size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"zz\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
@pytest.mark.parametrize("mode", ["burst", "dribble", "after_valid"])
def test_malformed_or_ambiguous_requests_get_400(name: str, mode: str) -> None:
    data = SMUGGLING[name]
    if mode == "burst":
        chunks = [data]
    elif mode == "dribble":
        chunks = byte_by_byte(data)
    else:  # pipelined behind a valid request
        chunks = [GET + data]
    exc, _ = feed_expecting_error(chunks)
    assert exc.status == 400, exc
    assert not isinstance(exc, HeadTooLarge | BodyTooLarge)


@pytest.mark.parametrize("version", [b"1.2", b"1.9"])
def test_a_higher_http1_minor_version_is_served_as_http11(version: bytes) -> None:
    """RFC 9110 section 2.5: a higher minor version of a major version we implement is
    processed as the highest minor version we conform to (HTTP/1.1): kept alive,
    pipelined, chunked bodies, and a WebSocket handshake (which needs 1.1) all work."""
    data = (b"GET /a HTTP/%b\r\nHost: h\r\n\r\n" % version
            + b"POST /b HTTP/%b\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"2\r\nhi\r\n0\r\n\r\n" % version)
    for chunks in ([data], byte_by_byte(data)):
        requests = run_session(chunks)
        assert [(r.path, r.http_version, r.body) for r in requests] == [
            ("/a", b"1.1", b""), ("/b", b"1.1", b"hi")]
    session = HTTPSession(LIMITS)
    request = session.receive(b"GET / HTTP/%b\r\nHost: h\r\n\r\n" % version)
    assert request is not None
    head, chunked = session.stream_head([(b"content-type", b"text/event-stream")])
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and chunked
    assert b"connection: close" not in head


@pytest.mark.parametrize("version", [b"2.0", b"3.0", b"9.9", b"0.9", b"2.1"])
@pytest.mark.parametrize("mode", ["burst", "dribble", "after_valid"])
def test_another_major_version_gets_505(version: bytes, mode: str) -> None:
    """RFC 9110 section 15.6.6: 505 refuses the major version of the request."""
    data = b"GET / HTTP/%b\r\nHost: h\r\n\r\n" % version
    chunks = {"burst": [data], "dribble": byte_by_byte(data), "after_valid": [GET + data]}[mode]
    exc, _ = feed_expecting_error(chunks)
    assert exc.status == 505 and exc.code == "http_version", exc


def test_http10_without_host_is_fine() -> None:
    assert run_session([HTTP10])[0].header(b"host") is None


def test_unexpected_exceptions_never_leak() -> None:
    """The session raises ProtocolError and nothing else, whatever it is fed."""
    for data in [b"\xff" * 50 + b"\r\n\r\n", b"GET / HTTP/1.1\r\nHost: \xff\x00\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: h\r\n: novalue\r\n\r\n"]:
        session = HTTPSession(LIMITS)
        with pytest.raises(ProtocolError):
            session.receive(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes) -> None:
    session = HTTPSession(LIMITS)
    try:
        request = session.receive(data)
        if request is not None:
            session.response_head(200, [(b"content-length", b"0")])
            session.end_response()
            session.next_cycle()
    except ProtocolError as exc:
        assert exc.status in (400, 413, 431, 501, 505)


# ------------------------------------------------------------------ the phase table (HTTP_STATES)


def test_phases_idle_head_body_handling_idle() -> None:
    session = HTTPSession(LIMITS)
    seen = [session.phase]
    head_end = POST_CL.index(b"\r\n\r\n") + 4
    for part in (POST_CL[:5], POST_CL[5:head_end], POST_CL[head_end:-1]):
        assert session.receive(part) is None
        seen.append(session.phase)
    assert session.receive(POST_CL[-1:]) is not None
    seen.append(session.phase)
    session.response_head(200, [(b"content-length", b"0")])
    session.end_response()
    assert session.next_cycle() == (True, None)
    seen.append(session.phase)
    assert seen == [Phase.IDLE, Phase.HEAD, Phase.BODY, Phase.BODY, Phase.HANDLING,
                    Phase.IDLE]


def test_upgrade_is_terminal() -> None:
    session = HTTPSession(LIMITS)
    request = session.receive(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\n\r\nFRAMES")
    assert request is not None and session.phase is Phase.HANDLING
    assert session.take_upgrade_tail() == b"FRAMES"
    assert session.phase is Phase.UPGRADED and session.phase.terminal
    assert session.receive(b"more") is None  # nothing is parsed any more
    session.close()
    session.fail()
    assert session.phase is Phase.UPGRADED


@pytest.mark.parametrize("phase_bytes", [b"", b"GET / HT", GET, POST_CL[:-3]])
def test_fail_from_any_live_phase_is_error(phase_bytes: bytes) -> None:
    session = HTTPSession(LIMITS)
    if phase_bytes:
        session.receive(phase_bytes)
    assert not session.phase.terminal
    session.fail()
    assert session.phase is Phase.ERROR
    session.fail()  # once terminal, it stays
    session.close()
    assert session.phase is Phase.ERROR
    assert session.receive(GET) is None


def test_close_from_idle_and_twice() -> None:
    session = HTTPSession(LIMITS)
    session.close()
    assert session.phase is Phase.CLOSED
    session.close()
    session.fail()
    assert session.phase is Phase.CLOSED


def test_eof_between_requests_closes() -> None:
    session = HTTPSession(LIMITS)
    assert session.receive(b"") is None
    assert session.phase is Phase.CLOSED


def test_read_timeout_per_phase() -> None:
    from streamcore.proto.http import read_timeout

    limits = Limits(keepalive_timeout_s=1.5, head_timeout_s=2.5, body_timeout_s=3.5)
    assert read_timeout(Phase.IDLE, limits) == 1.5
    assert read_timeout(Phase.HEAD, limits) == 2.5
    assert read_timeout(Phase.BODY, limits) == 3.5
    for phase in (Phase.HANDLING, Phase.UPGRADED, Phase.CLOSED, Phase.ERROR):
        assert read_timeout(phase, limits) is None


def streamed(request_bytes: bytes, headers: list[tuple[bytes, bytes]] | None = None,
             ) -> tuple[HTTPSession, bytes, bool]:
    session = HTTPSession(LIMITS)
    request = session.receive(request_bytes)
    assert request is not None
    head, chunked = session.stream_head(headers or [(b"content-type", b"text/event-stream")],
                                        method=request.method)
    return session, head, chunked


def test_stream_head_is_chunked_for_http11() -> None:
    session, head, chunked = streamed(GET)
    assert chunked
    assert head.startswith(b"HTTP/1.1 200 OK\r\ndate: ")
    assert b"\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" in head
    assert head.endswith(b"\r\n\r\n") and b"connection: close" not in head
    # The stream ends: the connection stays open for the next request.
    assert session.next_cycle() == (True, None) and session.phase is Phase.IDLE


def test_stream_head_for_http10_is_close_delimited() -> None:
    session, head, chunked = streamed(HTTP10)
    assert not chunked
    assert b"transfer-encoding" not in head and b"\r\nconnection: close\r\n" in head
    assert session.next_cycle() == (False, None) and session.phase is Phase.CLOSED


def test_stream_head_for_head_has_no_body() -> None:
    session, head, chunked = streamed(b"HEAD /s HTTP/1.1\r\nHost: h\r\n\r\n")
    assert not chunked and session.head_only
    assert b"transfer-encoding: chunked" in head  # what a GET would get, without the body


def test_stream_head_when_someone_closes() -> None:
    _, head, _ = streamed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert head.count(b"connection: close") == 1
    session, head, _ = streamed(GET, [(b"connection", b"close")])
    assert head.count(b"connection: close") == 1
    assert session.next_cycle() == (False, None)


@pytest.mark.parametrize(("value", "closes"), [
    (b"x-close", False), (b"closed", False), (b"keep-alive, x-close", False),
    (b"foo, Close", True), (b"close", True)])
def test_only_the_close_option_closes_after_a_stream(value: bytes, closes: bool) -> None:
    """RFC 9110 section 7.6.1: Connection is a list of options; "x-close" is not "close"
    (h11 decides so for a complete response, and a stream's end decides the same)."""
    session, head, _ = streamed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: " + value
                                + b"\r\n\r\n")
    assert (b"connection: close" in head) is closes
    assert session.next_cycle()[0] is not closes


def test_bytes_during_a_stream_are_kept_for_the_next_request() -> None:
    session, _, _ = streamed(GET + b"GET /next HT")
    assert session.receive(b"TP/1.1\r\nHost: h\r\n\r\n") is None  # parked, not parsed
    assert session.pipelined_bytes == len(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    keep_open, request = session.next_cycle()
    assert keep_open and request is not None and request.path == "/next"
    assert session.phase is Phase.HANDLING


def test_a_complete_response_that_must_close() -> None:
    session = HTTPSession(LIMITS)
    assert session.receive(HTTP10) is not None
    session.response_head(200, [(b"content-length", b"2")])
    assert session.response_body(b"ok") == b"ok"
    session.end_response()
    assert session.next_cycle() == (False, None) and session.phase is Phase.CLOSED


def test_head_response_has_no_body() -> None:
    session = HTTPSession(LIMITS)
    assert session.receive(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n") is not None
    head = session.response_head(200, [(b"content-length", b"2")], method="HEAD")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert session.response_body(b"ok") == b""


# ------------------------------------------------- bounded work per call (parse_more)


def tiny_chunks(n: int) -> bytes:
    """A chunked POST whose body is ``n`` one-byte chunks: more h11 events than one call
    parses when ``n`` is over EVENTS_PER_CALL."""
    return (b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"1\r\nx\r\n" * n + b"0\r\n\r\n")


CHUNKY = Limits(max_body_bytes=10_000, max_body_chunks=10_000)


def test_a_backlog_is_parsed_by_parse_more_until_the_request() -> None:
    from streamcore.proto.http import EVENTS_PER_CALL

    session = HTTPSession(CHUNKY)
    assert session.receive(tiny_chunks(3 * EVENTS_PER_CALL)) is None
    calls = 1
    request = None
    while request is None:
        assert session.backlog
        request = session.parse_more()
        calls += 1
    assert calls == 4 and not session.backlog  # 3 * 512 chunk events and the end
    assert request.body == b"x" * (3 * EVENTS_PER_CALL)


def test_nothing_is_parsed_after_fail_even_with_a_backlog() -> None:
    """A protocol error (or a read timeout) between two slices of a backlog: the rest of
    the bytes are never parsed, though they hold a complete request."""
    session = HTTPSession(CHUNKY)
    assert session.receive(tiny_chunks(600)) is None and session.backlog
    session.fail()
    assert session.parse_more() is None
    assert not session.backlog and session.phase is Phase.ERROR


def test_parse_more_during_a_stream_leaves_the_next_request_for_its_turn() -> None:
    """RFC 9112 section 9.3.2: the bytes of a pipelined request that came during a
    streamed response are parsed only once that response has ended."""
    session, _, _ = streamed(GET + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    assert session.parse_more() is None
    assert session.phase is Phase.HANDLING and not session.backlog
    keep_open, request = session.next_cycle()
    assert keep_open and request is not None and request.path == "/next"


@pytest.mark.parametrize("request_bytes", [GET, HTTP10, b"GET / HTTP/1.1\r\nHost: h\r\n"
                                          b"Connection: close\r\n\r\n"])
@pytest.mark.parametrize("close", [False, True])
def test_stream_head_with_fixed_fields_is_the_same_bytes(request_bytes: bytes,
                                                         close: bool) -> None:
    """The fields every stream carries, written once by field_lines and passed as
    ``fixed``, give the head the full list gives: same bytes, same keep-alive decision."""
    fixed = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    rest = [(b"x-stream-id", b"abc")] + ([(b"connection", b"close")] if close else [])
    whole, whole_head, whole_chunked = streamed(request_bytes, fixed + rest)
    split = HTTPSession(LIMITS)
    assert split.receive(request_bytes) is not None
    head, chunked = split.stream_head(rest, fixed=field_lines(fixed))
    assert (head, chunked) == (whole_head, whole_chunked)
    assert whole.next_cycle()[0] == split.next_cycle()[0] == (
        request_bytes == GET and not close)


def test_chunk_count_and_declared_size_are_refused_as_they_come() -> None:
    """Two refusals of a chunked body (h11's cycles) checked deterministically here, not
    only when the stateful test happens to draw them: more than max_body_chunks chunks
    (400 too_many_chunks), and a chunk declared larger than 63 bits (400 bad_chunk, before
    any of its data)."""
    head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    limits = Limits(max_body_chunks=3, max_body_bytes=100)
    exc, _ = feed_expecting_error([head, b"1\r\nq\r\n" * 4 + b"0\r\n\r\n"], limits)
    assert (exc.status, exc.code) == (400, "too_many_chunks"), exc
    exc, _ = feed_expecting_error([head, b"1" + b"0" * 17 + b"\r\n"])
    assert (exc.status, exc.code) == (400, "bad_chunk"), exc


def test_lookup_is_the_first_value_of_each_name_made_once() -> None:
    """``Request.lookup`` (the server's several lookups in one call) agrees with
    ``header``: made from the headers when the fast path did not make it (h11's)."""
    request = Request("GET", b"/", "/", "", [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")])
    assert request.fields is None
    fields = request.lookup()
    assert fields == {b"a": b"1", b"b": b"2"}
    assert request.lookup() is fields and request.fields is fields
    assert [request.header(n) for n in (b"a", b"b", b"c")] == [b"1", b"2", None]
