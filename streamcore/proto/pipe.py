"""The token pipe: a bounded log of pre-encoded frames, and one cursor per reader.

A *frame* is one event's payload as a tuple of buffers (for an OpenAI chunk: the stream's
prefix bytes, ``orjson.dumps(token)``, the suffix bytes).  Frames are encoded once, when the
token is produced, and then only referenced: by the log (the replay buffer for resume) and
by every reader, which frames them for its transport (SSE ``id:``/``data:`` lines inside an
HTTP chunk, or a WebSocket frame header) and hands the same buffers to ``writelines``.

Sequence numbers start at 1.  The log is a ring bounded in bytes: appending past the bound
drops the oldest frames, and a reader whose cursor points before the oldest frame held has
*fallen behind* (:class:`~streamcore.errors.FellBehind`).

Backpressure is counted in bytes without touching frames: the log keeps a running total of
bytes ever appended, a cursor remembers that total when it last took frames, and their
difference is what the reader has not taken yet.  That is two integers per token.

Bytes are counted as *held*: a frame costs its payload plus ``frame_overhead`` (the
objects that hold it: :data:`FRAME_OVERHEAD_BYTES` for a stream's log), so that a log of
small frames is bounded by the memory it takes, not by its wire bytes alone (a 60-byte
chunk takes ~150 bytes of memory).  Readers get the payload bytes back exactly: a cursor's
backlog of ``n`` frames is their payload plus ``n`` times the overhead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import FellBehind
from .state import State, Table

Frame = tuple[bytes, ...]

#: What CPython allocates around one frame of one exact-size ``bytes`` besides its payload:
#: the bytes object's header (33, rounded up by pymalloc to 8), the 1-tuple (48 with its GC
#: header) and the log's list slot (8, with the list's over-allocation).  Measured in
#: ``tests/test_held_memory.py``: RSS per frame of ~60 payload bytes is ~150.
FRAME_OVERHEAD_BYTES = 96


#: Dropped frames given to a log's folder at a time: a bounded list of pending frames
#: (~16 KiB of chat chunks), one call per this many.
FOLD_BATCH = 64


class Folder(Protocol):
    """Keeps what a snapshot needs of the frames that leave a log (e.g. a chat stream's
    text: :class:`streamcore.proto.openai.ChatText`), and makes the snapshot."""

    #: Bytes it holds (counted with the log in the retention budget).
    kept_bytes: int

    def fold(self, frames: list[Frame]) -> None:
        """``frames`` leave the log for good (oldest first, after those folded before)."""

    def snapshot(self, frames: list[Frame]) -> bytes | None:
        """The snapshot of what was folded and then ``frames``; None if it cannot be made."""


class TokenLog:
    """Frames numbered from ``first_seq`` (1), at most ``max_bytes`` held (payload plus
    ``frame_overhead`` per frame; and never fewer than the newest frame, however large)."""

    __slots__ = (
        "_dropped",
        "_first_seq",
        "_frames",
        "_head",
        "_held_bytes",
        "appended_bytes",
        "closed",
        "folder",
        "frame_overhead",
        "make_folder",
        "max_bytes",
        "next_seq",
    )

    def __init__(self, max_bytes: int, first_seq: int = 1, frame_overhead: int = 0) -> None:
        self._frames: list[Frame] = []
        self._head = 0  # index in _frames of the oldest frame held (lazy trimming)
        #: A copy of a stream whose first frames are gone (read back from a shared store)
        #: starts later.
        self._first_seq = first_seq
        self._held_bytes = 0
        #: Bytes ever appended (held bytes: payload and overhead): the clock that cursors
        #: measure backlog with.
        self.appended_bytes = 0
        self.max_bytes = max_bytes
        self.frame_overhead = frame_overhead
        #: Sequence number the next appended frame gets (kept, not computed: read on
        #: every flush, written once per frame).
        self.next_seq = first_seq
        self.closed = False
        #: Given the frames the ring drops, :data:`FOLD_BATCH` at a time (a snapshot needs
        #: them).  None: they are let go (or it is made when first needed, below).
        self.folder: Folder | None = None
        #: Makes :attr:`folder` when one is first needed (the ring drops a frame, or a
        #: snapshot is asked for): most streams are short and never need one, and an
        #: ended stream's entry is kept for resume with fewer objects.
        self.make_folder: Callable[[], Folder] | None = None
        #: Frames dropped and not folded yet (fewer than FOLD_BATCH), oldest first; None
        #: until the first (a list less per log that never drops one).
        self._dropped: list[Frame] | None = None

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest frame held."""
        return self._first_seq

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def __len__(self) -> int:
        return len(self._frames) - self._head

    def append(self, frame: Frame, size: int) -> None:
        """Append one frame of ``size`` payload bytes (the caller knows it already)."""
        if self.closed:
            raise RuntimeError("append to a closed log")
        self._frames.append(frame)
        self.next_seq += 1
        size += self.frame_overhead
        self.appended_bytes += size
        self._held_bytes += size
        if self._held_bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        frames = self._frames
        head = self._head
        last = len(frames) - 1
        overhead = self.frame_overhead
        dropped = self._dropped
        if dropped is None and self.folded() is not None:
            dropped = self._dropped = []
        while self._held_bytes > self.max_bytes and head < last:
            self._held_bytes -= sum(map(len, frames[head])) + overhead
            if dropped is not None:
                dropped.append(frames[head])
            frames[head] = ()  # freed now, not at the next compaction (memory is the bound)
            head += 1
        self._first_seq += head - self._head
        if dropped is not None and len(dropped) >= FOLD_BATCH:
            assert self.folder is not None  # _dropped is made with it
            self.folder.fold(dropped)  # one call for many frames, never one per token
            self._dropped = []
        # Compact once the dead prefix is half the list: amortised O(1) per frame.
        if head > len(frames) // 2:
            del frames[:head]
            head = 0
        self._head = head

    def folded(self) -> Folder | None:
        """:attr:`folder`, made now if it is made on first need (:attr:`make_folder`)."""
        folder = self.folder
        if folder is None and self.make_folder is not None:
            folder = self.folder = self.make_folder()
            self.make_folder = None
        return folder

    @property
    def newest(self) -> Frame:
        """The last frame appended (always held, however large)."""
        return self._frames[-1]

    def since(self, seq: int) -> list[Frame]:
        """The frames numbered ``seq`` and after (a new list of shared frames)."""
        if seq < self._first_seq:
            raise FellBehind(seq, self._first_seq)
        return self._frames[self._head + seq - self._first_seq :]

    def through(self, seq: int) -> list[Frame]:
        """Every frame not folded yet (dropped or held), up to ``seq`` included: with
        what the folder kept, the whole stream through ``seq``."""
        head = self._head
        held = self._frames[head : head + seq - self._first_seq + 1]
        return self._dropped + held if self._dropped else held

    def close(self) -> None:
        self.closed = True
        if self._dropped:  # a retained log keeps nothing unfolded beside its frames
            assert self.folder is not None
            self.folder.fold(self._dropped)
        self._dropped = None
        if self._head:  # a retained log keeps no dead slots
            del self._frames[:self._head]
            self._head = 0


