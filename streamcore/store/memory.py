"""The in-memory replay store: one process's streams, kept for resume within a budget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from .base import Entry


class MemoryStore:
    """Live entries by id; ended ones for ``retention_s`` seconds, within ``budget_bytes``
    of logs over all of them (the oldest go first)."""

    __slots__ = ("_clock", "_first_expires", "_live", "_retained", "_retained_bytes",
                 "budget_bytes", "retention_s")

    def __init__(self, clock: Callable[[], float], retention_s: float,
                 budget_bytes: int) -> None:
        self._clock = clock
        self.retention_s = retention_s
        self.budget_bytes = budget_bytes
        self._live: dict[str, Entry] = {}
        #: Ended entries, oldest first (each until its ``expires``).
        self._retained: OrderedDict[str, Entry] = OrderedDict()
        self._retained_bytes = 0
        #: When the oldest kept entry expires, or earlier (0.0: not known): a stream's
        #: end does not look at the oldest entry before then, unless over the budget.
        self._first_expires = 0.0

    @property
    def retained_bytes(self) -> int:
        return self._retained_bytes

    def add(self, entry: Entry) -> None:
        self._live[entry.id] = entry

    def ended(self, entry: Entry) -> None:
        self._live.pop(entry.id, None)
        now = self._clock()
        if self.retention_s > 0 and self.budget_bytes > 0:
            entry.expires = now + self.retention_s
            self._retained[entry.id] = entry
            self._retained_bytes += entry.kept_bytes
        if now >= self._first_expires or self._retained_bytes > self.budget_bytes:
            self._evict(now)

    def find(self, stream_id: str) -> Entry | None:
        entry = self._live.get(stream_id)
        if entry is None:
            self._evict()
            entry = self._retained.get(stream_id)
        return entry

    def live(self) -> list[Entry]:
        return list(self._live.values())

    def entries(self) -> list[Entry]:
        """Live entries, then the ended ones still kept (the stream inspector's list)."""
        self._evict()
        return [*self._live.values(), *self._retained.values()]

    def forget(self, stream_id: str) -> None:
        """Let a stream go now, live or kept (a shared store's copy that is no longer
        true)."""
        self._live.pop(stream_id, None)
        kept = self._retained.pop(stream_id, None)
        if kept is not None:
            self._retained_bytes -= kept.kept_bytes

    async def fetch(self, stream_id: str, next_seq: int = 1) -> Entry | None:
        """As :meth:`find`: one process's memory has nothing more to ask."""
        return self.find(stream_id)

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to let go of."""

    def _evict(self, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        retained = self._retained
        while retained:
            entry = next(iter(retained.values()))
            if entry.expires > now and self._retained_bytes <= self.budget_bytes:
                # Entries are kept oldest first, each for retention_s: none expires
                # before this one (forget only takes some away).
                self._first_expires = entry.expires
                return
            retained.popitem(last=False)
            self._retained_bytes -= entry.kept_bytes
        self._first_expires = 0.0
