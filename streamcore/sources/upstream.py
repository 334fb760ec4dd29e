"""Upstream LLM servers as token sources: an OpenAI-compatible server's streamed chat
completion, re-framed into streamcore's own stream.

:class:`UpstreamChat` is a push source (:class:`streamcore.PushSource`).  One task per
stream opens the exchange (a pooled connection, the request); from the response head on,
everything runs in the connection's ``data_received``: the body is decoded as SSE, each
chunk becomes a frame of streamcore's chunk template (streamcore's id and model, so resume
and the WebSocket path work unchanged), and a ``False`` from ``push`` pauses the reading of
the upstream's socket, so a slow client slows the model, not the gateway's memory.

Endings are honest: an upstream that refuses before the first token is a real HTTP status
(the response head is held for it, ``upstream_head_hold_s``, and the next upstream that
serves the model is tried); one that dies, stalls or sends malformed events afterwards ends
the stream with an error event naming the cause, never with ``[DONE]``; a client that
leaves aborts the upstream request (its connection reset, never reused).  The usage is
given on every exit: the upstream's when it reported one, else what streamcore counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..aio.stream import Stream
from ..aio.upstream import Unavailable, UpstreamConnection
from ..errors import RequestError, StreamError
from ..limits import Limits
from ..proto import wsapi
from ..proto.jsonbytes import dumps, json_string
from ..proto.openai import ChatRequest, ChatText, ChunkTemplate, new_completion_id
from ..proto.pipe import Frame
from ..proto.sse import Decoder, Item, SSEDecodeError
from ..proto.sse import Event as SSEEvent
from ..proto.upstream import (
    BadChunk,
    Body,
    ChunkReader,
    End,
    Event,
    Head,
    UpstreamError,
)
from .upstream_server import (
    RETRYABLE,
    Route,
    Upstream,
    UpstreamFailed,
    UpstreamTimeout,
    refusal,
    upstream_body,
)

log = logging.getLogger("streamcore")

#: The exchange's phases (``UpstreamChat._phase``): whose deadline the phase's is.
_HEAD, _FIRST, _IDLE, _CLOSE = 1, 2, 3, 4
_NEVER = float("inf")


class UpstreamChat:
    """A streamed chat completion from the first upstream of ``routes`` that answers."""

    __slots__ = ("_attempt", "_bodies", "_chunks", "_done", "_due", "_error_body", "_finish",
                 "_first", "_head", "_hold_at", "_last_rx", "_phase", "_phase_at", "_retried",
                 "_sse_left", "_timer", "_total_at", "_usage", "_waiting", "chat_model", "conn",
                 "count", "fixed",
                 "include_usage", "limits", "loop", "routes", "started", "status", "stream",
                 "task", "template")

    #: The role chunk is the first frame: the first token is the second (metrics' TTFT).
    first_token_seq = 2

    #: Its report's ``attempts`` are counted in the metrics (``StreamMeter``): asked
    #: for even when the access log is off.
    counts_attempts = True

    def report(self) -> dict[str, Any]:
        """For the stream's log line and the metrics: the upstream, the requests made to
        it (fallbacks and a stale keep-alive retried included), the usage and its source."""
        route = self.routes[min(max(self._attempt, 0), len(self.routes) - 1)]
        return {"upstream": route.upstream.target.url(),
                "attempts": self._attempt + 1 + self._retried, "usage": self._usage_object()}

    def __init__(self, chat: ChatRequest, routes: Sequence[Route], limits: Limits) -> None:
        self.routes = list(routes)
        self.limits = limits
        self.chat_model = chat.model
        self.include_usage = chat.include_usage
        self.template = ChunkTemplate(new_completion_id(), chat.model,
                                      include_usage=chat.include_usage)
        self.fixed = len(self.template.prefix) + len(self.template.suffix)
        # The request as each upstream gets it, made now: the stream keeps no request.
        self._bodies = [upstream_body(chat, r.model, stream=True) for r in self.routes]
        self.stream: Stream | None = None
        self.conn: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._attempt = -1
        #: The event stream's reader, once a 200 event stream's head came.
        self._chunks: ChunkReader | None = None
        # The exchange's deadlines (loop times, 0: none): the head hold, the total, and the
        # phase's (``_phase``: head, first token, between tokens, the exchange's end).  One
        # loop timer serves them all (``_timer``, armed for ``_due``): a timer handle made
        # and cancelled per limit was five or six per request.
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._hold_at = 0.0
        self._total_at = 0.0
        self._phase = 0
        self._phase_at = 0.0
        self._last_rx = 0.0
        self._head: Head | None = None
        self._retried = False  # a reused connection that failed before its head: once
        self._first = False  # the first token came
        self._done = False  # [DONE] (or the finish) came: draining the exchange's end
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._error_body: bytearray | None = None
        #: While the stream waits (reading paused): the SSE events decoded and not pushed
        #: yet, and the upstream events that came with them.
        self._sse_left: list[Item] | None = None
        self._waiting: list[Event] | None = None
        self.status = 0
        self.count = 0
        self.started = 0.0

    # -- PushSource ------------------------------------------------------------------

    def start_push(self, stream: Stream) -> None:
        self.stream = stream
        if self.limits.stream_snapshot_bytes:  # what a snapshot needs (docs/resume.md)
            stream.entry.keep_text(ChatText(self.limits.stream_snapshot_bytes))
        loop = self.loop = asyncio.get_running_loop()
        self.started = loop.time()
        limits = self.limits
        self._total_at = self.started + limits.upstream_total_timeout_s
        if limits.upstream_head_hold_s > 0:
            stream.entry.hold = True
            self._hold_at = self.started + limits.upstream_head_hold_s
        self._schedule(self._next_due())
        self._next_attempt([])

    def resume_push(self) -> None:
        self._drain()

    def cancel_push(self) -> None:
        """Nobody reads any more: the upstream request is aborted now."""
        self._close(True)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self._log("cancelled")

    # -- opening: attempts in route order, before any byte went out -----------------------

    def _next_attempt(self, errors: list[RequestError]) -> None:
        self._attempt += 1
        assert self.loop is not None
        if self._attempt >= len(self.routes):
            self._refuse(errors[-1] if errors else RequestError(
                "no upstream serves this model", status=502, type="upstream_error",
                code="upstream_unavailable"))
            return
        # A kept-alive connection free now: the request goes out at once, in this loop
        # iteration, without a task (most requests of a busy gateway); else a task waits
        # for one (a new connection, or a pool at its bound).
        conn = self.routes[self._attempt].upstream.pool(self.loop, self.limits).idle()
        if conn is not None:
            try:
                self._send(self._attempt, conn)
            except Exception as exc:  # a bug of ours: an error, never a stream that hangs
                self._broken(exc)
            return
        self.task = self.loop.create_task(self._open(self._attempt, errors))

    async def _open(self, attempt: int, errors: list[RequestError]) -> None:
        try:
            await self._try(attempt, errors)
        except Exception as exc:  # a bug of ours: an error, never a stream that hangs
            self._broken(exc)

    def _broken(self, exc: Exception) -> None:
        log.error("upstream request failed to open", exc_info=exc)
        self._close(True)
        self._refuse(RequestError("the gateway failed to open the upstream request",
                                  status=502, type="upstream_error", code="internal_error"))

    async def _try(self, attempt: int, errors: list[RequestError]) -> None:
        route = self.routes[attempt]
        assert self.loop is not None
        try:
            conn = await route.upstream.pool(self.loop, self.limits).acquire()
        except Unavailable as exc:
            log.warning("upstream %s: %s", route.upstream.target.url(), exc.message)
            self._next_attempt([*errors, exc])
            return
        self._send(attempt, conn)

    def _send(self, attempt: int, conn: UpstreamConnection) -> None:
        """The request on ``conn``, and the deadline of its response head."""
        stream = self.stream
        if stream is None or stream.state.terminal:
            conn.release()
            return
        route = self.routes[attempt]
        limits = self.limits
        self.conn = conn
        conn.consumer = self
        self._chunks = None
        self._error_body = None
        self.status = 0
        conn.send(conn.session.request_with("POST", self._request_head(route.upstream),
                                            self._bodies[attempt]))
        self._arm(_HEAD, limits.upstream_head_timeout_s)

    def _request_head(self, upstream: Upstream) -> tuple[bytes, bytes]:
        """The request's head for ``upstream``: the chat endpoint's, kept by the upstream."""
        return upstream.chat_head()

    def _refuse(self, exc: RequestError) -> None:
        """No upstream answered: a real status if nothing went out yet (held head)."""
        self._cancel_timers()
        stream = self.stream
        if stream is not None:
            stream.fail(exc)
        self._log(f"refused {exc.status}")

    def _commit(self) -> None:
        """The head hold is over: the 200 goes out, comments keep the stream alive."""
        self._hold_at = 0.0
        stream = self.stream
        if stream is not None and stream.entry.hold:
            stream.entry.hold = False
            for reader in stream.entry.readers:
                reader.wake()

    # -- the exchange (UpstreamConnection's consumer) ---------------------------------------

    def upstream_events(self, events: list[Event]) -> None:
        stream = self.stream
        assert stream is not None and self.loop is not None
        if self._waiting is not None:  # paused with events not pushed yet: these wait too
            self._waiting += events
            return
        self._handle(events, stream)

    def upstream_read(self, data: bytes) -> bool:
        """A read that is one whole chunk holding one content-only chunk of the layout
        learned (a paced model's every token after its first), pushed as
        :meth:`_push_events` would, in one call of each layer; False: nothing is taken,
        the read goes the general way."""
        chunks = self._chunks
        conn = self.conn
        stream = self.stream
        if (chunks is None or conn is None or stream is None or not self._first or self._done
                or self._waiting is not None):
            return False
        literal = conn.session.receive_one(data, chunks)
        if literal is None:
            return False
        assert self.loop is not None
        self._last_rx = self.loop.time()
        if not self._push_literal(literal, stream.push_one):
            self._sse_left = []  # what waits: nothing (the token is in the log)
            self._waiting = []
        return True

    def upstream_body(self, data: bytes) -> None:
        """One whole chunk of the body (``upstream_events([Body(data)])``, cheaper)."""
        stream = self.stream
        assert stream is not None and self.loop is not None
        if self._waiting is not None:
            self._waiting.append(Body(data))
        elif not self._body(data, stream):
            self._waiting = []

    def _body(self, data: bytes, stream: Stream) -> bool:
        """Body bytes: the event stream's pushed, or a refusal's body kept (up to
        ``upstream_max_event_bytes``).  False: the stream asked to wait."""
        if self._chunks is not None:
            return self._on_sse(data, stream)
        if self._error_body is not None:
            self._error_body += data
            if len(self._error_body) > self.limits.upstream_max_event_bytes:
                self._error_body = self._error_body[:self.limits.upstream_max_event_bytes]
        return True

    def _handle(self, events: Sequence[Event], stream: Stream) -> None:
        for i, event in enumerate(events):
            if isinstance(event, Body):
                if not self._body(event.data, stream):
                    # The stream asked to wait: what came with these bytes waits too.
                    self._waiting = list(events[i + 1:])
                    return
            elif isinstance(event, Head):
                self._on_head(event)
            elif isinstance(event, End):
                self._on_end(stream)
            if self.conn is None:  # the exchange ended (failed, refused, retried)
                return

    def _on_head(self, head: Head) -> None:
        assert self.loop is not None
        self.status = head.status
        content_type = head.header(b"content-type") or b""
        if head.status == 200 and content_type.startswith(b"text/event-stream"):
            limits = self.limits
            self._chunks = ChunkReader(Decoder(max_line_bytes=limits.upstream_max_event_bytes,
                                               max_event_bytes=limits.upstream_max_event_bytes))
            self._arm(_FIRST, limits.upstream_first_token_timeout_s)
        else:
            self._error_body = bytearray()
            self._head = head

    def _on_sse(self, data: bytes, stream: Stream) -> bool:
        """Decode and push; False: the stream asked to wait (reading is paused)."""
        chunks = self._chunks
        assert chunks is not None and self.loop is not None
        self._last_rx = self.loop.time()
        try:
            items = chunks.feed(data)
        except SSEDecodeError as exc:
            self._fail(UpstreamFailed(f"the upstream sent a malformed event stream: {exc}"))
            return True
        return self._push_events(items, stream)

    def _push_literal(self, literal: bytes, push: Callable[[Frame, int], bool]) -> bool:
        """Push one content chunk (its content's JSON string in the template) by
        ``push`` (the stream's ``push``, or ``push_one`` for a read of one token); False:
        the stream asked to wait, and reading is paused."""
        self.count += 1
        template = self.template
        if push((template.prefix, literal, template.suffix),
                self.fixed + len(literal)) or self.conn is None:
            return True
        self.conn.pause_reading()
        return False

    def _push_events(self, items: Sequence[Item], stream: Stream) -> bool:
        """Push the events' chunks, in order, until the stream asks to wait: then reading
        is paused and the rest kept (``_sse_left``) for :meth:`resume_push` (pushing them
        anyway would overrun the log, and a reader that keeps up would fall off it).
        False: waiting.  ``items`` are :meth:`ChunkReader.feed`'s."""
        chunks = self._chunks
        assert chunks is not None
        template = self.template
        prefix, suffix, fixed = template.prefix, template.suffix, self.fixed
        push = stream.push
        for i, item in enumerate(items):
            if self._done:
                break
            if type(item) is list:
                # The hot path: content-only chunks of the shape learned (ChunkReader),
                # each its content's JSON string between the template's prefix and suffix.
                n = 0
                for literal in item:
                    n += 1
                    if not push((prefix, literal, suffix), fixed + len(literal)) and (
                            self.conn is not None):
                        break
                else:
                    self.count += n
                    continue
                self.count += n
                self.conn.pause_reading()
                left = item[n:]
                self._sse_left = [left, *items[i + 1:]] if left else list(items[i + 1:])
                return False
            if type(item) is bytes:  # a data line, undecoded
                raw: bytes = item
            else:
                assert isinstance(item, SSEEvent)
                raw = item.data.encode()
            spliced = chunks.literal(raw) if self._first else None
            if spliced is not None:
                if not self._push_literal(spliced, stream.push):
                    self._sse_left = list(items[i + 1:])
                    return False
                continue
            text = raw.decode("utf-8", "replace")
            if text == "[DONE]":
                self._complete(stream)
                break
            try:
                chunk = chunks.read(text)
            except BadChunk as exc:
                self._fail(UpstreamFailed(f"the upstream sent a malformed chunk: {exc}"))
                return True
            if chunk.error is not None:
                message = chunk.error.get("message")
                text = message if isinstance(message, str) else "an error event"
                if stream.log.next_seq == 1:
                    self._refused_in_stream(chunk.error, text)
                else:
                    self._fail(UpstreamFailed(f"the upstream failed mid-stream: {text}"))
                return True
            more = True
            if not self._first:
                self._first = True
                self._bodies = []  # no other attempt now: the requests need not be kept
                self._arm_idle()
                # The first frame: the head goes out.
                more = stream.push((self.template.role(),))
            if chunk.content is not None:
                self.count += 1
                data_ = json_string(chunk.content)
                more = stream.push((template.prefix, data_, template.suffix),
                                   self.fixed + len(data_)) and more
            elif chunk.other is not None:
                self.count += 1
                more = stream.push((self._reframe(chunk.other),)) and more
            if chunk.finish_reason is not None:
                self._finish = chunk.finish_reason
            if chunk.usage is not None:
                self._usage = chunk.usage
            if not more and self.conn is not None:
                self.conn.pause_reading()
                self._sse_left = list(items[i + 1:])
                return False
        return True

    def _drain(self) -> None:
        """The stream may go on: push what waited, then read the upstream again."""
        stream = self.stream
        while stream is not None and self.conn is not None and (
                self._sse_left is not None or self._waiting is not None):
            sse_left, self._sse_left = self._sse_left or [], None
            waiting, self._waiting = self._waiting or [], None
            if not self._push_events(sse_left, stream):
                self._waiting = waiting
                return
            if self.conn is None:
                return
            self._handle(waiting, stream)
            if self._waiting is not None:
                return
        if self.conn is not None:
            self.conn.resume_reading()

    def _refused_in_stream(self, error: dict[str, Any], text: str) -> None:
        """An error event before any token: nothing went out, so it is still a refusal:
        the next upstream is tried, or the client gets a real status (502) while the head
        is held (an error event after it), with the upstream's code."""
        route = self.routes[self._attempt]
        code = error.get("code")
        exc = RequestError(f"upstream {route.upstream.target.url()}: {text}", status=502,
                           type="upstream_error",
                           code=code if isinstance(code, str) else "upstream_error")
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()  # mid-response: never reused
        self._cancel_phase_timer()
        retry = self._attempt + 1 < len(self.routes)
        log.warning("upstream %s sent an error before any token: %s%s",
                    route.upstream.target.url(), text, ": trying the next" if retry else "")
        if retry:
            self._next_attempt([exc])
        else:
            self._refuse(exc)

    def _reframe(self, obj: dict[str, Any]) -> bytes:
        """A chunk that carries more than text, under streamcore's id, model and time."""
        template = self.template
        obj = dict(obj, id=template.completion_id, model=template.model,
                   created=template.created)
        if template.include_usage:
            obj["usage"] = None
        else:
            obj.pop("usage", None)
        return dumps(obj)

    def _on_end(self, stream: Stream) -> None:
        conn = self.conn
        if self._error_body is not None:  # a refusal, read whole
            head = self._head
            assert head is not None
            route = self.routes[self._attempt]
            error = refusal(head.status, bytes(self._error_body), head.headers,
                            f"upstream {route.upstream.target.url()}")
            self.conn = None
            if conn is not None:
                conn.release()
            self._cancel_phase_timer()
            retry = (head.status in RETRYABLE and stream.log.next_seq == 1
                     and self._attempt + 1 < len(self.routes))
            log.warning("upstream %s answered %d%s", route.upstream.target.url(),
                        head.status, ": trying the next" if retry else "")
            if retry:
                self._next_attempt([error])
            else:
                self._refuse(error)
            return
        if not self._done:
            if self._finish is not None:
                self._complete(stream)  # no [DONE], but a finish: a complete answer
            else:
                self._fail(UpstreamFailed("the upstream ended its stream without finishing "
                                          "the answer (no finish_reason, no [DONE])"))
                return
        self.conn = None
        # The exchange's deadline (armed when the answer ended) is over: its handle would
        # hold this source, its stream and its log until it fired.
        self._cancel_phase_timer()
        if conn is not None:
            conn.release()  # the whole exchange read: reusable

    def upstream_failed(self, exc: UpstreamError) -> None:
        conn, self.conn = self.conn, None
        if self._done:
            self._cancel_phase_timer()  # the exchange's end: nothing left to wait for
            return
        stream = self.stream
        if stream is None or stream.log.next_seq > 1 or self._chunks is not None:
            self._fail(UpstreamFailed(exc.message))
            return
        # Before the head: nothing went out, so another try is safe.  A kept-alive
        # connection the upstream closed as we sent on it gets one more, on a new one.
        self._cancel_phase_timer()
        error = RequestError(exc.message, status=502, type="upstream_error",
                             code="upstream_protocol_error")
        if conn is not None and conn.uses > 1 and not self._retried:
            self._retried = True
            self._attempt -= 1
        self._next_attempt([error])

    # -- endings -------------------------------------------------------------------------

    def _usage_object(self) -> dict[str, Any]:
        usage = self._usage
        if usage is not None and isinstance(usage.get("completion_tokens"), int):
            return {**usage, "source": "upstream"}
        return {"prompt_tokens": 0, "completion_tokens": self.count,
                "total_tokens": self.count, "source": "counted"}

    def _complete(self, stream: Stream) -> None:
        self._done = True
        self._cancel_phase_timer()
        if not self._first:
            stream.push((self.template.role(),))
        template = self.template
        stream.push((template.finish(self._finish or "stop"),))
        if self.include_usage:
            stream.push((template.usage_chunk(self._usage_object()),))
        self._ended(stream)

    def _ended(self, stream: Stream) -> None:
        """The answer is whole: the stream ends; the exchange's own end is still due."""
        # Every deadline is over (the timer itself is kept if the exchange's end is due:
        # re-armed lazily, not made again).
        self._hold_at = self._total_at = 0.0
        self._phase = 0
        if self.conn is None or self.loop is None:
            self._cancel_timers()
        # The done message for any WebSocket reader, made of plain values: the entry
        # outlives this source and must not hold it (no reference cycle through it).
        finish, usage = self._finish or "stop", self._usage_object()
        stream.entry.ws_end = lambda key: wsapi.done_message(key, finish, usage)
        stream.end()
        self._log("completed")
        if self.conn is not None and self.loop is not None:
            self._arm(_CLOSE, self.limits.upstream_idle_timeout_s)

    def _fail(self, exc: StreamError) -> None:
        """The upstream failed after the stream started: the usage so far (if asked),
        then an error event; the exchange is aborted."""
        stream = self.stream
        self._close(True)
        if stream is None or stream.state.terminal:
            return
        if self.include_usage and stream.log.next_seq > 1:
            stream.push((self.template.usage_chunk(self._usage_object()),))
        stream.fail(exc)
        self._log(f"failed: {exc.message}")

    def _timed_out(self, why: str) -> None:
        stream = self.stream
        if stream is not None and stream.log.next_seq == 1 and stream.entry.hold:
            self._close(True)
            self._refuse(RequestError(why, status=504, type="upstream_error",
                                      code="upstream_timeout"))
        else:
            self._fail(UpstreamTimeout(why))

    def _close(self, abort: bool) -> None:
        self._cancel_timers()
        self._sse_left = self._waiting = None
        conn = self.conn
        self.conn = None
        if conn is not None:
            if abort:
                conn.abort()
            else:
                conn.release()

    # -- time ----------------------------------------------------------------------------

    def _schedule(self, when: float) -> None:
        """A deadline at ``when``: the one timer is armed for the earliest.  Armed for an
        earlier one already, it stays: when it fires, :meth:`_on_deadline` looks which
        deadline passed and re-arms for the next (a deadline moved later costs nothing)."""
        timer = self._timer
        if timer is not None:
            if self._due <= when:
                return
            timer.cancel()
        assert self.loop is not None
        self._due = when
        self._timer = self.loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        """The timer fired: every deadline that passed, earliest first (as separate timers
        would fire), then the timer re-armed for the next one, if any."""
        assert self.loop is not None
        self._timer = None
        # The deadline it was armed for is due, as a timer of its own would have been:
        # the loop fires timers on a millisecond clock, up to half of one early.
        now = max(self.loop.time(), self._due)
        while True:
            when = self._next_due()
            if when > now:
                break
            if when == self._hold_at:
                self._commit()
            elif when == self._total_at:
                self._total_at = 0.0
                total = self.limits.upstream_total_timeout_s
                self._timed_out("the upstream's answer took longer than "
                                f"upstream_total_timeout_s ({total} s)")
            else:
                self._phase_passed(now)
        if when != _NEVER:
            self._schedule(when)

    def _next_due(self) -> float:
        """The earliest deadline set (ties: the hold, the total, the phase's)."""
        return min(self._hold_at or _NEVER, self._total_at or _NEVER,
                   self._phase_at if self._phase else _NEVER)

    def _phase_passed(self, now: float) -> None:
        phase, self._phase = self._phase, 0
        limits = self.limits
        if phase == _IDLE:
            self._idle_check(now)
        elif phase == _CLOSE:
            self._close(True)
        elif phase == _HEAD:
            self._timed_out("the upstream sent no response head within "
                            f"upstream_head_timeout_s ({limits.upstream_head_timeout_s} s)")
        else:
            self._timed_out("the upstream sent no token within upstream_first_token_timeout_s"
                            f" ({limits.upstream_first_token_timeout_s} s)")

    def _arm(self, phase: int, delay: float) -> None:
        """The phase's deadline, ``delay`` s from now (it replaces the last phase's)."""
        assert self.loop is not None
        self._phase = phase
        self._phase_at = self.loop.time() + delay
        self._schedule(self._phase_at)

    def _arm_idle(self) -> None:
        """Between tokens: a deadline from the last read, checked only when it passes (the
        reads move ``_last_rx``, never the timer: nothing per token)."""
        self._phase = _IDLE
        self._phase_at = self._last_rx + self.limits.upstream_idle_timeout_s
        self._schedule(self._phase_at)

    def _idle_check(self, now: float) -> None:
        if self._done or self.conn is None:
            return
        if self.conn.read_paused:  # we stopped reading (a slow client), not the upstream
            self._last_rx = now
        idle = self.limits.upstream_idle_timeout_s
        if now - self._last_rx >= idle:
            self._timed_out(f"the upstream sent nothing for upstream_idle_timeout_s ({idle} s)")
        else:
            self._phase = _IDLE
            self._phase_at = self._last_rx + idle

    def _cancel_phase_timer(self) -> None:
        """The phase's deadline is over; the timer goes when no deadline is left (its
        handle would hold this source, its stream and its log until it fired)."""
        self._phase = 0
        if not (self._hold_at or self._total_at):
            self._cancel_timers()

    def _cancel_timers(self) -> None:
        self._hold_at = self._total_at = 0.0
        self._phase = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _log(self, outcome: str) -> None:
        if not log.isEnabledFor(logging.INFO):  # its arguments cost more than the check
            return
        stream = self.stream
        route = self.routes[min(max(self._attempt, 0), len(self.routes) - 1)]
        usage = self._usage_object()
        log.info("stream %s: %s via %s, model %s, %d chunks, usage %s (%s)",
                 stream.id if stream else "-", outcome, route.upstream.target.url(),
                 self.chat_model, self.count,
                 {k: v for k, v in usage.items() if k != "source"}, usage["source"])
