"""The strict fast path for the common request head (issue 14, ``proto/fasthead.py``),
differentially: the session on its fast path against the same session forced onto h11
(``HTTPSession(limits, fast=False)``, what every request went through before), fed the
same generated heads -- valid ones and near-valid mutations (duplicated or comma'd
Content-Length, Transfer-Encoding with Content-Length, obs-fold, a bare LF or CR, NUL and
other control characters, a space before the colon, long lines, HTTP/1.0, 1.2, 2.0, HEAD,
pipelined pairs) -- cut at random points or byte by byte, answered whole or streamed:
every step must say the same (``fuzz/_http_diff.py``).  A head the fast path takes is
thereby one h11 takes identically; ``tests/test_http_differential.py`` also holds the
fast path against a bare h11 connection.
"""

from __future__ import annotations

import random

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz._http_diff import ANSWERS, LIMITS, Plan, random_plan, transcript
from streamcore.errors import ProtocolError
from streamcore.limits import Limits
from streamcore.proto.fasthead import complete_head, parse_head
from streamcore.proto.http import HTTPSession, Phase, Request

# -------------------------------------------------------------------- generated heads

VALID_METHODS = [b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"DELETE", b"get"]
VALID_TARGETS = [b"/", b"/v1/chat/completions", b"/a?b=c&d=%20", b"*", b"http://x/y", b"/?"]
VALID_FIELDS = [(b"Accept", b"*/*"), (b"User-Agent", b"python-httpx/0.27"),
                (b"accept-encoding", b"gzip, deflate"), (b"Content-Type", b"application/json"),
                (b"Last-Event-ID", b"s1-e-3"), (b"X-Empty", b""), (b"X-Ows", b" \ta  b\t "),
                (b"Cookie", b"a=1"), (b"Cookie", b"b=2"), (b"x-obs", b"\xff\xfe"),
                (b"Keep-Alive", b"timeout=5"), (b"X-Tab", b"a\tb")]
CONNECTION = [None, None, b"keep-alive", b"close", b"Keep-Alive, close", b"CLOSE"]
HOSTS = [b"h", b"127.0.0.1:8000", b"[::1]:80", b"example.com:"]


def _replace_line(lines: list[bytes], index: int, line: bytes) -> list[bytes]:
    return [*lines[:index], line, *lines[index + 1:]]


