"""Admission: the connection registry, its cap, and the global budget of buffered output.

Above either bound new work is refused with 503 and Retry-After, and work already admitted
goes on (a server at capacity must not fail the streams it is serving).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..errors import Overloaded
from ..limits import Limits
from ..metrics import Metrics


class Admission:
    """Open connections (the registry every drain walks) and the bytes paused transports
    hold."""

    __slots__ = ("_accepted", "_bp", "_bp_at", "_buffered", "_held", "_idle", "_open",
                 "_paused_n",
                 "connections", "draining", "limits", "metrics", "paused_bytes", "per_ip")

    def __init__(self, limits: Limits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics = metrics or Metrics()
        self._accepted = metrics.child("streamcore_connections_total")
        self._open = metrics.child("streamcore_connections_open")
        self._buffered = metrics.child("streamcore_buffered_bytes")
        self._bp = metrics.child("streamcore_backpressure_seconds_total")
        self._held = metrics.child("streamcore_connection_buffered_bytes")
        #: Connections paused now, since when (time.monotonic): connection-seconds under
        #: backpressure are integrated at each change, with no per-connection clock.
        self._paused_n = 0
        self._bp_at = 0.0
        self.connections: set[Any] = set()
        #: Estimated output bytes held by paused transports (a high-water mark each).
        self.paused_bytes = 0
        self.draining = False
        self._idle = asyncio.Event()
        #: Open connections per peer address (only addresses with one open).
        self.per_ip: dict[str, int] = {}

    def admit(self, conn: Any) -> bool:
        """Register a new connection, or refuse it (the caller answers 503): over the
        server's cap, or over max_connections_per_ip for its peer address."""
        if self.draining or len(self.connections) >= self.limits.max_connections:
            return self._refused("draining" if self.draining else "max_connections")
        ip = _ip(conn.peer)
        if ip is not None:
            count = self.per_ip.get(ip, 0)
            cap = self.limits.max_connections_per_ip
            if cap and count >= cap:
                return self._refused("max_connections_per_ip")
            self.per_ip[ip] = count + 1
        self.connections.add(conn)
        self._accepted.inc()
        self._open.inc()
        return True

    def _refused(self, reason: str) -> bool:
        self.metrics.child("streamcore_connections_refused_total", reason).inc()
        return False

    def paused(self, nbytes: int, held: int = 0) -> None:
        """A connection's output paused (``nbytes`` > 0, the bytes it may hold; ``held``,
        what its transport holds now) or resumed (< 0): the global budget's account, the
        buffered-bytes gauge and per-connection histogram, and the time under
        backpressure."""
        if nbytes > 0:
            self._held.observe(held)
        now = time.monotonic()
        if self._paused_n:
            self._bp.inc(self._paused_n * (now - self._bp_at))
        self._bp_at = now
        self._paused_n += 1 if nbytes > 0 else -1
        self.paused_bytes += nbytes
        self._buffered.set(self.paused_bytes)

    def replace(self, old: Any, new: Any) -> None:
        """The same socket under another protocol (an upgrade)."""
        self.connections.discard(old)
        self.connections.add(new)

    def release(self, conn: Any) -> None:
        if conn not in self.connections:  # refused, or already released
            return
        self.connections.discard(conn)
        self._open.inc(-1)
        ip = _ip(conn.peer)
        if ip is not None:
            count = self.per_ip.get(ip, 0) - 1
            if count > 0:
                self.per_ip[ip] = count
            else:
                self.per_ip.pop(ip, None)
        if self.draining and not self.connections:
            self._idle.set()

    def check_new_work(self) -> None:
        """Raise :class:`Overloaded` when buffered output is over the global budget."""
        if self.paused_bytes > self.limits.max_buffered_bytes_total:
            self.metrics.child("streamcore_requests_refused_total",
                               "max_buffered_bytes_total").inc()
            raise Overloaded("the server is at capacity; retry shortly",
                             self.limits.retry_after_s)

    def refusal(self) -> Overloaded:
        return Overloaded("too many connections; retry shortly", self.limits.retry_after_s)

    async def drained(self, timeout: float) -> bool:
        """Wait until every connection is gone (``draining`` set); False on timeout."""
        self.draining = True
        if not self.connections:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _ip(peer: Any) -> str | None:
    """The address of a peer (``(host, port)`` or IPv6's 4-tuple); None for a Unix socket."""
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return None
