"""Server-sent events (``text/event-stream``): encoder and incremental decoder, sans-I/O.

Spec: WHATWG HTML, section "Server-sent events" -- "Parsing an event stream" (9.2.5) and
"Interpreting an event stream" (9.2.6).  Section references below are to those two.

The decoder works on *bytes* and decodes UTF-8 per value, not per stream.  This gives the
same text as running a streaming UTF-8 decoder (``errors="replace"``) over the whole input,
because every byte the parser splits on (CR, LF, ``:``, space) is ASCII, and in UTF-8 an
ASCII byte never occurs inside a multibyte sequence: a character cut across two ``feed()``
calls is simply re-joined with the rest of its line, and an invalid sequence ends at the
ASCII byte either way.  Working on bytes also makes the memory limits exact byte counts and
skips decoding comments and unknown fields altogether.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from .cursor import id_prefix
from .http import CRLF, LAST_CHUNK, chunk_head
from .pipe import Frame

__all__ = [
    "HEARTBEAT",
    "Decoder",
    "Event",
    "SSEDecodeError",
    "SSEFramer",
    "encode_comment",
    "encode_event",
    "end_events",
    "frame_data",
]

# 9.2.5: "Lines must be separated by either a U+000D CARRIAGE RETURN U+000A LINE FEED (CRLF)
# character pair, a single U+000A LINE FEED (LF) character, or a single U+000D CARRIAGE
# RETURN (CR) character."  Only these three: str.splitlines() would also split on U+2028,
# U+0085, VT, FF, ... which are ordinary characters in an event stream.
_BREAK = re.compile(r"\r\n|\r|\n")
_BREAK_B = re.compile(rb"\r\n|\r|\n")

_BOM = b"\xef\xbb\xbf"  # U+FEFF encoded in UTF-8


# --------------------------------------------------------------------------------- encoder


def _check_field(name: str, value: str) -> None:
    # A CR or LF would end the line and let the value inject fields or dispatch an event;
    # an id containing NUL is ignored by the receiver (9.2.6, "id"), so refuse both.
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")


def frame_data(payload: bytes) -> list[bytes]:
    """The ``data:`` lines for an already encoded UTF-8 ``payload``, as buffers for
    ``writelines`` (without the blank line that dispatches the event).

    ``payload`` is split on CRLF, CR and LF (9.2.5); the receiver joins the lines with LF,
    so CR and CRLF arrive as LF, and no line break in a payload can start another field
    or dispatch an event early.  Hot path: when ``payload`` holds no CR and no LF (e.g.
    compact JSON) the result is ``[b"data: ", payload, b"\n"]`` with ``payload`` itself.
    """
    if b"\n" not in payload and b"\r" not in payload:
        return [b"data: ", payload, b"\n"]
    out: list[bytes] = []
    for line in _BREAK_B.split(payload):
        out += (b"data: ", line, b"\n")
    return out


def encode_event(
    data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One complete event: ``id``, ``event``, ``retry`` lines (those given), one ``data:``
    line per line of ``data``, and the blank line that dispatches it.

    An empty ``data`` still yields one ``data:`` line, so the event is dispatched (with
    data ``""``) rather than dropped (9.2.6, dispatch step 2).  This is the reference the
    server's framer (:class:`SSEFramer`) is tested against byte for byte.
    """
    parts: list[bytes] = []
    if id is not None:
        _check_field("id", id)
        parts.append(b"id: %s\n" % id.encode())
    if event is not None:
        _check_field("event", event)
        parts.append(b"event: %s\n" % event.encode())
    if retry is not None:
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"SSE retry must be a non-negative int: {retry!r}")
        parts.append(b"retry: %d\n" % retry)
    parts += frame_data(data.encode("utf-8"))
    parts.append(b"\n")
    return b"".join(parts)


def encode_comment(text: str = "") -> bytes:
    """Comment lines (``:`` + one line of ``text`` each), e.g. for heartbeats.  Receivers
    ignore them (9.2.6: a line starting with ``:``).  ``encode_comment()`` is ``b":\\n"``."""
    return "".join(f":{line}\n" for line in _BREAK.split(text)).encode("utf-8")


HEARTBEAT = encode_comment()


