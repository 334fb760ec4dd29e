"""HTTPSession against h11's own verdicts on the same bytes (issue 12, differential).

Where they must agree: HTTPSession is h11 plus stricter checks, so

* every request HTTPSession accepts, a fresh h11 connection accepts too, with the same
  method, target, version, header list and body;
* every request h11 refuses (``RemoteProtocolError``), HTTPSession refuses, with a
  ``ProtocolError`` of a 4xx/5xx status, never another exception.

HTTPSession may refuse what h11 accepts (our stricter rules: smuggling shapes, the Host
value, versions other than HTTP/1.x, sizes); those are listed by reason, not compared.  A
higher HTTP/1 minor version (HTTP/1.2) is accepted by both and served by us as HTTP/1.1 (RFC
9110 section 2.5), so that is what it is compared as.  Both with the session's fast path
(issue 14) and with the session forced onto h11; ``tests/test_http_fastpath.py`` holds the
two against each other step by step.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore.errors import ProtocolError
from streamcore.limits import Limits
from streamcore.proto.http import HTTPSession

LIMITS = Limits(max_head_bytes=2048, max_body_bytes=256, max_header_count=16)

token = st.text("abcxyzGETPOST-!#$%&'*+.^_`|~019", min_size=0, max_size=8)
value = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
header = st.one_of(
    st.tuples(st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection",
                               "X-A", "Expect"]),
              st.one_of(st.sampled_from([b"a", b"3", b"chunked", b"close", b"a, b", b"03",
                                         b"3, 3", b"", b"100-continue", b"[::1]:80"]),
                        value)),
    st.tuples(token, value),
)
body = st.one_of(st.just(b""), st.sampled_from([b"abc", b"3\r\nabc\r\n0\r\n\r\n",
                                                b"1\r\nx\r\n", b"zz\r\n"]), st.binary(max_size=20))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "HEAD"]), token))
    target = draw(st.one_of(st.sampled_from(["/", "/a?b=c", "*", "http://x/"]),
                            st.text("/abc%?=&#", max_size=10)))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/1.9", "HTTP/2.0",
                                    "HTTP/3.0", "HTTP/0.9", "HTTP/1", "http/1.1"]))
    headers = draw(st.lists(header, max_size=5))
    sep = draw(st.sampled_from([b"\r\n", b"\n"]))
    lines = [f"{method} {target} {version}".encode("latin-1")]
    lines += [name.encode("latin-1") + b": " + val for name, val in headers]
    return sep.join(lines) + sep + sep + draw(body)


def h11_verdict(data: bytes) -> tuple[str, object]:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=LIMITS.max_head_bytes)
    conn.receive_data(data)
    parts: list[bytes] = []
    request = None
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return "ok", (request.method, request.target, request.http_version,
                              [(n, v) for n, v in request.headers], b"".join(parts))
            elif event is h11.NEED_DATA or event is h11.PAUSED or \
                    isinstance(event, h11.ConnectionClosed):
                return "incomplete", None
    except h11.RemoteProtocolError as exc:
        return "refused", exc


def ours(data: bytes, fast: bool = True) -> tuple[str, object]:
    session = HTTPSession(LIMITS, fast=fast)
    try:
        request = session.receive(data)
        while request is None and session.backlog:
            request = session.parse_more()
        if request is None:
            return "incomplete", None
    except ProtocolError as exc:
        assert 400 <= exc.status < 600
        return "refused", exc
    return "ok", (request.method.encode(), request.target, request.http_version,
                  list(request.headers), request.body)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "h11_only"])
@settings(max_examples=400, deadline=None)
@given(requests())
def test_http_session_agrees_with_h11(fast: bool, data: bytes) -> None:
    verdict, detail = ours(data, fast)
    theirs, their_detail = h11_verdict(data)
    if verdict == "ok":
        assert theirs == "ok", (data, their_detail)
        assert isinstance(their_detail, tuple)
        method, target, version, headers, body = their_detail
        if version.startswith(b"1.") and version not in (b"1.0", b"1.1"):
            # RFC 9110 section 2.5: we serve a higher HTTP/1 minor version as 1.1.
            version = b"1.1"
        assert detail == (method, target, version, headers, body), data
    if theirs == "refused":
        assert verdict == "refused", (data, their_detail, verdict)
