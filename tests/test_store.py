"""The replay store (:mod:`streamcore.store`): the entry kept per stream, and the in-memory
store's retention and budget."""

from __future__ import annotations

from typing import Any

import pytest

from streamcore.proto.pipe import RUNNING, Cursor
from streamcore.store import Entry, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    def __init__(self, entry: Entry) -> None:
        self.cursor = Cursor(entry.log)

    def wake(self) -> None:
        pass

    def flush(self) -> None:
        pass


class FakeOwner:
    def __init__(self) -> None:
        self.state = RUNNING
        self.origin: Any = None
        self.calls: list[tuple[str, Any, Any]] = []

    def reader_joined(self, reader: Any, origin: bool) -> None:
        self.calls.append(("joined", reader, origin))

    def reader_left(self, reader: Any) -> None:
        self.calls.append(("left", reader, None))

    def writable_changed(self) -> None:
        self.calls.append(("writable", None, None))

    def cancel(self) -> None:
        self.calls.append(("cancel", None, None))


def entry_of(stream_id: str, payload: int = 0) -> Entry:
    entry = Entry(stream_id, 1 << 16)
    if payload:
        entry.log.append((b"x" * payload,), payload)
    return entry


# -- Entry --------------------------------------------------------------------------------


def test_new_entry() -> None:
    entry = Entry("s1", 100, sse_end=b"[DONE]")
    assert entry.id == "s1" and entry.log.max_bytes == 100 and entry.sse_end == b"[DONE]"
    assert entry.multiline is None and entry.error is None and entry.refused is None
    assert entry.readers == [] and entry.owner is None


def test_attach_and_detach_without_an_owner() -> None:
    entry = entry_of("s")
    a, b = FakeReader(entry), FakeReader(entry)
    entry.attach(a)
    entry.attach(b, origin=True)
    assert entry.readers == [a, b]
    entry.detach(a)
    entry.detach(a)  # twice: ignored
    assert entry.readers == [b]


def test_attach_and_detach_tell_the_owner() -> None:
    entry = entry_of("s")
    owner = FakeOwner()
    entry.owner = owner
    a, b = FakeReader(entry), FakeReader(entry)
    entry.attach(a, origin=True)
    entry.attach(b)
    entry.detach(b)
    entry.detach(b)  # not a reader any more: the owner is not told twice
    entry.detach(a)
    assert owner.calls == [("joined", a, True), ("joined", b, False), ("left", b, None),
                           ("left", a, None)]
    assert entry.readers == []


def test_mark_multiline_names_the_next_frame() -> None:
    entry = entry_of("s")
    entry.mark_multiline()
    entry.log.append((b"a\nb",), 3)
    entry.log.append((b"c",), 1)
    entry.mark_multiline()
    entry.log.append((b"d\re",), 3)
    assert entry.multiline == {1, 3}


# -- MemoryStore ----------------------------------------------------------------------------


def test_add_find_live_ended() -> None:
    clock = Clock()
    store = MemoryStore(clock, retention_s=10, budget_bytes=1000)
    a, b = entry_of("a", 10), entry_of("b", 20)
    store.add(a)
    store.add(b)
    assert store.find("a") is a and store.find("b") is b and store.find("c") is None
    assert store.live() == [a, b]
    store.ended(a)
    assert store.live() == [b]
    assert store.find("a") is a  # retained
    assert store.retained_bytes == 10


def test_retention_expires_with_the_clock() -> None:
    clock = Clock()
    store = MemoryStore(clock, retention_s=10, budget_bytes=1000)
    a = entry_of("a", 10)
    store.add(a)
    store.ended(a)
    clock.now += 9.99
    assert store.find("a") is a
    clock.now += 0.01
    assert store.find("a") is None
    assert store.retained_bytes == 0


