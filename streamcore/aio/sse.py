"""Writing a stream to an HTTP response as Server-Sent Events.

Each frame of the stream's log becomes one event, ``id: <stream id>-<seq>`` and a ``data:``
line around the shared payload buffers (WHATWG HTML 9.2.6); the events taken in one flush
go out as one HTTP chunk (RFC 9112 section 7.1) in one ``writelines``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from ..app import Response
from ..errors import FellBehind
from ..proto.openai import error_body
from ..proto.pipe import Cursor
from .stream import BaseReader, Stream

if TYPE_CHECKING:
    from .connection import HTTPConnection

log = logging.getLogger("streamcore")

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Intermediaries must neither cache nor buffer an event stream (WHATWG HTML 9.2;
    # X-Accel-Buffering is nginx's switch for its proxy buffer).
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class SSEReader(BaseReader):
    """Writes one stream to one HTTP response as chunks of ``id:``/``data:`` events."""

    __slots__ = ("chunked", "conn", "cursor", "end", "hb_seen", "head_pending", "id_prefix",
                 "stream")

    def __init__(self, conn: HTTPConnection, stream: Stream, end: bytes,
                 start_seq: int | None = None) -> None:
        super().__init__(conn.server.flusher)
        self.conn = conn
        self.stream = stream
        self.cursor = Cursor(stream.log, start_seq)
        self.scheduled = False
        self.id_prefix = stream.id.encode() + b"-"
        #: Whether the body is chunked: known when the head is made.
        self.chunked = True
        self.end = end
        self.done = False
        self.hb_seen = -1
        #: The response head goes out with the first flush, one loop iteration after the
        #: handler started: a handler that refuses its input before its first item (bad
        #: JSON, say) still gets its 4xx instead of a 200 and an error event.
        self.head_pending = True

    def _flush(self, conn: HTTPConnection) -> None:
        assert conn.transport is not None
        cursor = self.cursor
        log_ = cursor.log
        if (log_.next_seq - cursor.next_seq == 1 and not self.head_pending and self.chunked
                and not log_.closed and self.stream.multiline is None):
            # One event pending: a sparse stream's token (a paced model's is always one).
            # One buffer makes uvloop's write() a plain write(2) with no gather context;
            # seven small buffers cost it more than framing them here does.
            seq = cursor.next_seq
            frame, size = cursor.take_newest()
            head = b"id: %b%d\ndata: " % (self.id_prefix, seq)
            conn.transport.write(b"".join((b"%x\r\n" % (len(head) + size + 2), head, *frame,
                                           b"\n\n\r\n")))
            if self.stream.paused and self.stream.origin is self:
                self.stream.writable_changed()
            return
        bufs: list[bytes] = []
        if self.head_pending:
            refused = self.stream.refused
            if refused is not None:
                self.done = True
                self.stream.detach(self)
                conn.sse = None
                conn.respond(Response.error(refused))
                return
            self.head_pending = False
            bufs.append(conn.stream_head(self))
        if cursor.next_seq < log_.next_seq:
            try:
                seq, frames, size = cursor.take()
            except FellBehind as exc:
                self._finish(_error_event(str(exc), "fell_behind"), bufs)
                return
            size_at = len(bufs)
            bufs.append(b"")  # the chunk-size line, once the size is known
            prefix = self.id_prefix
            multiline = self.stream.multiline
            total = size + 2 * len(frames)
            for frame in frames:
                head = b"id: %b%d\ndata: " % (prefix, seq)
                total += len(head)
                bufs.append(head)
                if multiline and seq in multiline:
                    # WHATWG HTML 9.2.6: one data field per line of the payload.
                    data = _LINE_BREAK.sub(b"\ndata: ", b"".join(frame))
                    total += len(data) - sum(map(len, frame))
                    bufs.append(data)
                else:
                    bufs.extend(frame)
                bufs.append(b"\n\n")
                seq += 1
            if self.chunked:
                bufs[size_at] = b"%x\r\n" % total
                bufs.append(b"\r\n")
        if log_.closed and cursor.next_seq >= log_.next_seq:
            self._finish(None, bufs)
            return
        if bufs:
            conn.transport.writelines(bufs)
        if self.stream.paused and self.stream.origin is self:
            self.stream.writable_changed()

    def _finish(self, error: bytes | None, bufs: list[bytes] | None = None) -> None:
        """The end of the stream: the route's end marker, the last chunk, next request."""
        bufs = bufs if bufs is not None else []
        tail = error + self.end if error else self.end
        if tail:
            bufs.extend(self._chunk(tail))
        self.done = True
        conn = self.conn
        if conn.transport is not None:
            bufs.append(conn.session.end_response())
            conn.transport.writelines(bufs)
        self.stream.detach(self)
        conn.stream_done(self)

    def _chunk(self, data: bytes) -> list[bytes]:
        return [b"%x\r\n" % len(data), data, b"\r\n"] if self.chunked else [data]

    def heartbeat(self) -> None:
        """An SSE comment if nothing was written since the last tick: keeps proxies from
        cutting a silent stream (a silent stream gets one within two intervals).  A bare
        comment line, never a blank line: some clients (the OpenAI SDK, httpx-sse)
        dispatch an empty event on a blank line once an id has been seen."""
        if self.head_pending:
            self.flush()  # a silent stream commits to its 200 at the first tick
        seen = self.cursor.next_seq
        if seen == self.hb_seen and not self.conn.write_paused and not self.done:
            transport = self.conn.transport
            if transport is not None:
                transport.writelines(self._chunk(b":\n"))
        self.hb_seen = seen


def _error_event(message: str, code: str) -> bytes:
    body = error_body(message, "stream_error", None, code)
    return b"data: " + body + b"\n\n"
