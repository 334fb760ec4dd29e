"""The common HTTP/1.1 request head read, and the common response head written, without
h11 (issue 14: a new ``h11.Connection``, three ``next_event`` calls and h11's validation
were a third of a new stream's Python time).

A fast path, never a second opinion.  :func:`parse_head` accepts only a complete head
that is plainly well formed (RFC 9112 sections 3 and 5, RFC 9110 section 5.6.2) *and*
one that h11 with ``proto/http.py``'s own checks would accept giving the same request;
anything else returns None -- an incomplete head, an obs-fold, a bare CR or LF, a NUL
or other control character, Transfer-Encoding, Expect, Upgrade, CONNECT, a repeated or
odd Content-Length, Host or Connection, a version other than HTTP/1.0 and 1.1, a head
or request line over its bound, too many fields -- and the session hands the bytes to
h11 exactly as before, so every refusal, its status and every limit stay what they
were.  :func:`complete_head` likewise writes only what h11 would write byte for byte
(``Connection: close`` placed and cased as h11 places it) and leaves the rest to h11.
``tests/test_http_fastpath.py`` and ``fuzz/fuzz_http.py`` check both differentially
against the session forced onto h11.  The other bytes written without h11 live here too:
the Date (:func:`http_date`), the reason phrases, :func:`error_response`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from email.utils import formatdate

from ..limits import Limits

CRLF = b"\r\n"
REASONS = {
    200: b"OK", 101: b"Switching Protocols", 204: b"No Content", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
    408: b"Request Timeout", 413: b"Content Too Large", 414: b"URI Too Long",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content", 426: b"Upgrade Required",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error",
    501: b"Not Implemented", 502: b"Bad Gateway", 503: b"Service Unavailable",
    504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """RFC 9110 section 6.6.1: an origin server with a clock sends Date.  Cached per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode())
    return _date_cache[1]


#: tchar (RFC 9110 section 5.6.2): the characters of a token (a method, a field name).
_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
#: field-vchar (RFC 9112 section 5, RFC 9110 section 5.5): VCHAR and obs-text.  Stricter
#: than h11, which also lets other control characters through (h11 issue 57): those
#: heads go to h11.
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
#: A field value without its OWS: words of field-vchar separated by SP or HTAB.
_VALUE = _VCHAR + rb"*+(?:[ \t]++" + _VCHAR + rb"++)*+"
#: A whole head: request line (RFC 9112 section 3: method SP request-target SP
#: HTTP-version, the target visible ASCII as h11 has it), field lines ("field-name ':'
#: OWS field-value OWS CRLF", section 5), the empty line.  Possessive quantifiers
#: (Python 3.11): no backtracking, linear in the head whatever it holds.
_HEAD = re.compile(rb"(" + _TCHAR + rb"++) ([\x21-\x7e]++) HTTP/(1\.[01])\r\n((?:"
                   + _TCHAR + rb"++:[ \t]*+" + _VALUE + rb"[ \t]*+\r\n)*+)\r\n")
#: A Host value (RFC 9112 section 3.2, RFC 3986 section 3.2.2): an IP literal or a name of
#: unreserved, percent-encoded and sub-delimiter characters, and a port.  A comma is a
#: sub-delimiter, but in a field value it makes a list: "Host: a, b" is refused, as nginx
#: does.
HOST = re.compile(rb"(\[[0-9A-Za-z:.\-]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(:[0-9]*)?\Z")
#: Fields that must not repeat on the fast path (h11 and http.py judge repeats).
_SINGLE = (b"host", b"content-length", b"connection")
#: h11 refuses a Content-Length of more digits (CONTENT_LENGTH_MAX_DIGITS).
_LENGTH_DIGITS = 20

#: What :func:`parse_head` found: method, target, version, ``(name, value)`` fields
#: (names lowercased), the first value of each name, the body's length, whether the
#: client asked to close (RFC 9112 section 9.6) and the offset just past the head.
Head = tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], dict[bytes, bytes], int, bool,
             int]


