"""A stream: one handler generator producing into a token log, read by one or more readers.

The producer is one task per stream (never per token).  Per token it encodes the frame,
appends it to the log, and tells the readers there is something new; a reader gathers
everything that arrived during one loop iteration into one ``writelines`` (scheduled once per
iteration with ``call_soon``), so a fast source costs one syscall per batch rather than per
token, while a sparse source still gets each token out in the iteration that produced it.

Backpressure follows the *origin* reader (the request that started the generation): when
its backlog passes the high-water mark the producer stops pulling the generator until the
backlog is back at the low-water mark.  Other readers (resumed clients) are carried by the
log; one that falls behind its tail is told so and closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from ..errors import FellBehind, RequestError
from ..proto.jsonbytes import dumps
from ..proto.pipe import Cursor, Flow, Frame, TokenLog
from .flow import abort

log = logging.getLogger("streamcore")

#: A producer that has this many bytes not yet taken by its origin reader, within one loop
#: iteration, flushes them at once and yields the loop to other streams (fairness).
FLUSH_BYTES = 32 * 1024


class Reader(Protocol):
    """What a stream needs of a reader (an SSE response or a WebSocket request)."""

    cursor: Cursor

    def wake(self) -> None:
        """New frames (or the end) are in the log: write them soon."""

    def flush(self) -> None:
        """Write what is pending now, if the transport takes it."""

    @property
    def writable(self) -> bool: ...


def to_frame(item: Any) -> tuple[Frame, bool]:
    """A handler's item as a pipe frame, and whether it is a single line (SSE-safe as is)."""
    if type(item) is tuple:
        return item, True
    if type(item) is str:
        data = item.encode()
    elif type(item) is bytes:
        data = item
    elif isinstance(item, dict | list):
        return (orjson.dumps(item),), True
    else:
        data = bytes(item) if isinstance(item, bytes | bytearray | memoryview) else str(
            item).encode()
    return (data,), b"\n" not in data and b"\r" not in data


def error_payload(message: str, type: str = "server_error", code: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type, "param": None, "code": code}})


class PushSource(Protocol):
    """A source that calls the stream instead of being pulled (no task, no future per
    token): an upstream socket's ``data_received``, or the synthetic model's timer wheel.

    It calls :meth:`Stream.push` per frame (``False`` back means: pause until
    :meth:`resume_push`), then :meth:`Stream.end` or :meth:`Stream.fail`.
    """

    def start_push(self, stream: Stream) -> None: ...

    def resume_push(self) -> None: ...

    def cancel_push(self) -> None: ...


class BaseReader:
    """What every reader does the same way: be woken (once per loop iteration, through the
    server's Flusher) and flush when its transport takes bytes.  Subclasses write
    ``_flush``."""

    __slots__ = ("done", "flusher", "scheduled")

    conn: Any

    def __init__(self, flusher: Flusher) -> None:
        self.flusher = flusher
        #: Queued in the Flusher for this loop iteration.
        self.scheduled = False
        #: Finished (or failed): writes nothing more.
        self.done = False

    @property
    def writable(self) -> bool:
        return not self.conn.write_paused

    def wake(self) -> None:
        if not self.scheduled:  # (Flusher.add, inlined: this is once per token)
            self.scheduled = True
            flusher = self.flusher
            flusher.pending.append(self)
            if not flusher.scheduled:
                flusher.scheduled = True
                flusher.loop.call_soon(flusher.run)

    def flush(self) -> None:
        self.scheduled = False
        conn = self.conn
        if self.done or conn.write_paused or conn.transport is None:
            return
        try:
            self._flush(conn)
        except Exception:  # a bug of ours: this connection ends, the others go on
            log.exception("writing a stream failed")
            self.done = True
            abort(conn.transport)

    def _flush(self, conn: Any) -> None:
        raise NotImplementedError


