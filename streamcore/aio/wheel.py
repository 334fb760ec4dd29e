"""A timer wheel: many objects' deadlines on one loop timer per slot that has any.

A ``call_later`` per idle WebSocket (its ping check) cost ~650 bytes on uvloop (a
``TimerHandle``, a libuv timer, the callback's arguments): more than the rest of the
socket's own state; per HTTP connection (its read deadline: keep-alive, head, body) it was
also a ``call_at`` and a ``cancel`` per connection (issue 14).  Here an object waits in
a slot's dict instead (tens of bytes), and each slot of :data:`RESOLUTION_S` that holds
any has one timer.  A deadline is met late by up to one slot, never early.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

log = logging.getLogger("streamcore")

#: Width of a slot (seconds): how late a deadline may fire.  Keepalive deadlines are
#: seconds to tens of seconds (ws_ping_interval_s); a tenth of a second is nothing to them
#: and keeps the timers few (at most ten a second, whatever the number of sockets).
RESOLUTION_S = 0.1


class Due(Protocol):
    def due(self) -> None:
        """The deadline has come (the object is no longer in the wheel)."""


class Wheel:
    """Deadlines by slot; an object is in at most one slot at a time (its owner keeps the
    slot number :meth:`add` returns, to :meth:`remove` it)."""

    __slots__ = ("loop", "slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.slots: dict[int, dict[Due, None]] = {}

    def add(self, item: Due, when: float) -> int:
        """Call ``item.due()`` at loop time ``when`` (or up to one slot later)."""
        slot = math.ceil(when / RESOLUTION_S)
        bucket = self.slots.get(slot)
        if bucket is None:
            bucket = self.slots[slot] = {}
            self.loop.call_at(slot * RESOLUTION_S, self._fire, slot)
        bucket[item] = None
        return slot

    def remove(self, item: Due, slot: int) -> None:
        bucket = self.slots.get(slot)
        if bucket is not None:
            bucket.pop(item, None)

    def _fire(self, slot: int) -> None:
        for item in self.slots.pop(slot, {}):
            try:
                item.due()
            except Exception:  # a bug of its owner's: the slot's other deadlines still come
                log.exception("a deadline's call failed: %r", item)
