"""Connections to upstream LLM servers: a bounded keep-alive pool per upstream.

An :class:`UpstreamConnection` carries one exchange at a time and hands its events to
one consumer (an upstream source); the consumer may pause and resume reading, which is
how a slow client's backpressure reaches the upstream's socket (its TCP window closes).
A connection goes back to the pool only after a complete exchange
(:attr:`~streamcore.proto.upstream.UpstreamSession.reusable`); an aborted one (a cancel, a
timeout, an error) is closed and never reused.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_
from collections import deque
from typing import Any, Protocol

from ..errors import RequestError
from ..limits import Limits
from ..proto.upstream import Event, Target, UpstreamError, UpstreamSession
from .output import abort

log = logging.getLogger("streamcore")


class Consumer(Protocol):
    """Who reads an exchange."""

    def upstream_events(self, events: list[Event]) -> None: ...

    def upstream_read(self, data: bytes) -> bool:
        """A whole read, taken at once if it is what the consumer can take so (a paced
        upstream's token, :meth:`~streamcore.proto.upstream.UpstreamSession.receive_one`);
        False: nothing taken, the session receives it."""

    def upstream_body(self, data: bytes) -> None:
        """Body bytes alone (one whole chunk): what ``upstream_events([Body(data)])``
        would mean, without the event and its list."""

    def upstream_failed(self, exc: UpstreamError) -> None:
        """The connection broke mid-exchange (closed, reset, malformed)."""


class Unavailable(RequestError):
    """No connection to the upstream could be had: 502 (refused, unreachable), 504 (timed
    out) or 503 (its pool is full)."""

    type = "upstream_error"

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message, status=status, code=code)


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_lost", "consumer", "pool", "read_paused", "session", "transport", "uses")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.session = UpstreamSession(pool.target,
                                       max_head_bytes=pool.limits.upstream_max_head_bytes)
        self.transport: Any = None
        self.consumer: Consumer | None = None
        self.read_paused = False
        self._lost = False
        #: Exchanges started on it (a kept-alive one may have been closed by the upstream).
        self.uses = 0

    @property
    def open(self) -> bool:
        return self.transport is not None and not self._lost

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        consumer = self.consumer
        if consumer is not None:
            if consumer.upstream_read(data):
                return
            body = self.session.receive_chunk(data)
            if body is not None:
                consumer.upstream_body(body)
                return
        try:
            events = self.session.receive(data)
        except UpstreamError as exc:
            self.abort()
            if consumer is not None:
                self.consumer = None
                consumer.upstream_failed(exc)
            return
        if consumer is not None and events:
            consumer.upstream_events(events)

    def eof_received(self) -> bool | None:
        self.data_received(b"")  # a close-delimited body ends, or a truncated one fails
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.transport = None
        self.pool.forget(self)
        consumer = self.consumer
        if consumer is not None:
            self.consumer = None
            consumer.upstream_failed(UpstreamError(
                "the upstream closed the connection mid-response"
                + (f" ({exc})" if exc else "")))

    # -- used by the consumer ----------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """The exchange is over: back to the pool if it completed, else closed."""
        self.consumer = None
        self.resume_reading()
        self.pool.release(self)

    def abort(self) -> None:
        """Stop now: the upstream sees its connection reset (a generation it runs for us
        is cancelled), and the connection is never reused."""
        self.consumer = None
        if self.transport is not None and not self._lost:
            abort(self.transport)


class UpstreamPool:
    """Connections to one upstream: at most ``upstream_pool_size`` open, idle ones kept
    for reuse (the most recently used first: it is the likeliest to be alive)."""

    __slots__ = ("_idle", "_open", "_waiters", "closed", "limits", "loop", "ssl", "target")

    def __init__(self, loop: asyncio.AbstractEventLoop, target: Target, limits: Limits,
                 ssl: ssl_.SSLContext | None = None) -> None:
        self.loop = loop
        self.target = target
        self.limits = limits
        self.ssl = ssl if ssl is not None or not target.tls else ssl_.create_default_context()
        self._idle: list[UpstreamConnection] = []
        self._open: set[UpstreamConnection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    @property
    def open_count(self) -> int:
        return len(self._open)

    async def acquire(self) -> UpstreamConnection:
        """A connection ready for a request: an idle one, or a new one.
        :class:`Unavailable` if none can be had within the connect timeout."""
        deadline = self.loop.time() + self.limits.upstream_connect_timeout_s
        while True:
            conn = self._take_idle()
            if conn is not None:
                return conn
            if len(self._open) < self.limits.upstream_pool_size:
                conn = await self._connect(deadline)
                conn.uses += 1
                return conn
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - self.loop.time()))
            except TimeoutError:
                raise Unavailable(f"every connection to {self.target.url()} is busy "
                                  f"(upstream_pool_size {self.limits.upstream_pool_size})",
                                  503, "upstream_busy") from None
            finally:  # woken, timed out or cancelled: it waits no more
                self._waiters.remove(waiter)

    def idle(self) -> UpstreamConnection | None:
        """An idle connection ready for a request now, or None (then :meth:`acquire`):
        the common case without a task, an await and a loop iteration before the request
        goes out.  None while requests wait for a connection: they come first."""
        return None if self._waiters else self._take_idle()

    def _take_idle(self) -> UpstreamConnection | None:
        # Every idle connection is open: one the upstream closes is forgotten at once
        # (connection_lost), and only an open one is put back (release).
        if not self._idle:
            return None
        conn = self._idle.pop()
        conn.uses += 1
        return conn

    async def _connect(self, deadline: float) -> UpstreamConnection:
        target = self.target
        conn = UpstreamConnection(self)
        self._open.add(conn)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: conn, target.host, target.port, ssl=self.ssl,
                    server_hostname=target.host if self.ssl is not None else None),
                max(0.0, deadline - self.loop.time()))
        except TimeoutError:
            self.forget(conn)
            raise Unavailable(f"connecting to {target.url()} timed out", 504,
                              "upstream_timeout") from None
        except (OSError, ssl_.SSLError) as exc:
            self.forget(conn)
            raise Unavailable(f"cannot connect to {target.url()}: {exc}", 502,
                              "upstream_unreachable") from None
        except BaseException:  # cancelled (the client left while we connected)
            self.forget(conn)
            conn.abort()
            raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        session = conn.session
        if conn.open and not self.closed and session.reusable:
            session.next_cycle()
            self._idle.append(conn)
            self._wake()
        else:
            conn.abort()

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection is gone: make room for another."""
        if conn in self._open:
            self._open.discard(conn)
            if conn in self._idle:
                self._idle.remove(conn)
            self._wake()

    def _wake(self) -> None:
        # A woken waiter stays listed until it runs (acquire's finally): until then the
        # connection freed for it is not idle() for a newcomer to take.
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.closed = True
        for conn in list(self._open):
            conn.abort()
