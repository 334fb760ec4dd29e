"""The embedding API: an :class:`App` of routes; a stream handler is an async generator.

::

    app = streamcore.App()

    @app.stream("POST", "/v1/generate")
    async def generate(request):
        for word in request.json()["prompt"].split():
            yield word + " "

Items a stream handler may yield: ``str`` (the event's data), ``bytes`` (UTF-8 data, sent
as is), ``dict``/``list`` (JSON-encoded), or a tuple of ``bytes`` (one pre-encoded payload
in several shared buffers, e.g. a chunk template around one token; it must hold no CR/LF).
Plain handlers (``@app.route``) return a :class:`Response`, ``dict``/``list`` (JSON),
``bytes`` or ``str``.  No global state: every server, stream and limit hangs off its App.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import RequestError
from .limits import Limits
from .proto import http

StreamHandler = Callable[["Request"], AsyncIterator[Any]]
PlainHandler = Callable[["Request"], Awaitable[Any]]
WebSocketHandler = Callable[[Any], Awaitable[None]]


class Request:
    """What a handler sees of one request."""

    __slots__ = ("_json", "_messages", "_raw", "app", "client", "path_params", "state")

    def __init__(self, raw: http.Request, path_params: dict[str, str],
                 client: tuple[str, int] | None = None, app: App | None = None) -> None:
        self._raw = raw
        self.path_params = path_params
        self.client = client
        self.app = app
        self._json: Any = _UNSET
        self._messages: Any = None
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

    def json(self) -> Any:
        """The body as JSON; invalid JSON is the client's fault (400), not a 500."""
        if self._json is _UNSET:
            try:
                self._json = orjson.loads(self._raw.body)
            except orjson.JSONDecodeError as exc:
                raise RequestError(f"the request body is not valid JSON: {exc}",
                                   code="invalid_json") from None
        return self._json

    def messages(self) -> AsyncIterator[str | bytes]:
        """Messages the client sends while the stream runs (WebSocket only)."""
        if self._messages is None:
            raise RequestError("this request has no message channel (use WebSocket)")
        iterator: AsyncIterator[str | bytes] = self._messages
        return iterator


_UNSET = object()


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
    def error(cls, exc: RequestError) -> Response:
        return cls(orjson.dumps(exc.body()), exc.status, list(exc.headers))


@dataclass(slots=True)
class EventStream:
    """Returned by a plain handler to answer with a stream after validating the request
    (so that bad input still gets a 4xx before any event is sent)."""

    #: An async iterator of items, or a push source (``streamcore.aio.stream.PushSource``).
    items: Any
    #: Bytes the SSE stream ends with (the gateway's ``data: [DONE]``).
    sse_end: bytes = b""
    #: Read the existing stream with this id (from the start, or after the request's
    #: Last-Event-ID) instead of starting ``items``; 404 if it is not (or no longer) known.
    resume: str | None = None


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
    #: Bytes an SSE stream ends with (the gateway's ``data: [DONE]``).
    sse_end: bytes = b""
    pattern: re.Pattern[str] | None = None
    #: A WebSocket handler (``@app.websocket``): reachable only by an upgrade.
    websocket: bool = False


class App:
    """Routes and per-app settings.  Run it with :func:`streamcore.run` or
    :func:`streamcore.start`."""

    def __init__(self, *, limits: Limits | None = None, name: str = "streamcore") -> None:
        self.limits = limits or Limits()
        self.name = name
        self._exact: dict[str, dict[str, Route]] = {}
        self._patterns: list[Route] = []
        #: Browser origins allowed to open a WebSocket (None: any).  A cross-site page can
        #: open a WebSocket with the user's cookies (RFC 6455 section 10.2), so a server that
        #: trusts cookies sets this; a refused origin gets 403 at the handshake.
        self.ws_origins: frozenset[str] | None = None
        #: Subprotocols we speak, in order of preference (Sec-WebSocket-Protocol).
        self.ws_subprotocols: tuple[str, ...] = ()
        #: Offer-accept permessage-deflate (RFC 7692).  Off by default: compression costs
        #: CPU per message and memory per socket, and streamed tokens compress poorly.
        self.ws_deflate = False

    def stream(self, method: str, path: str, *, sse_end: bytes = b"") -> Callable[
            [StreamHandler], StreamHandler]:
        """Register an async-generator handler: its items become events of an SSE stream."""
        def register(handler: StreamHandler) -> StreamHandler:
            self._add(Route(method.upper(), path, handler, True, sse_end))
            return handler
        return register

    def websocket(self, path: str) -> Callable[[WebSocketHandler], WebSocketHandler]:
        """Register a WebSocket handler: ``async def handler(ws)``, with ``ws`` a
        :class:`streamcore.aio.websocket.WebSocket`."""
        def register(handler: WebSocketHandler) -> WebSocketHandler:
            self._add(Route("GET", path, handler, False, websocket=True))
            return handler
        return register

    def route(self, method: str, path: str) -> Callable[[PlainHandler], PlainHandler]:
        """Register a coroutine handler that returns one complete response."""
        def register(handler: PlainHandler) -> PlainHandler:
            self._add(Route(method.upper(), path, handler, False))
            return handler
        return register

    def _add(self, route: Route) -> None:
        if "{" in route.path:
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", route.path)
            route.pattern = re.compile(f"^{regex}$")
            self._patterns.append(route)
        else:
            self._exact.setdefault(route.path, {})[route.method] = route

    def resolve_upgrade(self, path: str) -> tuple[Route, dict[str, str]]:
        """The route a WebSocket upgrade reaches: a WebSocket route, else a stream route
        at that path whatever its method (the first message is then the body)."""
        methods, params = self._methods(path)
        for route in methods.values():
            if route.websocket:
                return route, params
        for route in methods.values():
            if route.streaming:
                return route, params
        raise RequestError(f"no WebSocket route at {path}", status=404, code="not_found")

    def _methods(self, path: str) -> tuple[dict[str, Route], dict[str, str]]:
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            methods = {}
            for route in self._patterns:
                assert route.pattern is not None
                match = route.pattern.match(path)
                if match:
                    methods[route.method] = route
                    params = match.groupdict()
        return methods, params

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for a request; :class:`RequestError` 404 or 405 (with Allow) if none."""
        methods, params = self._methods(path)
        if not methods:
            raise RequestError(f"no route for {path}", status=404, code="not_found")
        found = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if found is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            raise RequestError(f"method {method} is not allowed on {path}", status=405,
                               code="method_not_allowed",
                               headers=[(b"allow", ", ".join(allow).encode())])
        if found.websocket:
            raise RequestError(f"{path} is a WebSocket endpoint", status=426,
                               code="upgrade_required",
                               headers=[(b"upgrade", b"websocket"),
                                        (b"connection", b"Upgrade")])
        return found, params
