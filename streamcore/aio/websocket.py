"""WebSocket connections: the asyncio side of :mod:`streamcore.proto.ws`.

An upgrade request arrives as an HTTP request; :func:`upgrade` answers the handshake and
swaps the transport's protocol for a :class:`WebSocketConnection`.  Streams run on it as
on SSE: the same :class:`~streamcore.aio.stream.Stream` and token log, read by a
:class:`WSReader` that writes each frame as a WebSocket text frame (a header in front of
the shared payload buffers).  Several streams can share one socket, told apart by a key.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson

from ..app import Request, Route
from ..errors import FellBehind, ProtocolError, RequestError
from ..proto import http, ws
from ..proto.jsonbytes import dumps
from ..proto.pipe import Cursor
from .flow import WriteFlow, abort
from .stream import BaseReader, PushSource, Stream, error_payload

if TYPE_CHECKING:
    from .connection import HTTPConnection
    from .server import Server

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


def upgrade(server: Server, conn: HTTPConnection, raw: http.Request, route: Route,
            params: dict[str, str]) -> None:
    """Answer an upgrade request on ``conn`` and hand its transport to a WebSocket."""
    app = server.app
    limits = server.limits
    try:
        accepted = ws.accept(raw, subprotocols=app.ws_subprotocols, deflate=app.ws_deflate,
                             origins=app.ws_origins, max_message=limits.ws_max_message_bytes)
    except ProtocolError as exc:
        extra = ((b"sec-websocket-version", b"13"),) if exc.status == 426 else ()
        conn.reject(exc.status, str(exc), "websocket_handshake", extra)
        return
    transport = conn.transport
    assert transport is not None
    tail = conn.session.take_upgrade_tail()
    conn.hand_over()
    session = ws.WSSession(accepted, max_frame=limits.ws_max_frame_bytes,
                           max_message=limits.ws_max_message_bytes, tail=tail)
    request = Request(raw, params, conn.peer, app)
    wsconn = WebSocketConnection(server, transport, session, conn.write_paused)
    server.connections.discard(conn)
    server.connections.add(wsconn)
    transport.set_protocol(wsconn)
    transport.write(accepted.response)
    wsconn.start(route, request)


class WSReader(BaseReader):
    """Writes one stream to a WebSocket: one text message per frame.

    ``key`` set (the gateway): ``{"type":"chunk","id":<key>,"seq":N,"chunk":<payload>}``.
    ``key`` None (a plain stream route): the payload itself is the message.
    """

    __slots__ = ("conn", "cursor", "end", "head", "key", "stream")

    def __init__(self, conn: WebSocketConnection, stream: Stream, key: bytes | None,
                 end: Callable[[], bytes | None] | None) -> None:
        super().__init__(conn.server.flusher)
        self.conn = conn
        self.stream = stream
        self.cursor = Cursor(stream.log)
        self.scheduled = False
        self.key = key
        # A %-format with the key inside it: a "%" of the client's id must not format.
        self.head = (b'{"type":"chunk","id":' + key.replace(b"%", b"%%")
                     + b',"seq":%d,"chunk":') if key else b""
        self.done = False
        self.end = end

    def _flush(self, conn: WebSocketConnection) -> None:
        assert conn.transport is not None
        if not conn.session.open:  # no data frame after our Close (RFC 6455 5.5.1)
            return
        cursor = self.cursor
        log_ = cursor.log
        if (log_.next_seq - cursor.next_seq == 1 and not log_.closed and self.head
                and self.stream.error is None):
            # One message pending (a paced stream's token): one buffer, one write(2).
            seq = cursor.next_seq
            frame, size = cursor.take_newest()
            prefix = self.head % seq
            conn.transport.write(b"".join((ws.text_header(len(prefix) + size + 1), prefix,
                                           *frame, b"}")))
            if self.stream.paused and self.stream.origin is self:
                self.stream.writable_changed()
            return
        if cursor.next_seq < log_.next_seq:
            try:
                seq, frames, _ = cursor.take()
            except FellBehind as exc:
                self._finish(error_payload(str(exc), "stream_error", "fell_behind"))
                return
            bufs: list[bytes] = []
            header = ws.text_header
            head = self.head
            error = self.stream.error
            for frame in frames:
                if error is not None and frame[0] is error:
                    self._finish(error, bufs)
                    return
                if head:
                    prefix = head % seq
                    bufs.append(header(len(prefix) + sum(map(len, frame)) + 1))
                    bufs.append(prefix)
                    bufs.extend(frame)
                    bufs.append(b"}")
                else:
                    bufs.append(header(sum(map(len, frame))))
                    bufs.extend(frame)
                seq += 1
            conn.transport.writelines(bufs)
        if log_.closed and cursor.next_seq >= log_.next_seq:
            self._finish(None)
            return
        if self.stream.paused and self.stream.origin is self:
            self.stream.writable_changed()

    def _finish(self, error: bytes | None, bufs: list[bytes] | None = None) -> None:
        self.done = True
        conn = self.conn
        self.stream.detach(self)
        conn.stream_finished(self, error, bufs or [])


class WebSocketConnection(WriteFlow):
    """One WebSocket: inbound messages to a handler, streams and messages out."""

    def __init__(self, server: Server, transport: asyncio.Transport, session: ws.WSSession,
                 write_paused: bool) -> None:
        super().__init__()
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport | None = transport
        self.session = session
        self.peer = transport.get_extra_info("peername")
        self.write_paused = write_paused
        self.read_paused = False
        self.readers: dict[bytes | None, WSReader] = {}
        self.inbox: deque[str | bytes] = deque()
        self.inbox_bytes = 0
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._last_rx = self.loop.time()
        self._pinged_at: float | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.close_after_stream = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self, route: Route, request: Request) -> None:
        self._arm_ping(self.limits.ws_ping_interval_s)
        socket = WebSocket(self, request)
        if route.websocket:
            coro = route.handler(socket)
        else:
            coro = _serve_stream_route(socket, route, request)
        self._task = self.loop.create_task(self._run(coro))
        # Frames that came with the handshake are parsed once the handler exists.
        self.data_received(b"")

    async def _run(self, coro: Any) -> None:
        try:
            await coro
        except WebSocketClosed:
            pass
        except RequestError as exc:
            self.close(ws.POLICY, exc.message[:120])
        except Exception:
            log.exception("WebSocket handler failed")
            self.close(ws.INTERNAL_ERROR, "internal error")
        else:
            if not self.readers:
                self.close(ws.NORMAL)
            else:
                self.close_after_stream = True

    def data_received(self, data: bytes) -> None:
        if data:
            self._last_rx = self.loop.time()
            self._pinged_at = None
        session = self.session
        try:
            events = session.receive(data)
        except Exception:  # a bug of ours must not leave the socket half-alive
            log.exception("WebSocket session failed")
            self._abort()
            return
        if session.outbox:
            self._write(session.outbox)
            session.outbox.clear()
        for event in events:
            if isinstance(event, ws.Received):
                self.inbox.append(event.data)
                self.inbox_bytes += len(event.data)
                if not self.read_paused and (
                        len(self.inbox) >= INBOX_HIGH
                        or self.inbox_bytes >= self.limits.ws_max_message_bytes):
                    self.read_paused = True
                    if self.transport is not None:
                        self.transport.pause_reading()
            else:
                self._closed_by_handshake(event)
        if self.inbox and self._inbox_waiter is not None:
            self._wake_inbox()

    def _closed_by_handshake(self, event: ws.Closed) -> None:
        self._stop_streams()
        self._wake_inbox()
        # RFC 6455 section 7.1.1: the server closes the TCP connection first.
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.session.closed is None:
            self.session.receive(None)
        for timer in (self._ping_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._end_pause()
        self._stop_streams()
        self._wake_inbox()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.server.unregister(self)

    def writable_again(self) -> None:
        for reader in list(self.readers.values()):
            reader.flush()
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _abort(self) -> None:
        abort(self.transport)

    def _write(self, bufs: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(bufs)

    def close(self, code: int = ws.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the peer has ws_close_timeout_s to answer."""
        data = self.session.close(code, reason)
        if data:
            self._write([data])
        self._stop_streams()
        if self._close_timer is None and self.transport is not None:
            self._close_timer = self.loop.call_later(self.limits.ws_close_timeout_s,
                                                     self._abort)

    def close_idle(self) -> bool:
        """Server shutdown: going away (1001)."""
        self.close(ws.GOING_AWAY, "server shutting down")
        return False

    # -- liveness -------------------------------------------------------------------

    def _arm_ping(self, delay: float) -> None:
        self._ping_timer = self.loop.call_later(delay, self._ping_check, self.loop.time()
                                                + delay)

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
                self._abort()
                return
            self._arm_ping(max(0.01, self._pinged_at + limits.ws_ping_timeout_s - now))
        elif silence >= limits.ws_ping_interval_s:
            self._write([self.session.ping(b"streamcore")])
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
        while not self.inbox:
            if self.session.closed is not None or self.transport is None or (
                    self.session.closing):
                closed = self.session.closed
                raise WebSocketClosed(closed.code if closed else 1006,
                                      closed.reason if closed else "")
            self._inbox_waiter = self.loop.create_future()
            await self._inbox_waiter
        data = self.inbox.popleft()
        self.inbox_bytes -= len(data)
        if self.read_paused and len(self.inbox) <= INBOX_LOW and self.transport is not None \
                and self.inbox_bytes < self.limits.ws_max_message_bytes // 2:
            self.read_paused = False
            self.transport.resume_reading()
        return data

    # -- streams --------------------------------------------------------------------

    def start_stream(self, key: bytes | None, items: AsyncIterator[Any] | PushSource,
                     end: Callable[[], bytes | None] | None) -> None:
        if key in self.readers:
            raise RequestError("a request with this id is already running",
                               code="duplicate_id")
        if len(self.readers) >= self.limits.ws_max_concurrent_requests:
            raise RequestError(
                f"too many concurrent requests on this socket (limit "
                f"{self.limits.ws_max_concurrent_requests})", code="too_many_requests")
        if self.server.overloaded():
            raise RequestError("the server is at capacity; retry shortly", status=503,
                               type="server_error", code="overloaded")
        limits = self.limits
        stream = Stream(items, log_bytes=limits.stream_log_bytes,
                        high_water=limits.write_high_water_bytes,
                        low_water=limits.write_low_water_bytes)
        reader = WSReader(self, stream, key, end)
        stream.attach(reader, origin=True)
        self.readers[key] = reader
        self.server.streams_started += 1
        stream.start()

    def cancel_stream(self, key: bytes | None) -> bool:
        """Stop one stream now: its generator is closed in this loop iteration."""
        reader = self.readers.pop(key, None)
        if reader is None:
            return False
        reader.done = True
        reader.stream.detach(reader)
        return True

    def stream_finished(self, reader: WSReader, error: bytes | None,
                        bufs: list[bytes]) -> None:
        if self.readers.get(reader.key) is reader:
            del self.readers[reader.key]
        if reader.key is None:
            if error is not None:
                bufs += [ws.text_header(len(error)), error]
            self._write(bufs)
            if error is not None:
                refused = reader.stream.refused
                if refused is not None:  # bad input: policy violation (RFC 6455 7.4.1)
                    self.close(ws.POLICY, refused.message[:120])
                else:
                    self.close(ws.INTERNAL_ERROR, "stream failed")
            else:
                self.close(ws.NORMAL)
            return
        if error is not None:
            message = b'{"type":"error","id":' + reader.key + b',"error":' + error[9:]
            bufs += [ws.text_header(len(message)), message]
        elif reader.end is not None:
            message_or_none = reader.end()
            if message_or_none:
                bufs += [ws.text_header(len(message_or_none)), message_or_none]
        self._write(bufs)
        if self.close_after_stream and not self.readers:
            self.close(ws.NORMAL)

    def _stop_streams(self) -> None:
        for key in list(self.readers):
            self.cancel_stream(key)


