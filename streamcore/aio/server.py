"""Listening sockets, the connection registry, admission and graceful drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl as _ssl
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..limits import Limits
from ..proto import http
from .connection import HTTPConnection
from .stream import Flusher, Stream

if TYPE_CHECKING:
    from ..app import App, Route

log = logging.getLogger("streamcore")


class Server:
    """One listening socket serving one :class:`~streamcore.App`.  Several servers (and
    apps) can live in one process and one loop: nothing here is global."""

    def __init__(self, app: App, limits: Limits | None = None) -> None:
        self.app = app
        self.limits = limits or app.limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[Any] = set()
        #: Estimated output bytes held by paused transports (high-water mark each).
        self.paused_bytes = 0
        self.streams_started = 0
        self.draining = False
        self._server: asyncio.Server | None = None
        self._closed = asyncio.Event()
        self._ticker: asyncio.TimerHandle | None = None
        #: Flushes every stream woken during a loop iteration, once, at its end.
        self.flusher = Flusher(self.loop)
        #: SSE streams by id: live ones, and ended ones kept for resume (oldest first).
        self.streams: dict[str, Stream] = {}
        self._retained: OrderedDict[str, tuple[Stream, float]] = OrderedDict()
        self._retained_bytes = 0

    # -- admission ------------------------------------------------------------------

    def register(self, conn: Any) -> bool:
        """Admit a new connection, or refuse it (the caller answers 503)."""
        if self.draining or len(self.connections) >= self.limits.max_connections:
            return False
        self.connections.add(conn)
        return True

    def unregister(self, conn: Any) -> None:
        self.connections.discard(conn)
        if self.draining and not self.connections:
            self._closed.set()

    def overloaded(self) -> bool:
        """New work is refused (503) when buffered output passes the global budget."""
        return self.paused_bytes > self.limits.max_buffered_bytes_total

    # -- streams and resume ---------------------------------------------------------

    def register_stream(self, stream: Stream) -> None:
        """A new SSE stream, findable by id (Last-Event-ID) while it runs and after."""
        self.streams[stream.id] = stream
        stream.on_end = self._stream_ended

    def _stream_ended(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)
        limits = self.limits
        if limits.resume_retention_s > 0 and limits.resume_budget_bytes > 0:
            self._retained[stream.id] = (stream, self.loop.time() + limits.resume_retention_s)
            self._retained_bytes += stream.log.held_bytes
        self._evict()

    def _evict(self) -> None:
        now = self.loop.time()
        retained = self._retained
        while retained:
            stream, expiry = next(iter(retained.values()))
            if expiry > now and self._retained_bytes <= self.limits.resume_budget_bytes:
                break
            retained.popitem(last=False)
            self._retained_bytes -= stream.log.held_bytes

    def find_stream(self, stream_id: str) -> Stream | None:
        """A live stream, or an ended one still retained for resume."""
        stream = self.streams.get(stream_id)
        if stream is None:
            self._evict()
            entry = self._retained.get(stream_id)
            stream = entry[0] if entry is not None else None
        return stream

    def upgrade_websocket(self, conn: HTTPConnection, raw: http.Request, route: Route,
                          params: dict[str, str]) -> None:
        from .websocket import upgrade

        upgrade(self, conn, raw, route, params)

    # -- lifecycle ------------------------------------------------------------------

    def _heartbeat(self) -> None:
        """One timer for every SSE stream's heartbeat: a TimerHandle per connection would
        cost more memory than the rest of an idle stream's connection."""
        for conn in list(self.connections):
            sse = getattr(conn, "sse", None)
            if sse is not None:
                sse.heartbeat()
        self._ticker = self.loop.call_later(self.limits.heartbeat_interval_s, self._heartbeat)

    async def listen(self, host: str = "127.0.0.1", port: int = 8000, *,
                     sock: socket.socket | None = None, backlog: int | None = None,
                     ssl: _ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port`` (or on ``sock``); with ``ssl``, speak TLS with that
        context (the handshake is the event loop's; everything above it is unchanged)."""
        if backlog is None:
            backlog = self.limits.listen_backlog
        self._ticker = self.loop.call_later(self.limits.heartbeat_interval_s, self._heartbeat)
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: HTTPConnection(self), sock=sock, backlog=backlog, ssl=ssl)
        else:
            self._server = await self.loop.create_server(
                lambda: HTTPConnection(self), host, port, backlog=backlog, reuse_address=True,
                ssl=ssl)

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server else []

    @property
    def port(self) -> int:
        port: int = self.sockets[0].getsockname()[1]
        return port

    async def close(self, drain_timeout: float | None = None) -> None:
        """Stop accepting; let in-flight responses finish for up to ``drain_timeout``
        seconds (default: the limit ``drain_timeout_s``); then close what is left."""
        timeout = self.limits.drain_timeout_s if drain_timeout is None else drain_timeout
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_idle()
        if self.connections:
            try:
                await asyncio.wait_for(self._closed.wait(), timeout)
            except TimeoutError:
                log.warning("drain timeout: closing %d connections", len(self.connections))
        if self._ticker is not None:  # heartbeats go on while streams drain
            self._ticker.cancel()
        # Streams without a connection (in their resume grace) end with the server.
        for stream in list(self.streams.values()):
            stream.cancel()
        for conn in list(self.connections):
            transport = conn.transport
            if transport is not None:
                transport.abort()
        self.connections.clear()
        if self._server is not None:
            await self._server.wait_closed()


async def start(app: App, host: str = "127.0.0.1", port: int = 8000, *,
                limits: Limits | None = None, sock: socket.socket | None = None,
                ssl: _ssl.SSLContext | None = None) -> Server:
    """Serve ``app`` from the running event loop; returns the :class:`Server`.

    ``ssl``: an :class:`ssl.SSLContext` to serve HTTPS/WSS instead of plain TCP.

    ``await server.close(drain_timeout)`` stops it.
    """
    server = Server(app, limits)
    await server.listen(host, port, sock=sock, ssl=ssl)
    return server


def tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing streams.

    A full collection walks every tracked object: with a thousand streams that is a pause
    of tens of milliseconds, and it comes often, because every token allocates young
    objects (measured, 1000 streams at 20 tokens/s: p99 lateness 16-250 ms by default,
    3-10 ms with this).  Objects alive at startup are frozen out of collections, and full
    collections are made 100 times rarer; young generations are collected as usual.  A
    stream leaves no cyclic garbage (checked), so rarer full collections do not grow
    memory.  ``run()`` calls this; an embedding service may call it once its own startup
    is done.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1000)


def run(app: App, host: str = "127.0.0.1", port: int = 8000, *,
        limits: Limits | None = None, on_ready: Any = None,
        ssl: _ssl.SSLContext | None = None) -> None:
    """Serve ``app`` on a new uvloop event loop until SIGTERM (drain, then exit) or SIGINT
    (stop now)."""
    import uvloop

    async def main() -> None:
        server = await start(app, host, port, limits=limits, ssl=ssl)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        drain: dict[str, float] = {}

        def on_signal(signum: int) -> None:
            drain["timeout"] = (server.limits.drain_timeout_s if signum == signal.SIGTERM
                                else 0.0)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        tune_gc()
        log.info("streamcore listening on http://%s:%d", host, server.port)
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        log.info("shutting down (drain %.1fs)", drain["timeout"])
        await server.close(drain["timeout"])

    uvloop.run(main())