class SSEFramer:
    """The body of one SSE response: a stream's log frames as events, heartbeats and the
    end, framed for HTTP/1.1.

    Each frame is one event, ``id: <stream id>-<epoch>-<seq>`` (the cursor format of
    :mod:`streamcore.proto.cursor`; none with ``ids=False``, for a stream that is never
    resumed) and its payload as ``data:`` lines.  What one flush
    takes goes out as one chunk (RFC 9112 section 7.1) when ``chunked``; an HTTP/1.0
    client, which cannot read chunks, gets the events as they are and the end of the
    body is the end of the connection (RFC 9112 section 6.3, rule 8).
    """

    __slots__ = ("chunked", "field", "head", "prefix")

    def __init__(self, stream_id: str, chunked: bool, epoch: str | None = None,
                 ids: bool = True, lines: bool = False) -> None:
        #: The event ids' prefix; None: events without ids.
        self.prefix = id_prefix(stream_id, epoch) if ids else None
        self.chunked = chunked
        #: What starts a frame's event after its id: ``data: `` before a payload, nothing
        #: before a frame that is its event's field lines already (``lines``: a relayed
        #: upstream event keeps its ``event:`` name, :attr:`Entry.sse_lines`).
        self.field = b"" if lines else b"data: "
        #: The id line and the field, to %-format with the sequence number (a "%" of the
        #: stream id escaped); None without ids.
        self.head = (b"id: " + self.prefix.replace(b"%", b"%%") + b"%d\n" + self.field
                     if self.prefix is not None else None)

    def event(self, seq: int, frame: Frame, size: int) -> bytes:
        """One single-line event of ``size`` payload bytes, in one buffer.

        A sparse stream (a paced model's token) has one event per flush: one buffer makes
        the transport's write a plain ``write(2)``, where seven small ones need a gather
        (measured in benchmarks/RESULTS.md, session 3)."""
        head = self.head % seq if self.head is not None else self.field
        if self.chunked:
            # One format of the frame's join: the tuple a star-unpack builds (through a
            # list) for a join of every piece cost more (~10 % of this call).
            return b"%x\r\n%b%b\n\n\r\n" % (len(head) + size + 2, head, b"".join(frame))
        return b"".join((head, *frame, b"\n\n"))

    def events(self, seq: int, frames: list[Frame], size: int,
               multiline: set[int] | None, tail: bytes = b"") -> tuple[list[bytes], int]:
        """Events ``seq``, ``seq + 1``, ... of ``frames`` (``size`` payload bytes in all) as
        buffers sharing the frames' bytes, and their length on the wire.  ``multiline``:
        the sequence numbers of frames that hold a line break (split into one ``data:``
        line each, 9.2.6).  ``tail``: body bytes that follow the events in the same chunk
        (a ``retry:`` line, :meth:`end_events`): a short answer's body is one chunk."""
        chunked = self.chunked
        bufs: list[bytes] = [b""] if chunked else []  # the chunk-size line, once known
        prefix = self.prefix
        fmt = self.head
        total = size + 2 * len(frames) + len(tail)
        for frame in frames:
            if multiline and seq in multiline:
                head = b"id: %b%d\n" % (prefix, seq) if prefix is not None else b""
                lines = frame_data(b"".join(frame))
                total += len(head) + sum(map(len, lines)) - size_of(frame) - 1
                bufs.append(head)
                bufs.extend(lines)
                bufs.append(b"\n")
            else:
                head = fmt % seq if fmt is not None else self.field
                total += len(head)
                bufs.append(head)
                bufs.extend(frame)
                bufs.append(b"\n\n")
            seq += 1
        if tail:
            bufs.append(tail)
        if chunked:
            bufs[0] = chunk_head(total)
            bufs.append(CRLF)
            total += len(bufs[0]) + 2
        return bufs, total

    def final(self, *data: bytes) -> list[bytes]:
        """The end of the body: an event without id for each of ``data`` (an error that
        ended the stream, the route's end marker), then the last chunk."""
        out = self.chunk(end_events(*data)) if data else []
        if self.chunked:
            out.append(LAST_CHUNK)
        return out

    def last(self) -> list[bytes]:
        """What ends the body after its last chunk of events: the last chunk (RFC 9112
        section 7.1), or nothing for HTTP/1.0 (the connection's end ends the body)."""
        return [LAST_CHUNK] if self.chunked else []

    def snapshot(self, seq: int, payload: bytes) -> list[bytes]:
        """The ``snapshot`` event (docs/resume.md): the stream so far as one JSON object,
        with the cursor of the last event it holds (a reader cut after it resumes from
        there).  A named event: an EventSource's ``onmessage`` does not take it for a
        chunk (9.2.6, the ``event`` field)."""
        prefix = self.prefix
        cursor = b"id: %b%d\n" % (prefix, seq) if prefix is not None else b""
        return self.chunk(b"event: snapshot\n%b%b\n" % (cursor, b"".join(frame_data(payload))))

    def comment(self) -> list[bytes]:
        """A heartbeat comment (never a blank line: some clients dispatch an empty event on
        a blank line once they have seen an id)."""
        return self.chunk(HEARTBEAT)

    def chunk(self, data: bytes) -> list[bytes]:
        return [chunk_head(len(data)), data, CRLF] if self.chunked else [data]


