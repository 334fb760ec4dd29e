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

    __slots__ = ("_idle", "connections", "draining", "limits", "paused_bytes")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections: set[Any] = set()
        #: Estimated output bytes held by paused transports (a high-water mark each).
        self.paused_bytes = 0
        self.draining = False
        self._idle = asyncio.Event()

    def admit(self, conn: Any) -> bool:
        """Register a new connection, or refuse it (the caller answers 503)."""
        if self.draining or len(self.connections) >= self.limits.max_connections:
            return False
        self.connections.add(conn)
        return True

    def replace(self, old: Any, new: Any) -> None:
        """The same socket under another protocol (an upgrade)."""
        self.connections.discard(old)
        self.connections.add(new)

    def release(self, conn: Any) -> None:
        self.connections.discard(conn)
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