def test_expired_entries_go_oldest_first_and_only_those() -> None:
    clock = Clock()
    store = MemoryStore(clock, retention_s=10, budget_bytes=1000)
    old, new = entry_of("old", 1), entry_of("new", 1)
    for e in (old, new):
        store.add(e)
    store.ended(old)
    clock.now += 5
    store.ended(new)
    clock.now += 5
    assert store.find("old") is None
    assert store.find("new") is new
    assert store.retained_bytes == 1


def test_budget_evicts_the_oldest_first() -> None:
    clock = Clock()
    store = MemoryStore(clock, retention_s=100, budget_bytes=100)
    entries = [entry_of(f"e{i}", 40) for i in range(4)]
    for e in entries:
        store.add(e)
    for e in entries[:2]:
        store.ended(e)
    assert store.retained_bytes == 80
    store.ended(entries[2])  # 120 > 100: the oldest goes
    assert store.find("e0") is None
    assert store.find("e1") is entries[1] and store.find("e2") is entries[2]
    assert store.retained_bytes == 80
    store.ended(entries[3])
    assert [store.find(f"e{i}") is not None for i in range(4)] == [False, False, True, True]


def test_an_entry_over_the_whole_budget_is_not_kept() -> None:
    store = MemoryStore(Clock(), retention_s=100, budget_bytes=10)
    big = entry_of("big", 11)
    store.add(big)
    store.ended(big)
    assert store.find("big") is None and store.retained_bytes == 0


@pytest.mark.parametrize(("retention_s", "budget_bytes"), [(0, 1000), (10, 0), (0, 0)])
def test_no_retention_or_no_budget_keeps_nothing(retention_s: float, budget_bytes: int) -> None:
    store = MemoryStore(Clock(), retention_s=retention_s, budget_bytes=budget_bytes)
    a = entry_of("a", 1)
    store.add(a)
    assert store.find("a") is a  # live: findable whatever the retention
    store.ended(a)
    assert store.find("a") is None and store.live() == [] and store.retained_bytes == 0


def test_no_budget_keeps_not_even_an_empty_log() -> None:
    store = MemoryStore(Clock(), retention_s=10, budget_bytes=0)
    empty = entry_of("empty")
    store.add(empty)
    store.ended(empty)
    assert store.find("empty") is None


def test_ended_without_add_is_kept_too() -> None:
    # A store that never saw the entry live (ended by another path) still retains it.
    store = MemoryStore(Clock(), retention_s=10, budget_bytes=100)
    a = entry_of("a", 1)
    store.ended(a)
    assert store.find("a") is a


def test_forget_lets_a_live_or_kept_entry_go_now() -> None:
    clock = Clock()
    store = MemoryStore(clock, 60.0, 1 << 20)
    live, kept = entry_of("live", 10), entry_of("kept", 20)
    store.add(live)
    store.add(kept)
    store.ended(kept)
    assert store.retained_bytes == 20
    store.forget("live")
    store.forget("kept")
    store.forget("never")
    assert store.find("live") is None and store.find("kept") is None
    assert store.retained_bytes == 0 and store.live() == []


def test_a_streams_end_evicts_what_expired_before_it_and_nothing_else() -> None:
    """``ended`` looks at the oldest kept entry only once it may have expired (or the
    budget is passed): what it evicts is what a look every time would evict."""
    clock = Clock()
    store = MemoryStore(clock, retention_s=10, budget_bytes=1000)
    entries = [entry_of(f"e{i}", 10) for i in range(4)]
    store.ended(entries[0])          # t=0, expires at 10
    clock.now += 4
    store.ended(entries[1])          # t=4, expires at 14
    assert store.retained_bytes == entries[0].kept_bytes + entries[1].kept_bytes
    store.forget("e0")               # the oldest taken away: nothing later is missed
    clock.now += 7                   # t=11
    store.ended(entries[2])          # t=11: e1 (14) stays
    assert store.retained_bytes == entries[1].kept_bytes + entries[2].kept_bytes
    clock.now += 3                   # t=14: e1 expires now
    store.ended(entries[3])
    assert store.retained_bytes == entries[2].kept_bytes + entries[3].kept_bytes
    assert [e.id for e in store.entries()] == ["e2", "e3"]
