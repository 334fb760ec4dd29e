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
from .stream import DetachBudget, Flusher, Stream, source_of


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
    #: Room for streams running detached (Limits.disconnect_policy "detach").
    detached: DetachBudget | None = None

    def __post_init__(self) -> None:
        limits = self.limits
        if self.detached is None:
            self.detached = DetachBudget(limits.resume_budget_bytes // max(
                1, limits.stream_log_bytes + limits.stream_snapshot_bytes))

    @property
    def retry_ms(self) -> int:
        """The SSE ``retry:`` an EventSource is told (WHATWG HTML 9.2.6): a fifth of the
        linger window (at most 1 s, at least 100 ms), so that it is back in time; 0 (none
        sent: the browser's own 3-5 s) when nothing lingers by default."""
        limits = self.limits
        grace = limits.resume_grace_s
        if grace <= 0 or limits.disconnect_policy == "cancel":
            return 0
        return max(100, min(1000, int(grace * 200)))

    def new_stream(self, items: object, *, sse_end: bytes | None = None,
                   resumable: bool = False, policy: str | None = None) -> Stream:
        """A stream with this server's limits; ``resumable``: findable in the store by id
        while it runs and after it ended, and following ``policy`` (default: the
        server's) when its last reader leaves; a stream that is not is cancelled then."""
        limits = self.limits
        stream = Stream(source_of(items, limits.stream_idle_timeout_s),
                        log_bytes=limits.stream_log_bytes,
                        high_water=limits.write_high_water_bytes,
                        low_water=limits.write_low_water_bytes,
                        grace_s=limits.resume_grace_s if resumable else 0.0,
                        sse_end=sse_end,
                        policy=(policy or limits.disconnect_policy) if resumable else "cancel",
                        detach_budget=self.detached)
        if resumable:
            self.store.add(stream.entry)
            stream.on_end = self._ended
        return stream

    def _ended(self, stream: Stream) -> None:
        self.store.ended(stream.entry)
