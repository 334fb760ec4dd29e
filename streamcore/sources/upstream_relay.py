"""Any other ``/v1/*`` endpoint's streamed answer (the Responses API's typed events, legacy
completions, ...) relayed event by event: :class:`UpstreamRelay`, the chat source's
exchange, head hold, fallback, cancel and honest endings with the events' field lines as
its frames.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from ..aio.stream import Stream
from ..limits import Limits
from ..proto.openai import ChatRequest
from ..proto.sse import Event as SSEEvent
from ..proto.sse import Item, field_lines
from ..proto.upstream import request_head
from .upstream import UpstreamChat
from .upstream_server import Route, Upstream, UpstreamFailed

#: Event types that end a Responses API stream (``POST /v1/responses``): a stream that
#: ends without one of them was cut.
RESPONSES_ENDINGS = frozenset({"response.completed", "response.failed", "response.incomplete"})


class UpstreamRelay(UpstreamChat):
    """Any other ``/v1/*`` endpoint's streamed answer (the Responses API's typed events,
    legacy completions, ...), relayed event by event: each upstream event's data is one
    frame of streamcore's stream, under streamcore's event ids, so that resume, backpressure,
    cancel, the head hold, fallback and honest endings are the chat path's.  Its frames
    are the events' field lines (:attr:`Entry.sse_lines`): an SSE reader gets each event's
    ``event:`` name as the upstream sent it (an EventSource's ``addEventListener`` by
    type works), a WebSocket reader its data.
    """

    __slots__ = ("_endpoint",)

    def __init__(self, endpoint: str, body: dict[str, Any], routes: Sequence[Route],
                 limits: Limits) -> None:
        model = body.get("model")
        chat = ChatRequest(model=model if isinstance(model, str) else "", messages=[],
                           stream=True, raw={})
        super().__init__(chat, routes, limits)
        self._endpoint = endpoint
        self.include_usage = False
        self._bodies = [orjson.dumps({**body, "model": r.model}) for r in self.routes]

    def _request_head(self, upstream: Upstream) -> tuple[bytes, bytes]:
        # Any endpoint a client names: made per request (a kept one per name would grow
        # with what clients send).
        return request_head(upstream.target, "POST", upstream.path(self._endpoint),
                            upstream.headers())

    def start_push(self, stream: Stream) -> None:
        stream.entry.sse_lines = True  # its frames are the events' field lines: names kept
        super().start_push(stream)

    def _push_events(self, items: Sequence[Item], stream: Stream) -> bool:
        for i, item in enumerate(items):
            if self._done:
                break
            if type(item) is bytes:  # a data line, undecoded: relayed as it is if UTF-8
                data: bytes = item
                event = "message"
                if not data.isascii():
                    try:
                        data.decode()
                    except UnicodeDecodeError:  # as the text the decoder would give
                        data = data.decode("utf-8", "replace").encode()
                frame: tuple[bytes, ...] = (b"data: ", data)
            else:
                assert isinstance(item, SSEEvent)
                event = item.event
                data = item.data.encode()
                frame = (field_lines(data, event.encode()),)
            if data == b"[DONE]":  # legacy completions end so: relayed, then the end
                stream.push((b"data: [DONE]",), 12)
                self._complete(stream)
                break
            error = _error_of(data, event)
            if error is not None:
                message = error.get("message")
                text = message if isinstance(message, str) else "an error event"
                if stream.log.next_seq == 1:
                    self._refused_in_stream(error, text)
                else:
                    self._fail(UpstreamFailed(f"the upstream failed mid-stream: {text}"))
                return True
            if not self._first:
                self._first = True
                self._bodies = []
                self._arm_idle()
            self.count += 1
            if _ENDING.search(data) is not None:  # only then is it worth a parse
                kind = _type_of(data)
                if kind in RESPONSES_ENDINGS:
                    self._finish = kind
            if not stream.push(frame, sum(map(len, frame))) and self.conn is not None:
                self.conn.pause_reading()
                self._sse_left = list(items[i + 1:])
                return False
        return True

    def _on_end(self, stream: Stream) -> None:
        # Only the Responses API says how a whole stream ends (a terminal event type);
        # another endpoint's stream that ends with its exchange is complete.
        if (self._error_body is None and not self._done and self._finish is None
                and self._endpoint != "/responses"):
            self._finish = "end"
        super()._on_end(stream)

    def _complete(self, stream: Stream) -> None:
        self._done = True
        self._ended(stream)


#: What a Responses API event's data holds if its type is one of RESPONSES_ENDINGS: the
#: type's name as it is, or written with ``\\u`` escapes (no other escape makes a letter
#: or a dot).  Other events are not parsed.
_ENDING = re.compile(rb"response\.(?:completed|failed|incomplete)|\\u")


def _type_of(data: bytes) -> str | None:
    if not data.startswith(b"{"):
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    kind = obj.get("type") if isinstance(obj, dict) else None
    return kind if isinstance(kind, str) else None


def _error_of(data: bytes, event: str) -> dict[str, Any] | None:
    """The error object of an upstream error event: ``{"error": {...}}`` (chat and
    completions), or an event of type ``error`` (the Responses API).  Looked for only in
    an object that names an error within its first 40 characters (``data``: valid UTF-8;
    40 characters are at most 160 bytes)."""
    if not data.startswith(b"{") or (event != "error" and (
            b"error" not in data[:160]
            or "error" not in data[:160].decode("utf-8", "ignore")[:40])):
        return None
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("error"), dict):
        error: dict[str, Any] = obj["error"]
        return error
    if obj.get("type") == "error" or event == "error":
        return obj
    return None