async def _serve_stream_route(socket: WebSocket, route: Route, request: Request) -> None:
    """A plain stream route over WebSocket: for a non-GET route the first message is the
    request body; the handler's items are the messages; the end is a 1000 close."""
    if route.method != "GET":
        first = await socket.receive()
        request._raw.body = first.encode() if isinstance(first, str) else first
    request._messages = socket
    socket.conn.start_stream(None, route.handler(request), None)


class WebSocket:
    """What a WebSocket handler (``@app.websocket``) sees of its connection."""

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
        """Send one message (compressed if negotiated); waits while the peer is slow."""
        conn = self.conn
        if conn.transport is None or not conn.session.open:
            raise WebSocketClosed(1006)
        conn._write([conn.session.message(data)])
        if conn.write_paused and conn.transport is not None:
            fut = conn.loop.create_future()
            conn._drain_waiters.append(fut)
            await fut

    async def send_json(self, obj: Any) -> None:
        await self.send(orjson.dumps(obj).decode())

    def stream(self, key: str | None, items: AsyncIterator[Any] | PushSource, *,
               end: Callable[[], bytes | None] | None = None) -> None:
        """Run ``items`` as a stream on this socket, keyed by ``key`` (JSON-encoded into
        each chunk message); ``end`` makes the final message."""
        self.conn.start_stream(None if key is None else dumps(key), items, end)

    def cancel(self, key: str) -> bool:
        return self.conn.cancel_stream(dumps(key))

    @property
    def active(self) -> int:
        return len(self.conn.readers)

    async def close(self, code: int = ws.NORMAL, reason: str = "") -> None:
        self.conn.close(code, reason)
