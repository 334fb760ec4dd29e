"""The listener and the runner: a listening socket, the shared context of its
connections, graceful drain."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import ssl as ssl_
import time
from typing import Any

from ..errors import ServerShutdown
from ..limits import Limits
from ..metrics import Metrics
from ..store.base import ReplayStore
from ..store.memory import MemoryStore
from .admission import Admission
from .chaos import ChaosHook
from .connection import HTTPConnection
from .context import Context
from .handler import Router
from .output import watch_peers
from .sse import Heartbeat
from .stream import Flusher

log = logging.getLogger("streamcore")

#: After the drain, how long connections get to write their last bytes (the streams'
#: shutdown error events) before they are reset (seconds).
SHUTDOWN_CLOSE_S = 1.0


class Server:
    """One listening socket serving one router (a :class:`~streamcore.App`).  Several
    servers (and apps) can live in one process and one loop: nothing here is global."""

    def __init__(self, app: Router, limits: Limits | None = None, *,
                 store: ReplayStore | None = None, metrics: Metrics | None = None) -> None:
        self.app = app
        self.limits = limits = limits or app.limits
        loop = asyncio.get_running_loop()
        self.loop = loop
        #: Counted here; the app's own (``App.metrics``) if it has one, so that its
        #: ``/metrics`` route shows them.
        self.metrics = metrics = metrics or getattr(app, "metrics", None) or Metrics()
        self.admission = Admission(limits, metrics)
        self.store = store or MemoryStore(loop.time, limits.resume_retention_s,
                                          limits.resume_budget_bytes)
        self.heartbeat = Heartbeat(loop, limits.heartbeat_interval_s)
        chaos = getattr(app, "chaos", None)  # chaos mode (streamcore.proto.chaos.Chaos)
        self.ctx = Context(loop, limits, app, self.admission, Flusher(loop, metrics),
                           self.store, self.heartbeat,
                           ChaosHook(chaos) if chaos is not None else None, metrics)
        self.lag = LagProbe(loop, limits.loop_lag_probe_s, metrics)
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> set[Any]:
        return self.admission.connections

    async def listen(self, host: str = "127.0.0.1", port: int = 8000, *,
                     sock: socket.socket | None = None, backlog: int | None = None,
                     ssl: ssl_.SSLContext | None = None) -> None:
        if backlog is None:
            backlog = self.limits.listen_backlog
        ctx = self.ctx
        await self.store.open()  # a shared store connects before the first stream
        self.heartbeat.start()
        self.lag.start()
        if sock is not None:
            self._server = await self.loop.create_server(
                lambda: HTTPConnection(ctx), sock=sock, backlog=backlog, ssl=ssl)
        else:
            self._server = await self.loop.create_server(
                lambda: HTTPConnection(ctx), host, port, backlog=backlog, reuse_address=True,
                ssl=ssl)
        for listener in self._server.sockets:  # inherited by every accepted connection
            watch_peers(listener, self.limits.write_stall_timeout_s)

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
        admission = self.admission
        admission.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(admission.connections):
            conn.close_idle()
        if not await admission.drained(timeout):
            log.warning("drain timeout: closing %d connections", len(admission.connections))
        self.heartbeat.stop()  # heartbeats go on while streams drain
        # The streams still running end with the server; their readers are told so, with
        # the cursor to resume from elsewhere, before their connections close.
        for entry in self.store.live():
            if entry.owner is not None:
                entry.owner.cancel(ServerShutdown(entry.cursor(entry.log.next_seq - 1)))
        if admission.connections:
            await asyncio.sleep(0)  # the Flusher writes the error events
            for conn in list(admission.connections):
                conn.close_transport(SHUTDOWN_CLOSE_S)
            await admission.drained(SHUTDOWN_CLOSE_S)
        for conn in list(admission.connections):
            conn.abort()
        admission.connections.clear()
        if self._server is not None:
            await self._server.wait_closed()
        self.lag.stop()
        await self.store.close()  # after the streams' ends: a shared store writes them


class LagProbe:
    """The event loop's lag: a timer every ``interval_s`` observes how late it ran
    (``streamcore_event_loop_lag_seconds``).  A saturated loop runs every callback late,
    timers included; a token written in the call that read or produced it shows no write
    latency (:meth:`~streamcore.aio.stream.Stream.push_one`), so this is the signal that
    the loop has more work than time."""

    __slots__ = ("_due", "_timer", "histogram", "interval_s", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float,
                 metrics: Metrics) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.histogram = metrics.child("streamcore_event_loop_lag_seconds")
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        if self.interval_s > 0 and self._timer is None:
            self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self._due = time.monotonic() + self.interval_s
        self._timer = self.loop.call_later(self.interval_s, self._fired)

    def _fired(self) -> None:
        self.histogram.observe(max(0.0, time.monotonic() - self._due))
        self._arm()


async def start(app: Router, host: str = "127.0.0.1", port: int = 8000, *,
                limits: Limits | None = None, sock: socket.socket | None = None,
                ssl: ssl_.SSLContext | None = None, store: ReplayStore | None = None,
                ) -> Server:
    """Serve ``app`` from the running event loop; returns the :class:`Server`.

    ``ssl``: serve TLS with this context.  ``store``: where streams are kept for resume
    (default: a :class:`~streamcore.store.MemoryStore`).  ``await server.close(drain_timeout)``
    stops it.
    """
    server = Server(app, limits, store=store)
    await server.listen(host, port, sock=sock, ssl=ssl)
    return server


def tune_gc() -> None:
    """Keep the cyclic garbage collector from pausing streams.

    A full collection walks every tracked object: with a thousand streams that is a pause
    of tens of milliseconds, and it comes often, because every token allocates young
    objects (measured, 1000 streams at 20 tokens/s: p99 lateness 16-250 ms by default,
    3-10 ms with this).  Objects alive at startup are frozen out of collections, and full
    collections are made 100 times rarer; young generations are collected as usual.  A
    finished stream is freed by reference counting, leaving no cyclic garbage, on every
    path the server has (the synthetic model, a generator handler, a WebSocket handler,
    the upstream gateway; ``tests/test_no_cycles.py`` runs them with the collector off),
    so rarer full collections do not grow memory.  A handler of one's own that makes
    cycles (an exception kept with its traceback, say) is not covered by that.
    ``run()`` calls this; an embedding service may call it once its own startup
    is done.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, 1000)


def run(app: Router, host: str = "127.0.0.1", port: int = 8000, *,
        limits: Limits | None = None, on_ready: Any = None,
        ssl: ssl_.SSLContext | None = None, sock: socket.socket | None = None,
        store: ReplayStore | None = None) -> None:
    """Serve ``app`` on a new uvloop event loop until SIGTERM (drain, then exit) or SIGINT
    (stop now); on ``sock`` if given (a bound socket, e.g. a worker's SO_REUSEPORT one).
    ``store``: as for :func:`start`."""
    import uvloop

    async def main() -> None:
        server = await start(app, host, port, limits=limits, ssl=ssl, sock=sock, store=store)
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
