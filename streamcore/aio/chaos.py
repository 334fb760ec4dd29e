"""Chaos mode's I/O side: a chaotic request's connection gets a write path that runs its
bytes through a fault transducer (:mod:`streamcore.proto.chaos_http`,
:mod:`streamcore.proto.chaos_ws`) and plays the actions back (writes, pauses, closes).

Nothing changes for other connections: a chaotic one is switched, for its response, to a
subclass whose :meth:`send`/:meth:`sendv`/:meth:`close_transport` are the chaotic ones
(the same slots, so ``__class__`` may change); a connection without faults never meets a
branch of chaos mode's after its request's one test of ``Context.chaos``.
"""

from __future__ import annotations

import collections
import random
from typing import Any

from ..proto import http
from ..proto.chaos import CLOSE, EOF, RESET, Action, Chaos, select
from ..proto.chaos_http import HTTPChaos
from ..proto.chaos_ws import WSChaos
from .connection import HTTPConnection
from .output import Output
from .websocket import WebSocketConnection

#: Paths server-wide faults leave alone (a health check, the fault list itself); a request
#: that asks for faults by name gets them anywhere.
EXEMPT = ("/healthz", "/v1/chaos/faults")


class Injector:
    """Plays a transducer's actions on one connection's transport, in order."""

    __slots__ = ("conn", "deadline_s", "queue", "timer", "transducer")

    def __init__(self, conn: Output, transducer: HTTPChaos | WSChaos) -> None:
        self.conn = conn
        self.transducer = transducer
        self.queue: collections.deque[Action | None] = collections.deque()
        self.timer: Any = None
        self.deadline_s: float | None = None

    def feed(self, data: bytes) -> None:
        self.queue.extend(self.transducer.feed(data))
        self.run()

    def close(self, deadline_s: float | None) -> None:
        """The server closes: once every action before is played (None in the queue)."""
        self.deadline_s = deadline_s
        self.queue.extend(self.transducer.close())
        self.queue.append(None)
        self.run()

    def run(self) -> None:
        if self.timer is not None:
            return
        conn = self.conn
        queue = self.queue
        while queue:
            transport = conn.transport
            if transport is None:
                queue.clear()
                return
            action = queue.popleft()
            if isinstance(action, bytes):
                conn.bytes_out += len(action)
                transport.write(action)
            elif isinstance(action, float):
                loop = conn.loop
                self.timer = (loop.call_later(action, self._wake) if action
                              else loop.call_soon(self._wake))
                return
            elif action == RESET:
                conn.abort()
            elif action == EOF:
                if transport.can_write_eof():
                    transport.write_eof()
            elif action == CLOSE:
                Output.close_transport(conn)
            else:  # None: the server's own close
                Output.close_transport(conn, self.deadline_s)

    def _wake(self) -> None:
        self.timer = None
        self.run()


class ChaoticHTTPConnection(HTTPConnection):
    """An HTTP connection whose response goes through :class:`HTTPChaos`."""

    __slots__ = ()

    def send(self, data: bytes) -> None:
        self.chaos.feed(data)

    def sendv(self, bufs: list[bytes], size: int = -1) -> None:
        self.chaos.feed(b"".join(bufs))

    def close_transport(self, deadline_s: float | None = None) -> None:
        self.chaos.close(deadline_s)


class ChaoticWebSocketConnection(WebSocketConnection):
    """A WebSocket connection whose frames go through :class:`WSChaos`."""

    __slots__ = ()

    def send(self, data: bytes) -> None:
        self.chaos.feed(data)

    def sendv(self, bufs: list[bytes], size: int = -1) -> None:
        self.chaos.feed(b"".join(bufs))

    def close_transport(self, deadline_s: float | None = None) -> None:
        self.chaos.close(deadline_s)


class ChaoticUpgrade(HTTPConnection):
    """An HTTP connection whose WebSocket handshake asked for faults: the WebSocket
    connection it hands over to gets them (after the 101 response)."""

    __slots__ = ()

    def _upgrade(self, raw: http.Request, route: Any, params: dict[str, str]) -> None:
        transport = self.transport
        selection = self.chaos
        super()._upgrade(raw, route, params)
        conn = transport.get_protocol()
        conn.chaos = Injector(conn, WSChaos(selection))
        conn.__class__ = ChaoticWebSocketConnection


class ChaosHook:
    """``Context.chaos``: called with each request's connection before it is dispatched;
    makes the connection chaotic if the request (or the server) names faults."""

    __slots__ = ("chaos", "rng")

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.rng = random.Random()

    def __call__(self, conn: HTTPConnection, raw: http.Request) -> None:
        header = raw.header(b"x-chaos")
        if header is None and "chaos" not in raw.query and raw.path in EXEMPT:
            return
        upgrade = b"websocket" in raw.header_tokens(b"upgrade")
        selection = select(self.chaos, header, raw.query, raw.header(b"x-chaos-seed"),
                           websocket=upgrade, fresh_seed=self.rng.randrange(1 << 32))
        if selection is None:
            return
        if upgrade:
            conn.chaos = selection
            conn.__class__ = ChaoticUpgrade
            return
        conn.chaos = Injector(conn, HTTPChaos(selection))
        conn.__class__ = ChaoticHTTPConnection
        conn.close_after_response = True  # the next request on it would get the faults too
