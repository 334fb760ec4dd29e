"""What a handler sees and returns, and what the I/O layer needs of a router.

The asyncio layer serves any :class:`Router`; :class:`streamcore.App` is the one the
package offers.  The arrows point one way: the app imports this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from ..errors import RequestError, StreamcoreError
from ..limits import Limits
from ..proto import http
from ..proto.access import Access
from ..store.base import ReplayStore

_UNSET: Any = object()


class Request:
    """What a handler sees of one request."""

    __slots__ = ("_json", "_messages", "_raw", "app", "client", "path_params", "state",
                 "store")

    def __init__(self, raw: http.Request, path_params: dict[str, str],
                 client: tuple[str, int] | None = None, app: Router | None = None, *,
                 messages: AsyncIterable[str | bytes] | None = None,
                 store: ReplayStore | None = None) -> None:
        self._raw = raw
        self.path_params = path_params
        self.client = client
        self.app = app
        #: The server's streams, by id (live, and ended ones kept for resume).
        self.store = store
        self._json: Any = _UNSET
        self._messages = messages
        #: Free for the handler and middleware to use.
        self.state: dict[str, Any] = {}

    @property
    def method(self) -> str:
        return self._raw.method

    @property
    def path(self) -> str:
        return self._raw.path

    @property
    def query(self) -> str:
        return self._raw.query

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """``(name, value)`` pairs, names lowercased, in received order."""
        return self._raw.headers

    @property
    def body(self) -> bytes:
        return self._raw.body

    def header(self, name: str) -> str | None:
        value = self._raw.header(name.lower().encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def header_bytes(self, name: bytes) -> bytes | None:
        """:meth:`header` of a lowercase name, as it came (the server's own lookups)."""
        return self._raw.header(name)

    def fields(self) -> dict[bytes, bytes]:
        """The first value of each field by lowercase name, as it came: the server's
        own lookups, several for one call."""
        return self._raw.lookup()

    def json(self) -> Any:
        """The body as JSON; invalid JSON is the client's fault (400), not a 500."""
        if self._json is _UNSET:
            try:
                self._json = orjson.loads(self._raw.body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"the request body is not valid JSON: {exc}",
                                   code="invalid_json") from None
        return self._json

    def with_messages(self, messages: AsyncIterable[str | bytes],
                      body: bytes | None = None) -> Request:
        """This request as a stream route over WebSocket sees it: with a channel of the
        client's messages, and the first of them as its body (``body``) if given."""
        raw = self._raw if body is None else dataclasses.replace(self._raw, body=body)
        return Request(raw, self.path_params, self.client, self.app, messages=messages,
                       store=self.store)

    def messages(self) -> AsyncIterable[str | bytes]:
        """Messages the client sends while the stream runs (WebSocket only)."""
        if self._messages is None:
            raise RequestError("this request has no message channel (use WebSocket)")
        return self._messages


@dataclass(slots=True)
class Response:
    """A complete (non-streamed) response."""

    body: bytes = b""
    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_type: bytes = b"application/json"

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(orjson.dumps(obj), status)

    @classmethod
    def error(cls, exc: StreamcoreError) -> Response:
        """The OpenAI-style error response for ``exc``: its status, headers and envelope."""
        return cls(exc.envelope(), exc.status, list(exc.headers))


@dataclass(slots=True)
class EventStream:
    """Returned by a plain handler to answer with a stream after validating the request
    (so that bad input still gets a 4xx before any event is sent)."""

    #: An async iterator of items, or a push source (:class:`streamcore.PushSource`).
    items: Any
    #: The data of the event an SSE stream ends with when it completes (the gateway's
    #: ``[DONE]``); None: no end event.
    sse_end: bytes | None = None
    #: Read the existing stream with this id (from the start, or after the request's
    #: Last-Event-ID) instead of starting ``items``; 404 if it is not (or no longer) known.
    resume: str | None = None
    #: Extra response headers (``(name, value)`` bytes, names lowercase) on the stream's
    #: head, e.g. a handler's own CORS or cache headers.
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: SSE events carry ``id:`` lines and the stream is kept for resume (Last-Event-ID).
    #: False, for a stream nobody will resume: no ``id:`` line (fewer bytes and less CPU
    #: per event), no X-Stream-Id header, not in the store, its log not retained.
    ids: bool = True


def to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, bytes):
        return Response(result, content_type=b"application/octet-stream")
    if isinstance(result, str):
        return Response(result.encode(), content_type=b"text/plain; charset=utf-8")
    return Response(orjson.dumps(result))


@dataclass(slots=True)
class Route:
    method: str
    path: str
    handler: Callable[..., Any]
    streaming: bool
    #: The data of the event an SSE stream of this route ends with (None: none).
    sse_end: bytes | None = None
    pattern: re.Pattern[str] | None = None
    #: A WebSocket handler (``@app.websocket``): reachable only by an upgrade.
    websocket: bool = False
    #: Served without an API key (a health check, a static page).
    public: bool = False
    #: Takes a JSON body: another content type is refused with 415.
    json: bool = False
    #: SSE events carry ids and the stream is resumable (see :class:`EventStream`).
    ids: bool = True
    #: A plain route's synchronous first try (``App.route(now=...)``): the new stream it
    #: returns starts without a task; None from it, and the handler runs as usual.
    now: Callable[[Request], EventStream | None] | None = None
    #: A WebSocket message handler (``@app.websocket(path, messages=True)``): called as
    #: ``handler(ws, message)`` per message, in a task that lives only while messages wait.
    messages: bool = False


class Router(Protocol):
    """What the I/O layer needs of an application."""

    limits: Limits
    #: CORS origins and API keys.
    access: Access
    #: Browser origins allowed to open a WebSocket (None: any).
    ws_origins: frozenset[str] | None
    ws_subprotocols: tuple[str, ...]
    ws_deflate: bool

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for a request; :class:`RequestError` (404, 405, 426) if none."""

    def resolve_upgrade(self, path: str) -> tuple[Route, dict[str, str]]:
        """The route a WebSocket upgrade reaches; :class:`RequestError` 404 if none."""