class Cursor:
    """One reader's place in a :class:`TokenLog`."""

    __slots__ = ("log", "next_seq", "taken_bytes")

    def __init__(self, log: TokenLog, next_seq: int | None = None) -> None:
        self.log = log
        #: ``log.appended_bytes`` as of ``next_seq``: the backlog is the difference.
        self.taken_bytes = log.appended_bytes
        #: The first sequence number this reader has not taken yet.
        if next_seq is None:
            next_seq = log._first_seq
            if next_seq == log.next_seq:  # a new stream's reader: nothing to count back
                self.next_seq = next_seq
                return
        else:
            next_seq = min(max(next_seq, 1), log.next_seq)
        self.next_seq = next_seq
        if log._first_seq <= next_seq < log.next_seq:  # resuming from the log (once)
            self.taken_bytes -= sum(sum(map(len, f)) + log.frame_overhead
                                    for f in log.since(self.next_seq))
        # (a cursor before the log's first frame is behind: take() raises FellBehind)

    @property
    def backlog_bytes(self) -> int:
        """Bytes (held: payload and overhead) appended to the log that this reader has not
        taken."""
        return self.log.appended_bytes - self.taken_bytes

    @property
    def caught_up(self) -> bool:
        return self.next_seq >= self.log.next_seq

    def take(self) -> tuple[int, list[Frame], int]:
        """Everything this reader has not taken: ``(first_seq, frames, payload_bytes)``.

        Raises :class:`FellBehind` if the log no longer holds ``next_seq``.
        """
        log = self.log
        first = self.next_seq
        frames = log.since(first)
        size = log.appended_bytes - self.taken_bytes - log.frame_overhead * len(frames)
        self.next_seq = first + len(frames)
        self.taken_bytes = log.appended_bytes
        return first, frames, size

    def take_newest(self) -> tuple[Frame, int]:
        """The one frame pending when it is the log's newest (the caller checked that
        ``log.next_seq - next_seq == 1``): ``(frame, payload_bytes)``.  The newest frame
        is always held, so this cannot fall behind."""
        log = self.log
        size = log.appended_bytes - self.taken_bytes - log.frame_overhead
        self.next_seq += 1
        self.taken_bytes = log.appended_bytes
        return log._frames[-1], size  # (newest, without a property call per token)


