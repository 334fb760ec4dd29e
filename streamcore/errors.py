"""Error types, and the one builder of the OpenAI error envelope.

Every error says who is at fault and carries what to answer with: the HTTP ``status``,
the WebSocket ``close_code`` (RFC 6455 section 7.4.1), and the OpenAI error fields
``type``, ``code`` and ``param``.  As in h11 (``RemoteProtocolError.error_status_hint``) and
websockets (``PayloadTooBig``), the core raises these and each connection class turns them
into bytes at one place, its error boundary; any other exception is a bug of ours and is
answered as :class:`InternalError` (500 / 1011), never with a traceback.

Who is at fault:

- :class:`ProtocolError`: the peer broke the wire protocol.  Answered (if it still can be)
  and the connection closed; nothing after it is parsed.
- :class:`RequestError`: a well-formed request we refuse (bad parameter, unknown route,
  overloaded).  Answered with its status; the connection is kept.
- :class:`StreamError`: a stream that cannot go on (its client left, a reader fell off
  the log's tail, the handler failed).  Told in the stream, as an error event.
- :class:`InternalError`: ours.
"""

from __future__ import annotations

import orjson


def envelope(message: str, type: str = "invalid_request_error", param: str | None = None,
             code: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}``, the OpenAI error envelope, in
    an exact-size buffer (it may be kept in a stream's log).

    A WebSocket error message is the same object with ``type`` and ``id`` members in
    front (:func:`streamcore.proto.wsapi.error_message`), so it is built from this one.
    """
    data = orjson.dumps({"error": {"message": message, "type": type, "param": param,
                                   "code": code}})
    return bytes(memoryview(data))


#: Longest piece of client input an error message repeats (a path, a header value, a
#: parameter): an error body never echoes unbounded input.
SHOWN_CHARS = 200


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """``value`` as an error message may repeat it: its repr, cut to ``limit`` characters."""
    if len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    return repr(value)


class StreamcoreError(Exception):
    """Base class.  Class attributes are the defaults of each kind; an instance may
    override them."""

    status: int = 500
    close_code: int = 1011
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, status: int | None = None,
                 close_code: int | None = None, type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if close_code is not None:
            self.close_code = close_code
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        #: Extra response headers (Retry-After, Allow, ...).
        self.headers = headers or []

    def envelope(self) -> bytes:
        return envelope(self.message, self.type, self.param, self.code)


class ProtocolError(StreamcoreError):
    """The peer broke the wire protocol: answered with ``status`` (HTTP) or
    ``close_code`` (WebSocket), then closed."""

    status = 400
    close_code = 1002
    type = "invalid_request_error"
    code = "protocol_error"


class HeadTooLarge(ProtocolError):
    status = 431

    def __init__(self, size: int, limit: int, what: str = "request head") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit}")


class BodyTooLarge(ProtocolError):
    status = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request body of {size} bytes exceeds the limit of {limit}")


class RequestError(StreamcoreError):
    """A well-formed request we refuse: answered with an OpenAI-style error body and the
    connection kept (a WebSocket request: an ``error`` message; a WebSocket handler that
    raises it: a 1008 close)."""

    status = 400
    close_code = 1008
    type = "invalid_request_error"
    code: str | None = None


class Overloaded(RequestError):
    """Over a server-wide bound: 503 with Retry-After, new work only."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, headers=[(b"retry-after", str(retry_after_s).encode())])


class HistoryLost(RequestError):
    """A resume cursor of another epoch than the stream's: the history it counts in was
    lost (a shared store restarted, an owner replaced), so its sequence number means
    nothing now.  Answered this way when the client asked for exact replay only;
    otherwise the reader gets a snapshot."""

    status = 410
    code = "history_lost"

    def __init__(self, stream_id: str, epoch: str, current: str) -> None:
        super().__init__(f"the history of stream {stream_id!r} that epoch {epoch!r} counts "
                         f"in was lost (its epoch is now {current!r}): resume without "
                         "'replay=exact' for a snapshot, or start again", param="epoch")


class StreamError(StreamcoreError):
    """A stream that cannot go on; told to its readers as an error event."""

    status = 500
    close_code = 1011
    type = "stream_error"
    code = "stream_error"


class FellBehind(StreamError):
    """A reader's cursor is older than the oldest frame the stream's log still holds:
    it was too slow for the fan-out, or resumed too late.  It is told and closed."""

    code = "fell_behind"

    def __init__(self, wanted_seq: int, first_seq: int) -> None:
        super().__init__(
            f"event {wanted_seq} is no longer in the replay log (oldest held: {first_seq})")
        self.wanted_seq = wanted_seq
        self.first_seq = first_seq


class Cancelled(StreamError):
    """The generation was stopped because nobody reads it any more."""

    code = "cancelled"

    def __init__(self) -> None:
        super().__init__("the stream was cancelled: its client left")


class ServerShutdown(StreamError):
    """The server stopped before the stream ended: its readers are told where they were,
    to resume elsewhere."""

    code = "server_shutdown"

    def __init__(self, last_event_id: str) -> None:
        super().__init__(f"the server is shutting down: resume the stream elsewhere after "
                         f"event {last_event_id}")


class HandlerIdle(StreamError):
    """A stream handler yielded nothing for ``stream_idle_timeout_s``: it is cancelled and
    its readers get this error event (heartbeats alone never keep a stream open)."""

    code = "stream_idle"

    def __init__(self, idle_s: float) -> None:
        super().__init__(f"the stream produced nothing for {idle_s:g} s")


class HandlerFailed(StreamError):
    """A handler raised mid-stream: its readers get an error event naming the exception
    type (the traceback goes to the log, not to the client)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"the stream failed: {type(exc).__name__}")


class StoreUnavailable(Overloaded):
    """The shared replay store (Redis) does not answer: a new stream is refused (503 with
    Retry-After) rather than served without the resume it promises elsewhere."""

    code = "store_unavailable"


class OwnerLost(StreamError):
    """The node generating a stream stopped renewing its lease (it died, or lost Redis):
    the answer is incomplete and cannot go on (the stream gets a new epoch)."""

    code = "owner_lost"

    def __init__(self, message: str = "the node generating this stream stopped answering "
                 "(its lease expired): the answer is incomplete") -> None:
        super().__init__(message)


class StoreLost(StreamError):
    """A stream read from the shared store (Redis) cannot go on: the store stopped
    answering, or lost the stream's events."""

    code = "store_unavailable"


class InternalError(StreamcoreError):
    """A bug of ours: 500 or 1011, the details in the log."""

    def __init__(self, message: str = "internal server error") -> None:
        super().__init__(message)
