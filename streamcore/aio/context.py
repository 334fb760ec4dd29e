"""What every connection of one server shares: built once by the server, handed to each
connection, so that connections import nothing of the server (the arrows point down)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..limits import Limits
from ..store.base import ReplayStore
from .admission import Admission
from .handler import Router
from .sse import Heartbeat
from .stream import Flusher, Stream, source_of


@dataclass(slots=True, eq=False)
class Context:
    loop: asyncio.AbstractEventLoop
    limits: Limits
    router: Router
    admission: Admission
    #: Flushes every stream woken during a loop iteration, once, at its end.
    flusher: Flusher
    #: Streams by id for resume: live ones, and ended ones kept for a while.
    store: ReplayStore
    heartbeat: Heartbeat
    #: Chaos mode's per-request hook (``streamcore.aio.chaos.ChaosHook``), None when off.
    chaos: Any = None

    def new_stream(self, items: object, *, sse_end: bytes | None = None,
                   resumable: bool = False) -> Stream:
        """A stream with this server's limits; ``resumable``: findable in the store by id
        while it runs and after it ended."""
        limits = self.limits
        stream = Stream(source_of(items, limits.stream_idle_timeout_s),
                        log_bytes=limits.stream_log_bytes,
                        high_water=limits.write_high_water_bytes,
                        low_water=limits.write_low_water_bytes,
                        grace_s=limits.resume_grace_s if resumable else 0.0,
                        sse_end=sse_end)
        if resumable:
            self.store.add(stream.entry)
            stream.on_end = self._ended
        return stream

    def _ended(self, stream: Stream) -> None:
        self.store.ended(stream.entry)