class Flusher:
    """Readers woken during one loop iteration, flushed together once it is done: one
    ``call_soon`` per iteration for all streams, not one per token.  Readers queue
    themselves (:meth:`BaseReader.wake`)."""

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[BaseReader] = []
        self.scheduled = False

    def run(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for reader in pending:
            try:
                reader.flush()
            except Exception:  # one broken reader must not starve the others
                log.exception("flushing a stream failed")


class Stream:
    """One generation: its log, its producer (a task pulling a generator, or a push
    source) and its readers."""

    __slots__ = ("__weakref__", "_agen", "_grace", "_left_at", "_push", "_resume",
                 "error", "finished", "flow", "flush_bytes", "grace_s", "id", "log",
                 "multiline", "on_end", "origin", "paused", "readers", "refused", "sse_end",
                 "task")

    def __init__(
        self,
        items: AsyncIterator[Any] | PushSource,
        *,
        log_bytes: int,
        high_water: int,
        low_water: int,
        stream_id: str | None = None,
        on_end: Callable[[Stream], None] | None = None,
        grace_s: float = 0.0,
        sse_end: bytes = b"",
    ) -> None:
        self.id = stream_id or os.urandom(8).hex()
        self.log = TokenLog(log_bytes)
        self.readers: list[Reader] = []
        self.origin: Reader | None = None
        high = min(high_water, log_bytes // 2)
        self.flow = Flow(high, min(low_water, high // 2))
        self.task: asyncio.Task[None] | None = None
        self._resume: asyncio.Future[None] | None = None
        #: Seq numbers of frames that hold CR or LF (SSE must split their data lines);
        #: made on first use, since most streams (JSON) never have one.
        self.multiline: set[int] | None = None
        self.on_end = on_end
        #: The error payload if the handler failed mid-stream.
        self.error: bytes | None = None
        push = items if hasattr(items, "start_push") else None
        self._push: PushSource | None = push  # type: ignore[assignment]
        #: The producer waits for its origin reader's backlog to fall (push or pull).
        self.paused = False
        self._agen: AsyncIterator[Any] | None = None if push else items  # type: ignore[assignment]
        #: The handler's RequestError, if it raised one before its first item.
        self.refused: RequestError | None = None
        #: Flush at once, and pause, within what the log holds: a reader that keeps up
        #: must never fall off the log's tail, however small the log is configured.
        self.flush_bytes = min(FLUSH_BYTES, log_bytes // 4)
        self.finished = False
        #: How long the stream outlives its last reader (Limits.resume_grace_s).
        self.grace_s = grace_s
        self._grace: asyncio.TimerHandle | None = None
        #: ``log.appended_bytes`` that the last reader to leave had taken.
        self._left_at = 0
        #: What an SSE reader of this stream ends with (the gateway's ``[DONE]``).
        self.sse_end = sse_end

    def start(self) -> None:
        if self._push is not None:
            self._push.start_push(self)
        else:
            self.task = asyncio.get_running_loop().create_task(self._produce())

    def attach(self, reader: Reader, *, origin: bool = False) -> None:
        self.readers.append(reader)
        if self._grace is not None:  # a client came back in time
            self._grace.cancel()
            self._grace = None
        if origin or self.origin is None:
            self.origin = reader
            self.writable_changed()

    def detach(self, reader: Reader) -> None:
        """A reader left (client gone, cancelled).  With no reader left the generation is
        cancelled at once (the handler's ``finally`` runs now, not at its next token), or
        after ``grace_s`` if no reader attaches by then."""
        if reader in self.readers:
            self.readers.remove(reader)
        if self.origin is reader:
            self.origin = self.readers[0] if self.readers else None
            self.writable_changed()
        if not self.readers and not self.finished and self._grace is None:
            self._left_at = reader.cursor.taken_bytes
            if self.grace_s > 0:
                loop = asyncio.get_running_loop()
                self._grace = loop.call_later(self.grace_s, self.cancel)
            else:
                self.cancel()

    def cancel(self) -> None:
        """Stop the generation now.  The log keeps what was produced, and says at its end
        that the stream was cancelled (for a reader resuming it later)."""
        self._grace = None
        if self.finished:
            return
        if not self.log.closed:
            self.error = error_payload("the stream was cancelled: its client left",
                                       "stream_error", "cancelled")
            self.log.append((self.error,), len(self.error))
        if self._push is not None:
            self.finished = True
            self.log.close()
            self._push.cancel_push()
            self._push = None
            if self.on_end is not None:
                self.on_end(self)
        elif self.task is not None and not self.task.done():
            self.task.cancel()

    def _may_produce(self) -> bool:
        origin = self.origin
        if origin is None:  # no reader (grace): at most half the log unread, never evict
            return self.log.appended_bytes - self._left_at <= self.log.max_bytes // 2
        return not self.flow.update(origin.cursor.backlog_bytes)

    def writable_changed(self) -> None:
        """The origin reader's backlog fell (it wrote, it left, it came): maybe resume."""
        if not self.paused or not self._may_produce():
            return
        self.paused = False
        fut = self._resume
        if fut is not None:
            self._resume = None
            if not fut.done():
                fut.set_result(None)
        elif self._push is not None and not self.finished:
            self._push.resume_push()

    # -- the push side (PushSource calls these) ---------------------------------------

    def push(self, frame: Frame, size: int = -1) -> bool:
        """Append one single-line frame of ``size`` bytes (counted here if not given);
        ``False``: pause until ``resume_push``."""
        if self.finished:
            return False
        log_ = self.log
        log_.append(frame, size if size >= 0 else sum(map(len, frame)))
        origin = self.origin
        if origin is None:
            if self._may_produce():
                return True
            self.paused = True
            return False
        for reader in self.readers:
            reader.wake()
        if log_.appended_bytes - origin.cursor.taken_bytes > self.flush_bytes:  # backlog
            origin.flush()
            if self.flow.update(origin.cursor.backlog_bytes):
                self.paused = True
                return False
        return True

    def end(self) -> None:
        """The source is done."""
        if self.finished:
            return
        self.finished = True
        self.log.close()
        self._push = None
        for reader in list(self.readers):
            reader.wake()
        if self.on_end is not None:
            self.on_end(self)

    def fail(self, exc: BaseException) -> None:
        """The source failed: an error event, then the end."""
        if self.finished:
            return
        self._failed(exc)
        self.end()

    def _failed(self, exc: BaseException) -> None:
        log_ = self.log
        if isinstance(exc, RequestError):  # refused its input: say why
            self.error = dumps(exc.body())
            if log_.next_seq == 1:
                self.refused = exc  # nothing sent yet: an SSE reader can still answer 4xx
        else:  # the handler failed: the stream says so and ends cleanly
            log.error("stream %s: handler failed", self.id, exc_info=exc)
            self.error = error_payload(f"the stream failed: {type(exc).__name__}")
        log_.append((self.error,), len(self.error))

    # -- the pull side ---------------------------------------------------------------

    async def _produce(self) -> None:
        log_ = self.log
        agen = self._agen
        assert agen is not None
        try:
            async for item in agen:
                frame, single_line = to_frame(item)
                if not single_line:
                    if self.multiline is None:
                        self.multiline = set()
                    self.multiline.add(log_.next_seq)
                log_.append(frame, sum(map(len, frame)))
                origin = self.origin
                if origin is None:
                    if not self._may_produce():
                        self.paused = True
                        self._resume = asyncio.get_running_loop().create_future()
                        await self._resume
                    continue
                for reader in self.readers:
                    reader.wake()
                backlog = origin.cursor.backlog_bytes
                if backlog > self.flush_bytes:
                    origin.flush()
                    if self.flow.update(origin.cursor.backlog_bytes):
                        self.paused = True
                        self._resume = asyncio.get_running_loop().create_future()
                        await self._resume
                    else:
                        await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
        finally:
            self.finished = True
            log_.close()
            await _aclose(agen)
            for reader in list(self.readers):
                reader.wake()
            if self.on_end is not None:
                self.on_end(self)


async def _aclose(agen: AsyncIterator[Any]) -> None:
    aclose = getattr(agen, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            log.exception("closing a stream handler failed")


__all__ = ["FellBehind", "Flusher", "PushSource", "Reader", "Stream", "to_frame"]
