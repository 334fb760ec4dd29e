"""The store interface, and the entry it keeps per stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import HistoryLost, RequestError, StreamError
from ..proto.cursor import event_id, new_epoch
from ..proto.pipe import Cursor, Folder, TokenLog
from ..proto.state import State


class Reader(Protocol):
    """What a stream needs of one of its readers (an SSE response, a WebSocket request)."""

    cursor: Cursor
    #: Queued to flush already in this loop iteration (a stream skips its ``wake``, once
    #: per token otherwise).
    scheduled: bool

    def wake(self) -> None:
        """New frames (or the end) are in the log: write them soon (once per loop
        iteration, however many frames)."""

    def flush(self) -> None:
        """Write what is pending now, if the transport takes it."""


class Owner(Protocol):
    """The live generation behind an entry (a :class:`streamcore.aio.stream.Stream`): told
    when readers come and go, asked to go on when its origin reader has drained."""

    state: State
    origin: Reader | None

    def reader_joined(self, reader: Reader, origin: bool) -> None: ...

    def reader_left(self, reader: Reader) -> None: ...

    def writable_changed(self) -> None: ...

    def cancel(self, reason: StreamError | None = None) -> None:
        """Stop the generation now; its readers are told ``reason`` (default: the
        ``cancelled`` error)."""


class Entry:
    """What is kept of one stream: its log of frames, how it ended, and its readers.

    It outlives its generation: after the end it stays findable for resume (the store's
    retention), with ``owner`` None.

    ``epoch`` names this history of the stream (:mod:`streamcore.proto.cursor`); every
    cursor a reader is given carries it (:meth:`cursor`).  A store that loses a stream's
    frames and carries the stream on (a shared store restarted; an owner's lease lost and
    the stream taken over) must give its entry a new epoch (``new_epoch()``): a reader
    whose cursor names another epoch then gets a snapshot of the new history or the
    ``history_lost`` error, never frames of one history numbered as if from the other.
    A store that keeps a stream's history whole (the memory store) never changes it.
    """

    __slots__ = ("epoch", "error", "expires", "hold", "id", "log", "meta", "multiline",
                 "owner", "readers", "refused", "sse_end", "sse_lines", "ws_end")

    def __init__(self, stream_id: str, log_bytes: int, sse_end: bytes | None = None,
                 epoch: str | None = None, frame_overhead: int = 0) -> None:
        self.id = stream_id
        #: The history this entry's sequence numbers count in (random, 6 hex digits).
        self.epoch = epoch or new_epoch()
        #: ``frame_overhead``: bytes counted per frame besides its payload (see
        #: :data:`~streamcore.proto.pipe.FRAME_OVERHEAD_BYTES`).
        self.log = TokenLog(log_bytes, frame_overhead=frame_overhead)
        #: The data of the event an SSE reader ends a completed stream with (the gateway's
        #: ``[DONE]``), or None.
        self.sse_end = sse_end
        #: Makes the message a WebSocket reader of a completed stream ends with, given its
        #: request's key (the gateway's ``done``), for a reader on any socket; or None.
        self.ws_end: Callable[[bytes], bytes] | None = None
        #: Seq numbers of frames that hold CR or LF (SSE splits their data lines); made on
        #: first use, since most streams (JSON) never have one.  In a stream of field
        #: lines (:attr:`sse_lines`), the frames that are payloads all the same (its error
        #: event).
        self.multiline: set[int] | None = None
        #: Its frames are SSE field lines (``event:`` and ``data:``,
        #: :func:`~streamcore.proto.sse.field_lines`), not payloads: a relayed upstream
        #: stream, whose events keep their names.  Set before the first frame.
        self.sse_lines = False
        #: The error envelope that ended the stream (the log's last frame), if one did.
        self.error: bytes | None = None
        #: The handler's RequestError, if it refused its input before its first frame:
        #: an SSE reader that has sent nothing yet answers with its status instead.
        self.refused: RequestError | None = None
        self.readers: list[Reader] = []
        #: An SSE response head waits for the first frame (or the end) while this is set:
        #: its source may still refuse with a real status (an upstream's 429 or 5xx).  The
        #: source clears it when the wait is over and wakes the readers.
        self.hold = False
        #: The live generation, or None once it has ended.
        self.owner: Owner | None = None
        #: What the stream inspector shows of it: ``(model, transport, created)`` (wall
        #: clock seconds), set by the server that started it.
        self.meta: tuple[str, str, float] | None = None
        #: Until when a store that keeps ended entries keeps this one (its clock's time).
        self.expires = 0.0

    def attach(self, reader: Reader, *, origin: bool = False) -> None:
        self.readers.append(reader)
        if self.owner is not None:
            self.owner.reader_joined(reader, origin)

    def detach(self, reader: Reader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
            if self.owner is not None:
                self.owner.reader_left(reader)

    def cursor(self, seq: int) -> str:
        """The cursor (SSE event id) of event ``seq`` of this history."""
        return event_id(self.id, seq, self.epoch)

    def keep_text(self, folder: Folder | None = None, *,
                  make: Callable[[], Folder] | None = None) -> None:
        """Keep what a snapshot needs of the frames that leave the log: ``folder``, or
        one that ``make`` makes when first needed (most streams never need one)."""
        if folder is not None:
            self.log.folder = folder
        else:
            self.log.make_folder = make

    @property
    def kept_bytes(self) -> int:
        """What this entry holds: its log, and the text kept for a snapshot."""
        folder = self.log.folder
        return self.log.held_bytes + (folder.kept_bytes if folder is not None else 0)

    def snapshot(self) -> tuple[int, bytes] | None:
        """``(seq, payload)``: the stream so far, through event ``seq`` (its last, or the
        one before the error event that ended it: a reader gets that in the tail); None
        if no folder keeps the text, or it gave up."""
        folder = self.log.folded()
        if folder is None:
            return None
        last = self.log.next_seq - 1 - (self.error is not None)
        payload = folder.snapshot(self.log.through(last))
        return None if payload is None else (last, payload)

    def resume_at(self, epoch: str | None, after: int,
                  exact: bool) -> tuple[int, bytes | None]:
        """Where a reader that has every event through ``after`` of history ``epoch``
        (None: whatever history the stream has) starts: ``(first seq, snapshot)``.

        The log holds its next event: from there, no snapshot.  It does not (the ring
        dropped it; or the cursor counts in another, lost, history): a snapshot of the
        stream so far and the events after it, unless ``exact`` or none can be made; then
        :class:`~streamcore.errors.HistoryLost` for another epoch, or the position as
        asked (the reader's first take says ``fell_behind``)."""
        lost = epoch is not None and epoch != self.epoch
        if not lost and after + 1 >= self.log.first_seq:
            return after + 1, None
        if not exact:
            snap = self.snapshot()
            if snap is not None:
                return snap[0] + 1, snap[1]
        if lost:
            raise HistoryLost(self.id, epoch or "", self.epoch)
        return after + 1, None

    def add_error(self, envelope: bytes) -> None:
        """End the log with the error event ``envelope`` (the caller closes it)."""
        self.error = envelope
        if self.sse_lines:  # a payload among field lines: framed as data lines
            self.mark_multiline()
        self.log.append((envelope,), len(envelope))

    def mark_multiline(self) -> None:
        """The next frame appended holds a line break."""
        if self.multiline is None:
            self.multiline = set()
        self.multiline.add(self.log.next_seq)


class ReplayStore(Protocol):
    """Where streams are found by id, while they run and for a while after."""

    def add(self, entry: Entry) -> None:
        """A new live stream, findable by id from now on."""

    def ended(self, entry: Entry) -> None:
        """Its generation ended: keep its frames for resume (or let them go)."""

    def find(self, stream_id: str) -> Entry | None:
        """A live stream, or an ended one still kept."""

    def live(self) -> list[Entry]:
        """The entries whose generation still runs."""

    async def fetch(self, stream_id: str, next_seq: int = 1) -> Entry | None:
        """:meth:`find`, asking a shared store when this process has no copy (the copy is
        then what :meth:`find` returns), holding ``next_seq - 1`` if it can.  Called
        before a resume starts reading."""

    async def open(self) -> None:
        """Connect and start (a server calls it before it listens)."""

    async def close(self) -> None:
        """Write what is pending and disconnect (a server calls it last)."""
