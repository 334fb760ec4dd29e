"""WebSocket connections: the asyncio side of :mod:`streamcore.proto.ws`.

An HTTP connection answers the upgrade and hands its transport to a
:class:`WebSocketConnection`.  Streams run on it as on SSE: the same
:class:`~streamcore.aio.stream.Stream` and token log, read by a :class:`WSReader` whose
messages are framed by :class:`streamcore.proto.wsapi.ChunkFramer`.  Several streams can
share one socket, told apart by a key.  Every exception on the socket becomes a close code
in one place, :meth:`WebSocketConnection._fail`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from ..errors import FellBehind, HistoryLost, InternalError, RequestError, StreamcoreError
from ..proto import ws, wsapi
from ..proto.pipe import Cursor
from ..store.base import Entry
from .context import Context
from .handler import Request, Route
from .output import Output
from .stream import FLUSH_BYTES, BaseReader, PushSource
from .wheel import Wheel

log = logging.getLogger("streamcore")

#: Complete inbound messages queued for a handler before we stop reading the socket
#: (and the peer's TCP window closes): the inbound half of backpressure.  Reading also
#: stops once the queue holds ws_max_message_bytes, so a socket queues at most about two
#: largest messages, not 64 of them.
INBOX_HIGH = 64
INBOX_LOW = 16


class WebSocketClosed(Exception):
    """The WebSocket is closed; ``code`` says why (RFC 6455 section 7.4)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code} {reason}".strip())
        self.code = code
        self.reason = reason


class WSReader(BaseReader):
    """Writes one stream to a WebSocket: one text message per frame."""

    __slots__ = ("end", "framer", "key")

    transport = "websocket"

    def __init__(self, conn: WebSocketConnection, entry: Entry, key: bytes | None,
                 end: Callable[[], bytes | None] | None, start_seq: int | None = None) -> None:
        super().__init__(conn.ctx.flusher, entry)
        self.conn = conn
        self.cursor = Cursor(entry.log, start_seq)
        self.key = key
        self.framer = wsapi.ChunkFramer(key, entry.sse_lines)
        self.end = end

    def _flush(self, conn: WebSocketConnection) -> None:
        if not conn.session.open:  # no data frame after our Close (RFC 6455 5.5.1)
            return
        cursor = self.cursor
        log_ = cursor.log
        if log_.next_seq - cursor.next_seq == 1 and not log_.closed:
            # One message pending (a paced stream's token): one buffer, one write(2).
            seq = cursor.next_seq
            frame, size = cursor.take_newest()
            conn.send(self.framer.message(seq, frame, size))
            self.progressed()
            return
        if cursor.next_seq < log_.next_seq:
            try:
                seq, frames, _ = cursor.take()
            except FellBehind as exc:
                self.why = "fell_behind"
                self._finish([], exc.envelope())
                return
            error = self.entry.error
            if error is not None and frames[-1][0] is error:  # the log's last frame
                self._finish(self.framer.messages(seq, frames[:-1]), error)
                return
            conn.sendv(self.framer.messages(seq, frames))
        if log_.closed and cursor.next_seq >= log_.next_seq:
            self._finish([], None)
            return
        self.progressed()

    def _finish(self, bufs: list[bytes], error: bytes | None) -> None:
        self.done = True
        self.entry.detach(self)
        self.conn.stream_finished(self, bufs, error)


