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
"""

from __future__ import annotations

from ..errors import FellBehind

Frame = tuple[bytes, ...]


class TokenLog:
    """Frames numbered from 1, at most ``max_bytes`` of payload held (and never fewer than
    the newest frame, however large)."""

    __slots__ = (
        "_first_seq",
        "_frames",
        "_head",
        "_held_bytes",
        "appended_bytes",
        "closed",
        "max_bytes",
    )

    def __init__(self, max_bytes: int) -> None:
        self._frames: list[Frame] = []
        self._head = 0  # index in _frames of the oldest frame held (lazy trimming)
        self._first_seq = 1
        self._held_bytes = 0
        #: Bytes of payload ever appended: the clock that cursors measure backlog with.
        self.appended_bytes = 0
        self.max_bytes = max_bytes
        self.closed = False

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest frame held."""
        return self._first_seq

    @property
    def next_seq(self) -> int:
        """Sequence number the next appended frame gets."""
        return self._first_seq + len(self._frames) - self._head

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
        self.appended_bytes += size
        self._held_bytes += size
        if self._held_bytes > self.max_bytes:
            self._trim()

    def _trim(self) -> None:
        frames = self._frames
        head = self._head
        last = len(frames) - 1
        while self._held_bytes > self.max_bytes and head < last:
            self._held_bytes -= sum(map(len, frames[head]))
            head += 1
        self._first_seq += head - self._head
        # Compact once the dead prefix is half the list: amortised O(1) per frame.
        if head > len(frames) // 2:
            del frames[:head]
            head = 0
        self._head = head

    def since(self, seq: int) -> list[Frame]:
        """The frames numbered ``seq`` and after (a new list of shared frames)."""
        if seq < self._first_seq:
            raise FellBehind(seq, self._first_seq)
        return self._frames[self._head + seq - self._first_seq :]

    def close(self) -> None:
        self.closed = True


class Cursor:
    """One reader's place in a :class:`TokenLog`."""

    __slots__ = ("log", "next_seq", "taken_bytes")

    def __init__(self, log: TokenLog, next_seq: int | None = None) -> None:
        self.log = log
        #: The first sequence number this reader has not taken yet.
        self.next_seq = log.first_seq if next_seq is None else min(max(next_seq, 1),
                                                                   log.next_seq)
        #: ``log.appended_bytes`` as of ``next_seq``: the backlog is the difference.
        self.taken_bytes = log.appended_bytes
        if log.first_seq <= self.next_seq < log.next_seq:  # resuming from the log (once)
            self.taken_bytes -= sum(sum(map(len, f)) for f in log.since(self.next_seq))
        # (a cursor before the log's first frame is behind: take() raises FellBehind)

    @property
    def backlog_bytes(self) -> int:
        """Payload bytes appended to the log that this reader has not taken."""
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
        size = log.appended_bytes - self.taken_bytes
        self.next_seq = first + len(frames)
        self.taken_bytes = log.appended_bytes
        return first, frames, size


    def take_newest(self) -> tuple[Frame, int]:
        """The one frame pending when it is the log's newest (the caller checked that
        ``log.next_seq - next_seq == 1``): ``(frame, payload_bytes)``.  The newest frame
        is always held, so this cannot fall behind."""
        log = self.log
        size = log.appended_bytes - self.taken_bytes
        self.next_seq += 1
        self.taken_bytes = log.appended_bytes
        return log._frames[-1], size


class Flow:
    """Water marks for one producer, in bytes (one record per direction of "paused").

    The producer is paused when its reader's backlog passes ``high`` and resumed when it
    falls to ``low`` or below; between the two it keeps its state, so a backlog hovering
    around one mark does not toggle on every token.
    """

    __slots__ = ("high", "low", "paused")

    def __init__(self, high: int, low: int) -> None:
        if low > high:
            raise ValueError("low water mark above high water mark")
        self.high = high
        self.low = low
        self.paused = False

    def update(self, backlog_bytes: int) -> bool:
        """Feed the current backlog; returns whether the producer must stay paused."""
        if self.paused:
            if backlog_bytes <= self.low:
                self.paused = False
        elif backlog_bytes > self.high:
            self.paused = True
        return self.paused
