"""One HTTP/1.1 connection: an ``asyncio.Protocol`` that feeds the sans-I/O session and
writes what it returns with ``writelines``.

Time is two ``loop.call_later`` handles, armed on changes of phase, never per byte or per
token: the read deadline (head, body or keep-alive, whichever phase we are in) and the
write-stall deadline (armed while the transport is paused).  SSE heartbeats come from one
server-wide ticker (:meth:`Server._heartbeat`), not a timer per connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..app import EventStream, Request, Response, Route, to_response
from ..errors import ProtocolError, RequestError
from ..proto import http
from ..proto.http import HTTPSession, Phase
from ..proto.openai import error_body
from .eager import start_eagerly
from .flow import WriteFlow, abort
from .sse import SSE_HEADERS, SSEReader
from .stream import PushSource, Stream

if TYPE_CHECKING:
    from .server import Server

log = logging.getLogger("streamcore")

class HTTPConnection(WriteFlow):
    """HTTP/1.1 server connection.  Hands itself over to a WebSocket connection on
    upgrade (see :mod:`streamcore.aio.websocket`)."""

    # An idle stream's connection is mostly this object: slots keep it small.
    __slots__ = ("_method", "_task", "_timer", "_timer_phase", "app",
                 "close_after_response", "limits", "loop", "peer", "read_paused", "server",
                 "session", "sse", "transport")

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server = server
        self.app = server.app
        self.limits = server.limits
        self.loop = server.loop
        self.session = HTTPSession(self.limits)
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        #: One record per direction of "paused" (writing: see WriteFlow).
        self.read_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase: Phase | None = None
        self._task: asyncio.Task[None] | None = None
        self.sse: SSEReader | None = None
        self._method = "GET"
        self.close_after_response = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.peer = transport.get_extra_info("peername")
        limits = self.limits
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            limits.write_high_water_bytes, limits.write_low_water_bytes)
        if not self.server.register(self):
            self._refuse()
            return
        self._arm_read_timer()

    def data_received(self, data: bytes) -> None:
        try:
            request = self.session.receive(data)
        except ProtocolError as exc:
            self.fail(exc.status, str(exc), getattr(exc, "code", None) or "protocol_error")
            return
        except Exception:  # a bug of ours: never a traceback to the client
            log.exception("HTTP session failed")
            self.fail(500, "internal error", "internal_error")
            return
        session = self.session
        if session.outbox:
            assert self.transport is not None
            self.transport.writelines(session.outbox)
            session.outbox.clear()
        if (session.phase is Phase.HANDLING and not self.read_paused
                and session.pipelined_bytes > self.limits.max_pipelined_bytes):
            self.pause_reading()
        if request is not None:
            self.handle(request)
        elif session.phase is not self._timer_phase:
            self._arm_read_timer()

    def eof_received(self) -> bool | None:
        # A client that half-closes mid-response is treated as gone (as uvicorn does):
        # returning None lets the transport close, which runs connection_lost.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._cancel_timers()
        sse = self.sse
        if sse is not None:
            self.sse = None
            sse.done = True
            sse.stream.detach(sse)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self.server.unregister(self)

    def writable_again(self) -> None:
        if self.sse is not None:
            self.sse.flush()

    # -- requests ----------------------------------------------------------------------

    def handle(self, raw: http.Request) -> None:
        """Dispatch one complete request; a failure of ours is a 500, never a traceback."""
        try:
            self._dispatch(raw)
        except Exception:
            log.exception("dispatching %s %s failed", raw.method, raw.path)
            self.fail(500, "internal server error", "internal_error")

    def _dispatch(self, raw: http.Request) -> None:
        self._set_timer(None)
        self._method = raw.method
        try:
            if b"websocket" in raw.header_tokens(b"upgrade"):
                route, params = self.app.resolve_upgrade(raw.path)
                self.server.upgrade_websocket(self, raw, route, params)
                return
            route, params = self.app.resolve(raw.method, raw.path)
            if self.server.overloaded():
                raise RequestError("the server is at capacity; retry shortly", status=503,
                                   type="server_error", code="overloaded",
                                   headers=[(b"retry-after",
                                             str(self.limits.retry_after_s).encode())])
        except RequestError as exc:
            self.respond(Response.error(exc))
            return
        request = Request(raw, params, self.peer, self.app)
        if route.streaming:
            self._start_stream(route.handler(request), route.sse_end, request)
        else:
            # Most handlers answer without awaiting (the gateway's does): no task for those.
            task = start_eagerly(self.loop, self._run_plain(route, request))
            if task is not None:
                self._task = task

    async def _run_plain(self, route: Route, request: Request) -> None:
        try:
            result = await route.handler(request)
            if isinstance(result, EventStream):
                self._task = None
                if self.transport is not None:
                    self._start_stream(result.items, result.sse_end, request, result.resume)
                return
            response = to_response(result)
        except RequestError as exc:
            response = Response.error(exc)
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            response = Response(error_body("internal server error", "server_error", None,
                                           "internal_error"), 500)
        self._task = None
        if self.transport is not None:
            self.respond(response)

    def respond(self, response: Response) -> None:
        """Write a complete response, then go on to the next request (or close)."""
        transport = self.transport
        if transport is None:
            return
        session = self.session
        headers = [(b"content-type", response.content_type),
                   (b"content-length", b"%d" % len(response.body)), *response.headers]
        if self.close_after_response:
            headers.append((b"connection", b"close"))
        try:
            head = session.response_head(response.status, headers, method=self._method)
            transport.writelines([head, session.response_body(response.body),
                                  session.end_response()])
        except Exception:
            log.exception("could not send a response")
            transport.abort()
            return
        self.response_done()

    def _start_stream(self, items: AsyncIterator[Any] | PushSource, sse_end: bytes,
                      request: Request, resume: str | None = None) -> None:
        transport = self.transport
        assert transport is not None
        start_seq = 1
        last_id = request.header("last-event-id")
        if last_id:  # WHATWG HTML 9.2.4: a reconnecting EventSource sends the last id seen
            stream_id, _, seq = last_id.rpartition("-")
            if seq.isdigit() and stream_id and resume in (None, stream_id):
                resume, start_seq = stream_id, int(seq) + 1
        if resume is not None:
            self._resume_stream(resume, start_seq)
            return
        limits = self.limits
        stream = Stream(items, log_bytes=limits.stream_log_bytes,
                        high_water=limits.write_high_water_bytes,
                        low_water=limits.write_low_water_bytes,
                        grace_s=limits.resume_grace_s, sse_end=sse_end)
        reader = SSEReader(self, stream, sse_end)
        if self._method == "HEAD":  # the head of the stream, and no generation
            transport.writelines([self.stream_head(reader), self.session.end_response()])
            self.response_done()
            return
        stream.attach(reader, origin=True)
        self.sse = reader
        self.server.streams_started += 1
        self.server.register_stream(stream)
        stream.start()
        reader.wake()  # after the handler's first step: see SSEReader.head_pending

    def _resume_stream(self, stream_id: str, start_seq: int) -> None:
        """Read a known stream from ``start_seq``: what it missed from the log, then the
        live tail, exactly once and in order (or, if the log no longer holds
        ``start_seq``, an error event saying so)."""
        stream = self.server.find_stream(stream_id)
        if stream is None:
            self.respond(Response.error(RequestError(
                f"no stream {stream_id!r} (unknown, or no longer retained)", status=404,
                code="stream_not_found")))
            return
        reader = SSEReader(self, stream, stream.sse_end, start_seq)
        stream.attach(reader)
        self.sse = reader
        reader.wake()

    def stream_head(self, reader: SSEReader) -> bytes:
        headers = [*SSE_HEADERS, (b"x-stream-id", reader.stream.id.encode())]
        if self.close_after_response:
            headers.append((b"connection", b"close"))
        head = self.session.response_head(200, headers, stream=True, method=self._method)
        reader.chunked = self.session.chunked
        return head

    def stream_done(self, reader: SSEReader) -> None:
        if self.sse is reader:
            self.sse = None
            if self.transport is not None:
                self.response_done()

    def response_done(self) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            keep_open, pipelined = self.session.next_cycle()
        except ProtocolError as exc:  # the pipelined next request is bad: answer and close
            self.fail(exc.status, str(exc), "protocol_error")
            return
        if not keep_open or self.close_after_response:
            transport.close()
            return
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        self._arm_read_timer()
        if pipelined is not None:
            # Next turn of the loop: a long pipeline must not recurse.
            self.loop.call_soon(self._handle_if_open, pipelined)

    def _handle_if_open(self, raw: http.Request) -> None:
        if self.transport is not None:
            self.handle(raw)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    # -- failure and time -------------------------------------------------------------

    def fail(self, status: int, message: str, code: str) -> None:
        """Answer a protocol error and close; nothing after it is parsed."""
        self.reject(status, message, code)

    def reject(self, status: int, message: str, code: str,
               extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Refuse a request with a complete error response and close."""
        transport = self.transport
        if transport is None:
            return
        self.session.phase = Phase.CLOSED
        body = error_body(message, "invalid_request_error", None, code)
        transport.write(http.error_response(status, body, extra))
        transport.close()

    def hand_over(self) -> None:
        """The transport now belongs to another protocol (WebSocket): let go of it."""
        self._cancel_timers_keep_pause()
        self.transport = None

    def _cancel_timers_keep_pause(self) -> None:
        for timer in (self._timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._stall_timer = None

    def _refuse(self) -> None:
        assert self.transport is not None
        body = error_body("too many connections; retry shortly", "server_error", None,
                          "overloaded")
        retry = str(self.limits.retry_after_s).encode()
        self.transport.write(http.error_response(503, body, ((b"retry-after", retry),)))
        self.transport.close()

    def _arm_read_timer(self) -> None:
        phase = self.session.phase
        limits = self.limits
        timeout = {Phase.IDLE: limits.keepalive_timeout_s, Phase.HEAD: limits.head_timeout_s,
                   Phase.BODY: limits.body_timeout_s}.get(phase)
        self._set_timer(timeout)
        self._timer_phase = phase

    def _set_timer(self, timeout: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = None
        if timeout is not None:
            self._timer = self.loop.call_later(timeout, self._read_timed_out)

    def _read_timed_out(self) -> None:
        self._timer = None
        phase = self.session.phase
        if phase is Phase.IDLE:
            if self.transport is not None:
                self.transport.close()
        elif phase in (Phase.HEAD, Phase.BODY):
            what = "request head" if phase is Phase.HEAD else "request body"
            self.fail(408, f"the {what} was not received in time", "timeout")

    def abort(self) -> None:
        abort(self.transport)

    def _cancel_timers(self) -> None:
        self._cancel_timers_keep_pause()
        self._end_pause()

    def close_idle(self) -> bool:
        """For a drain: close now if between requests; else close after the response."""
        self.close_after_response = True
        if self.transport is not None and self.session.phase in (Phase.IDLE, Phase.CLOSED):
            self.transport.close()
            return True
        return False