#: Near-valid mutations of a valid request (its lines without line ends, its body),
#: each something a fast path could get wrong: (name, function of (lines, body, n)).
MUTATIONS = {
    "dup_cl": lambda lines, body, n: ([*lines, b"Content-Length: %d" % len(body)], body),
    "dup_cl_other": lambda lines, body, n: ([*lines, b"content-length: %d" % (n % 7)], body),
    "comma_cl": lambda lines, body, n: (
        [*lines[:1], b"Content-Length: %d, %d" % (len(body), len(body)), *lines[1:]], body),
    "te_cl": lambda lines, body, n: ([*lines, b"Transfer-Encoding: chunked"], body),
    "te_only": lambda lines, body, n: (
        [line for line in lines if not line.lower().startswith(b"content-length")]
        + [b"Transfer-Encoding: chunked"], b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)),
    "obs_fold": lambda lines, body, n: ([*lines, b"X-F: a", b" \tfolded"], body),
    "obs_fold_first": lambda lines, body, n: (
        [lines[0], b" folded", *lines[1:]], body),
    "bare_lf": lambda lines, body, n: (lines, body),  # (done on the joined bytes)
    "bare_cr": lambda lines, body, n: (lines, body),
    "nul": lambda lines, body, n: ([*lines, b"X-N: a\x00b"], body),
    "ctl": lambda lines, body, n: ([*lines, b"X-C: a%cb" % (n % 32 or 1)], body),
    "del": lambda lines, body, n: ([*lines, b"X-D: a\x7fb"], body),
    "space_colon": lambda lines, body, n: ([*lines, b"X-S : a"], body),
    "space_name": lambda lines, body, n: ([*lines, b"X S: a"], body),
    "no_colon": lambda lines, body, n: ([*lines, b"X-S"], body),
    "empty_name": lambda lines, body, n: ([*lines, b": a"], body),
    "long_field": lambda lines, body, n: ([*lines, b"X-L: " + b"v" * (400 + n % 200)], body),
    "long_target": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b" /", b" /" + b"t" * (140 + n % 40), 1)),
        body),
    "many_fields": lambda lines, body, n: (lines + [b"X-%d: 1" % i for i in range(8)], body),
    "http10": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0][:-3] + b"1.0"), body),
    "http12": lambda lines, body, n: (_replace_line(lines, 0, lines[0][:-3] + b"1.2"), body),
    "http20": lambda lines, body, n: (_replace_line(lines, 0, lines[0][:-3] + b"2.0"), body),
    "lower_http": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b"HTTP/", b"http/")), body),
    "no_host": lambda lines, body, n: (
        [line for line in lines if not line.lower().startswith(b"host:")], body),
    "two_hosts": lambda lines, body, n: ([*lines, b"host: h"], body),
    "bad_host": lambda lines, body, n: ([*lines, b"X-H: 1"], body) if n % 2 else (
        [b"Host: a b" if line.lower().startswith(b"host:") else line for line in lines],
        body),
    "host_list": lambda lines, body, n: (
        [b"Host: a, b" if line.lower().startswith(b"host:") else line for line in lines],
        body),
    "big_cl": lambda lines, body, n: (
        [*lines, b"Content-Length: %d" % (LIMITS.max_body_bytes + 1 + n % 3)], b""),
    "long_cl": lambda lines, body, n: ([*lines, b"Content-Length: " + b"0" * 21], b""),
    "signed_cl": lambda lines, body, n: ([*lines, b"Content-Length: +1"], b"x"),
    "upgrade": lambda lines, body, n: (
        [*lines, b"Upgrade: websocket", b"Connection: Upgrade"], body),
    "conn_upgrade": lambda lines, body, n: ([*lines, b"Connection: keep-alive, Upgrade"], body),
    "conn_other": lambda lines, body, n: ([*lines, b"Connection: x-close"], body),
    "expect": lambda lines, body, n: ([*lines, b"Expect: 100-continue"], body),
    "connect": lambda lines, body, n: (
        _replace_line(lines, 0, b"CONNECT h:443 " + lines[0].split(b" ")[-1]), body),
    "bad_method": lambda lines, body, n: (
        _replace_line(lines, 0, b"G(T" + lines[0][lines[0].index(b" "):]), body),
    "double_space": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b" ", b"  ", 1)), body),
    "tab_sep": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b" ", b"\t", 1)), body),
    "target_ctl": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b" /", b" /\x7f", 1)), body),
    "target_high": lambda lines, body, n: (
        _replace_line(lines, 0, lines[0].replace(b" /", b" /\xff", 1)), body),
    "leading_crlf": lambda lines, body, n: ([b"", *lines], body),
    "short_body": lambda lines, body, n: (lines, body[:-1]),
    "long_body": lambda lines, body, n: (lines, body + b"!"),
}


@st.composite
def one_request(draw: st.DrawFn) -> bytes:
    """A valid request, or (two times in five) one with a near-valid mutation."""
    method = draw(st.sampled_from(VALID_METHODS))
    target = draw(st.sampled_from(VALID_TARGETS))
    lines = [method + b" " + target + b" HTTP/1.1",
             b"Host: " + draw(st.sampled_from(HOSTS))]
    lines += [name + b": " + value for name, value in
              draw(st.lists(st.sampled_from(VALID_FIELDS), max_size=4, unique=True))]
    connection = draw(st.sampled_from(CONNECTION))
    if connection is not None:
        lines.append(b"Connection: " + connection)
    lines = draw(st.permutations(lines[1:])) if draw(st.booleans()) else lines[1:]
    lines = [method + b" " + target + b" HTTP/1.1", *lines]
    body = b""
    if draw(st.booleans()):
        body = draw(st.sampled_from([b"", b"x", b'{"a": 1}', b"b" * LIMITS.max_body_bytes]))
        lines.append(draw(st.sampled_from([b"Content-Length", b"content-length",
                                           b"CONTENT-LENGTH"])) + b": %d" % len(body))
    mutate = draw(st.sampled_from([False, False, False, True, True]))
    mutation = draw(st.sampled_from(sorted(MUTATIONS))) if mutate else None
    return build(lines, body, mutation, draw(st.integers(0, 1000)))


