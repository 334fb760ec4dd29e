"""The embedding API: an :class:`App` of routes; a stream handler is an async generator.

::

    app = streamcore.App()

    @app.stream("POST", "/v1/generate")
    async def generate(request):
        for word in request.json()["prompt"].split():
            yield word + " "

Items a stream handler may yield: ``str`` (the event's data), ``bytes`` (UTF-8 data),
``dict``/``list`` (JSON-encoded), or a tuple of ``bytes`` (one pre-encoded payload in
several buffers, e.g. a chunk template around one token; joined into one).  Every item is
kept in its stream's log in an exact-size buffer (``bytes`` copied: an ``orjson.dumps``
result holds its whole write buffer).  An item is one event
whatever it holds: a line break in it becomes another ``data:`` line of the same event.
Plain handlers (``@app.route``) return a :class:`Response`, ``dict``/``list`` (JSON),
``bytes`` or ``str``.  No global state: every server, stream and limit hangs off its App.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from .aio.handler import EventStream, Request, Response, Route
from .errors import RequestError, shown
from .limits import Limits
from .metrics import Metrics
from .proto.access import Access
from .proto.chaos import Chaos

StreamHandler = Callable[[Request], AsyncIterator[Any]]
PlainHandler = Callable[[Request], Awaitable[Any]]
WebSocketHandler = Callable[..., Awaitable[None]]

__all__ = ["App", "EventStream", "Request", "Response"]


class App:
    """Routes and per-app settings.  Run it with :func:`streamcore.run` or
    :func:`streamcore.start`."""

    def __init__(self, *, limits: Limits | None = None, name: str = "streamcore",
                 cors_origins: Iterable[str] = (), api_keys: Iterable[str | bytes] = ()) -> None:
        self.limits = limits or Limits()
        self.name = name
        #: What its servers count (:mod:`streamcore.metrics`): in this process's memory,
        #: or, under ``--workers``, in a file of the run directory every worker reads.
        self.metrics = Metrics()
        #: CORS allow-list (``"*"``: any origin) and the API keys clients must present
        #: (``Authorization: Bearer``), checked before any handler that is not ``public``
        #: (:mod:`streamcore.proto.access`).  Empty: no CORS headers, no key needed.
        self.access = Access.of(cors_origins, api_keys)
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
        #: Chaos mode (:class:`streamcore.proto.chaos.Chaos`, docs/chaos.md): None (the
        #: default) and no request's X-Chaos is honoured.
        self.chaos: Chaos | None = None

    def stream(self, method: str, path: str, *, sse_end: bytes | None = None,
               public: bool = False, json: bool = False, ids: bool = True) -> Callable[
            [StreamHandler], StreamHandler]:
        """Register an async-generator handler: its items become events of an SSE stream
        (``sse_end``: the data of a last event after a stream that completed).
        ``public``: no API key needed; ``json``: a body must be JSON (else 415); ``ids``:
        events carry ids and the stream can be resumed (False: neither, see
        :class:`EventStream`)."""
        def register(handler: StreamHandler) -> StreamHandler:
            self._add(Route(method.upper(), path, handler, True, sse_end, public=public,
                            json=json, ids=ids))
            return handler
        return register

    def websocket(self, path: str, *, public: bool = False, messages: bool = False,
                  ) -> Callable[[WebSocketHandler], WebSocketHandler]:
        """Register a WebSocket handler: ``async def handler(ws)``, with ``ws`` a
        :class:`streamcore.WebSocket`.  ``messages=True``: ``async def handler(ws,
        message)``, called once per message received, in order, each call awaited before
        the next; the task that runs it exists only while messages wait, so an idle
        socket holds no task and no coroutine (about 2 KiB together, see the README)."""
        def register(handler: WebSocketHandler) -> WebSocketHandler:
            self._add(Route("GET", path, handler, False, websocket=True, public=public,
                            messages=messages))
            return handler
        return register

    def route(self, method: str, path: str, *, public: bool = False, json: bool = False,
              now: Callable[[Request], EventStream | None] | None = None) -> Callable[
            [PlainHandler], PlainHandler]:
        """Register a coroutine handler that returns one complete response.

        ``now``: a plain function tried first, in the call that read the request: an
        :class:`EventStream` it returns (a new stream, not a resume) starts at once,
        without the task and coroutines a handler costs; None, and the handler runs.  An
        error it raises is the request's answer, as the handler's would be.  It runs
        outside any task (no ``await``, no ``asyncio.current_task()``); a request with a
        ``Last-Event-ID`` always goes to the handler."""
        def register(handler: PlainHandler) -> PlainHandler:
            self._add(Route(method.upper(), path, handler, False, public=public, json=json,
                            now=now))
            return handler
        return register

    def _add(self, route: Route) -> None:
        if "{" in route.path:
            # {name}: one path segment; {name...}: the rest of the path, slashes included.
            regex = re.sub(r"\{(\w+)\.\.\.\}", r"(?P<\1>.+)", route.path)
            regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", regex)
            route.pattern = re.compile(f"^{regex}$")
            self._patterns.append(route)
        else:
            self._exact.setdefault(route.path, {})[route.method] = route

    def resolve_upgrade(self, path: str) -> tuple[Route, dict[str, str]]:
        """The route a WebSocket upgrade reaches: a WebSocket route, else a stream route
        at that path whatever its method (the first message is then the body)."""
        methods = self._methods(path)
        for route, params in methods.values():
            if route.websocket:
                return route, params
        for route, params in methods.values():
            if route.streaming:
                return route, params
        raise RequestError(f"no WebSocket route at {shown(path)}", status=404, code="not_found")

    def _methods(self, path: str) -> dict[str, tuple[Route, dict[str, str]]]:
        """The routes at ``path`` by method, each with its path parameters.  An exact path
        wins over patterns; of the patterns, the one registered last for a method."""
        exact = self._exact.get(path)
        if exact is not None:
            return {method: (route, {}) for method, route in exact.items()}
        methods: dict[str, tuple[Route, dict[str, str]]] = {}
        for route in self._patterns:
            assert route.pattern is not None
            match = route.pattern.match(path)
            if match:
                methods[route.method] = (route, match.groupdict())
        return methods

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for a request; :class:`RequestError` 404 or 405 (with Allow) if none."""
        exact = self._exact.get(path)
        if exact is not None:  # the common case, without the table of every method
            route = exact.get(method)
            if route is not None and not route.websocket:
                return route, {}
        methods = self._methods(path)
        if not methods:
            raise RequestError(f"no route for {shown(path)}", status=404, code="not_found")
        found = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        if found is None:
            allow = sorted({*methods, "HEAD"} if "GET" in methods else methods)
            raise RequestError(f"method {shown(method)} is not allowed on {shown(path)}",
                               status=405,
                               code="method_not_allowed",
                               headers=[(b"allow", ", ".join(allow).encode())])
        route, params = found
        if route.websocket:
            raise RequestError(f"{shown(path)} is a WebSocket endpoint", status=426,
                               code="upgrade_required",
                               headers=[(b"upgrade", b"websocket"),
                                        (b"connection", b"Upgrade")])
        return route, params
