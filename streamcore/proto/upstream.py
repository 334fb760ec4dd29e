"""The client side of one HTTP/1.1 connection to an upstream LLM server, sans-I/O.

One request at a time (no pipelining: RFC 9112 section 9.3.2 allows it, upstream servers
handle it badly): :meth:`UpstreamSession.request` gives the bytes to send,
:meth:`UpstreamSession.receive` turns the bytes that come back into :class:`Head`,
:class:`Body` and :class:`End` events, de-chunks the body and checks its framing, bounds
the response head and says whether the connection may carry another request
(:attr:`UpstreamSession.reusable`).

Also here: the reading of an upstream's streamed chat completion, chunk by chunk
(:func:`read_chunk`, and :class:`ChunkReader`'s splice of a content-only chunk), so that
the gateway re-frames it into streamcore's own chunks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import ProtocolError
from .jsonbytes import json_string
from .sse import Decoder, Item

#: Response heads larger than this are refused (bytes).
DEFAULT_MAX_HEAD_BYTES = 64 * 1024


class UpstreamError(ProtocolError):
    """The upstream broke HTTP (a malformed response, a head over the bound, the
    connection closed mid-response): the gateway answers 502."""

    status = 502
    type = "upstream_error"
    code = "upstream_protocol_error"


@dataclass(frozen=True, slots=True)
class Target:
    """Where an upstream is: ``http[s]://host[:port][/base path]``."""

    scheme: str
    host: str
    port: int
    #: The path the OpenAI API hangs from, e.g. ``/v1`` (no trailing slash).
    base_path: str
    #: The Host field's value, made once: the IDNA codec is pure Python, ~10 us a request.
    authority: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "authority", (
            host if self.port == default else f"{host}:{self.port}").encode("idna"))

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    def url(self) -> str:
        return f"{self.scheme}://{self.authority.decode()}{self.base_path}"


