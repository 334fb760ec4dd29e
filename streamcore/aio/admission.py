"""Admission: the connection registry, its cap, and the global budget of buffered output.

Above either bound new work is refused with 503 and Retry-After, and work already admitted
goes on (a server at capacity must not fail the streams it is serving).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import Overloaded
from ..limits import Limits


class Admission:
    """Open connections (the registry every drain walks) and the bytes paused transports
    hold."""

    __slots__ = ("_idle", "connections", "draining", "limits", "paused_bytes", "per_ip")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
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
            return False
        ip = _ip(conn.peer)
        if ip is not None:
            count = self.per_ip.get(ip, 0)
            cap = self.limits.max_connections_per_ip
            if cap and count >= cap:
                return False
            self.per_ip[ip] = count + 1
        self.connections.add(conn)
        return True

    def replace(self, old: Any, new: Any) -> None:
        """The same socket under another protocol (an upgrade)."""
        self.connections.discard(old)
        self.connections.add(new)

    def release(self, conn: Any) -> None:
        if conn not in self.connections:  # refused, or already released
            return
        self.connections.discard(conn)
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
