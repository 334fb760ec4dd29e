"""Properties of the token pipe (streamcore.proto.pipe): TokenLog, Cursor, Flow.

The log is checked against a plain model: a list of (seq, frame) with the same trimming
rule (drop the oldest while over the bound, but never the newest frame).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcore.errors import FellBehind
from streamcore.proto.pipe import Cursor, Flow, TokenLog


def make_frame(seq: int, size: int) -> tuple[bytes, ...]:
    """A frame of exactly ``size`` payload bytes over 1-3 buffers, tagged with its seq so
    that a frame delivered twice or out of order is visible."""
    body = (b"%d|" % seq + b"x" * size)[:size]
    cut1, cut2 = size // 3, 2 * size // 3
    return (body[:cut1], body[cut1:cut2], body[cut2:])


def frame_size(frame: tuple[bytes, ...]) -> int:
    return sum(map(len, frame))


class Model:
    """The reference log: what the spec of TokenLog says it holds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held: list[tuple[int, tuple[bytes, ...]]] = []
        self.all: list[tuple[int, tuple[bytes, ...]]] = []
        self.next_seq = 1

    def append(self, frame: tuple[bytes, ...]) -> None:
        self.held.append((self.next_seq, frame))
        self.all.append((self.next_seq, frame))
        self.next_seq += 1
        while sum(frame_size(f) for _, f in self.held) > self.max_bytes and len(self.held) > 1:
            self.held.pop(0)

    @property
    def first_seq(self) -> int:
        return self.held[0][0] if self.held else self.next_seq


def check_log(log: TokenLog, model: Model) -> None:
    held = sum(frame_size(f) for _, f in model.held)
    assert log.held_bytes == held
    assert len(log) == len(model.held)
    assert log.first_seq == model.first_seq
    assert log.next_seq == model.next_seq
    # The bound: never more than max_bytes, except one frame larger than it, held alone.
    assert log.held_bytes <= log.max_bytes or len(log) == 1
    if len(log):
        assert log.since(log.first_seq) == [f for _, f in model.held]


sizes = st.integers(min_value=0, max_value=300)

# An operation: append a frame of some size, or let reader i take what is pending.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), sizes),
        st.tuples(st.just("take"), st.integers(min_value=0, max_value=2)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(max_bytes=st.integers(min_value=0, max_value=1000), operations=ops)
def test_log_against_model(max_bytes: int, operations: list[tuple[str, int]]) -> None:
    log = TokenLog(max_bytes)
    model = Model(max_bytes)
    cursors = [Cursor(log) for _ in range(3)]
    expected_next = [1, 1, 1]  # the model's view of each cursor
    fell = [False, False, False]
    received: list[list[int]] = [[], [], []]
    for op, arg in operations:
        if op == "append":
            frame = make_frame(model.next_seq, arg)
            log.append(frame, frame_size(frame))
            model.append(frame)
        else:
            i = arg
            cursor = cursors[i]
            if fell[i]:
                continue
            # backlog_bytes: the sum of sizes of every frame this reader has not taken.
            pending = [(s, f) for s, f in model.all if s >= expected_next[i]]
            assert cursor.backlog_bytes == sum(frame_size(f) for _, f in pending)
            if expected_next[i] < model.first_seq:
                with pytest.raises(FellBehind) as info:
                    cursor.take()
                assert info.value.wanted_seq == expected_next[i]
                assert info.value.first_seq == model.first_seq
                fell[i] = True
                continue
            first, frames, size = cursor.take()
            assert first == expected_next[i]
            assert frames == [f for _, f in pending]
            assert size == sum(frame_size(f) for f in frames)
            received[i].extend(s for s, _ in pending)
            expected_next[i] = model.next_seq
            assert cursor.caught_up
            assert cursor.backlog_bytes == 0
        check_log(log, model)
    for i in range(3):
        if not fell[i]:
            # Exactly once, in order, with no gap: 1, 2, ..., up to where it last took.
            assert received[i] == list(range(1, expected_next[i]))


@settings(max_examples=200, deadline=None)
@given(max_bytes=st.integers(min_value=0, max_value=500),
       frame_sizes=st.lists(sizes, min_size=1, max_size=100),
       readers=st.integers(min_value=1, max_value=4))
def test_readers_that_keep_up_get_every_frame_once_in_order(
        max_bytes: int, frame_sizes: list[int], readers: int) -> None:
    """A reader that takes after every append never falls behind, whatever the bound
    (the newest frame is always held), and sees each frame exactly once, in order."""
    log = TokenLog(max_bytes)
    cursors = [Cursor(log) for _ in range(readers)]
    got: list[list[tuple[bytes, ...]]] = [[] for _ in range(readers)]
    sent = []
    for seq, size in enumerate(frame_sizes, start=1):
        frame = make_frame(seq, size)
        sent.append(frame)
        log.append(frame, size)
        assert log.held_bytes <= max_bytes or len(log) == 1
        for cursor, out in zip(cursors, got, strict=True):
            first, frames, taken = cursor.take()
            assert first == seq
            assert taken == size
            out.extend(frames)
    for out in got:
        assert out == sent


@settings(max_examples=200, deadline=None)
@given(max_bytes=st.integers(min_value=1, max_value=500),
       frame_sizes=st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=80))