class Flow:
    """Water marks for one producer, in bytes.  Stateless: whether the producer *is*
    paused is its stream's state (:data:`STREAM_STATES`), the one record of it.

    A running producer pauses when its reader's backlog passes ``high``; a paused one
    resumes when the backlog falls to ``low`` or below.  Between the two it keeps its
    state, so a backlog hovering around one mark does not toggle on every token.
    """

    __slots__ = ("high", "low")

    def __init__(self, high: int, low: int) -> None:
        if low > high:
            raise ValueError("low water mark above high water mark")
        self.high = high
        self.low = low

    def paused_after(self, paused: bool, backlog_bytes: int) -> bool:
        """Whether the producer is paused once its reader's backlog is ``backlog_bytes``,
        given whether it was."""
        return backlog_bytes > self.low if paused else backlog_bytes > self.high


# -- the stream lifecycle -------------------------------------------------------------------

_S = "stream"
#: Created; its source not started yet.
CREATED = State(_S, "CREATED")
#: Its source produces.
RUNNING = State(_S, "RUNNING")
#: Its source was told to wait (backpressure from its origin reader, or half its log
#: unread while nobody reads): resumed by ``resume_push``.
PAUSED = State(_S, "PAUSED")
#: The source ended it.
COMPLETED = State(_S, "COMPLETED", terminal=True)
#: The source failed; an error event is the log's last frame.
FAILED = State(_S, "FAILED", terminal=True)
#: Stopped because nobody reads it any more; an error event is the log's last frame.
CANCELLED = State(_S, "CANCELLED", terminal=True)

_ENDINGS = {"end": COMPLETED, "fail": FAILED, "cancel": CANCELLED}

#: One stream's life.  Its log is closed exactly when the stream reaches a terminal state.
STREAM_STATES = Table("stream", CREATED, {
    CREATED: {"start": RUNNING, **_ENDINGS},
    RUNNING: {"pause": PAUSED, **_ENDINGS},
    PAUSED: {"resume": RUNNING, **_ENDINGS},
    COMPLETED: {},
    FAILED: {},
    CANCELLED: {},
})