def build(lines: list[bytes], body: bytes, mutation: str | None, n: int) -> bytes:
    """The request of ``lines`` and ``body``, mutated (``n`` picks where and how)."""
    if mutation is not None:
        lines, body = MUTATIONS[mutation](lines, body, n)
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if mutation in ("bare_lf", "bare_cr"):
        ends = [i for i in range(len(head) - 1) if head[i:i + 2] == b"\r\n"]
        at = ends[n % len(ends)]
        head = head[:at] + head[at + 1:] if mutation == "bare_lf" else \
            head[:at + 1] + head[at + 2:]
    return head + body


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    data = b"".join(draw(st.lists(one_request(), min_size=1, max_size=3)))
    if draw(st.sampled_from([False] * 7 + [True])):  # a byte flipped, inserted or dropped
        pos = draw(st.integers(0, len(data) - 1))
        byte = bytes([draw(st.integers(0, 255))])
        data = draw(st.sampled_from([data[:pos] + byte + data[pos + 1:],
                                     data[:pos] + byte + data[pos:],
                                     data[:pos] + data[pos + 1:]]))
    return data


def same(data: bytes, plan: Plan) -> int:
    fast, taken = transcript(data, plan, fast=True)
    slow, none = transcript(data, plan, fast=False)
    assert none == 0
    assert fast == slow, (data, plan)
    return taken


@settings(max_examples=500, deadline=None)
@given(data=streams(), seed=st.integers(0, 2**32))
def test_fast_path_says_what_h11_says(data: bytes, seed: int) -> None:
    same(data, random_plan(random.Random(seed), len(data)))


@settings(max_examples=60, deadline=None)
@given(data=streams(), answers=st.lists(st.integers(0, len(ANSWERS) - 1), min_size=1,
                                        max_size=4), eof=st.booleans())
def test_byte_by_byte_says_what_h11_says(data: bytes, answers: list[int], eof: bool) -> None:
    same(data, Plan(list(range(1, len(data))), answers, [0, 1], eof))


BASES = [
    ([b"GET /a?b HTTP/1.1", b"Host: h", b"Accept: */*"], b""),
    ([b"POST /v1/chat/completions HTTP/1.1", b"host: 127.0.0.1:8000",
      b"Content-Type: application/json", b"Content-Length: 8"], b'{"a": 1}'),
    ([b"HEAD / HTTP/1.1", b"Host: [::1]:80", b"Connection: keep-alive"], b""),
]
NEXT = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_mutation_says_what_h11_says(mutation: str) -> None:
    """Each near-valid shape, on each base request, alone and with a request pipelined
    behind it, whole, byte by byte, cut after it, with an EOF, answered each way."""
    for lines, body in BASES:
        for n in (0, 7, 33):
            data = build(lines, body, mutation, n)
            same(data, Plan(list(range(1, len(data))), [0], [0], True))
            # Pipelined behind a request, arriving (with the EOF) while it is answered.
            for answers in ([0], [1]):
                same(NEXT + data, Plan([len(NEXT) + 5], answers, [2], True))
            for tail in (b"", NEXT):
                for plan in (Plan([], [0, 1]), Plan([], [1, 2]), Plan([], [2, 0]),
                             Plan([], [5]), Plan([len(data)], [0], [1]),
                             Plan([], [0], [0], True)):
                    same(data + tail, plan)


def test_the_common_requests_take_the_fast_path() -> None:
    """Not vacuous: what clients send is taken without h11, whole or cut, pipelined or
    not; a cycle after one h11 had (chunked) comes back to the fast path once h11 holds
    nothing (requests pipelined behind it stay h11's: no copy back per request)."""
    get = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    post = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: a\r\ncontent-type: application/json"
            b"\r\ncontent-length: 5\r\n\r\nhello")
    chunked = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"2\r\nhi\r\n0\r\n\r\n")
    old = b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    head = post.index(b"\r\n\r\n") + 6
    for data, cuts, expected in [
        (get, [], 1), (post, [head], 1), (get + post + get, [], 3),
        (get + post, [len(get) + 3], 1), (chunked + get + post, [len(chunked)], 2),
        (get + old + get, [], 2),
    ]:
        for answers in ([0], [1], [0, 1, 2]):
            assert same(data, Plan(cuts, answers)) == expected, (data, answers)
    # Behind a chunked request, in h11's buffer: h11's, unless a stream let h11 go.
    assert same(chunked + get, Plan([], [0])) == 0
    assert same(chunked + get, Plan([], [1])) == 1


# ------------------------------------------------------------------- parse_head alone

