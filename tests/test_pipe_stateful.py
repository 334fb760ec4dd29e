"""A hypothesis state machine over the token pipe (``proto/pipe.py``): producers appending
frames of any size, readers joining (from the start, from the head, or resuming from any
sequence number) and leaving, taking now and then, the backpressure marks.

Invariants, after every step: the log holds at most ``max_bytes`` (or just its newest
frame); every reader got every frame from where it joined exactly once and in order, or
was told it fell behind (``FellBehind``) exactly when the log no longer held its next frame;
a reader's backlog is the bytes appended since its last take; ``Flow`` pauses above the
high mark and resumes at the low one.
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from streamcore.errors import FellBehind
from streamcore.proto.pipe import Cursor, Flow, TokenLog

MAX_BYTES = 64


class Reader:
    def __init__(self, cursor: Cursor, start: int) -> None:
        self.cursor = cursor
        self.got: list[int] = []  # sequence numbers taken, in order
        self.start = start
        self.fell_behind = False


class PipeMachine(RuleBasedStateMachine):
    readers = Bundle("readers")

    def __init__(self) -> None:
        super().__init__()
        self.log = TokenLog(MAX_BYTES)
        self.sizes: dict[int, int] = {}  # seq -> size of every frame ever appended
        self.flow = Flow(32, 8)
        self.paused = False
        self.live: list[Reader] = []

    @rule(size=st.integers(0, 40))
    def produce(self, size: int) -> None:
        seq = self.log.next_seq
        # The payload names its sequence number, so that readers can check order.
        payload = seq.to_bytes(4, "big") + b"x" * size
        self.log.append((payload,), len(payload))
        self.sizes[seq] = len(payload)

    @rule(target=readers, where=st.sampled_from(["start", "head", "resume"]),
          seq=st.integers(-3, 30))
    def join(self, where: str, seq: int) -> Reader:
        if where == "start":
            cursor = Cursor(self.log)
        elif where == "head":
            cursor = Cursor(self.log, self.log.next_seq)
        else:
            cursor = Cursor(self.log, seq)
        reader = Reader(cursor, cursor.next_seq)
        self.live.append(reader)
        return reader

    @rule(reader=readers)
    def take(self, reader: Reader) -> None:
        if reader not in self.live or reader.fell_behind:
            return
        cursor = reader.cursor
        expected_first = cursor.next_seq
        if expected_first < self.log.first_seq:
            with pytest.raises(FellBehind):
                cursor.take()
            reader.fell_behind = True
            return
        before = cursor.backlog_bytes
        first, frames, size = cursor.take()
        assert first == expected_first
        seqs = [int.from_bytes(frame[0][:4], "big") for frame in frames]
        assert seqs == list(range(first, first + len(frames)))
        reader.got += seqs
        assert size == before
        assert cursor.caught_up and cursor.backlog_bytes == 0

    @rule(reader=readers)
    def take_newest(self, reader: Reader) -> None:
        cursor = reader.cursor
        if reader not in self.live or reader.fell_behind:
            return
        if self.log.next_seq - cursor.next_seq != 1:
            return
        frame, size = cursor.take_newest()
        seq = int.from_bytes(frame[0][:4], "big")
        assert seq == self.log.next_seq - 1 and size == self.sizes[seq]
        reader.got.append(seq)

    @rule(reader=readers)
    def leave(self, reader: Reader) -> None:
        if reader in self.live:
            self.live.remove(reader)

    @rule(reader=readers)
    def flow(self, reader: Reader) -> None:
        backlog = reader.cursor.backlog_bytes
        was = self.paused
        self.paused = self.flow.paused_after(was, backlog)
        if backlog > self.flow.high:
            assert self.paused
        if backlog <= self.flow.low:
            assert not self.paused
        if self.flow.low < backlog <= self.flow.high:
            assert self.paused == was  # hysteresis: no toggling between the marks

    @invariant()
    def bounded(self) -> None:
        log = self.log
        assert log.held_bytes <= MAX_BYTES or len(log) == 1
        assert log.held_bytes == sum(self.sizes[s] for s in range(log.first_seq, log.next_seq))

    @invariant()
    def exactly_once_in_order(self) -> None:
        for reader in self.live:
            got = reader.got
            assert got == list(range(reader.start, reader.start + len(got)))
            cursor = reader.cursor
            if not reader.fell_behind:
                assert cursor.next_seq == reader.start + len(got)
            if cursor.next_seq >= self.log.first_seq:  # (behind: told at its next take)
                assert cursor.backlog_bytes == sum(
                    self.sizes[s] for s in range(cursor.next_seq, self.log.next_seq))


PipeMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                         deadline=None)
test_token_pipe = PipeMachine.TestCase
