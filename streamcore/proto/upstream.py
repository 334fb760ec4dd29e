"""The client side of one HTTP/1.1 connection to an upstream LLM server, on h11, sans-I/O.

One request at a time (no pipelining: RFC 9112 section 9.3.2 allows it, upstream servers
handle it badly): :meth:`UpstreamSession.request` gives the bytes to send,
:meth:`UpstreamSession.receive` turns the bytes that come back into :class:`Head`,
:class:`Body` and :class:`End` events.  h11 de-chunks the body and checks its framing; we
bound the response head (h11's ``max_incomplete_event_size``) and say whether the
connection may carry another request (:attr:`UpstreamSession.reusable`).

Also here: the reading of an upstream's streamed chat completion, chunk by chunk
(:func:`read_chunk`, and :class:`ChunkReader`'s splice of a content-only chunk), so that
the gateway re-frames it into streamcore's own chunks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import orjson

from ..errors import ProtocolError
from .jsonbytes import json_string

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

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> bytes:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode("idna")

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


class UpstreamSession:
    """Requests out, response events in, for one upstream connection."""

    __slots__ = ("_conn", "target")

    def __init__(self, target: Target, *, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        self.target = target
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_bytes)

    def request(self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]],
                body: bytes = b"") -> bytes:
        """A whole request with a Content-Length body (upstream servers need not read
        chunked request bodies)."""
        conn = self._conn
        all_headers = [(b"host", self.target.authority),
                       (b"content-length", b"%d" % len(body)), *headers]
        out = conn.send(h11.Request(method=method, target=path.encode(), headers=all_headers))
        out = (out or b"") + (conn.send(h11.Data(data=body)) or b"" if body else b"")
        return out + (conn.send(h11.EndOfMessage()) or b"")

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes (``b""``: the upstream closed); the events they complete."""
        conn = self._conn
        conn.receive_data(data)
        events: list[Event] = []
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return events
                if isinstance(event, h11.Response):
                    events.append(Head(event.status_code, list(event.headers)))
                elif isinstance(event, h11.Data):
                    events.append(Body(bytes(event.data)))
                elif isinstance(event, h11.EndOfMessage):
                    events.append(End())
                    return events
                elif isinstance(event, h11.ConnectionClosed):
                    return events
                # InformationalResponse (1xx): nothing to do
        except h11.RemoteProtocolError as exc:
            raise UpstreamError(f"the upstream sent a malformed response: {exc}") from None

    @property
    def reusable(self) -> bool:
        """Whether the last exchange is complete and the connection may carry another."""
        conn = self._conn
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def next_cycle(self) -> None:
        self._conn.start_next_cycle()


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
#: its value (RFC 8259 section 7: the short escapes only; no ``\\u`` and no ``\\/``,
#: which it never writes): such a literal is re-framed as it is, byte for byte.
_PLAIN_LITERAL = re.compile(r'"(?:[^"\\\x00-\x1f]++|\\["\\bfnrt])*+"')  # possessive: linear

#: Two different string values put in place of a learned content, to prove the place.
_PROBES = ('"0"', "0"), ('"1"', "1")

#: Chunks of a stream tried for learning its shape (an upstream that writes its strings
#: otherwise than ``json_string`` would never be learned: it is parsed whole, as before).
LEARN_TRIES = 3


class ChunkReader:
    """The chunks of one upstream stream.

    An upstream's content-only chunks differ only in their content string: the same id,
    model, created and layout around it (vLLM, SGLang, llama.cpp, Ollama, streamcore).
    The first one is parsed whole (:func:`read_chunk`) and the text around its content
    string learned; a later chunk that is that text around a plain JSON string literal
    (:data:`_PLAIN_LITERAL`) is the same chunk with that content, so the literal is taken as
    it is (:meth:`content`), without parsing the chunk and encoding the string again.

    Exact, not heuristic: the place is learned only when two other string literals put
    there are read back (whole) as a content-only chunk with exactly those contents and no
    finish reason, usage or error -- so the place is the content's, and nothing else in
    the chunk depends on it (JSON is context-free: a string token swapped for another is
    the same document with that one value changed; duplicate keys included, since the
    probes are read by the same parser).  Anything else (a role, tool calls, a finish
    reason, usage, an error, another layout) is parsed whole.
    """

    __slots__ = ("_prefix", "_suffix", "_tries")

    def __init__(self) -> None:
        self._prefix: str | None = None
        self._suffix = ""
        self._tries = LEARN_TRIES

    def content(self, text: str) -> bytes | None:
        """The content of a chunk of the learned shape, as its JSON string (exactly
        ``json_string(content)``); None: read it with :meth:`read`."""
        prefix = self._prefix
        if prefix is None or not text.startswith(prefix) or not text.endswith(self._suffix):
            return None
        literal = text[len(prefix):len(text) - len(self._suffix)]
        # Not "" (an empty content is no token: read whole); not overlapping texts.
        if len(literal) < 3 or _PLAIN_LITERAL.fullmatch(literal) is None:
            return None
        return literal.encode()

    def read(self, text: str) -> Chunk:
        """:func:`read_chunk`; the first few content-only chunks teach the shape."""
        chunk = read_chunk(text)
        if (self._prefix is None and self._tries and chunk.content is not None
                and chunk.other is None and chunk.finish_reason is None
                and chunk.usage is None):
            self._tries -= 1
            self._learn(text, chunk.content)
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
        self._prefix, self._suffix = prefix, suffix