def test_cursor_that_falls_behind_is_told(max_bytes: int, frame_sizes: list[int]) -> None:
    """A reader that takes nothing while more than max_bytes pass gets FellBehind (and the
    same reader is told again: it is never silently skipped ahead)."""
    log = TokenLog(max_bytes)
    cursor = Cursor(log)
    for seq, size in enumerate(frame_sizes, start=1):
        log.append(make_frame(seq, size), size)
    if log.first_seq > 1:
        with pytest.raises(FellBehind):
            cursor.take()
        with pytest.raises(FellBehind):
            cursor.take()
        assert cursor.next_seq == 1
    else:
        first, frames, _ = cursor.take()
        assert first == 1 and len(frames) == len(frame_sizes)
    assert cursor.backlog_bytes == (sum(frame_sizes) if log.first_seq > 1 else 0)


def test_single_frame_larger_than_the_bound_is_held_alone() -> None:
    log = TokenLog(10)
    log.append(make_frame(1, 4), 4)
    log.append(make_frame(2, 4), 4)
    assert len(log) == 2
    log.append(make_frame(3, 50), 50)
    assert len(log) == 1 and log.held_bytes == 50 and log.first_seq == 3
    log.append(make_frame(4, 3), 3)
    # The big frame goes as soon as a newer frame exists.
    assert len(log) == 1 and log.held_bytes == 3 and log.first_seq == 4


@settings(max_examples=200, deadline=None)
@given(max_bytes=st.integers(min_value=0, max_value=600),
       frame_sizes=st.lists(sizes, min_size=1, max_size=60),
       data=st.data())
def test_resume_cursor_from_a_held_seq(max_bytes: int, frame_sizes: list[int],
                                       data: st.DataObject) -> None:
    """A cursor opened at a seq still held (resume with Last-Event-ID) gets exactly the
    frames from there, and its backlog counts exactly those bytes."""
    log = TokenLog(max_bytes)
    frames = []
    for seq, size in enumerate(frame_sizes, start=1):
        frame = make_frame(seq, size)
        frames.append(frame)
        log.append(frame, size)
    start = data.draw(st.integers(min_value=log.first_seq, max_value=log.next_seq))
    cursor = Cursor(log, start)
    assert cursor.backlog_bytes == sum(frame_sizes[start - 1:])
    first, got, size = cursor.take()
    assert first == start
    assert got == frames[start - 1:]
    assert size == sum(frame_sizes[start - 1:])
    late = data.draw(st.integers(min_value=1, max_value=max(1, log.first_seq - 1)))
    if late < log.first_seq:
        with pytest.raises(FellBehind):
            Cursor(log, late).take()


def test_closed_log_refuses_appends() -> None:
    log = TokenLog(100)
    log.append((b"a",), 1)
    log.close()
    assert log.closed
    with pytest.raises(RuntimeError):
        log.append((b"b",), 1)
    assert Cursor(log).take() == (1, [(b"a",)], 1)


# ------------------------------------------------------------------------------ Flow


@settings(max_examples=300, deadline=None)
@given(marks=st.tuples(st.integers(0, 1000), st.integers(0, 1000)),
       backlogs=st.lists(st.integers(0, 1200), max_size=100))
def test_flow_hysteresis(marks: tuple[int, int], backlogs: list[int]) -> None:
    low, high = sorted(marks)
    flow = Flow(high, low)
    paused = False
    for backlog in backlogs:
        before = paused
        result = flow.paused_after(paused, backlog)
        expected = backlog > low if paused else backlog > high
        assert result is expected
        # Between the marks nothing toggles.
        if low < backlog <= high:
            assert result is before
        paused = result


def test_flow_marks_concretely() -> None:
    flow = Flow(high=100, low=20)
    paused = False
    for backlog, expected in ((100, False),  # at the high mark: not above it
                              (101, True),
                              (50, True),  # between: stays paused
                              (21, True),
                              (20, False),  # at the low mark: resumed
                              (99, False)):  # between: stays running
        paused = flow.paused_after(paused, backlog)
        assert paused is expected, backlog


def test_flow_rejects_low_above_high() -> None:
    with pytest.raises(ValueError):
        Flow(high=10, low=11)


def test_frames_count_their_overhead_and_trimmed_ones_are_freed() -> None:
    log = TokenLog(3 * 12, frame_overhead=10)
    for i in range(5):
        log.append((b"%02d" % i,), 2)
    assert (len(log), log.held_bytes, log.appended_bytes) == (3, 36, 60)
    assert log._frames[:2] == [(), ()]  # trimmed, freed before the next compaction
    cursor = Cursor(log, 3)
    assert cursor.backlog_bytes == 36
    assert cursor.take() == (3, [(b"02",), (b"03",), (b"04",)], 6)
    log.close()
    assert log._frames == [(b"02",), (b"03",), (b"04",)] and log.since(3) == log._frames
    empty = TokenLog(10)
    empty.close()
    assert empty.since(1) == []


def test_a_log_may_start_later_than_seq_1() -> None:
    """A copy of a stream whose first frames are gone (read back from a shared store)."""
    log = TokenLog(1 << 10, first_seq=40)
    assert (log.first_seq, log.next_seq) == (40, 40)
    log.append((b"a",), 1)
    assert log.next_seq == 41 and log.since(40) == [(b"a",)]
    with pytest.raises(FellBehind):
        log.since(39)
    cursor = Cursor(log, 41)
    assert cursor.caught_up