class WebSocketConnection(Output):
    """One WebSocket: inbound messages to a handler, streams and messages out."""

    __slots__ = ("_batch", "_batch_size", "_drain_waiters", "_inbox_waiter", "_last_rx",
                 "_ping_due", "_ping_slot", "_pinged_at", "_request", "_route", "_task",
                 "close_after_stream", "ctx", "inbox", "inbox_bytes", "inbox_full", "readers",
                 "scheduled", "session")

    def __init__(self, ctx: Context, transport: Any, accepted: ws.Accepted, tail: bytes,
                 peer: Any, write_paused: bool) -> None:
        super().__init__(ctx.loop, ctx.limits, ctx.admission)
        self.ctx = ctx
        self.transport = transport
        self.peer = peer
        self.write_paused = write_paused
        limits = ctx.limits
        self.session = ws.WSSession(accepted, max_frame=limits.ws_max_frame_bytes,
                                    max_message=limits.ws_max_message_bytes,
                                    max_fragments=limits.ws_max_fragments, tail=tail)
        self.session.hold_pongs = write_paused
        #: Not reading: the inbox is full, or our output is (a peer that sends and never
        #: reads is not read either), or the session has a parse backlog.
        self.inbox_full = False
        self.readers: dict[bytes | None, WSReader] = {}
        #: Messages received and not yet taken by the handler; None when there are none
        #: (an empty deque is 760 bytes: most idle sockets have none).
        self.inbox: deque[str | bytes] | None = None
        self.inbox_bytes = 0
        self._inbox_waiter: asyncio.Future[None] | None = None
        #: Handlers waiting for the output to drain; None when none does (an empty list
        #: is 56 bytes of every idle socket).
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self._last_rx = self.loop.time()
        self._pinged_at: float | None = None
        #: The ping check's deadline, and its slot in the server's wheel (None: not in it).
        self._ping_due = 0.0
        self._ping_slot: int | None = None
        self._task: asyncio.Task[None] | None = None
        #: A message route's handler and request (``@app.websocket(messages=True)``): a
        #: task runs it only while messages wait (:meth:`_pump`).
        self._route: Route | None = None
        self._request: Request | None = None
        self.close_after_stream = False
        #: The messages the handler sent (``await ws.send``) during this loop iteration,
        #: written together by the Flusher once it is done (:meth:`flush`): one write per
        #: connection and iteration, not one ``write(2)`` per message.  (Kept here, not in
        #: an object of its own that would point back: no cycle, see test_no_cycles.py.)
        #: None between batches (an idle socket keeps no empty list).
        self._batch: list[bytes] | None = None
        self._batch_size = 0
        self.scheduled = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self, route: Route, request: Request, response: bytes) -> None:
        # Kept for the socket's life (ws.request): its headers packed, ~0.6 KB less.
        request._raw = ws.keep_request(request._raw)
        self.send(response)
        self._arm_ping(self.limits.ws_ping_interval_s)
        if route.messages:
            self._route, self._request = route, request
        else:
            self._task = self.loop.create_task(self._run(route, WebSocket(self, request)))
        # Frames that came with the handshake are parsed once the handler exists.
        self.data_received(b"")

    async def _run(self, route: Route, socket: WebSocket) -> None:
        try:
            if route.websocket:  # called here: a handler that fails when called is a 1011
                await route.handler(socket)
            else:
                await _serve_stream_route(socket, route, socket.request)
        except Exception as exc:
            self._fail(exc)
        else:
            if not self.readers:
                self.close(ws.NORMAL)
            else:
                self.close_after_stream = True

    async def _pump(self, route: Route, request: Request) -> None:
        """A message route: the messages waiting, one handler call each, in order; the
        task ends when none is left (the next message starts another)."""
        socket = WebSocket(self, request)
        try:
            while self.inbox:
                await route.handler(socket, self._take())
        except Exception as exc:
            self._fail(exc)
        finally:
            self._task = None

    def _fail(self, exc: BaseException) -> None:
        """The error boundary: a handler's or a stream's exception becomes a close code
        (RFC 6455 section 7.4.1): 1008 for a refused request, 1002 for a protocol error,
        1011 for a bug of ours (details in the log only)."""
        if isinstance(exc, WebSocketClosed):
            return
        if not isinstance(exc, StreamcoreError):
            log.error("WebSocket %s: internal error", self.peer, exc_info=exc)
            exc = InternalError()
        try:
            self.close(exc.close_code, exc.message)
        except Exception:  # the session itself is broken: nothing sensible can be sent
            log.exception("WebSocket %s: closing failed", self.peer)
            self.abort()

    def data_received(self, data: bytes) -> None:
        if data:
            self._last_rx = self.loop.time()
            self._pinged_at = None
        try:
            events = self.session.receive(data)
        except Exception as exc:  # a bug of ours must not leave the socket half-alive
            log.error("WebSocket %s: session failed", self.peer, exc_info=exc)
            self.abort()
            return
        self._received(events)

    def _parse_more(self) -> None:
        """What the last read left unparsed: one slice per loop iteration, reading paused
        meanwhile, so that a flood of tiny frames shares the loop with everyone else."""
        if self.transport is None:
            return
        try:
            events = self.session.parse_more()
        except Exception as exc:
            log.error("WebSocket %s: session failed", self.peer, exc_info=exc)
            self.abort()
            return
        self._received(events)

    def _received(self, events: list[ws.Received | ws.Closed]) -> None:
        session = self.session
        if session.outbox:
            self.sendv(session.outbox)
            session.outbox = []
        for event in events:
            if isinstance(event, ws.Received):
                inbox = self.inbox
                if inbox is None:
                    inbox = self.inbox = deque()
                inbox.append(event.data)
                self.inbox_bytes += len(event.data)
                if not self.inbox_full and (
                        len(inbox) >= INBOX_HIGH
                        or self.inbox_bytes >= self.limits.ws_max_message_bytes):
                    self.inbox_full = True
            else:  # Closed: the handshake is over (or failed); the server closes TCP first
                self._stop_streams()
                self._wake_inbox()
                self.close_transport(self.limits.ws_close_timeout_s)
        route = self._route
        if route is not None and self.inbox and self._task is None:
            assert self._request is not None  # set with the route
            self._task = self.loop.create_task(self._pump(route, self._request))
        if session.backlog and self.transport is not None:
            self.loop.call_soon(self._parse_more)
        self._sync_reading()
        if self.inbox and self._inbox_waiter is not None:
            self._wake_inbox()

    def _sync_reading(self) -> None:
        self.reading(self.inbox_full or self.write_paused or self.session.backlog)

    def pause_writing(self) -> None:
        super().pause_writing()
        # Our output is full: no Pong is queued behind it, and nothing more is read (the
        # peer's own TCP window closes) until it drains or the write-stall deadline hits.
        self.session.hold_pongs = True
        self._sync_reading()

    def eof_received(self) -> bool | None:
        return None

    def _write_stalled(self) -> None:
        self._write_stalled_readers()
        super()._write_stalled()

    def _write_stalled_readers(self) -> None:
        for reader in self.readers.values():  # their streams end as slow_consumer
            reader.why = "slow_consumer"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session.closed is None:
            self.session.receive(None)
        if self._ping_slot is not None:
            self._wheel().remove(self, self._ping_slot)
            self._ping_slot = None
        self._output_lost()
        if isinstance(exc, TimeoutError):  # TCP_USER_TIMEOUT: the kernel gave up on it
            self._write_stalled_readers()
        self._stop_streams()
        self._wake_inbox()
        self._wake_drain_waiters()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.admission.release(self)

    def writable_again(self) -> None:
        session = self.session
        session.hold_pongs = False
        session.answer_ping()
        if session.outbox:
            self.sendv(session.outbox)
            session.outbox = []
        self._sync_reading()
        for reader in list(self.readers.values()):
            reader.flush()
        self._wake_drain_waiters()

    def _wake_drain_waiters(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def close(self, code: int = ws.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the peer has ws_close_timeout_s to answer."""
        data = self.session.close(code, ws.close_reason(reason))
        if data:
            self.send(data)
            self.close_deadline(self.limits.ws_close_timeout_s)
        self._stop_streams()

    def close_idle(self) -> bool:
        """Server shutdown: going away (1001)."""
        self.close(ws.GOING_AWAY, "server shutting down")
        return False

    # -- messages out ---------------------------------------------------------------

    def send_message(self, data: str | bytes, *, utf8: bool = False) -> bool:
        """One whole message (compressed if negotiated), written with the others of this
        loop iteration; ``utf8``: ``data`` is the UTF-8 of a text message.  False if the
        socket is closing."""
        if self.transport is None or not self.session.open:
            return False
        session = self.session
        frame = (session.text_message(data) if utf8 else  # type: ignore[arg-type]
                 session.message(data))
        batch = self._batch
        if batch is None:
            self._batch = [frame]
        else:
            batch.append(frame)
        self._batch_size += len(frame)
        if self._batch_size >= FLUSH_BYTES:  # at once: the transport's backpressure (which
            self.flush()                     # ws.send waits on) must see them
        elif not self.scheduled:
            self.scheduled = True
            flusher = self.ctx.flusher
            flusher.pending.append(self)
            if not flusher.scheduled:
                flusher.scheduled = True
                flusher.loop.call_soon(flusher.run)
        return True

    def flush(self) -> None:
        """Write the batch of messages (the Flusher's call, or an early one)."""
        self.scheduled = False  # (still queued if flushed early: that run finds it empty)
        bufs = self._batch
        if bufs:
            self._batch = None
            size, self._batch_size = self._batch_size, 0
            super().sendv(bufs, size)

    def send(self, data: bytes) -> None:
        if self._batch:  # what the handler sent goes first: one order on the wire
            self.flush()
        super().send(data)

    def sendv(self, bufs: list[bytes], size: int = -1) -> None:
        if self._batch:
            self.flush()
        super().sendv(bufs, size)

    async def drained(self) -> None:
        """Return once the transport takes bytes again (at once if it does)."""
        if self.write_paused and self.transport is not None:
            fut = self.loop.create_future()
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(fut)
            await fut

    # -- liveness -------------------------------------------------------------------

    def _wheel(self) -> Wheel:
        return self.ctx.wheel

    def _arm_ping(self, delay: float) -> None:
        # On the server's wheel, not a call_later each: a loop timer is ~650 bytes.
        self._ping_due = due = self.loop.time() + delay
        self._ping_slot = self._wheel().add(self, due)

    def due(self) -> None:
        """The wheel's call (streamcore.aio.wheel)."""
        self._ping_slot = None
        self._ping_check(self._ping_due)

    def _ping_check(self, due: float) -> None:
        """Ping after ws_ping_interval_s of silence; a peer silent ws_ping_timeout_s after
        that is dead.  Silence is measured from the last byte received, not from pongs;
        and a check that runs late (our loop was busy, the peer's bytes may be unread in
        the socket) gets one more interval instead of a verdict."""
        now = self.loop.time()
        limits = self.limits
        if self.transport is None or not self.session.open:
            return
        late = now - due > 0.5 * limits.ws_ping_timeout_s
        silence = now - self._last_rx
        if self._pinged_at is not None:
            # While we do not read (the handler is behind on its messages), the peer's
            # pong sits unread: not a dead peer.
            if now - self._pinged_at >= limits.ws_ping_timeout_s and not late and (
                    not self.read_paused):
                log.info("closing WebSocket %s: no answer to ping", self.peer)
                self.abort()
                return
            self._arm_ping(max(0.01, self._pinged_at + limits.ws_ping_timeout_s - now))
        elif silence >= limits.ws_ping_interval_s:
            self.send(self.session.ping(b"streamcore"))
            self._pinged_at = now
            self._arm_ping(limits.ws_ping_timeout_s)
        else:
            self._arm_ping(limits.ws_ping_interval_s - silence)

    # -- inbox ----------------------------------------------------------------------

    def _wake_inbox(self) -> None:
        fut = self._inbox_waiter
        if fut is not None:
            self._inbox_waiter = None
            if not fut.done():
                fut.set_result(None)

    async def receive(self) -> str | bytes:
        inbox = self.inbox
        while not inbox:
            if self.transport is None or not self.session.open:
                closed = self.session.closed
                raise WebSocketClosed(closed.code if closed else ws.ABNORMAL,
                                      closed.reason if closed else "")
            self._inbox_waiter = self.loop.create_future()
            await self._inbox_waiter
            inbox = self.inbox
        return self._take()

    def _take(self) -> str | bytes:
        """The next message of the inbox (which has one); reading resumes below the low
        water marks."""
        inbox = self.inbox
        assert inbox is not None
        data = inbox.popleft()
        if not inbox:
            self.inbox = None
        self.inbox_bytes -= len(data)
        if self.inbox_full and len(inbox) <= INBOX_LOW \
                and self.inbox_bytes < self.limits.ws_max_message_bytes // 2:
            self.inbox_full = False
            self._sync_reading()
        return data

    # -- streams --------------------------------------------------------------------

    def _check_room(self, key: bytes | None) -> None:
        if key in self.readers:
            raise RequestError("a request with this id is already running",
                               code="duplicate_id")
        if len(self.readers) >= self.limits.ws_max_concurrent_requests:
            raise RequestError(
                f"too many concurrent requests on this socket (limit "
                f"{self.limits.ws_max_concurrent_requests})", code="too_many_requests")

    def start_stream(self, key: bytes | None, items: AsyncIterator[Any] | PushSource,
                     end: Callable[[], bytes | None] | None, *, sse_end: bytes | None = None,
                     policy: str | None = None) -> None:
        """A keyed stream is findable by id (resumable on any transport, its ``stream``
        message first) and follows the disconnect policy when its socket goes; a plain
        stream route's (no key) ends with its socket."""
        self._check_room(key)
        self.admission.check_new_work()
        stream = self.ctx.new_stream(items, sse_end=sse_end, resumable=key is not None,
                                     transport="websocket", policy=policy)
        entry = stream.entry
        reader = WSReader(self, entry, key, end)
        self.ctx.time_first_token(reader, stream, time.monotonic())
        if key is not None:
            self.send_frame(wsapi.stream_message(key, entry.id, entry.epoch))
        entry.attach(reader, origin=True)
        self.readers[key] = reader
        stream.start()

    def resume_stream(self, key: bytes, entry: Entry, epoch: str | None, after: int,
                      exact: bool) -> None:
        """Read ``entry`` on this socket after event ``after`` of ``epoch``: a snapshot if
        the log no longer holds that (unless ``exact``), the missed chunks, the live tail
        and the end, each once (docs/resume.md)."""
        if self.transport is None or not self.session.open:
            return  # the socket went while the store was asked
        self._check_room(key)
        resumes = self.ctx.metrics.child
        try:
            start, snapshot = entry.resume_at(epoch, after, exact)
        except HistoryLost:
            resumes("streamcore_resumes_total", "websocket", "history_lost").inc()
            raise
        resumes("streamcore_resumes_total", "websocket",
                "replayed" if snapshot is None else "snapshot").inc()
        reader = WSReader(self, entry, key, None, start)
        self.send_frame(wsapi.stream_message(key, entry.id, entry.epoch))
        if snapshot is not None:
            self.send_frame(wsapi.snapshot_message(key, start - 1, snapshot))
        entry.attach(reader)
        self.readers[key] = reader
        reader.wake()

    def send_frame(self, message: bytes) -> None:
        """One text message of ours, uncompressed (as the chunks are)."""
        self.sendv(wsapi.frame(message))

    def cancel_stream(self, key: bytes | None) -> bool:
        """Stop one stream now, its generation too (the client asked): its generator is
        closed in this loop iteration."""
        reader = self.readers.get(key)
        if reader is None:
            return False
        reader.why = "cancelled"
        self._leave(key)
        owner = reader.entry.owner
        if owner is not None:
            owner.cancel()
        return True

    def _leave(self, key: bytes | None) -> WSReader | None:
        """This socket stops reading one stream; the stream's disconnect policy decides
        whether its generation goes on."""
        reader = self.readers.pop(key, None)
        if reader is not None:
            reader.done = True
            reader.entry.detach(reader)
        return reader

    def stream_finished(self, reader: WSReader, bufs: list[bytes], error: bytes | None) -> None:
        if self.readers.get(reader.key) is reader:
            del self.readers[reader.key]
        if reader.key is None:  # a plain stream route: the socket ends with the stream
            if error is not None:
                bufs += wsapi.frame(error)
            self.sendv(bufs)
            refused = reader.entry.refused
            if error is None:
                self.close(ws.NORMAL)
            elif refused is not None:  # bad input: policy violation (RFC 6455 7.4.1)
                self.close(refused.close_code, refused.message)
            else:
                self.close(ws.INTERNAL_ERROR, "stream failed")
            return
        if error is not None:
            bufs += wsapi.frame(wsapi.error_message(reader.key, error))
        else:
            ws_end = reader.entry.ws_end
            message = (reader.end() if reader.end is not None
                       else ws_end(reader.key) if ws_end is not None else None)
            if message:
                bufs += wsapi.frame(message)
        self.sendv(bufs)
        if self.close_after_stream and not self.readers:
            self.close(ws.NORMAL)

    def _stop_streams(self) -> None:
        for key in list(self.readers):
            self._leave(key)


async def _serve_stream_route(socket: WebSocket, route: Route, request: Request) -> None:
    """A plain stream route over WebSocket: for a non-GET route the first message is the
    request body; the handler's items are the messages; the end is a 1000 close."""
    body = None
    if route.method != "GET":
        first = await socket.receive()
        body = first.encode() if isinstance(first, str) else first
    request = request.with_messages(socket, body)
    socket.conn.start_stream(None, route.handler(request), None)


class WebSocket:
    """What a WebSocket handler (``@app.websocket``) sees of its connection."""

    __slots__ = ("conn", "request")

    def __init__(self, conn: WebSocketConnection, request: Request) -> None:
        self.conn = conn
        self.request = request

    @property
    def subprotocol(self) -> str | None:
        return self.conn.session.subprotocol

    async def receive(self) -> str | bytes:
        """The next message; raises :class:`WebSocketClosed` when the socket closes."""
        return await self.conn.receive()

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str | bytes]:
        while True:
            try:
                yield await self.conn.receive()
            except WebSocketClosed:
                return

    async def send(self, data: str | bytes) -> None:
        """Send one message (compressed if negotiated); waits while the peer is slow.
        Messages sent during one loop iteration go out in one write."""
        conn = self.conn
        if not conn.send_message(data):
            raise WebSocketClosed(ws.ABNORMAL)
        if conn.write_paused:  # (the check inlined: no coroutine per message otherwise)
            await conn.drained()

    async def send_json(self, obj: Any) -> None:
        """``obj`` as JSON in one text message."""
        conn = self.conn
        if not conn.send_message(orjson.dumps(obj), utf8=True):
            raise WebSocketClosed(ws.ABNORMAL)
        if conn.write_paused:
            await conn.drained()

    def stream(self, key: str | None, items: AsyncIterator[Any] | PushSource, *,
               end: Callable[[], bytes | None] | None = None, sse_end: bytes | None = None,
               disconnect: str | None = None) -> None:
        """Run ``items`` as a stream on this socket, keyed by ``key`` (JSON-encoded into
        each chunk message); ``end`` makes the final message, ``sse_end`` the end event
        of an SSE reader resuming it; ``disconnect``: its disconnect policy (None: the
        server's)."""
        self.conn.start_stream(None if key is None else wsapi.key_of(key), items, end,
                               sse_end=sse_end, policy=disconnect)

    async def resume(self, key: str, stream_id: str, after: int, *, epoch: str | None = None,
                     exact: bool = False) -> None:
        """Read the existing stream ``stream_id`` after event ``after`` (of ``epoch``) on
        this socket, keyed by ``key``; a stream this server does not know (or no longer
        keeps) is a 404 ``stream_not_found``."""
        entry = await self.conn.ctx.store.fetch(stream_id, after + 1)
        if entry is None:
            raise RequestError(f"no stream {stream_id!r} (unknown, or no longer retained)",
                               status=404, param="stream", code="stream_not_found")
        self.conn.resume_stream(wsapi.key_of(key), entry, epoch, after, exact)

    def cancel(self, key: str) -> bool:
        return self.conn.cancel_stream(wsapi.key_of(key))

    @property
    def active(self) -> int:
        return len(self.conn.readers)

    async def close(self, code: int = ws.NORMAL, reason: str = "") -> None:
        self.conn.close(code, reason)