def end_events(*data: bytes) -> bytes:
    """An event without id for each of ``data`` (the end of a body: an error that ended
    its stream, a route's end marker such as ``[DONE]``)."""
    if len(data) == 1:
        one = data[0]
        if b"\n" not in one and b"\r" not in one:  # the end marker: one line
            return b"data: %b\n\n" % one
    return b"".join(b"".join(frame_data(d)) + b"\n" for d in data)


def size_of(frame: Frame) -> int:
    return sum(map(len, frame))


def field_lines(data: bytes, event: bytes | None = None) -> bytes:
    """An event's field lines, without the blank line that dispatches it: ``event:``
    (``event``; None or ``message``, the default type, none), then ``data`` as ``data:``
    lines (:func:`frame_data`).  A frame of a stream whose frames are field lines
    (:attr:`~streamcore.store.base.Entry.sse_lines`)."""
    lines = frame_data(data)
    lines[-1] = b""  # the framer ends the event
    if event is not None and event != b"message":
        lines.insert(0, b"event: %b\n" % event)
    return b"".join(lines)


def lines_data(frame: Frame) -> bytes:
    """The data of an event given as its field lines (:func:`field_lines`): its ``data:``
    values joined with LF, the other fields dropped (what a receiver dispatches, 9.2.6):
    the payload of a WebSocket message."""
    values = []
    for line in b"".join(frame).split(b"\n"):
        if line.startswith(b"data:"):
            values.append(line[6:] if line.startswith(b"data: ") else line[5:])
    return b"\n".join(values)


# --------------------------------------------------------------------------------- decoder


class SSEDecodeError(ValueError):
    """The event stream exceeded a decoder limit (line or event data size)."""


class Event(NamedTuple):
    """A dispatched event (9.2.6, "dispatch the event").

    ``id`` is the last event ID in effect at dispatch (the browser's ``lastEventId``);
    ``retry`` is the reconnection time set by a valid ``retry`` field in this event's own
    block, or ``None``.  A named tuple, not a frozen dataclass: made once per upstream
    token by the gateway, and a frozen dataclass's ``__init__`` costs five times as much
    (benchmarks/RESULTS.md, "Gateway overhead").
    """

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


def _decode(b: bytes) -> str:
    return b.decode("utf-8", "replace")


_new_event = tuple.__new__

#: What :meth:`Decoder.feed_raw` and :meth:`Decoder.feed_around` give for an event: its raw
#: data (a lone ``data:`` line), a run of middles (:meth:`Decoder.feed_around`), or an Event.
Item = bytes | list[bytes] | Event

#: An ``id:`` line a fast block may start with (9.2.6: an id holding NUL is ignored, so
#: such a block is not fast), within :meth:`Decoder.feed_around`'s joined pieces (CR and
#: NUL are its separators there).
_ID_LINE = rb"(?:id: [^\n\r\0]*+\n)?"
_RUNS: dict[bytes, re.Pattern[bytes]] = {}


