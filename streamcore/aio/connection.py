"""One HTTP/1.1 connection: an ``asyncio.Protocol`` that feeds the sans-I/O session and
writes what the core frames through its one write path (:class:`~.output.Output`).

Time is armed on changes of phase, never per byte or per token: the read deadline of the
phase (head, body or keep-alive) on the server's timer wheel (:mod:`.wheel`: a slot's
dict entry, not a loop timer per connection), and the output side's write-stall and close
deadlines.  SSE heartbeats come from one server-wide ticker
(:class:`~.sse.Heartbeat`).  Every exception on this connection becomes bytes in one
place, :meth:`HTTPConnection._fail`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..errors import (
    HistoryLost,
    InternalError,
    ProtocolError,
    RequestError,
    StreamcoreError,
    shown,
)
from ..proto import http, ws
from ..proto.access import require_json
from ..proto.cursor import disconnect_policy, parse_cursor, resume_query
from ..proto.http import HTTPSession, Phase
from ..store.base import Entry
from .context import Context, Fields, access
from .handler import EventStream, Request, Response, Route, to_response
from .output import Output
from .sse import SSE_HEADERS, SSEReader
from .websocket import WebSocketConnection
from .wheel import RESOLUTION_S

log = logging.getLogger("streamcore")
#: The fields every SSE response starts with, written once (not per stream).
_SSE_FIELDS = http.field_lines(SSE_HEADERS)


class HTTPConnection(Output):
    """HTTP/1.1 server connection.  Hands its transport to a
    :class:`~.websocket.WebSocketConnection` on upgrade."""

    # An idle stream's connection is mostly this object: slots keep it small.
    __slots__ = ("_deadline", "_extra", "_method", "_path", "_received", "_slot", "_task",
                 "close_after_response", "ctx", "reader", "session")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.loop, ctx.limits, ctx.admission)
        self.ctx = ctx
        self.session = HTTPSession(ctx.limits)
        #: The wheel slot the read deadline waits in (-1: none).
        self._slot = -1
        #: The read deadline (loop time; 0: none).  The slot may be earlier than it:
        #: moving a deadline later does not move it (a remove and an add per request);
        #: it re-arms itself for the rest when it comes.
        self._deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        #: The SSE response being written, if any.
        self.reader: SSEReader | None = None
        self._method = "GET"
        self._path = ""
        #: When the current request came (time.monotonic): time to first token from it.
        self._received = 0.0
        #: Headers every response to the current request carries (CORS, a stream's own).
        self._extra: list[tuple[bytes, bytes]] = []
        self.close_after_response = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        limits = self.limits
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            limits.write_high_water_bytes, limits.write_low_water_bytes)
        if not self.admission.admit(self):
            self._close_with(self.admission.refusal())
            return
        self._set_timer(limits.keepalive_timeout_s)  # (a new session is IDLE)

    def data_received(self, data: bytes) -> None:
        session = self.session
        phase = session.phase
        try:
            request = session.receive(data)
        except Exception as exc:
            self._fail(exc)
            return
        self._parsed(phase, request)

    def _parse_more(self) -> None:
        """What the last read left unparsed (the session's work per call is bounded): one
        slice per loop iteration, reading paused meanwhile, so that a burst of tiny chunks
        shares the loop with every other connection."""
        if self.transport is None:
            return
        session = self.session
        phase = session.phase
        try:
            request = session.parse_more()
        except Exception as exc:
            self._fail(exc)
            return
        self._parsed(phase, request)

    def _parsed(self, phase: Any, request: http.Request | None) -> None:
        session = self.session
        if session.outbox:  # 100 Continue
            self.sendv(session.outbox)
            session.outbox = []
        self._sync_reading()
        if session.backlog:
            self.loop.call_soon(self._parse_more)
        if request is not None:
            self.handle(request)
        elif session.phase is not phase:
            self._arm_read_timer()

    def _sync_reading(self) -> None:
        """Read, or not: not while the session has a parse backlog, nor while a response
        is in progress with more than max_pipelined_bytes of the next requests held."""
        session = self.session
        pause = session.backlog or (
            session.phase is Phase.HANDLING
            and session.pipelined_bytes > self.limits.max_pipelined_bytes)
        if pause is not self.read_paused:
            self.reading(pause)

    def eof_received(self) -> bool | None:
        # A client that half-closes mid-response is treated as gone (as uvicorn does):
        # returning None lets the transport close, which runs connection_lost.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._output_lost()
        reader = self.reader
        if reader is not None:
            self.reader = None
            if isinstance(exc, TimeoutError):  # TCP_USER_TIMEOUT: the kernel gave up on it
                reader.why = "slow_consumer"
            reader.gone()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.session.close()
        self.admission.release(self)

    def writable_again(self) -> None:
        if self.reader is not None:
            self.reader.flush()

    def _write_stalled(self) -> None:
        if self.reader is not None:  # its stream ends as slow_consumer
            self.reader.why = "slow_consumer"
        super()._write_stalled()

    # -- requests ----------------------------------------------------------------------

    def handle(self, raw: http.Request) -> None:
        """Dispatch one complete request."""
        self._deadline = 0.0  # no read deadline while handling (_set_timer(None))
        self._method = raw.method
        self._path = raw.path
        self._received = time.monotonic()
        try:
            self._dispatch(raw)
        except Exception as exc:
            self._fail(exc)

    def _dispatch(self, raw: http.Request) -> None:
        router = self.ctx.router
        access = router.access
        if raw.method == "OPTIONS":  # (only an OPTIONS can be a preflight)
            preflight = access.preflight(raw)
            if preflight is not None:
                self._extra = preflight
                self.respond(Response(b"", 204))
                return
        self._extra = access.cors_headers(raw) if access.cors_origins else []
        chaos = self.ctx.chaos
        if chaos is not None:  # chaos mode: faults for this request, if it names any
            chaos(self, raw)
        fields = raw.lookup()  # (one call for the lookups of this request's way)
        if fields.get(b"upgrade") is not None and b"websocket" in raw.header_tokens(
                b"upgrade"):
            route, params = router.resolve_upgrade(raw.path)
            if not route.public and access.api_keys:
                access.authorize(raw)
            self._upgrade(raw, route, params)
            return
        route, params = router.resolve(raw.method, raw.path)
        if not route.public and access.api_keys:
            access.authorize(raw)
        if route.json:
            require_json(raw)
        self.admission.check_new_work()
        request = Request(raw, params, self.peer, router, store=self.ctx.store)
        if route.streaming:
            self._start_stream(route.handler(request), route.sse_end, request, ids=route.ids,
                               fields=fields)
            return
        now = route.now
        if now is not None and fields.get(b"last-event-id") is None:
            # The route's synchronous first try: a new stream it answers with starts in
            # this call, without a task (a resume needs the store's fetch: the handler).
            result = now(request)
            if result is not None and result.resume is None:
                if result.headers:
                    self._extra = self._extra + result.headers
                self._start_stream(result.items, result.sse_end, request, ids=result.ids,
                                   fields=fields)
                return
        # A real task: the handler may use asyncio.timeout(), anyio, httpx, ...
        self._task = self.loop.create_task(self._run_plain(route, request))

    async def _run_plain(self, route: Route, request: Request) -> None:
        try:
            result = await route.handler(request)
            if isinstance(result, EventStream):
                wanted, next_seq = _resumed_at(request, result.resume)
                if wanted is not None:  # a shared store reads the stream back first
                    await self.ctx.store.fetch(wanted, next_seq)
            self._task = None
            if self.transport is None:
                return
            if isinstance(result, EventStream):
                self._extra = self._extra + result.headers
                self._start_stream(result.items, result.sse_end, request, result.resume,
                                   ids=result.ids)
            else:
                self.respond(to_response(result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._task = None
            if self.transport is not None:
                self._fail(exc)

    def respond(self, response: Response) -> None:
        """Write a complete response, then go on to the next request (or close)."""
        if self.transport is None:
            return
        self._responded(response.status, len(response.body))
        session = self.session
        headers = [(b"content-type", response.content_type),
                   (b"content-length", b"%d" % len(response.body)), *response.headers,
                   *self._extra]
        if response.status == 204:  # RFC 9110 section 8.6: no Content-Length on a 204
            del headers[:2]
        if self.close_after_response:
            headers.append((b"connection", b"close"))
        try:
            bufs = [session.response_head(response.status, headers, method=self._method),
                    session.response_body(response.body), session.end_response()]
        except Exception:  # e.g. a header h11 refuses: nothing sensible can follow
            log.exception("could not make a response")
            self.abort()
            return
        self.sendv(bufs)
        self.response_done()

    # -- streams ---------------------------------------------------------------------

    def _start_stream(self, items: Any, sse_end: bytes | None, request: Request,
                      resume: str | None = None, *, ids: bool = True,
                      fields: dict[bytes, bytes] | None = None) -> None:
        """``fields``: the request's (:meth:`Request.fields`), if the caller has them."""
        if fields is None:
            fields = request.fields()
        after: int | None = None
        epoch: str | None = None
        if resume is not None:  # the stream-by-id route: ?starting_after=N[&epoch=E]
            query = resume_query(request.query)
            after, epoch = query.after, query.epoch
        raw_id = fields.get(b"last-event-id")
        if raw_id:
            last_id = raw_id.decode("latin-1")
            # WHATWG HTML 9.2.4: a reconnecting EventSource sends the last id it saw (it
            # wins over the query, which an EventSource sends unchanged every time).  One
            # that is not ours, or names another stream than the path, is a client's bug:
            # a 400 says so, where a silent replay from the start would repeat the answer.
            cursor = parse_cursor(last_id)
            if cursor is None:
                self._resumed("invalid")
                raise RequestError(f"Last-Event-ID {shown(last_id)} is not an event id of this "
                                   "server ('<stream id>-<epoch>-<sequence number>')",
                                   param="Last-Event-ID", code="invalid_last_event_id")
            if resume not in (None, cursor.stream):
                self._resumed("invalid")
                raise RequestError(f"Last-Event-ID names stream {cursor.stream!r}, not "
                                   f"{shown(resume)}", param="Last-Event-ID",
                                   code="invalid_last_event_id")
            resume, epoch, after = cursor
        ctx = self.ctx
        if resume is not None:
            entry = ctx.store.find(resume)
            if entry is None:
                self._resumed("not_found")
                raise RequestError(f"no stream {shown(resume)} (unknown, or no longer "
                                   "retained)", status=404, code="stream_not_found")
            exact = resume_query(request.query).exact
            try:
                start_seq, snapshot = entry.resume_at(epoch, after or 0, exact)
            except HistoryLost:
                self._resumed("history_lost")
                raise
            if snapshot is None and entry.log.closed and start_seq >= entry.log.next_seq:
                # Positioned at the end of a stream that ended: 204 tells an EventSource
                # to stop reconnecting (WHATWG HTML 9.2.3), where a forgotten one would
                # otherwise come back every few seconds for the whole retention time.
                self._resumed("ended")
                self.respond(Response(b"", 204))
                return
            self._resumed("replayed" if snapshot is None else "snapshot",
                          entry.log.next_seq - max(start_seq, entry.log.first_seq))
            self.reader = SSEReader(self, ctx.flusher, ctx.heartbeat, entry, start_seq,
                                    retry_ms=ctx.retry_ms, snapshot=snapshot)
            self.reader.start(origin=False)
            self.reader.wake()
            return
        head_only = self._method == "HEAD"
        raw_policy = fields.get(b"x-disconnect-policy")
        policy = disconnect_policy(raw_policy.decode("latin-1")) if raw_policy else None
        # Without ids nobody can resume it: not in the store, its log not retained.
        stream = ctx.new_stream(items, sse_end=sse_end, resumable=ids and not head_only,
                                transport=None if head_only else "sse", policy=policy)
        if head_only:  # the head of the stream, and no generation
            head, _ = self.stream_head(stream.entry, ids)
            self.send(head)
            self.response_done()
            return
        reader = self.reader = SSEReader(self, ctx.flusher, ctx.heartbeat, stream.entry,
                                         retry_ms=ctx.retry_ms,
                                         ids=ids)
        ctx.time_first_token(reader, stream, self._received)
        reader.start(origin=True)
        reader.defer()
        try:
            stream.start()
        finally:  # after the source's first step: see SSEReader.framer
            reader.first_flush(stream.state.terminal)

    def _resumed(self, outcome: str, replayed: int = 0) -> None:
        metrics = self.ctx.metrics
        metrics.child("streamcore_resumes_total", "sse", outcome).inc()
        if replayed:
            metrics.child("streamcore_resume_replayed_events_total", "sse").inc(replayed)

    def stream_head(self, entry: Entry, ids: bool = True) -> tuple[bytes, bool]:
        # (A stream nobody can resume has no id to give.)
        headers = [(b"x-stream-id", entry.id.encode()),
                   (b"x-stream-epoch", entry.epoch.encode()), *self._extra] if ids else [
                       *self._extra]
        if self.close_after_response:
            headers.append((b"connection", b"close"))
        self.ctx.responses(200).inc()
        return self.session.stream_head(headers, method=self._method, fixed=_SSE_FIELDS)

    def _responded(self, status: int, nbytes: int) -> None:
        """A complete response (a stream's line is its stream's, at its end): counted, and
        one log line (never a header: no key, no cookie)."""
        self.ctx.responses(status).inc()
        if access.isEnabledFor(logging.INFO):
            fields = {"event": "request", "method": self._method, "path": self._path,
                      "status": status, "bytes": nbytes,
                      "duration_s": round(time.monotonic() - self._received, 6)
                      if self._received else None,
                      "peer": self.peer[0] if isinstance(self.peer, tuple) else None}
            access.info("%s", Fields(fields), extra={"fields": fields})

    def stream_refused(self, reader: SSEReader, exc: RequestError) -> None:
        if self.reader is reader:
            self.reader = None
            self.respond(Response.error(exc))

    def stream_done(self, reader: SSEReader, bufs: list[bytes]) -> None:
        self.sendv(bufs)
        if self.reader is reader:
            self.reader = None
            self.response_done()

    def response_done(self) -> None:
        if self.transport is None:
            return
        try:
            keep_open, pipelined = self.session.next_cycle()
        except ProtocolError as exc:  # the pipelined next request is bad: answer and close
            self._fail(exc)
            return
        if not keep_open or self.close_after_response:
            self.session.close()
            self.close_transport()
            return
        # Reading resumes only once what is held of the next requests is under the cap.
        self._sync_reading()
        if self.session.backlog:
            self.loop.call_soon(self._parse_more)
        self._arm_read_timer()
        if pipelined is not None:
            # Next turn of the loop: a long pipeline must not recurse.
            self.loop.call_soon(self._handle_if_open, pipelined)

    def _handle_if_open(self, raw: http.Request) -> None:
        if self.transport is not None:
            self.handle(raw)

    # -- upgrade -----------------------------------------------------------------------

    def _upgrade(self, raw: http.Request, route: Route, params: dict[str, str]) -> None:
        """Answer the handshake and hand the transport to a WebSocket connection."""
        router = self.ctx.router
        limits = self.limits
        accepted = ws.accept(raw, subprotocols=router.ws_subprotocols,
                             deflate=router.ws_deflate, origins=router.ws_origins,
                             max_message=limits.ws_max_message_bytes)
        tail = self.session.take_upgrade_tail()
        self._stop_timer()  # it would hold this connection until it fires
        transport = self.transport
        write_paused = self.write_paused
        self._output_lost(keep_pause=True)  # the WebSocket owns the pause account now
        conn = WebSocketConnection(self.ctx, transport, accepted, tail, self.peer, write_paused)
        self.admission.replace(self, conn)
        transport.set_protocol(conn)
        conn.start(route, Request(raw, params, self.peer, router, store=self.ctx.store),
                   accepted.response)

    # -- failure and time -------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """The error boundary: every exception on this connection is answered here.  A
        protocol error closes (nothing after it is parsed); any other error answers the
        request being handled with its status and keeps the connection; a bug of ours is a
        500 whose details go to the log only."""
        if not isinstance(exc, StreamcoreError):
            log.error("%s: internal error", self.peer, exc_info=exc)
            exc = InternalError()
        if isinstance(exc, ProtocolError) or self.session.phase is not Phase.HANDLING:
            self._close_with(exc)
        else:
            self.respond(Response.error(exc))

    def _close_with(self, exc: StreamcoreError) -> None:
        """A complete error response, then close; made without h11, whose state may be an
        error by now."""
        self.session.fail()
        self._responded(exc.status, 0)
        self.send(http.error_response(exc.status, exc.envelope(), exc.headers))
        self.close_transport()

    def _arm_read_timer(self) -> None:
        self._set_timer(http.read_timeout(self.session.phase, self.limits))

    def _set_timer(self, timeout: float | None) -> None:
        """A new read deadline ``timeout`` seconds from now (None: none).  Its slot is
        left alone unless it would come too late; one that comes early re-arms itself.
        (On the wheel a deadline is met up to one slot late, never early: a tenth of a
        second against head, body and keep-alive deadlines of seconds.)"""
        if timeout is None:
            self._deadline = 0.0
            return
        deadline = self._deadline = self.loop.time() + timeout
        slot = self._slot
        if slot >= 0:
            if slot < deadline / RESOLUTION_S + 1:  # (slot <= the deadline's own slot)
                return
            self.ctx.wheel.remove(self, slot)
        self._slot = self.ctx.wheel.add(self, deadline)

    def _stop_timer(self) -> None:
        self._deadline = 0.0
        if self._slot >= 0:
            self.ctx.wheel.remove(self, self._slot)
            self._slot = -1

    def due(self) -> None:
        """The wheel's call (:mod:`.wheel`): the read deadline's slot has come."""
        self._slot = -1
        deadline = self._deadline
        if not deadline:  # the deadline went away (a request came): nothing to time
            return
        if deadline > self.loop.time():  # it moved later since the slot was taken
            self._slot = self.ctx.wheel.add(self, deadline)
            return
        self._deadline = 0.0
        phase = self.session.phase
        if phase is Phase.IDLE:
            self.session.close()
            self.close_transport()
        else:  # HEAD or BODY: the only other phases with a read deadline
            what = "request head" if phase is Phase.HEAD else "request body"
            self._fail(ProtocolError(f"the {what} was not received in time", status=408,
                                     code="timeout"))

    def close_idle(self) -> bool:
        """For a drain: close now if between requests; else close after the response."""
        self.close_after_response = True
        if self.transport is not None and self.session.phase in (Phase.IDLE, Phase.CLOSED):
            self.session.close()
            self.close_transport()
            return True
        return False


def _resumed_at(request: Request, resume: str | None) -> tuple[str | None, int]:
    """The stream a request resumes (its route's, or its Last-Event-ID's if that is one of
    ours) and the first seq it wants; the full checks are ``_start_stream``'s."""
    last_id = request.header_bytes(b"last-event-id")
    cursor = parse_cursor(last_id.decode("latin-1")) if last_id else None
    if cursor is None:
        return resume, 1
    return resume or cursor.stream, cursor.seq + 1
