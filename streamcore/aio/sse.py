"""Writing a stream to an HTTP response as Server-Sent Events, and the SSE heartbeat.

The bytes are the framer's (:class:`streamcore.proto.sse.SSEFramer`); this module decides
when to write them and hands them to the connection's one write path.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ..errors import FellBehind, RequestError
from ..proto.pipe import Cursor
from ..proto.sse import SSEFramer, end_events
from ..store.base import Entry
from .stream import BaseReader, Flusher

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # Intermediaries must neither cache nor buffer an event stream (WHATWG HTML 9.2;
    # X-Accel-Buffering is nginx's switch for its proxy buffer).
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Responder(Protocol):
    """What an SSE reader needs of its HTTP connection."""

    transport: Any
    write_paused: bool

    def send(self, data: bytes) -> None: ...

    def sendv(self, bufs: list[bytes], size: int = -1) -> None: ...

    def stream_head(self, entry: Entry, ids: bool = True) -> tuple[bytes, bool]:
        """The response head (naming the stream when ``ids``), and whether the body is
        chunked."""

    def stream_refused(self, reader: SSEReader, exc: RequestError) -> None:
        """Answer the request with ``exc`` instead of a stream (nothing was sent yet)."""

    def stream_done(self, reader: SSEReader, bufs: list[bytes]) -> None:
        """Write the last buffers; the response is complete."""


class SSEReader(BaseReader):
    """Writes one stream to one HTTP response: the events of each flush in one chunk."""

    __slots__ = ("framer", "hb_seen", "heartbeat", "ids", "retry_ms", "snapshot")

    def __init__(self, conn: Responder, flusher: Flusher, heartbeat: Heartbeat, entry: Entry,
                 start_seq: int | None = None, ids: bool = True, *, retry_ms: int = 0,
                 snapshot: bytes | None = None) -> None:
        BaseReader.__init__(self, flusher, entry)  # (not super(): a lookup less per stream)
        #: Events carry ids (a resumable stream); False: none (EventStream(ids=False)).
        self.ids = ids
        self.conn = conn
        self.heartbeat = heartbeat
        self.cursor = Cursor(entry.log, start_seq)
        #: Made with the response head, at the first flush: one loop iteration after the
        #: handler started, so that a handler that refuses its input before its first item
        #: (bad JSON, say) still gets its 4xx instead of a 200 and an error event.
        self.framer: SSEFramer | None = None
        self.hb_seen = -1
        #: Sent with the head: the EventSource's reconnection time (0: none sent).
        self.retry_ms = retry_ms
        #: Sent with the head: the stream so far, up to ``start_seq - 1`` (its cursor),
        #: for a reader whose cursor the log no longer held (docs/resume.md).
        self.snapshot = snapshot

    def start(self, *, origin: bool) -> None:
        """Read the entry: ``origin`` for the request that started its generation.  The
        caller wakes the reader once the generation has taken its first step (see
        :attr:`framer`)."""
        self.entry.attach(self, origin=origin)
        self.heartbeat.readers.add(self)

    def takes_now(self) -> bool:
        conn = self.conn
        return not (self.scheduled or self.done or self.framer is None or conn.write_paused
                    or conn.transport is None or self.entry.multiline is not None
                    or self.cursor.next_seq != self.cursor.log.next_seq)

    def write_newest(self) -> None:
        """The one event pending, written now: as :meth:`_flush` writes a sparse stream's
        token, without the Flusher's turn."""
        cursor = self.cursor
        seq = cursor.next_seq
        frame, size = cursor.take_newest()
        assert self.framer is not None  # (takes_now)
        data = self.framer.event(seq, frame, size)
        self.conn.send(data)
        self.flusher.wrote_now(self, len(data))

    def _flush(self, conn: Responder) -> None:
        cursor = self.cursor
        log_ = cursor.log
        framer = self.framer
        if (framer is not None and log_.next_seq - cursor.next_seq == 1 and not log_.closed
                and self.entry.multiline is None):
            # One event pending: a sparse stream's token (a paced model's is always one).
            seq = cursor.next_seq
            frame, size = cursor.take_newest()
            conn.send(framer.event(seq, frame, size))
            self.progressed()
            return
        bufs: list[bytes] = []
        size = 0
        entry = self.entry
        if framer is None:
            refused = entry.refused
            if refused is not None:
                self._leave()
                conn.stream_refused(self, refused)
                return
            if entry.hold and log_.next_seq == 1 and not log_.closed:
                return  # the head waits: the source may still refuse with a status
            head, chunked = conn.stream_head(entry, self.ids)
            framer = self.framer = SSEFramer(entry.id, chunked, entry.epoch, self.ids,
                                             entry.sse_lines)
            bufs.append(head)
            size = len(head)
            if self.snapshot is not None:
                snap = framer.snapshot(cursor.next_seq - 1, self.snapshot)
                bufs += snap
                size += sum(map(len, snap))
                self.snapshot = None
        # Once the events pending are taken, a closed log has nothing more: this flush
        # ends the body.
        ending = log_.closed
        tail = b""
        if self.retry_ms and (self.ids or not ending):
            # The first flush: after its events, the body starts as before.  A field line
            # alone, no blank line: applied as it is parsed (9.2.6), and no empty event
            # dispatched.  On a resumable stream also when this flush ends it (a short
            # answer is one flush): its EventSource comes back after the end too, and
            # learns from a 204 that the stream is over, within the retry.
            tail = b"retry: %d\n" % self.retry_ms
            self.retry_ms = 0
        if ending and entry.error is None and entry.sse_end is not None:
            # The route's end marker after a stream that completed (never after a failed
            # one: a reader that stops at ``[DONE]`` must not take a truncated answer for
            # a whole one), in the same chunk as the last events.
            tail += end_events(entry.sse_end)
        if cursor.next_seq < log_.next_seq:
            try:
                seq, frames, payload = cursor.take()
            except FellBehind as exc:
                self.why = "fell_behind"
                self._finish(bufs, exc.envelope())
                return
            events, n = framer.events(seq, frames, payload, entry.multiline, tail)
            bufs += events
            size += n
        elif tail:
            chunk = framer.chunk(tail)
            bufs += chunk
            size += sum(map(len, chunk))
        if ending:
            bufs += framer.last()
            self._leave()
            conn.stream_done(self, bufs)
            return
        if bufs:
            conn.sendv(bufs, size)
        self.progressed()

    def _finish(self, bufs: list[bytes], error: bytes) -> None:
        """The end of the body after an error that ended this reader (it fell behind);
        the last chunk; then the connection goes on to its next request."""
        assert self.framer is not None
        bufs += self.framer.final(error)
        self._leave()
        self.conn.stream_done(self, bufs)

    def _leave(self) -> None:
        self.done = True
        self.heartbeat.readers.discard(self)
        self.entry.detach(self)

    def gone(self) -> None:
        """The connection was lost."""
        if not self.done:
            self._leave()

    def beat(self) -> None:
        """A comment if nothing was written since the last tick: keeps proxies from
        cutting a silent stream (a silent stream gets one within two intervals)."""
        if self.framer is None:
            self.flush()  # a silent stream commits to its 200 at the first tick
        seen = self.cursor.next_seq
        conn = self.conn
        if (seen == self.hb_seen and self.framer is not None and not conn.write_paused
                and not self.done):
            conn.sendv(self.framer.comment())
        self.hb_seen = seen


class Heartbeat:
    """One timer for every SSE reader of a server: a TimerHandle per connection would cost
    more memory than the rest of an idle stream's connection."""

    __slots__ = ("_timer", "interval_s", "loop", "readers")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.readers: set[SSEReader] = set()
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None and self.interval_s > 0:
            self._timer = self.loop.call_later(self.interval_s, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        for reader in list(self.readers):
            reader.beat()
        self._timer = self.loop.call_later(self.interval_s, self._tick)