def parse_head(buf: bytes | bytearray, limits: Limits) -> Head | None:
    """The request head at the start of ``buf``, if the fast path takes it (see the
    module's docstring); None hands the bytes to h11."""
    end = buf.find(b"\r\n\r\n", 0, limits.max_head_bytes)
    if end < 0:  # incomplete, or over max_head_bytes: h11 answers (431 for the size)
        return None
    end += 4
    match = _HEAD.fullmatch(buf, 0, end)
    if match is None:
        return None
    method, target, version, block = match.groups()
    # The request line's LF must fall within max_request_line_bytes (else 414, http.py's):
    # the head is the request line, its CRLF, the field lines (block), the last CRLF.
    if end - len(block) - 3 > limits.max_request_line_bytes or method == b"CONNECT":
        return None
    headers = []
    if block:
        # _HEAD matched every line: a token (no colon in it), a colon, a value with OWS.
        lines = block[:-2].split(b"\r\n")
        if len(lines) > limits.max_header_count:
            return None
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip(b" \t")))
    fields = dict(headers)
    if len(fields) != len(headers):  # a name repeats: fine unless it is one of these
        names = [name for name, _ in headers]
        if any(names.count(name) > 1 for name in _SINGLE):
            return None
        fields = dict(reversed(headers))  # the first value of each, as h11's users see
    # Fields whose request h11 treats specially (chunked bodies, 100 Continue, a protocol
    # switch): such a request is h11's.
    if b"transfer-encoding" in fields or b"expect" in fields or b"upgrade" in fields:
        return None
    host = fields.get(b"host")
    if host is None:
        if version == b"1.1":  # RFC 9112 section 3.2: required of HTTP/1.1 (400, h11's)
            return None
    elif HOST.match(host) is None:
        return None
    length = 0
    digits = fields.get(b"content-length")
    if digits is not None:
        # RFC 9110 section 8.6: 1*DIGIT; over max_body_bytes is http.py's 413.
        if not digits.isdigit() or len(digits) > _LENGTH_DIGITS:
            return None
        length = int(digits)
        if length > limits.max_body_bytes:
            return None
    close = False
    connection = fields.get(b"connection")
    if connection is not None:
        for token in connection.lower().split(b","):
            token = token.strip()
            if token == b"close":
                close = True
            elif token and token != b"keep-alive":  # "upgrade" and the like: h11's
                return None
    return method, target, version, headers, fields, length, close, end


_NAMES = re.compile(_TCHAR + rb"++(?:\x00" + _TCHAR + rb"++)*+")
#: h11's field-value (its _abnf.py): no NUL, no whitespace but SP and HTAB inside.
_VALUE = rb"(?:[^\x00\s]++(?:[ \t]++[^\x00\s]++)*+)?"
_VALUES = re.compile(_VALUE + rb"(?:\x00" + _VALUE + rb")*+")
_WRITTEN_BY_H11 = frozenset((b"transfer-encoding", b"host"))


def complete_head(status: int, headers: Sequence[tuple[bytes, bytes]], reason: bytes,
                  date: bytes, client_close: bool) -> tuple[bytes, int, bool] | None:
    """A complete response's head as h11 writes it: ``(bytes, body length, we close)``,
    or None when the response is one h11 must write (or refuse): a status under 200, a
    field h11 would refuse or rewrite (Transfer-Encoding, Host, no Content-Length where a
    body is framed by it, a Connection other than "close").  ``client_close``: the
    request asked to close, or was HTTP/1.0 (h11 then moves any Connection field to the
    end as ``Connection: close``, RFC 9112 section 9.6)."""
    if type(status) is not int or not 200 <= status < 1000:
        return None
    if headers:
        # Every name a token and every value h11's field-value, checked in two regular
        # expression calls: joined by NUL, which neither may hold (the counts say so).
        try:
            names = b"\x00".join([name for name, _ in headers])
            values = b"\x00".join([value for _, value in headers])
        except TypeError:  # not bytes: h11 converts and checks them
            return None
        nul = len(headers) - 1
        if (names.count(b"\x00") != nul or values.count(b"\x00") != nul
                or _NAMES.fullmatch(names) is None or _VALUES.fullmatch(values) is None):
            return None
    length = -1
    we_close = False
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > _LENGTH_DIGITS:
                return None
            length = int(value)
        elif low == b"connection":
            if value.lower() != b"close":
                return None
            we_close = True
        elif low in _WRITTEN_BY_H11:
            return None
    if status in (204, 304):  # RFC 9110 sections 15.3.5, 15.4.5: no body, whatever told
        length = 0
    elif length < 0:  # h11 would frame it chunked (or close-delimited) and say so
        return None
    if client_close:
        headers = [field for field in headers if field[0].lower() != b"connection"]
        headers.append((b"Connection", b"close"))
    lines = [b"HTTP/1.1 %d %s\r\ndate: %s" % (status, reason, date)]
    lines += [b"%s: %s" % field for field in headers]
    lines.append(b"\r\n")
    return b"\r\n".join(lines), length, we_close


def error_response(
    status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """A complete response that closes the connection, built without h11 (whose state may
    be ERROR by now).  ``body``: the error envelope (:func:`streamcore.errors.envelope`)."""
    reason = REASONS.get(status, b"Error")
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"date: " + http_date(),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *(name + b": " + value for name, value in extra),
    ]
    return CRLF.join(lines) + CRLF + CRLF + body