VALID = (b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-E:\r\nX-F: \t a  b \t\r\nAccept: */*\r\n\r\n")


def test_parse_head_gives_what_h11_gives() -> None:
    head = parse_head(VALID + b"next", LIMITS)
    assert head is not None
    method, target, version, headers, fields, length, close, end = head
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(VALID)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert (method, target, version, headers) == (
        event.method, event.target, event.http_version, list(event.headers))
    assert (length, close, end) == (0, False, len(VALID))
    assert fields == dict(headers)


@pytest.mark.parametrize("data", [
    VALID[:-1],  # incomplete
    b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 600 + b"\r\n\r\n",  # over max_head_bytes
    b"GET /" + b"l" * 160 + b" HTTP/1.1\r\nHost: h\r\n\r\n",  # request line (414)
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 8 + b"\r\n",  # too many fields
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: " + b"0" * 21 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 65\r\n\r\n",  # over max_body_bytes
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",  # bare CR
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",  # h11 takes it: not the fast path
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_parse_head_declines(data: bytes) -> None:
    assert parse_head(data, LIMITS) is None
    assert same(data, Plan([], [0])) == 0


@pytest.mark.parametrize(("value", "close"), [
    (b"close", True), (b"Keep-Alive", False), (b"keep-alive, close", True),
    (b"keep-alive,,", False)])
def test_parse_head_reads_connection(value: bytes, close: bool) -> None:
    data = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: " + value + b"\r\nA: 1\r\nA: 2\r\n\r\n"
    head = parse_head(data, LIMITS)
    assert head is not None and head[6] is close
    assert head[4][b"a"] == b"1"  # the first of repeated values
    assert same(data, Plan([], [0])) == 1


def test_http10_without_host_and_a_repeated_field_take_the_fast_path() -> None:
    data = b"POST /x HTTP/1.0\r\nContent-Length: 2\r\nA: 1\r\nA: 2\r\n\r\nhi"
    head = parse_head(data, LIMITS)
    assert head is not None and head[2] == b"1.0" and head[5] == 2
    assert same(data, Plan([], [0, 1])) == 1


# ---------------------------------------------------------------- complete_head alone

CL = (b"content-length", b"2")


@pytest.mark.parametrize(("status", "headers"), [
    (101, [CL]), (199, [CL]), (1000, [CL]), (True, [CL]),
    (200, [(b"content-length", "2")]),  # a str: h11 converts it
    (200, [CL, (b"x y", b"1")]), (200, [CL, (b"x\x00y", b"1")]), (200, [CL, (b"x", b"1\x00")]),
    (200, [CL, (b"x", b"a\r\nb")]), (200, [CL, (b"x", b" a")]),
    (200, [CL, CL]), (200, [(b"content-length", b"+2")]),
    (200, [(b"content-length", b"9" * 21)]), (200, [CL, (b"connection", b"keep-alive")]),
    (200, [CL, (b"transfer-encoding", b"chunked")]), (200, [CL, (b"Host", b"h")]),
    (200, []), (200, [(b"content-type", b"text/plain")]),
])
def test_complete_head_leaves_to_h11(status: int, headers: list[tuple[bytes, bytes]]) -> None:
    assert complete_head(status, headers, b"", b"d", False) is None


def test_complete_head_writes_what_h11_writes() -> None:
    def h11_head(request: bytes, headers: list[tuple[bytes, bytes]], status: int) -> bytes:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(request)
        conn.next_event()
        conn.next_event()
        out = conn.send(h11.Response(status_code=status, headers=[(b"date", b"d"), *headers],
                                     reason=b"R"))
        assert out is not None
        return out

    keep = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    close = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    for headers, status in [([CL, (b"X-A", b"b c")], 200), ([(b"connection", b"close"), CL], 200),
                            ([], 204), ([(b"content-length", b"0")], 304),
                            ([CL, (b"Connection", b"CLOSE")], 599)]:
        for request, client_close in ((keep, False), (close, True)):
            made = complete_head(status, headers, b"R", b"d", client_close)
            assert made is not None
            assert made[0] == h11_head(request, headers, status), (headers, status)


# ----------------------------------------------------------------- the session's edges


def fast_session(data: bytes) -> tuple[HTTPSession, Request]:
    session = HTTPSession(LIMITS)
    request = session.receive(data)
    assert request is not None and session._conn is None  # taken on the fast path
    return session, request


GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def test_a_body_that_comes_later_and_pipelined_bytes_after_it() -> None:
    session = HTTPSession(LIMITS)
    head = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
    assert session.receive(head + b"01") is None and session.phase is Phase.BODY
    assert session.receive(b"2345") is None and session.phase is Phase.BODY
    request = session.receive(b"6789" + GET)
    assert request is not None and request.body == b"0123456789"
    assert session.pipelined_bytes == len(GET) and session._conn is None


@pytest.mark.parametrize("fast", [True, False])
def test_eof_inside_a_body_is_a_400_either_way(fast: bool) -> None:
    session = HTTPSession(LIMITS, fast=fast)
    assert session.receive(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab") is None
    with pytest.raises(ProtocolError) as info:
        session.receive(b"")
    assert info.value.status == 400
    assert "received 2 bytes, expected 4" in str(info.value)


@pytest.mark.parametrize("fast", [True, False])
def test_eof_while_handling_reaches_the_next_request(fast: bool) -> None:
    """The peer's EOF during a response, with a pipelined request's head and part of its
    body held: the next cycle refuses it (400), fast path or h11."""
    session = HTTPSession(LIMITS, fast=fast)
    assert session.receive(GET + b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
    assert session.receive(b"") is None
    session.response_head(200, [CL])
    session.response_body(b"ok")
    session.end_response()
    with pytest.raises(ProtocolError) as info:
        session.next_cycle()
    assert info.value.status == 400


def test_eof_while_streaming_behind_a_request_h11_had() -> None:
    """h11 had the cycle (chunked); the EOF came while the response streamed: kept when
    h11 is let go, so the held head is refused at the next cycle."""
    session = HTTPSession(LIMITS)
    chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert session.receive(chunked + b"GET / HT") is not None
    assert session.receive(b"") is None
    session.stream_head([(b"content-type", b"text/event-stream")])
    with pytest.raises(ProtocolError) as info:
        session.next_cycle()
    assert info.value.status == 400


def test_the_response_body_is_held_to_its_content_length() -> None:
    session, _ = fast_session(GET)
    session.response_head(200, [(b"content-length", b"3")])
    with pytest.raises(h11.LocalProtocolError):
        session.response_body(b"four")
    assert session.response_body(b"ab") == b"ab"
    with pytest.raises(h11.LocalProtocolError):
        session.end_response()
    assert session.response_body(b"c") == b"c" and session.end_response() == b""


def test_a_head_response_has_no_body_on_the_fast_path() -> None:
    session, request = fast_session(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = session.response_head(200, [CL], method=request.method)
    assert head.endswith(b"content-length: 2\r\n\r\n")
    assert session.response_body(b"ok") == b"" and session.end_response() == b""
    assert session.next_cycle() == (True, None) and session.phase is Phase.IDLE


def test_an_upgrade_tail_on_the_fast_path() -> None:
    """(An upgrade request never takes the fast path, its Upgrade field declines it; were
    a handler to upgrade anyway, the bytes after the head are its tail.)"""
    session, _ = fast_session(GET + b"frames")
    assert session.receive(b" more") is None
    assert session.take_upgrade_tail() == b"frames more"
    assert session.phase is Phase.UPGRADED


def test_a_response_h11_writes_after_a_fast_head_keeps_the_eof() -> None:
    session, _ = fast_session(GET + b"GET / HT")
    assert session.receive(b"") is None
    head = session.response_head(200, [(b"transfer-encoding", b"chunked")])
    assert b"Transfer-Encoding: chunked" in head or b"transfer-encoding: chunked" in head
    assert session._conn is not None  # h11 has the cycle now
    session.end_response()
    with pytest.raises(ProtocolError):  # the held head, cut by the EOF
        session.next_cycle()


def test_h11_is_let_go_when_it_holds_nothing() -> None:
    chunked = (b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n")
    session = HTTPSession(LIMITS)
    assert session.receive(chunked) is not None and session._conn is not None
    session.response_head(200, [CL])
    session.response_body(b"ok")
    session.end_response()
    assert session.next_cycle() == (True, None) and session._conn is None
    assert session.receive(GET) is not None and session._conn is None


def test_fast_false_never_leaves_h11() -> None:
    session = HTTPSession(Limits(), fast=False)
    assert session.receive(GET) is not None and session._conn is not None
    session.response_head(200, [CL])
    session.response_body(b"ok")
    session.end_response()
    assert session.next_cycle() == (True, None) and session._conn is not None
