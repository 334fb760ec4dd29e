"""A stream: one generation producing into its entry's token log, read by its readers.

There is one producer path: a *push source* calls :meth:`Stream.push` per frame, then
:meth:`Stream.end` or :meth:`Stream.fail`.  An async-generator handler is one push source
among others, through :class:`GeneratorSource` (one task per stream, never per token).

Per frame the stream appends to the log and wakes its readers; a reader gathers everything
that arrived during one loop iteration into one write (scheduled once per iteration by the
:class:`Flusher`), so a fast source costs one system call per batch, not per token, and a
sparse source still gets each token out in the iteration that produced it.

Backpressure follows the *origin* reader (the request that started the generation): when
its backlog passes the high-water mark the source is told to wait (``push`` returns
False) until the backlog is back at the low-water mark (``resume_push``).  Other readers
(resumed clients) are carried by the log; one that falls behind its tail is told so and
closed.  The stream's life is :data:`~streamcore.proto.pipe.STREAM_STATES`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ..errors import (
    Cancelled,
    HandlerFailed,
    HandlerIdle,
    RequestError,
    StreamcoreError,
    StreamError,
)
from ..metrics import Metrics
from ..proto.cursor import new_id_and_epoch
from ..proto.jsonbytes import dumps
from ..proto.pipe import (
    CREATED,
    FRAME_OVERHEAD_BYTES,
    PAUSED,
    RUNNING,
    STREAM_STATES,
    Cursor,
    Flow,
    Frame,
)
from ..proto.state import State
from ..store.base import Entry, Reader
from .output import abort

log = logging.getLogger("streamcore")

#: A source that has this many bytes not yet taken by its origin reader, within one loop
#: iteration, has them flushed at once; a generator then yields the loop (fairness).
FLUSH_BYTES = 32 * 1024


class PushSource(Protocol):
    """A source that calls its stream instead of being pulled: no task and no future per
    token (an upstream socket's ``data_received``, the synthetic model's timer wheel).

    The contract, checked in ``tests/test_stream.py``:

    - :meth:`start_push` is called once, when the stream starts; the source may push from
      inside it.
    - ``stream.push(frame, size)``: ``frame`` is one event's payload, a tuple of ``bytes``
      that holds no CR or LF (call ``stream.entry.mark_multiline()`` first for one that
      does: SSE then sends one ``data:`` line per line); ``size`` is its length, counted
      by the stream when omitted.  It returns False when the source should wait: pushes
      after that are still kept (the log's bound holds), but the source should stop until
      :meth:`resume_push`.  A push after the stream ended is ignored (False).
    - ``stream.end()``: the source is done.  ``stream.fail(exc)``: it failed; readers get
      an error event (a :class:`~streamcore.errors.RequestError` says why, anything else
      names only its type and goes to the log).  Either, once; later calls are ignored.
    - :meth:`cancel_push`: nobody reads any more; stop now and push nothing more.  Not
      called after ``end`` or ``fail``.
    """

    def start_push(self, stream: Stream) -> None: ...

    def resume_push(self) -> None: ...

    def cancel_push(self) -> None: ...


class Observer(Protocol):
    def observe(self, value: float) -> None: ...


class Flushable(Protocol):
    """What a :class:`Flusher` flushes: a reader, or a WebSocket's batch of messages."""

    def flush(self) -> None: ...


class Flusher:
    """Readers woken during one loop iteration, flushed together once it is done: one
    ``call_soon`` per iteration for all streams, not one per token.  Readers queue
    themselves (:meth:`BaseReader.wake`)."""

    __slots__ = ("loop", "meters", "metrics", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics | None = None) -> None:
        self.loop = loop
        self.pending: list[Flushable] = []
        self.scheduled = False
        self.metrics = metrics = metrics or Metrics()
        #: Per transport: events written, bytes written, token-to-write latency.
        self.meters = {t: (metrics.child("streamcore_stream_events_written_total", t),
                           metrics.child("streamcore_stream_bytes_written_total", t),
                           metrics.child("streamcore_token_write_latency_seconds", t))
                       for t in ("sse", "websocket")}

    def flushed(self, reader: BaseReader, events: int, nbytes: int) -> None:
        """Count one flush that wrote ``events`` (never per token: once per flush)."""
        written, sent, latency = self.meters[reader.transport]
        # Child.inc inlined: a paced token is a flush of its own (two calls per token).
        written.view[written.slot] += events
        sent.view[sent.slot] += nbytes
        now = time.monotonic()
        if reader.woken_at:
            latency.observe(now - reader.woken_at)
            reader.woken_at = 0.0
        ttft = reader.ttft
        if ttft is not None and reader.cursor.next_seq > reader.ttft_seq:
            reader.ttft = None
            ttft.observe(now - reader.ttft_from)

    def wrote_now(self, reader: BaseReader, nbytes: int) -> None:
        """Count one event of ``nbytes`` written as it was pushed
        (:meth:`BaseReader.write_newest`): :meth:`flushed` with a write latency of zero,
        which no clock need measure."""
        written, sent, latency = self.meters[reader.transport]
        written.view[written.slot] += 1
        sent.view[sent.slot] += nbytes
        view = latency.view
        view[latency.slot] += 1  # the first bucket (le 100 µs): written in its own call
        view[latency.sum_slot + 1] += 1  # the count (the sum grows by 0)
        ttft = reader.ttft
        if ttft is not None and reader.cursor.next_seq > reader.ttft_seq:
            reader.ttft = None
            ttft.observe(time.monotonic() - reader.ttft_from)

    def run(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for reader in pending:
            reader.flush()


class BaseReader:
    """What every reader does the same way: be woken (once per loop iteration, through the
    Flusher), flush when its transport takes bytes, tell the stream it progressed.
    Subclasses write ``_flush``; a failure there is a bug of ours that ends this reader's
    connection only."""

    __slots__ = ("conn", "cursor", "done", "entry", "flusher", "scheduled", "ttft",
                 "ttft_from", "ttft_seq", "why", "woken_at")

    conn: Any
    cursor: Cursor
    #: The metrics label of this reader's transport.
    transport = "sse"

    def __init__(self, flusher: Flusher, entry: Entry) -> None:
        self.flusher = flusher
        self.entry = entry
        #: Queued in the Flusher for this loop iteration.
        self.scheduled = False
        #: Finished (or failed): writes nothing more.
        self.done = False
        #: When the oldest frame not yet written woke this reader (time.monotonic; 0: none).
        self.woken_at = 0.0
        #: The origin reader's time-to-first-token histogram (or what observes for it),
        #: until the frame numbered ``ttft_seq`` is written (``ttft_from``: when the
        #: request came).
        self.ttft: Observer | None = None
        self.ttft_from = 0.0
        self.ttft_seq = 1
        #: Why this reader left, if it leaves before the end (a stream's outcome).
        self.why = "client_gone"

    def wake(self) -> None:
        if not self.scheduled:  # once per token: the Flusher's queue, inlined
            self.scheduled = True
            if not self.woken_at:  # once per flush
                self.woken_at = time.monotonic()
            flusher = self.flusher
            flusher.pending.append(self)
            if not flusher.scheduled:
                flusher.scheduled = True
                flusher.loop.call_soon(flusher.run)

    def defer(self) -> None:
        """Take no wake-up until :meth:`first_flush`: the origin reader while its
        stream's source takes its first step in the request's call (its pushes then queue
        nothing in the Flusher)."""
        self.scheduled = True

    def first_flush(self, finished: bool) -> None:
        """After :meth:`defer`: a stream that ``finished`` within its first step (a
        short answer, whole in the log) is written now, as a complete response is, not at
        the end of the loop iteration (a ``call_soon``, a handle and the Flusher's turn
        less per such stream); else the reader is woken as its pushes would have."""
        if self.scheduled and not self.woken_at:  # nothing flushed or woke it since
            self.scheduled = False
            if finished:
                self.woken_at = time.monotonic()  # (the write latency, measured as ever)
                self.flush()
                return
        self.wake()

    def flush(self) -> None:
        self.scheduled = False
        conn = self.conn
        if self.done or conn.write_paused or conn.transport is None:
            return
        cursor = self.cursor
        seq = cursor.next_seq
        sent = conn.bytes_out
        try:
            self._flush(conn)
        except Exception:  # a bug of ours: this connection ends, the others go on
            log.exception("writing a stream failed")
            self.done = True
            abort(conn.transport)
            return
        if cursor.next_seq != seq:
            self.flusher.flushed(self, cursor.next_seq - seq, conn.bytes_out - sent)

    def takes_now(self) -> bool:
        """Whether a frame pushed now would be the only one pending and could be written
        at once (:meth:`write_newest`): never, unless a subclass says how."""
        return False

    def write_newest(self) -> None:
        """Write the log's newest frame now, the only one pending (:meth:`takes_now`
        said so before it was pushed)."""
        raise NotImplementedError

    def progressed(self) -> None:
        """This reader took frames: a paused stream it drives may go on."""
        owner = self.entry.owner
        if owner is not None and owner.state is PAUSED and owner.origin is self:
            owner.writable_changed()

    def _flush(self, conn: Any) -> None:
        raise NotImplementedError


class DetachBudget:
    """How many streams may run detached (``disconnect_policy = "detach"``: no reader, not
    paused, to their end for a later reader) at once: each holds at most its log and its
    snapshot text, so ``resume_budget_bytes`` over that bounds them all.  A stream that
    finds no room lingers instead."""

    __slots__ = ("free",)

    def __init__(self, count: int) -> None:
        self.free = count


_BOUNDS: dict[tuple[int, int, int], tuple[Flow, int]] = {}


def _bounds(log_bytes: int, high_water: int, low_water: int) -> tuple[Flow, int]:
    """A stream's water marks and flush size, made once per configuration (a handful per
    process): ``(Flow, flush_bytes)``."""
    high = min(high_water, log_bytes // 2)
    #: Flush at once, and pause, within what the log holds: a reader that keeps up must
    #: never fall off the log's tail, however small the log is configured.
    bounds = (Flow(high, min(low_water, high // 2)), min(FLUSH_BYTES, log_bytes // 4))
    if len(_BOUNDS) < 64:  # tests make many; a server, one or two
        _BOUNDS[(log_bytes, high_water, low_water)] = bounds
    return bounds


class Stream:
    """One generation: its source, its entry (log and readers), its flow control."""

    __slots__ = ("_detached", "_grace", "_left_at", "detach_budget", "entry", "flow",
                 "flush_bytes", "grace_s", "left", "log", "meter", "on_end", "origin",
                 "policy", "readers", "source", "state")

    def __init__(
        self,
        source: PushSource,
        *,
        log_bytes: int,
        high_water: int,
        low_water: int,
        stream_id: str | None = None,
        on_end: Callable[[Stream], None] | None = None,
        grace_s: float = 0.0,
        sse_end: bytes | None = None,
        policy: str = "linger",
        detach_budget: DetachBudget | None = None,
        frame_overhead: int = FRAME_OVERHEAD_BYTES,
    ) -> None:
        self.source: PushSource | None = source
        # The log counts what its frames hold in memory, not only their wire bytes: see
        # proto/pipe.py (a stalled stream of small tokens held 3x its bound otherwise).
        epoch = None
        if stream_id is None:
            stream_id, epoch = new_id_and_epoch()
        self.entry = Entry(stream_id, log_bytes, sse_end, epoch, frame_overhead=frame_overhead)
        self.entry.owner = self
        self.log = self.entry.log
        self.readers: list[Reader] = self.entry.readers  # the same list, for the hot path
        self.origin: Reader | None = None
        self.state: State = CREATED
        # Every stream of a server has the same bounds: their Flow (stateless) is shared.
        bounds = _BOUNDS.get((log_bytes, high_water, low_water))
        if bounds is None:
            bounds = _bounds(log_bytes, high_water, low_water)
        self.flow, self.flush_bytes = bounds
        self.on_end = on_end
        #: How long the stream outlives its last reader (Limits.resume_grace_s).
        self.grace_s = grace_s
        self._grace: asyncio.TimerHandle | None = None
        #: ``log.appended_bytes`` that the last reader to leave had taken.
        self._left_at = 0
        #: What happens when the last reader leaves (Limits.disconnect_policy): ``cancel``,
        #: ``linger`` (for ``grace_s``), ``detach`` (within ``detach_budget``; without
        #: one, or with no room left in it, the stream lingers).
        self.policy = policy
        self.detach_budget = detach_budget
        #: Running on without a reader, holding a place in ``detach_budget``.
        self._detached = False
        #: The last reader to leave while none was left, and when (time.monotonic): why
        #: a cancelled stream ended, and how long its cancel took (metrics).
        self.left: tuple[Reader, float] | None = None
        #: What the server counts and logs of this stream (``Context``'s), if anything.
        self.meter: Any = None

    @property
    def id(self) -> str:
        return self.entry.id

    @property
    def finished(self) -> bool:
        return self.state.terminal

    def _to(self, event: str) -> None:
        self.state = STREAM_STATES.next(self.state, event)

    def start(self) -> None:
        # (_to inlined here and in _finish, once per stream each: a call less)
        self.state = STREAM_STATES.next(self.state, "start")
        assert self.source is not None
        self.source.start_push(self)

    # -- readers (through the entry) -----------------------------------------------------

    def reader_joined(self, reader: Reader, origin: bool) -> None:
        if self._grace is not None:  # a client came back in time
            self._grace.cancel()
            self._grace = None
        if self._detached:
            self._attached()
        if origin or self.origin is None:
            self.origin = reader
            if self.state is PAUSED:  # writable_changed's own test, without the call
                self.writable_changed()

    def reader_left(self, reader: Reader) -> None:
        """With no reader left: ``cancel`` stops the generation at once (the handler's
        ``finally`` runs now, not at its next token); ``linger`` after ``grace_s`` if no
        reader attaches by then; ``detach`` lets it run to its end, not paused for want
        of a reader (its log keeps the newest frames, its snapshot the text before)."""
        if not self.readers:  # before writable_changed(), which measures from it
            self._left_at = reader.cursor.taken_bytes
            self.left = (reader, time.monotonic())
        if self.origin is reader:
            self.origin = self.readers[0] if self.readers else None
            self.writable_changed()
        if self.readers or self.state.terminal or self._grace is not None or self._detached:
            return
        budget = self.detach_budget
        if self.policy == "detach" and budget is not None and budget.free > 0:
            budget.free -= 1
            self._detached = True
            self.writable_changed()  # a stream paused by its reader goes on
        elif self.policy != "cancel" and self.grace_s > 0:
            self._grace = asyncio.get_running_loop().call_later(self.grace_s, self.cancel)
        else:
            self.cancel()

    def _attached(self) -> None:
        """A reader came, or the stream ended: no longer detached."""
        if self._detached:
            self._detached = False
            assert self.detach_budget is not None
            self.detach_budget.free += 1

    def _may_resume(self) -> bool:
        origin = self.origin
        if origin is None:  # no reader (grace): at most half the log unread, never evict
            return (self._detached
                    or self.log.appended_bytes - self._left_at <= self.log.max_bytes // 2)
        return not self.flow.paused_after(True, origin.cursor.backlog_bytes)

    def writable_changed(self) -> None:
        """The origin reader's backlog fell (it wrote, it left, it came): maybe resume."""
        if self.state is PAUSED and self._may_resume():
            self._to("resume")
            assert self.source is not None
            self.source.resume_push()

    # -- the push side (a PushSource calls these) -------------------------------------

    def push(self, frame: Frame, size: int = -1) -> bool:
        """Append one frame of ``size`` bytes; ``False``: wait for ``resume_push``."""
        state = self.state
        if state.terminal:
            return False
        log_ = self.log
        log_.append(frame, size if size >= 0 else sum(map(len, frame)))
        origin = self.origin
        if origin is None:  # nobody reads (grace): produce into at most half the log
            if (self._detached
                    or self.log.appended_bytes - self._left_at <= self.log.max_bytes // 2):
                return state is RUNNING
        else:
            for reader in self.readers:
                if not reader.scheduled:  # queued already: wake() would do nothing
                    reader.wake()
            if log_.appended_bytes - origin.cursor.taken_bytes <= self.flush_bytes:
                return state is RUNNING
            origin.flush()
            if not self.flow.paused_after(False, origin.cursor.backlog_bytes):
                return state is RUNNING
        if state is RUNNING:
            self._to("pause")
        return False

    def push_one(self, frame: Frame, size: int) -> bool:
        """:meth:`push`, for a source that pushes at most one frame per loop iteration
        (a paced upstream's read): when the origin reader is the only one and has written
        everything, the frame is written at once instead of at the end of the iteration
        (no Flusher turn, no wake-up: the write is the same one write the Flusher would
        make).  Anything else goes the way of :meth:`push`."""
        origin = self.origin
        if (not isinstance(origin, BaseReader) or self.state is not RUNNING
                or len(self.readers) != 1 or not origin.takes_now()):
            return self.push(frame, size)
        self.log.append(frame, size)
        origin.write_newest()
        return True

    def end(self) -> None:
        """The source is done."""
        self._finish("end", None)

    def fail(self, exc: BaseException) -> None:
        """The source failed: an error event, then the end."""
        if self.state.terminal:
            return
        if isinstance(exc, StreamcoreError):
            error: StreamcoreError = exc
        else:
            log.error("stream %s: handler failed", self.id, exc_info=exc)
            error = HandlerFailed(exc)
        if isinstance(exc, RequestError) and self.log.next_seq == 1:
            self.entry.refused = exc  # nothing sent yet: an SSE reader can still answer 4xx
        self._finish("fail", error)

    def cancel(self, reason: StreamError | None = None) -> None:
        """Stop the generation now.  The log keeps what was produced, and says at its end
        why (``reason``, default: it was cancelled), for a reader resuming it later."""
        self._grace = None
        if self.state.terminal:
            return
        source = self.source
        self._finish("cancel", reason or Cancelled())
        if source is not None:
            source.cancel_push()

    def _finish(self, event: str, error: StreamcoreError | None) -> None:
        """The one way into a terminal state: the error frame (if any) is the log's last,
        the log is closed, the readers are woken, the store is told."""
        state = self.state
        if state.terminal:
            return
        self.state = STREAM_STATES.next(state, event)
        entry = self.entry
        if error is not None:
            entry.add_error(error.envelope())
        self.log.close()
        # Nothing of the generation is needed now: dropped, so that no cycle through a
        # reader (whose ``end`` may be a bound method of the source) outlives it.
        self.source = None
        self.origin = None
        entry.owner = None
        for reader in self.readers:  # wake() only queues: the list does not change
            reader.wake()
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._detached:
            self._attached()
        if self.on_end is not None:
            self.on_end(self)


def to_frame(item: Any) -> tuple[Frame, int, bool]:
    """A handler's item as ``(frame, size, single_line)``.  Every frame kept is exact-size:
    ``orjson.dumps`` returns a buffer with 1-4 KiB of slack (``proto/jsonbytes.py``), and
    nothing tells such bytes from exact ones, so bytes are copied (~0.1 us for a chunk) and
    a tuple's buffers are joined into one."""
    kind = type(item)
    if kind is bytes:
        data = _EMPTY.join((item, _EMPTY))  # a copy: join returns a lone bytes as it is
    elif kind is str:
        data = item.encode()
    elif kind is tuple:
        data = _EMPTY.join(item)
    elif kind is dict or kind is list:
        data = dumps(item)
    elif isinstance(item, bytes | bytearray | memoryview):  # bytes() copies a bytes subclass
        data = bytes(item)
    else:
        data = str(item).encode()
    # Integer needles: memchr, 5x faster than b"\n" in data (CPython 3.11).
    return (data,), len(data), _LF not in data and _CR not in data


_EMPTY = b""
_LF, _CR = 10, 13


class IdleWatch:
    """The idle checks of a loop's generator sources with one ``idle_s``: one timer every
    quarter of ``idle_s`` for all of them while any is registered (a ``call_later`` and a
    ``cancel`` per stream otherwise, and ~650 bytes of timer held by each)."""

    __slots__ = ("idle_s", "loop", "sources", "timer")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_s: float) -> None:
        self.loop = loop
        self.idle_s = idle_s
        self.sources: set[GeneratorSource] = set()
        self.timer: asyncio.TimerHandle | None = None

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop, idle_s: float) -> IdleWatch:
        """The watch of ``loop`` for ``idle_s`` (the last one made is kept for the next
        stream; a source keeps its own, so another loop's streams only make a new one)."""
        global _watch
        watch = _watch
        if watch is None or watch.loop is not loop or watch.idle_s != idle_s:
            watch = _watch = IdleWatch(loop, idle_s)
        return watch

    def add(self, source: GeneratorSource) -> None:
        self.sources.add(source)
        if self.timer is None:
            self.timer = self.loop.call_later(self.idle_s / 4, self._check)

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        for source in list(self.sources):  # a verdict removes its source
            source.idle_check(now)
        if self.sources:
            self.timer = self.loop.call_later(self.idle_s / 4, self._check)


_watch: IdleWatch | None = None


class GeneratorSource:
    """An async generator as a push source: one task pulls it and pushes each item.

    The task is the handler's own (``asyncio.current_task()``, ``asyncio.timeout()``,
    anyio and the HTTP clients built on it work in it).  It waits on one future while its
    stream is paused, and yields the loop after every ``flush_bytes`` it produced in one
    go, so a generator that never awaits cannot starve other streams.

    A generator that yields nothing for ``idle_s`` (while not paused by backpressure) is
    cancelled and its stream fails with :class:`~streamcore.errors.HandlerIdle`: checked
    every quarter of ``idle_s`` (:class:`IdleWatch`, one timer for all) whether the log
    grew, so the verdict comes between 1 and 1.25 times ``idle_s``; never a timer per
    item."""

    __slots__ = ("_seen", "agen", "idle_s", "stream", "task", "waiter", "watch")

    def __init__(self, agen: AsyncIterator[Any], idle_s: float = 0.0) -> None:
        self.agen = agen
        self.idle_s = idle_s
        self.stream: Stream | None = None
        self.task: asyncio.Task[None] | None = None
        self.waiter: asyncio.Future[None] | None = None
        #: The idle checks this source is registered with (None: none, or no longer).
        self.watch: IdleWatch | None = None
        self._seen = (-1, 0.0)  # (log.next_seq, when it was first seen at that value)

    def start_push(self, stream: Stream) -> None:
        self.stream = stream
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run(stream))
        if self.idle_s > 0:
            self._seen = (stream.log.next_seq, loop.time())
            self.watch = watch = IdleWatch.of(loop, self.idle_s)
            watch.add(self)

    def idle_check(self, now: float) -> None:
        """The watch's check (every quarter of ``idle_s``)."""
        stream = self.stream
        if stream is None or stream.state.terminal:
            self._unwatch()
            return
        seq, since = self._seen
        if stream.log.next_seq != seq or self.waiter is not None:  # produced, or paused
            self._seen = (stream.log.next_seq, now)
        elif now - since >= self.idle_s:
            stream.fail(HandlerIdle(self.idle_s))
            self.cancel_push()

    def _unwatch(self) -> None:
        watch = self.watch
        if watch is not None:
            self.watch = None
            watch.sources.discard(self)

    def resume_push(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def cancel_push(self) -> None:
        self._unwatch()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def _run(self, stream: Stream) -> None:
        agen = self.agen
        log_ = stream.log
        limit = stream.flush_bytes
        mark = log_.appended_bytes
        push = stream.push
        join = _EMPTY.join
        try:
            async for item in agen:
                if type(item) is bytes:  # to_frame's first case, inlined: the common item
                    data = join((item, _EMPTY))
                    frame: Frame = (data,)
                    size = len(data)
                    single = _LF not in data and _CR not in data
                else:
                    frame, size, single = to_frame(item)
                if not single:
                    stream.entry.mark_multiline()
                if not push(frame, size):
                    self.waiter = asyncio.get_running_loop().create_future()
                    await self.waiter
                    mark = log_.appended_bytes
                elif log_.appended_bytes - mark > limit:
                    mark = log_.appended_bytes
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise  # the stream was cancelled (cancel_push): it has ended already
        except Exception as exc:
            stream.fail(exc)
        else:
            stream.end()
        finally:
            self._unwatch()
            # An async generator that ran to its end (its frame is gone) has nothing to
            # close: the coroutine and awaitable aclose() makes are saved per stream.
            if getattr(agen, "ag_frame", agen) is not None:
                await _aclose(agen)


async def _aclose(agen: AsyncIterator[Any]) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("closing a stream handler failed")


def source_of(items: Any, idle_s: float = 0.0) -> PushSource:
    """A push source as it is; an async iterator through :class:`GeneratorSource` (which
    ends it after ``idle_s`` without an item; 0: never)."""
    if hasattr(items, "start_push"):
        source: PushSource = items
        return source
    return GeneratorSource(items, idle_s)


__all__ = ["FLUSH_BYTES", "BaseReader", "DetachBudget", "Flusher", "GeneratorSource",
           "IdleWatch", "PushSource", "Stream", "source_of", "to_frame"]