def _runs(middle: bytes) -> re.Pattern[bytes]:
    """Pieces ``[id line] CR middle NUL``, as many as match (one pattern per ``middle``,
    compiled once)."""
    pattern = _RUNS.get(middle)
    if pattern is None:
        pattern = _RUNS[middle] = re.compile(rb"(?:%s\r(?:%s)\0)*+" % (_ID_LINE, middle))
    return pattern


class Decoder:
    """Incremental ``text/event-stream`` parser: ``feed()`` bytes as they arrive (cut
    anywhere), get back the events completed so far.

    Limits (for untrusted upstreams): a line longer than ``max_line_bytes`` or an event
    whose data buffer grows past ``max_event_bytes`` raises :class:`SSEDecodeError`; the
    decoder must not be used after that.

    Two cheaper ways to read the same events, for a relay that needs only their data
    (the gateway): :meth:`feed_raw` hands over a simple event's data undecoded, and
    :meth:`feed_around` a run of events of one known layout as the parts that differ.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_data_len",
        "_event_retry",
        "_event_type",
        "_id_buffer",
        "_id_of",
        "_id_text",
        "_last_id",
        "_layout",
        "_pending",
        "_pending_len",
        "_skip_lf",
        "max_event_bytes",
        "max_line_bytes",
        "retry",
    )

    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 1 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        #: Reconnection time (ms) last set by a valid ``retry`` field, or None.
        self.retry: int | None = None
        self._at_start = True  # no line completed yet: a leading BOM may still come
        self._skip_lf = False  # the last byte seen was a CR ending a line: eat one LF next
        self._pending: list[bytes] = []  # the current, unterminated line, in pieces
        self._pending_len = 0
        # 9.2.6: "a data buffer, an event type buffer, and a last event ID buffer ...
        # must be initialized to the empty string".  Data lines are kept as a list and
        # joined with LF at dispatch, which is the buffer minus its final LF (step 3).
        self._data: list[bytes] = []
        self._data_len = 0
        self._event_type = b""
        # The ids are kept as bytes and decoded when read (a relay never reads them).
        self._id_buffer = b""
        self._last_id = b""
        self._id_of = b""  # the last id decoded, and its text
        self._id_text = ""
        self._event_retry: int | None = None
        self._layout = (b"", b"")  # the last prefix and suffix found plain (feed_around)

    @property
    def last_event_id(self) -> str:
        """The last event ID string: set from the id buffer at every blank line, whether or
        not an event is dispatched (9.2.6, dispatch step 1); what to send as
        ``Last-Event-ID`` when reconnecting."""
        return self._text_of(self._last_id)

    def _text_of(self, raw: bytes) -> str:
        if raw is not self._id_of:
            self._id_of = raw
            self._id_text = _decode(raw)
        return self._id_text

    def feed(self, data: bytes) -> list[Event]:
        return self._feed(data, False)

    def feed_raw(self, data: bytes) -> list[bytes | Event]:
        """:meth:`feed`, except that an event that is one ``data:`` line (after at most an
        ``id:`` line, LF-ended) comes as that line's value, undecoded: its data is
        ``value.decode("utf-8", "replace")``, its type ``message``, its id the last event
        ID (:attr:`last_event_id` once the feed returns, if it is the last event)."""
        return self._feed(data, True)

    def _feed(self, data: bytes, raw: bool) -> list[Any]:
        events, data = self._settle(data)
        if data:
            end = data.find(b"\n\n")
            events += self._fast(data, end, raw) if end >= 0 else self._general(data, False)
        return events

    def _settle(self, data: bytes) -> tuple[list[Any], bytes]:
        """What of ``data`` must go line by line (:meth:`_general`): all of it when a CR
        stays in it; else up to the end of an event begun in an earlier feed.  Returns
        the events that gave, and the rest of ``data``: LF only, from a line start with
        nothing of an event pending (``b""``: no rest)."""
        if not data:
            return [], b""
        if self._skip_lf:
            # A CR ended the previous feed; an LF right after it completes a CRLF pair,
            # one line break, not an empty line (9.2.5).
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
                if not data:
                    return [], b""
        if b"\r" in data:
            data, has_cr = _crlf_as_lf(data)
            if has_cr:
                return self._general(data, True), b""
        if (not self._pending and not self._data and not self._event_type
                and self._event_retry is None):
            return [], data
        # An event cut by the end of the last read: its lines, and the blank line that
        # ends it, leave nothing pending (the last line of data[:end] is blank).
        if data[0] == 0x0A and not self._pending:  # that blank line comes first
            end = 1
        else:
            end = data.find(b"\n\n") + 2
            if end < 2:
                return self._general(data, False), b""
        return self._general(data[:end], False), data[end:]

    def _fast(self, data: bytes, end: int, raw: bool) -> list[Any]:
        """Whole events, LF only, from the start of a line with nothing of an event
        pending: each block up to a blank line is one event.  The overwhelmingly common
        block, ``data: ...`` alone or after ``id: ...``, is taken with bytes methods; any
        other block goes line by line through :meth:`_line` (which is what the general
        path does with it too); what follows the last blank line goes to :meth:`_general`.
        The same events as line by line: a blank line always dispatches and leaves no
        event state behind, so each block starts from the state the one before left.
        ``raw``: a fast block's value as it is, and its id taken only once, at the end."""
        if self._at_start:
            self._at_start = False  # a line is complete in ``data``
            if data.startswith(_BOM):  # 9.2.5: one leading BOM is ignored
                data = data[3:]
                end -= 3
        events: list[Any] = []
        max_line = self.max_line_bytes
        max_event = self.max_event_bytes
        pos = 0
        id_at = -1  # raw: where the value of the last id line not taken yet starts
        id_end = 0
        fast = False  # raw: a fast block dispatched since the id buffer was last taken
        while end >= 0:
            start = pos
            if data.startswith(b"id: ", pos):
                nl = data.find(b"\n", pos, end)
                if nl >= 0 and nl - pos <= max_line and data.find(b"\0", pos + 4, nl) < 0:
                    start = nl + 1
            if (data.startswith(b"data: ", start) and end - start <= max_line
                    and end - start - 5 <= max_event and data.find(b"\n", start, end) < 0):
                if raw:
                    if start != pos:
                        id_at, id_end = pos + 4, start - 1
                    fast = True
                    events.append(data[start + 6:end])
                else:
                    if start != pos:
                        self._id_buffer = data[pos + 4:start - 1]
                    self._last_id = self._id_buffer
                    events.append(_new_event(Event, (_decode(data[start + 6:end]), "message",
                                                     self._text_of(self._last_id), None)))
            else:
                if fast:  # the ids of the fast blocks before this one, in effect now
                    fast = False
                    if id_at >= 0:
                        self._id_buffer = data[id_at:id_end]
                        id_at = -1
                    self._last_id = self._id_buffer
                for line in data[pos:end].split(b"\n"):
                    self._line(line, events)
                self._dispatch(events)
            pos = end + 2
            end = data.find(b"\n\n", pos)
        if fast:
            if id_at >= 0:
                self._id_buffer = data[id_at:id_end]
            self._last_id = self._id_buffer
        if pos < len(data):
            events += self._general(data[pos:], False)
        return events

    def take_one(self, ident: bytes | None, line_bytes: int) -> bool:
        """Take one whole event that the caller found alone in a read: an optional ``id:
        I`` line (``ident``: I, which holds no CR, LF or NUL) and one ``data:`` line of
        ``line_bytes`` bytes (no CR, LF or NUL), then the blank line -- what
        :meth:`feed_raw` would give as one undecoded value (the caller has its data).
        True: taken, its id (if any) is the last event ID, as dispatch sets it (9.2.6).
        False: nothing is taken (the decoder is within an event or at the stream's start,
        or a line is over the limits), :meth:`feed_raw` it.  A paced upstream's every
        event, without the general machinery (the events of a read, their list, the checks
        of :meth:`_settle`)."""
        if (self._at_start or self._skip_lf or self._pending or self._data
                or self._event_type or self._event_retry is not None
                or line_bytes > self.max_line_bytes or line_bytes - 5 > self.max_event_bytes):
            return False
        if ident is not None:
            if len(ident) + 4 > self.max_line_bytes:
                return False
            self._id_buffer = ident
        self._last_id = self._id_buffer
        return True

    def feed_around(self, data: bytes, prefix: bytes, suffix: bytes,
                    middle: bytes) -> list[Item]:
        """:meth:`feed_raw`, except that each run of events whose data is ``prefix + X +
        suffix`` -- one ``data:`` line after at most an ``id:`` line, LF-ended -- with X a
        full match of the regular expression ``middle`` and valid UTF-8, comes as one list
        of those X, in order (their ids are not handed out: the last is the last event ID).
        ``middle`` must match no CR, LF or NUL (it is a separator here); ``prefix`` and
        ``suffix`` hold none either (else nothing is taken so).

        What it saves: the events of one upstream read are cut and checked by a handful
        of C calls over the whole read, not a dozen per event (benchmarks/RESULTS.md,
        "Session 6").  Every event is still exactly what :meth:`feed` gives, in order."""
        if (self._at_start or len(data) > min(self.max_line_bytes, self.max_event_bytes)
                or b"\0" in data):
            return self._feed(data, True)
        if prefix is not self._layout[0] or suffix is not self._layout[1]:  # checked once
            if not _plain(prefix) or not _plain(suffix):
                return self._feed(data, True)
            self._layout = (prefix, suffix)
        out, data = self._settle(data)
        if not data:
            return out
        # Each piece is one event of the layout (checked below) or ends with one that is
        # not: a piece and its separator fed as they are give exactly its events.
        sep = suffix + b"\n\n"
        pieces = data.split(sep)
        rest = pieces.pop()
        if pieces:
            self._around(pieces, b"data: " + prefix, sep, _runs(middle), out)
        if rest:
            end = rest.find(b"\n\n")
            out += self._fast(rest, end, True) if end >= 0 else self._general(rest, False)
        return out

    def _around(self, pieces: list[bytes], head: bytes, end: bytes,
                runs: re.Pattern[bytes], out: list[Item]) -> None:
        """Runs of pieces ``[id: ...\\n]data: <prefix>X`` to ``out`` as lists of X; a piece
        that is not one, fed whole.  All the pieces tried at once, as one string: the
        pieces joined with NUL and ``data: <prefix>`` replaced with CR (neither occurs in
        the input), so that one regular expression checks every piece and stops at the
        first that is not one of the layout.  After such a piece fewer are tried at once
        (twice as many as the run before it, doubling while they pass), so that many bad
        pieces cost about what reading them one by one does."""
        i, n = 0, len(pieces)
        size = n
        while i < n:
            j = min(n, i + size)
            joined = b"\0".join(pieces[i:j]).replace(head, b"\r") + b"\0"
            stop = runs.match(joined).end()  # type: ignore[union-attr]  # (*+ always matches)
            good = j - i if stop == len(joined) else joined.count(b"\0", 0, stop)
            if good:
                parts = joined[:stop - 1].replace(b"\r", b"\0").split(b"\0")
                middles = parts[1::2]
                if not joined.isascii():
                    good = _utf8_run(middles)
                    del middles[good:]
                if good:
                    out.append(middles)
                    for ids in reversed(parts[0:2 * good:2]):  # the last id line, if any
                        if ids:
                            self._id_buffer = ids[4:-1]
                            break
                    self._last_id = self._id_buffer
            i += good
            if i < j:  # pieces[i] is not one of the layout: it and what ends it, as they come
                out += self.feed_raw(pieces[i] + end)
                i += 1
                size = max(1, 2 * good)
            else:
                size *= 2

    def _general(self, data: bytes, has_cr: bool) -> list[Any]:
        if not has_cr and b"\n" not in data:
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len > self.max_line_bytes:
                raise SSEDecodeError(f"SSE line exceeds {self.max_line_bytes} bytes")
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_len = 0
        lines = _BREAK_B.split(data) if has_cr else data.split(b"\n")
        tail = lines.pop()  # after the last line break: the start of an unfinished line
        if tail:
            self._pending.append(tail)
            self._pending_len = len(tail)
            if self._pending_len > self.max_line_bytes:
                raise SSEDecodeError(f"SSE line exceeds {self.max_line_bytes} bytes")
        elif has_cr and data[-1] == 0x0D:
            self._skip_lf = True
        if self._at_start:
            # 9.2.5: "One leading U+FEFF BYTE ORDER MARK character must be ignored if any
            # are present." -- only at the very start of the stream, and only one.
            self._at_start = False
            if lines[0].startswith(_BOM):
                lines[0] = lines[0][3:]
        events: list[Any] = []
        for line in lines:
            self._line(line, events)
        return events

    def close(self) -> list[Event]:
        """End of stream.  Always returns ``[]``: 9.2.6, "Once the end of the file is
        reached, any pending data must be discarded" -- a final block not followed by a
        blank line is never dispatched.  ``last_event_id`` and ``retry`` stay readable (what
        a reconnecting client needs); parse the next connection with a new ``Decoder``."""
        self._pending.clear()
        self._pending_len = 0
        self._data.clear()
        self._data_len = 0
        self._event_type = b""
        self._event_retry = None
        return []

    def _line(self, line: bytes, events: list[Any]) -> None:
        if len(line) > self.max_line_bytes:
            raise SSEDecodeError(f"SSE line exceeds {self.max_line_bytes} bytes")
        # 9.2.6: "If the line is empty (a blank line): Dispatch the event".
        if not line:
            self._dispatch(events)
            return
        # "If the line starts with a U+003A COLON character (:): Ignore the line."
        if line[0] == 0x3A:
            return
        # "If the line contains a U+003A COLON character": field name before the first
        # colon, value after it minus one leading space.  "Otherwise": the whole line is
        # the field name and the value is the empty string.
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            # "Append the field value to the data buffer, then append a single U+000A
            # LINE FEED (LF) character to the data buffer."
            self._data_len += len(value) + 1
            if self._data_len > self.max_event_bytes:
                raise SSEDecodeError(f"SSE event data exceeds {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event_type = value
        elif name == b"id":
            # "If the field value does not contain U+0000 NULL, then set the last event ID
            # buffer to the field value.  Otherwise, ignore the field."
            if b"\0" not in value:
                self._id_buffer = value
        elif name == b"retry" and value.isdigit():
            # "If the field value consists of only ASCII digits, then interpret the field
            # value as an integer in base ten, and set the event stream's reconnection time
            # to that integer.  Otherwise, ignore the field."  (bytes.isdigit() is ASCII
            # only and false for b"".  A value too long for int() is ignored too.)
            try:
                ms = int(value)
            except ValueError:  # more digits than sys.get_int_max_str_digits()
                return
            self.retry = self._event_retry = ms
        # "Otherwise: The field is ignored."

    def _dispatch(self, events: list[Any]) -> None:
        # Step 1: "Set the last event ID string of the event source to the value of the
        # last event ID buffer.  The buffer does not get reset".
        self._last_id = self._id_buffer
        retry, self._event_retry = self._event_retry, None
        # Step 2: "If the data buffer is an empty string, set the data buffer and the event
        # type buffer to the empty string and return."
        if not self._data:
            self._event_type = b""
            return
        # Steps 3-4: drop the data buffer's final LF; the type defaults to "message".
        data = _decode(b"\n".join(self._data))
        event = _decode(self._event_type) if self._event_type else "message"
        events.append(Event(data, event, self._text_of(self._last_id), retry))
        # Step 5: "Set the data buffer and the event type buffer to the empty string."
        self._data.clear()
        self._data_len = 0
        self._event_type = b""


def _crlf_as_lf(data: bytes) -> tuple[bytes, bool]:
    """``data`` with each CRLF as LF when every CR in it is one of a CRLF pair and it does
    not end with a CR (which may pair with the next read's LF): the same lines (9.2.5: a
    CRLF pair is one line break, as LF is), for the fast path; and whether a CR is left."""
    crs = data.count(b"\r")
    if data[-1] == 0x0D or data.count(b"\r\n") != crs:
        return data, True
    return data.replace(b"\r\n", b"\n"), False


def _plain(part: bytes) -> bool:
    """No CR, LF or NUL in ``part``."""
    return b"\n" not in part and b"\r" not in part and b"\0" not in part


def _utf8_run(parts: list[bytes]) -> int:
    """How many of ``parts``, from the first, are valid UTF-8 each (a join could be valid
    where its parts are not: a character cut between two)."""
    for i, part in enumerate(parts):
        if not part.isascii():
            try:
                part.decode()
            except UnicodeDecodeError:
                return i
    return len(parts)