def parse_target(url: str) -> Target:
    """An upstream's base URL; ``ValueError`` naming what is wrong.  Without a path the
    OpenAI API is taken to be at ``/v1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"upstream URL {url!r}: the scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"upstream URL {url!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"upstream URL {url!r}: no query, fragment or credentials "
                         "(give the key with its own option)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"upstream URL {url!r}: {exc}") from None
    path = parts.path.rstrip("/") or "/v1"
    return Target(parts.scheme, parts.hostname, port, path)


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    status: int
    headers: Sequence[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes


@dataclass(frozen=True, slots=True)
class End:
    """The response is complete."""


Event = Head | Body | End


#: A chunk-size line (RFC 9112 section 7.1): hex digits (at most 16: a size that fits in
#: 64 bits), optional extensions, which are ignored (7.1.1).
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\r\n]*)?")
#: A chunk size alone (no extensions), for :meth:`UpstreamSession.receive_chunk`.
_CHUNK_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
#: What starts a read that is one chunk of one event (:meth:`ChunkReader.one_chunk`): its
#: size alone, and the event's ``id:`` line if it has one (a value without CR, LF or NUL:
#: WHATWG HTML 9.2.6 ignores an id holding NUL, and then this does not match it).
_ONE_START = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n(?:id: ([^\r\n\x00]*)\n)?")
#: The longest chunk-size line accepted (its extensions included), bytes.
MAX_CHUNK_LINE = 1024
#: A status line (RFC 9112 section 4); the reason phrase is ignored.
_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
#: A field line (RFC 9112 section 5, RFC 9110 section 5.5): a token, a colon, the value
#: without its leading and trailing whitespace; no obs-fold (5.2), no control characters.
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
                    rb"((?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?)[ \t]*")
#: A whole response head (its blank line excluded) checked in one match: the status line,
#: then each field line after a CRLF.  The same lines as :data:`_STATUS` and :data:`_FIELD`
#: one line at a time (neither matches CR or LF, so the CRLFs cut the same lines): a field
#: value there is optional whitespace, then visible characters and whitespace, then
#: optional whitespace, which is any run of them.  Group 3: where the field lines start.
#: One match and one ``findall`` cost ~4 us less per response than a match, a
#: ``lower()`` and two group lookups per line (benchmarks/RESULTS.md, "Session 8").
_HEAD_BLOCK = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?"
                         rb"((?:\r\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*)*)")
#: The field lines of a head :data:`_HEAD_BLOCK` passed, as ``(name, value)`` pairs: the
#: value without its leading and trailing whitespace, as :data:`_FIELD` takes it.
_FIELD_LINES = re.compile(rb"\r\n([^:]*):[ \t]*((?:[^\r]*[^\r \t])?)")

def request_head(target: Target, method: str, path: str,
                 headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """A request's head, cut where its Content-Length value goes: made once and kept by
    an upstream for its chat requests (:meth:`UpstreamSession.request_with`).  ``ValueError``
    for a header that would break the head."""
    lines = [b"\r\n"]
    for name, value in headers:
        # A CR or LF would end the field and inject others (RFC 9110 section 5.5).
        if b"\r" in value or b"\n" in value or b"\0" in value or b":" in name:
            raise ValueError(f"header {name!r}: a value must not hold CR, LF or NUL")
        lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"\r\n")
    return (b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-length: "
            % (method.encode(), path.encode(), target.authority), b"".join(lines))


# Where a response is.
_IDLE, _HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _CLOSE, _DONE = range(9)


class UpstreamSession:
    """Requests out, response events in, for one upstream connection.

    A small HTTP/1.1 client written for this one use, not h11: h11 cost about a quarter of
    the gateway's CPU per request and 12-16 us per upstream read (one per token of a paced
    model) -- benchmarks/RESULTS.md, "Gateway overhead".  It is strict where a pooled
    connection could otherwise fall out of step with the upstream (RFC 9112): the head
    bounded, CRLF line ends, one Content-Length or ``Transfer-Encoding: chunked`` (never
    both, section 6.1), chunk sizes in hex only, and a connection is reused only after a
    response whose end was framed, that did not ask to close, and nothing after it.
    """

    __slots__ = ("_buf", "_close", "_left", "_method", "_state", "max_head_bytes", "target")

    def __init__(self, target: Target, *, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        self.target = target
        self.max_head_bytes = max_head_bytes
        self._state = _IDLE
        self._buf = b""
        self._left = 0  # bytes of the body (Content-Length) or of the chunk still to come
        self._close = False  # the connection ends with this exchange
        self._method = ""

    def request(self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]],
                body: bytes = b"") -> bytes:
        """A whole request with a Content-Length body (upstream servers need not read
        chunked request bodies)."""
        return self.request_with(method, request_head(self.target, method, path, headers),
                                 body)

    def request_with(self, method: str, head: tuple[bytes, bytes], body: bytes) -> bytes:
        """:meth:`request` with its head made already (:func:`request_head`, once per
        upstream and endpoint, not per request)."""
        self._method = method
        self._state = _HEAD
        return b"".join((head[0], b"%d" % len(body), head[1], body))

    def receive_chunk(self, data: bytes) -> bytes | None:
        """The data of one whole chunk when ``data`` is exactly that (a size line, the
        data, its CRLF) and the session is between chunks: what :meth:`receive` would give
        as one :class:`Body`, in the state it would leave (between chunks), without the
        event list and the loop.  None: nothing is taken, :meth:`receive` it.  (A read of
        one content-only token goes by :meth:`receive_one` before this.)"""
        if self._state != _CHUNK_LINE or self._buf:
            return None
        nl = data.find(b"\r\n", 0, 18)  # at most 16 hex digits (no extensions here)
        if nl <= 0 or _CHUNK_HEX.fullmatch(data, 0, nl) is None:
            return None
        end = len(data) - 2
        if end - nl - 2 != int(data[:nl], 16) or not data.endswith(b"\r\n") or end <= nl + 2:
            return None
        return data[nl + 2:end]

    def receive_one(self, data: bytes, chunks: ChunkReader) -> bytes | None:
        """When ``data`` is exactly one whole chunk (the session between chunks) holding
        exactly one content-only event of the layout ``chunks`` learned: its content's
        JSON string, taken as :meth:`receive`, :meth:`ChunkReader.feed` and
        :meth:`ChunkReader.literal` would take it (the session stays between chunks; the
        event's id is the decoder's last event ID).  None: nothing is taken.  A paced
        upstream's every token after its first, in one call of each layer."""
        if self._state != _CHUNK_LINE or self._buf:
            return None
        return chunks.one_chunk(data)

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes (``b""``: the upstream closed); the events they complete."""
        events: list[Event] = []
        if not data:
            self._eof(events)
            return events
        state = self._state
        if state in (_DONE, _IDLE):
            # Nothing is asked: bytes now would be read as the next response's.
            self._close = True
            if state == _IDLE:
                raise UpstreamError("the upstream sent a response to no request")
            return events
        buf = self._buf + data if self._buf else data
        pos = 0
        size = len(buf)
        while pos < size:
            state = self._state
            if state in (_CHUNK_DATA, _LENGTH):
                take = min(self._left, size - pos)
                events.append(Body(buf[pos:pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    if state == _LENGTH:
                        self._end(events)
                    else:
                        self._state = _CHUNK_END
            elif state == _CHUNK_LINE:
                nl = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
                if nl < 0:
                    if size - pos > MAX_CHUNK_LINE:
                        raise self._malformed("a chunk-size line too long")
                    break
                match = _CHUNK_SIZE.fullmatch(buf, pos, nl)
                if match is None:
                    raise self._malformed(f"a bad chunk-size line {buf[pos:nl][:40]!r}")
                pos = nl + 2
                self._left = int(match[1], 16)
                self._state = _CHUNK_DATA if self._left else _TRAILERS
            elif state == _CHUNK_END:
                if size - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise self._malformed("no CRLF after a chunk's data")
                pos += 2
                self._state = _CHUNK_LINE
            elif state == _CLOSE:
                events.append(Body(buf[pos:] if pos else buf))
                pos = size
            elif state == _HEAD:
                # Each head measured whole, its blank line included (a 1xx's and the
                # final one's each), whatever the reads' segmentation.
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0 or end + 4 - pos > self.max_head_bytes:
                    if size - pos > self.max_head_bytes:
                        raise self._malformed(f"a response head over {self.max_head_bytes} "
                                              "bytes")
                    break
                block, pos = buf[pos:end], end + 4
                self._on_head(block, events)
            elif state == _TRAILERS:  # trailer fields are skipped (RFC 9112 section 7.1.2)
                if buf.startswith(b"\r\n", pos):
                    pos += 2
                else:
                    end = buf.find(b"\r\n\r\n", pos)
                    if end < 0 or end - pos > self.max_head_bytes:
                        if size - pos > self.max_head_bytes:
                            raise self._malformed(f"trailers over {self.max_head_bytes} bytes")
                        break
                    pos = end + 4
                self._end(events)
            else:  # _DONE: bytes after the response's end
                self._close = True
                pos = size
        self._buf = buf[pos:] if pos < size else b""
        return events

    def _on_head(self, block: bytes, events: list[Event]) -> None:
        match = _HEAD_BLOCK.fullmatch(block)
        if match is None:
            raise self._bad_head(block)
        headers = [(name.lower(), value)
                   for name, value in _FIELD_LINES.findall(block, match.start(3))]
        status = int(match[2])
        if status < 200:  # 1xx: informational, the response follows (RFC 9110 15.2)
            if status == 101:
                raise self._malformed("101 Switching Protocols, never asked")
            return
        head = Head(status, headers)
        events.append(head)
        # HTTP/1.0 or "Connection: close": the connection ends with this response
        # (RFC 9112 section 9.3; 1.0 keep-alive is not worth its ambiguity here).
        close = match[1] == b"0"
        te: list[bytes] = []
        lengths: list[bytes] = []
        for name, value in headers:  # one pass for the three fields that frame the body
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                te.append(value)
            elif name == b"connection" and not close:
                close = any(token.strip().lower() == b"close" for token in value.split(b","))
        self._close = close
        if self._method == "HEAD" or status in (204, 304):  # no body (RFC 9112 6.3)
            self._end(events)
        elif te:
            if lengths:  # RFC 9112 section 6.1: never both; which one is right is unknown
                raise self._malformed("both Transfer-Encoding and Content-Length")
            if b",".join(te).strip().lower() != b"chunked":
                raise self._malformed(f"an unsupported Transfer-Encoding {te!r}")
            self._state = _CHUNK_LINE
        elif lengths:
            if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
                raise self._malformed(f"a bad Content-Length {lengths!r}")
            self._left = int(lengths[0])
            if self._left:
                self._state = _LENGTH
            else:
                self._end(events)
        else:  # the body ends with the connection (RFC 9112 section 6.3, rule 8)
            self._close = True
            self._state = _CLOSE

    def _bad_head(self, block: bytes) -> UpstreamError:
        """What is wrong with a head :data:`_HEAD_BLOCK` refused: its first bad line."""
        lines = block.split(b"\r\n")
        if _STATUS.fullmatch(lines[0]) is None:
            return self._malformed(f"a bad status line {lines[0][:40]!r}")
        line = next(line for line in lines[1:] if _FIELD.fullmatch(line) is None)
        return self._malformed(f"a bad field line {line[:40]!r}")

    def _end(self, events: list[Event]) -> None:
        self._state = _DONE
        events.append(End())

    def _eof(self, events: list[Event]) -> None:
        state = self._state
        self._close = True
        if state == _CLOSE:
            self._end(events)
        elif state != _DONE and state != _IDLE:
            self._state = _IDLE
            raise UpstreamError("the upstream closed the connection mid-response")

    def _malformed(self, what: str) -> UpstreamError:
        self._close = True
        self._state = _IDLE
        return UpstreamError(f"the upstream sent a malformed response: {what}")

    @property
    def reusable(self) -> bool:
        """Whether the last exchange is complete and the connection may carry another."""
        return self._state == _DONE and not self._close

    def next_cycle(self) -> None:
        self._state = _IDLE
        self._buf = b""


# -- a streamed chat completion, read ------------------------------------------------------


@dataclass(slots=True)
class Chunk:
    """What the gateway needs of one upstream ``chat.completion.chunk``.

    ``content``: the text of ``choices[0].delta.content`` when that is all the chunk
    carries (re-framed with streamcore's template: the hot path); ``other``: the chunk
    itself when it carries more (tool calls, reasoning, logprobs, a role): re-sent with
    streamcore's id, model and created; ``finish_reason`` and ``usage`` when present;
    ``error``: the error object of an ``{"error": ...}`` event.
    """

    content: str | None = None
    other: dict[str, Any] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class BadChunk(ValueError):
    """An event that is not a chat completion chunk."""


_PLAIN_DELTA_KEYS = frozenset({"content", "role"})


def read_chunk(data: str) -> Chunk:
    """One upstream SSE event's data (not ``[DONE]``); :class:`BadChunk` if malformed."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadChunk(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise BadChunk("not a JSON object")
    if "error" in obj:
        error = obj["error"]
        return Chunk(error=error if isinstance(error, dict) else {"message": str(error)})
    choices = obj.get("choices")
    if not isinstance(choices, list):
        raise BadChunk("no 'choices' array")
    usage = obj.get("usage")
    chunk = Chunk(usage=usage if isinstance(usage, dict) else None)
    if not choices:
        return chunk
    choice = choices[0]
    if not isinstance(choice, dict) or len(choices) > 1:
        raise BadChunk("'choices' must hold one choice object (n=1)")
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        raise BadChunk("a choice without a 'delta' object")
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise BadChunk("'finish_reason' must be a string or null")
    chunk.finish_reason = finish
    content = delta.get("content")
    if (delta.keys() <= _PLAIN_DELTA_KEYS and choice.get("logprobs") is None
            and (content is None or isinstance(content, str))):
        # Text only (or a role, which streamcore's own first chunk has said already).
        chunk.content = content or None
    else:
        chunk.other = obj
    return chunk


#: A JSON string literal exactly as :func:`~streamcore.proto.jsonbytes.json_string` writes
#: a non-empty value (RFC 8259 section 7: the short escapes only; no ``\\u`` and no ``\\/``,
#: which it never writes), in UTF-8 bytes: such a literal is re-framed as it is, byte for
#: byte.  Possessive: linear.  (It matches no control character: a separator may be one.)
LITERAL = rb'"(?:[^"\\\x00-\x1f]++|\\["\\bfnrt])++"'
_PLAIN_LITERAL = re.compile(LITERAL)

#: Two different string values put in place of a learned content, to prove the place.
_PROBES = ('"0"', "0"), ('"1"', "1")

#: Chunks of a stream tried for learning its shape (an upstream that writes its strings
#: otherwise than ``json_string`` would never be learned: it is parsed whole, as before).
LEARN_TRIES = 3


class ChunkReader:
    """The chunks of one upstream stream, from its body's bytes.

    An upstream's content-only chunks differ only in their content string: the same id,
    model, created and layout around it (vLLM, SGLang, llama.cpp, Ollama, streamcore).
    The first two are parsed whole (:func:`read_chunk`) and the text around the second's
    content string learned (not the first's: learning costs two more whole parses, the
    probes below, and the first token waits for them; a one-token answer never uses what
    was learned); a later chunk that is that text around a plain JSON string literal
    (:data:`LITERAL`, valid UTF-8) is the same chunk with that content, so the literal is
    taken as it is (:meth:`feed`, :meth:`literal`), without parsing the chunk and encoding
    the string again.

    Exact, not heuristic: the place is learned only when two other string literals put
    there are read back (whole) as a content-only chunk with exactly those contents and no
    finish reason, usage or error -- so the place is the content's, and nothing else in
    the chunk depends on it (JSON is context-free: a string token swapped for another is
    the same document with that one value changed; duplicate keys included, since the
    probes are read by the same parser).  Anything else (a role, tool calls, a finish
    reason, usage, an error, another layout) is parsed whole.
    """

    __slots__ = ("_bulk", "_head", "_prefix", "_seen", "_suffix", "_tail", "_tries", "decoder")

    def __init__(self, decoder: Decoder | None = None) -> None:
        #: The body's SSE decoder.
        self.decoder = decoder if decoder is not None else Decoder()
        self._prefix: bytes | None = None
        self._suffix = b""
        self._tries = LEARN_TRIES
        self._seen = False  # a content-only chunk came (the next one is learned from)
        self._bulk = 0  # reads this long or longer hold three events or more, at best
        # The learned layout as a whole event's data line around the literal, and what
        # follows it to the end of its chunk (:meth:`one_chunk`); None: the layout holds a
        # line break or NUL (then never one event so).
        self._head: bytes | None = None
        self._tail = b""

    def feed(self, data: bytes) -> Sequence[Item]:
        """The events of body bytes: each run of content-only chunks of the learned layout
        as a list of their contents' JSON strings (each exactly ``json_string(content)``),
        another event that is one ``data:`` line as its data, undecoded (bytes), any other
        as an :class:`~streamcore.proto.sse.Event` (:meth:`Decoder.feed_around`)."""
        prefix = self._prefix
        if prefix is None or len(data) < self._bulk:
            # A read of one or two events (a paced model's): taken one by one (literal),
            # which costs less than setting up the bulk check of feed_around.
            return self.decoder.feed_raw(data)
        return self.decoder.feed_around(data, prefix, self._suffix, LITERAL)

    def one_chunk(self, data: bytes) -> bytes | None:
        """When a read is exactly one whole chunk of the body (``SIZE CRLF``, the data,
        ``CRLF``; no extensions) whose data is exactly one event ``[id: I LF]data: <the
        learned layout around X> LF LF``, X a plain JSON string literal (:data:`LITERAL`,
        valid UTF-8) and the decoder between events: X (exactly ``json_string(content)``),
        the event taken (its id the decoder's last event ID).  None: nothing is taken.
        The caller checked that the body's chunked coding is between chunks
        (:meth:`UpstreamSession.receive_one`).  The same as the session's
        :meth:`~UpstreamSession.receive`, :meth:`feed` and :meth:`literal`, checked by a
        handful of C calls: a paced model's every token is such a read."""
        head = self._head
        if head is None:
            return None
        match = _ONE_START.match(data)
        if match is None:
            return None
        line_at = match.end()  # the data line's start
        start = line_at + len(head)
        size = len(data)
        stop = size - len(self._tail)
        if (stop < start or not data.startswith(head, line_at) or not data.endswith(self._tail)
                # the chunk's size is its data: what follows its size line, but the CRLF
                or int(match[1], 16) != size - match.end(1) - 4
                or _PLAIN_LITERAL.fullmatch(data, start, stop) is None):
            return None
        literal = data[start:stop]
        if not literal.isascii():
            try:
                literal.decode()
            except UnicodeDecodeError:
                return None
        # The data line's length: to the event's blank line (LF LF), the chunk's CRLF.
        if not self.decoder.take_one(match[2], size - 4 - line_at):
            return None
        return literal

    def literal(self, data: bytes) -> bytes | None:
        """The content of a chunk (an event's data) of the learned layout, as its JSON
        string (exactly ``json_string(content)``); None: read it with :meth:`read`."""
        prefix = self._prefix
        if prefix is None or not data.startswith(prefix) or not data.endswith(self._suffix):
            return None
        start, end = len(prefix), len(data) - len(self._suffix)
        # (start > end: prefix and suffix overlap in data, which is then too short)
        if start > end or _PLAIN_LITERAL.fullmatch(data, start, end) is None:
            return None
        literal = data[start:end]
        if not literal.isascii():
            try:
                literal.decode()
            except UnicodeDecodeError:
                return None
        return literal

    def read(self, text: str) -> Chunk:
        """:func:`read_chunk`; the first few content-only chunks teach the shape."""
        chunk = read_chunk(text)
        if (self._prefix is None and self._tries and chunk.content is not None
                and chunk.other is None and chunk.finish_reason is None
                and chunk.usage is None):
            if self._seen:
                self._tries -= 1
                self._learn(text, chunk.content)
            else:
                self._seen = True
        return chunk

    def _learn(self, text: str, content: str) -> None:
        literal = json_string(content).decode()
        at = text.rfind(literal)  # the content is usually the last string of a chunk
        if at < 0:
            return
        prefix, suffix = text[:at], text[at + len(literal):]
        for probe, value in _PROBES:
            try:
                chunk = read_chunk(prefix + probe + suffix)
            except BadChunk:
                return
            if chunk != Chunk(content=value):
                return
        self._prefix, self._suffix = prefix.encode(), suffix.encode()
        self._bulk = 3 * (len(self._prefix) + len(self._suffix))
        if not any(c in prefix + suffix for c in "\r\n\0"):
            self._head, self._tail = b"data: " + self._prefix, self._suffix + b"\n\n\r\n"
