"""The daemon's app: OpenAI-compatible endpoints wired to a token source.

``POST /v1/chat/completions`` (``stream: true`` over SSE, ``stream: false`` as one JSON
body), ``GET /v1/ws`` (the same streams over WebSocket, several per socket), ``GET
/v1/models``, ``GET /healthz``.  Bad input is refused before a stream starts, with a 4xx
(or a typed WebSocket error message) and an OpenAI-style error naming the ``param``.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .aio.context import Fields, access
from .aio.stream import Stream
from .aio.websocket import WebSocket
from .app import App, EventStream, Request, Response
from .errors import RequestError
from .limits import Limits
from .metrics import OPENMETRICS_TYPE, TEXT_TYPE, wants_openmetrics
from .proto import wsapi
from .proto.chaos import Chaos
from .proto.chaos import listing as chaos_listing
from .proto.jsonbytes import json_string
from .proto.openai import (
    ChatRequest,
    ChatText,
    ChunkTemplate,
    completion_body,
    new_completion_id,
    parse_chat_object,
    parse_chat_request,
    usage_object,
)
from .sources.synthetic import Generation, Run, SyntheticModel
from .sources.upstream import UpstreamChat
from .sources.upstream_relay import UpstreamRelay
from .sources.upstream_server import Route as Route
from .sources.upstream_server import Upstream
from .sources.upstream_whole import complete, list_models, relay
from .store.base import Entry

log = logging.getLogger("streamcore")

#: The data of the event that ends an OpenAI SSE stream (not JSON: clients compare the
#: data field to it).
SSE_DONE = b"[DONE]"


class ChatStream:
    """One streamed answer, pushed into its stream: the role chunk, a chunk per token, the
    finish chunk and, if asked, the usage chunk.  A push source (see
    :class:`~streamcore.aio.stream.PushSource`): no task and no future per token."""

    __slots__ = ("chat", "chat_model", "count", "fixed", "generation", "run",
                 "snapshot_bytes", "stream", "template")

    #: The role chunk is the first frame: the first token is the second (metrics' TTFT).
    first_token_seq = 2

    def __init__(self, chat: ChatRequest, generation: Generation,
                 snapshot_bytes: int = 0) -> None:
        self.chat = chat
        self.chat_model = chat.model
        self.generation = generation
        self.template = ChunkTemplate(new_completion_id(), chat.model,
                                      include_usage=chat.include_usage)
        self.count = 0
        #: The bytes every token frame has besides its JSON string.
        self.fixed = len(self.template.prefix) + len(self.template.suffix)
        self.run: Run | None = None
        self.stream: Stream | None = None
        #: Text kept for a snapshot (Limits.stream_snapshot_bytes; 0: none).
        self.snapshot_bytes = snapshot_bytes
        chat.raw = {}  # what a long-lived stream keeps of its request: only what it uses
        chat.messages = []

    def start_push(self, stream: Stream) -> None:
        self.stream = stream
        if self.snapshot_bytes:  # made when the log first drops a frame (if ever)
            stream.entry.keep_text(make=text_keeper(self.snapshot_bytes))
        role = self.template.role()
        stream.push((role,), len(role))
        # An unpaced run takes its first burst now (a short answer is pushed whole before
        # the readers' first flush: head, role, tokens, finish and end in one write).
        generation = self.generation
        if generation.whole_now:  # the whole answer, now, without a Run
            self.count = emitted = generation.emit_tokens(self.emit)
            if emitted == generation.count:
                self.done()
            elif not stream.finished:  # told to wait (not by its end): a Run goes on
                self.run = generation.run(self, eager=True, paused_at=emitted)
            return
        self.run = run = generation.run(self, eager=True)
        run.begin()

    def emit(self, text: str) -> bool:
        """One token: one JSON string between the template's shared prefix and suffix."""
        template = self.template
        data = json_string(text)
        return self.stream.push(  # type: ignore[union-attr]
            (template.prefix, data, template.suffix), self.fixed + len(data))

    def emit_one(self, text: str) -> bool:
        """A paced token (one a loop iteration): written at once when the reader is
        caught up (:meth:`~streamcore.aio.stream.Stream.push_one`)."""
        template = self.template
        data = json_string(text)
        return self.stream.push_one(  # type: ignore[union-attr]
            (template.prefix, data, template.suffix), self.fixed + len(data))

    def done(self) -> None:
        stream = self.stream
        assert stream is not None
        if self.run is not None:  # (an answer emitted whole_now has none: count is set)
            self.count = self.run.i
            # The run holds our bound emit: dropping it now leaves no cycle for the
            # collector (tune_gc makes full collections rare; tests/test_no_cycles.py).
            self.run = None
        template = self.template
        generation = self.generation
        finish = generation.finish_reason
        chunk = template.finish(finish)
        stream.push((chunk,), len(chunk))
        prompt, count = generation.prompt_tokens, self.count
        if self.chat.include_usage:
            chunk = template.usage(prompt, count)
            stream.push((chunk,), len(chunk))
        # The done message for a WebSocket reader, of plain values: the entry outlives
        # this source and must not hold it (no cycle: tests/test_no_cycles.py).
        stream.entry.ws_end = DoneMessage(finish, prompt, count)
        stream.end()

    def resume_push(self) -> None:
        if self.run is not None:
            self.run.resume()

    def cancel_push(self) -> None:
        if self.run is not None:
            self.count = self.run.i
            self.run.cancel()
            self.run = None  # no cycle left (see done)

    def report(self) -> dict[str, Any]:
        """For the stream's log line: the usage, counted here."""
        count = self.run.i if self.run is not None else self.count
        prompt = self.generation.prompt_tokens
        return {"usage": {"prompt_tokens": prompt, "completion_tokens": count,
                          "total_tokens": prompt + count, "source": "counted"}}


class DoneMessage:
    """A finished chat stream's last WebSocket message, given a request's key
    (:attr:`Entry.ws_end`): one object kept with the ended entry (a closure was five:
    function, cells, tuple), made into bytes only for a WebSocket reader."""

    __slots__ = ("count", "finish", "prompt")

    def __init__(self, finish: str, prompt: int, count: int) -> None:
        self.finish = finish
        self.prompt = prompt
        self.count = count

    def __call__(self, key: bytes) -> bytes:
        return wsapi.done_message(key, self.finish, usage_object(self.prompt, self.count))


_KEEPERS: dict[int, Callable[[], ChatText]] = {}


def text_keeper(max_bytes: int) -> Callable[[], ChatText]:
    """What makes a chat stream's :class:`ChatText` of ``max_bytes`` when its log needs
    one: one per size, shared by every stream (nothing made per stream until then)."""
    keeper = _KEEPERS.get(max_bytes)
    if keeper is None:
        keeper = _KEEPERS[max_bytes] = functools.partial(ChatText, max_bytes)
    return keeper


#: The ``synthetic-utf8`` model's letters: 2-, 3- and 4-byte UTF-8 characters in every
#: answer (chaos mode's ``split-utf8`` fault cuts them across writes).
UTF8_LETTERS = str.maketrans({"e": "é", "o": "ø", "a": "å", "c": "ç", "k": "ḱ", "b": "\U0001d41b"})


@dataclass(frozen=True, slots=True)
class UTF8Model(SyntheticModel):
    """The synthetic model with multi-byte characters in its words (UTF8_LETTERS)."""

    name: str = "synthetic-utf8"


class UTF8ChatStream(ChatStream):
    __slots__ = ()

    def emit(self, text: str) -> bool:
        return super().emit(text.translate(UTF8_LETTERS))

    def emit_one(self, text: str) -> bool:
        return super().emit_one(text.translate(UTF8_LETTERS))


class Catalog:
    """Which source serves a model: a synthetic model by its name, or the upstreams that
    serve it (listed, discovered from their ``/v1/models``, or by an alias), in the order
    they were given, the later ones being the fallbacks of the first."""

    #: How long an upstream's discovered model list is trusted (seconds).
    DISCOVERY_TTL_S = 60.0

    def __init__(self, synthetic: dict[str, SyntheticModel], upstreams: list[Upstream],
                 limits: Limits) -> None:
        self.synthetic = synthetic
        self.upstreams = upstreams
        self.limits = limits
        self._found: dict[int, tuple[float, tuple[str, ...]]] = {}
        #: Log each streamed request's messages (--log-prompts).
        self.log_prompts = False

    def _known(self, upstream: Upstream, now: float) -> tuple[str, ...] | None:
        """The models of ``upstream`` known without asking it: listed, or discovered
        within the TTL; None: :meth:`models_of` must ask."""
        if upstream.models is not None:
            return upstream.models
        found = self._found.get(id(upstream))
        return found[1] if found is not None and found[0] > now else None

    async def models_of(self, upstream: Upstream) -> tuple[str, ...]:
        now = time.monotonic()
        known = self._known(upstream, now)
        if known is not None:
            return known
        found = self._found.get(id(upstream))
        try:
            models = await list_models(upstream, self.limits)
        except RequestError as exc:
            log.warning("cannot list the models of %s: %s", upstream.target.url(), exc.message)
            models = found[1] if found is not None else ()
            self._found[id(upstream)] = (now + 5.0, models)  # try again soon
            return models
        self._found[id(upstream)] = (now + self.DISCOVERY_TTL_S, models)
        return models

    def _routes(self, model: str,
                models: Callable[[Upstream], tuple[str, ...] | None]) -> list[Route] | None:
        """The upstreams that serve ``model``, in order: by an alias, or by ``models`` of
        the upstream (None: not known, and then no routes either)."""
        routes = []
        for upstream in self.upstreams:
            if model in upstream.aliases:
                routes.append(Route(upstream, upstream.aliases[model]))
                continue
            known = models(upstream)
            if known is None:
                return None
            if model in known:
                routes.append(Route(upstream, model))
        return routes

    def routes_now(self, model: str) -> list[Route] | None:
        """The upstreams that serve ``model`` (as :meth:`resolve`), when every upstream's
        models are known without an await; None: :meth:`resolve` them (a discovery is due,
        or no upstream serves the model, which resolve says)."""
        now = time.monotonic()
        return self._routes(model, lambda upstream: self._known(upstream, now)) or None

    async def resolve(self, model: str) -> SyntheticModel | list[Route]:
        synthetic = self.synthetic.get(model)
        if synthetic is not None:
            return synthetic
        found = {id(upstream): await self.models_of(upstream) for upstream in self.upstreams
                 if model not in upstream.aliases}
        routes = self._routes(model, lambda upstream: found[id(upstream)])
        if not routes:
            raise RequestError(f"The model `{model}` does not exist", status=404,
                               param="model", code="model_not_found")
        return routes

    async def listing(self, started: int) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": started, "owned_by": "streamcore",
             **model.describe()} for name, model in self.synthetic.items()]
        seen = set(self.synthetic)
        for upstream in self.upstreams:
            for name in (*await self.models_of(upstream), *upstream.aliases):
                if name not in seen:
                    seen.add(name)
                    data.append({"id": name, "object": "model", "created": started,
                                 "owned_by": upstream.target.host})
        return data

    def synthetic_source(self, chat: ChatRequest) -> ChatStream | None:
        """The push source of a streamed answer of a synthetic model, made without an
        await (a coroutine less per request); None if no synthetic model has its name."""
        found = self.synthetic.get(chat.model)
        if found is None:
            return None
        messages = chat.messages  # a ChatStream keeps none of its request
        kind = UTF8ChatStream if isinstance(found, UTF8Model) else ChatStream
        source = kind(chat, found.start(chat), self.limits.stream_snapshot_bytes)
        if self.log_prompts:
            self._log_prompt(source.template.completion_id, chat, messages)
        return source

    def source_now(self, chat: ChatRequest) -> ChatStream | UpstreamChat | None:
        """The push source of a streamed answer when it can be made without an await (a
        synthetic model, or upstreams whose models are known: :meth:`routes_now`)."""
        source = self.synthetic_source(chat)
        if source is not None:
            return source
        routes = self.routes_now(chat.model)
        return self._upstream_source(chat, routes) if routes is not None else None

    async def source(self, chat: ChatRequest) -> ChatStream | UpstreamChat:
        """The push source of a streamed answer."""
        source = self.source_now(chat)
        if source is not None:
            return source
        found = await self.resolve(chat.model)
        assert not isinstance(found, SyntheticModel)  # synthetic_source's
        return self._upstream_source(chat, found)

    def _upstream_source(self, chat: ChatRequest, routes: list[Route]) -> UpstreamChat:
        messages = chat.messages
        source = UpstreamChat(chat, routes, self.limits)
        if self.log_prompts:
            self._log_prompt(source.template.completion_id, chat, messages)
        return source

    def _log_prompt(self, completion_id: str, chat: ChatRequest,
                    messages: list[dict[str, Any]]) -> None:
        fields = {"event": "prompt", "completion_id": completion_id, "model": chat.model,
                  "messages": messages}
        access.info("%s", Fields(fields), extra={"fields": fields})


def build_app(models: list[SyntheticModel] | None = None, limits: Limits | None = None, *,
              upstreams: list[Upstream] | None = None, cors_origins: Iterable[str] = (),
              api_keys: Iterable[str] = (), worker: int | None = None,
              chaos: Chaos | None = None, metrics_public: bool = False,
              log_prompts: bool = False) -> App:
    """The gateway: the given synthetic models (default: one, when no upstream is given)
    and upstream LLM servers, routed by ``model``; CORS and API keys as
    :class:`~streamcore.App` has them (``/healthz`` and the demo page need no key).
    ``worker``: this process's index under ``--workers`` (``/healthz`` names it).
    ``chaos``: chaos mode on (docs/chaos.md), and ``GET /v1/chaos/faults``.
    ``GET /metrics`` needs the API key (when one is set) unless ``metrics_public``.
    ``log_prompts``: a ``prompt`` line (``streamcore.access``) per chat request."""
    app = App(limits=limits, name="streamcore-gateway", cors_origins=cors_origins,
              api_keys=api_keys)
    app.chaos = chaos
    upstreams = upstreams or []
    synthetic = models if models is not None else ([] if upstreams else [SyntheticModel()])
    catalog = Catalog({model.name: model for model in synthetic}, upstreams, app.limits)
    catalog.log_prompts = log_prompts
    started = int(time.time())

    if upstreams:
        # Every other /v1/* endpoint is relayed (registered first: a route registered
        # later for the same path wins).
        @app.route("POST", "/v1/{endpoint...}", json=True)
        async def relay_post(request: Request) -> Response | EventStream:
            endpoint = "/" + request.path_params["endpoint"]
            body = request.json()
            if not isinstance(body, dict):
                raise RequestError("the request body must be a JSON object",
                                   code="invalid_type")
            model = body.get("model")
            if isinstance(model, str) and model:
                found = await catalog.resolve(model)
                if isinstance(found, SyntheticModel):
                    raise RequestError(f"the model `{model}` serves only "
                                       "/v1/chat/completions", status=404,
                                       param="model", code="unsupported_endpoint")
                routes = found
            else:
                routes = [Route(upstreams[0], "")]
            if body.get("stream") is True:
                return EventStream(UpstreamRelay(endpoint, body, routes, app.limits))
            status, data, content_type = await relay(
                "POST", endpoint, request.body, routes, app.limits)
            return Response(data, status, content_type=content_type)

        @app.route("GET", "/v1/{endpoint...}")
        async def relay_get(request: Request) -> Response:
            endpoint = "/" + request.path_params["endpoint"]
            if request.query:
                endpoint += "?" + request.query
            status, data, content_type = await relay(
                "GET", endpoint, b"", [Route(upstreams[0], "")], app.limits)
            return Response(data, status, content_type=content_type)

    def chat_now(request: Request) -> EventStream | None:
        """A streamed answer of a synthetic model, or of upstreams whose models are known,
        started without a task or coroutine (most of what a new stream cost besides its
        bytes; and the upstream request goes out in this call, not a loop iteration
        later); anything else goes to the handler, with its request parsed once
        (``request.state``)."""
        chat = parse_chat_request(request.body)
        if chat.stream:
            source = catalog.source_now(chat)
            if source is not None:
                return EventStream(source, sse_end=SSE_DONE)
        request.state["chat"] = chat
        return None

    @app.route("POST", "/v1/chat/completions", json=True, now=chat_now)
    async def chat_completions(request: Request) -> Response | EventStream:
        chat = request.state.pop("chat", None) or parse_chat_request(request.body)
        if chat.stream:
            source = await catalog.source(chat)
            return EventStream(source, sse_end=SSE_DONE)
        found = await catalog.resolve(chat.model)
        if not isinstance(found, SyntheticModel):
            status, body, content_type = await complete(chat, found, app.limits)
            return Response(body, status, content_type=content_type)
        generation = found.start(chat)
        tokens = [token async for token in generation]
        text = "".join(tokens)
        if isinstance(found, UTF8Model):
            text = text.translate(UTF8_LETTERS)
        return Response(completion_body(new_completion_id(), chat.model, text,
                                        generation.finish_reason, generation.prompt_tokens,
                                        len(tokens)))

    @app.route("GET", "/v1/streams/{stream_id}")
    async def read_stream(request: Request) -> EventStream:
        """A streamed completion by its id (the X-Stream-Id header, or the part of an
        event id before the last '-'): from the start, or after Last-Event-ID.  This is
        how a browser's EventSource, which can only GET, follows a POSTed stream."""
        return EventStream(None, sse_end=SSE_DONE, resume=request.path_params["stream_id"])

    @app.route("GET", "/v1/streams")
    async def list_streams(request: Request) -> dict[str, Any]:
        """The stream inspector: this process's live streams, then the ended ones kept
        for resume (with ``--workers``, each worker lists its own)."""
        store = request.store
        if store is None:
            return {"object": "list", "data": []}
        entries = getattr(store, "entries", store.live)()
        now = time.time()
        return {"object": "list", "worker": worker,
                "data": [inspect(entry, now) for entry in entries]}

    @app.route("DELETE", "/v1/streams/{stream_id}")
    async def delete_stream(request: Request) -> dict[str, Any]:
        """Stop a stream (as ``POST /v1/streams/{id}/cancel``): its generation is
        cancelled, its readers get the ``cancelled`` error event."""
        stopped: dict[str, Any] = await cancel_stream(request)
        return stopped

    @app.route("POST", "/v1/streams/{stream_id}/cancel")
    async def cancel_stream(request: Request) -> dict[str, Any]:
        """Stop a stream's generation now (any client of the stream may): its readers get
        the ``cancelled`` error event, an upstream request is aborted."""
        stream_id = request.path_params["stream_id"]
        entry = await request.store.fetch(stream_id) if request.store is not None else None
        if entry is None:
            raise RequestError(f"no stream {stream_id!r} (unknown, or no longer retained)",
                               status=404, code="stream_not_found")
        owner = entry.owner
        if owner is not None:
            owner.cancel()
        return {"id": stream_id, "object": "stream.cancel",
                "status": "cancelled" if owner is not None else "already_ended"}

    # A message handler, not a loop over the socket: an idle /v1/ws socket then holds no
    # task and no coroutine frames (issue 14's idle memory per WebSocket).
    @app.websocket("/v1/ws", messages=True)
    async def chat_socket(ws: WebSocket, message: str | bytes) -> None:
        await _ws_message(ws, message, catalog)

    @app.route("GET", "/v1/models")
    async def list_models_(request: Request) -> dict[str, object]:
        return {"object": "list", "data": await catalog.listing(started)}

    @app.route("GET", "/metrics", public=metrics_public)
    async def metrics(request: Request) -> Response:
        """Prometheus text (OpenMetrics when the Accept header asks for it), summed over
        every worker (streamcore.metrics)."""
        openmetrics = wants_openmetrics(request.header("accept"))
        return Response(app.metrics.render(openmetrics),
                        content_type=OPENMETRICS_TYPE if openmetrics else TEXT_TYPE)

    if chaos is not None:
        @app.route("GET", "/v1/chaos/faults", public=True)
        async def chaos_faults(request: Request) -> dict[str, object]:
            """Every fault chaos mode knows: name, category, what it does on the wire,
            what a correct client must do."""
            return chaos_listing()

    @app.route("GET", "/healthz", public=True)
    async def healthz(request: Request) -> dict[str, object]:
        if worker is None:
            return {"status": "ok"}
        return {"status": "ok", "worker": worker, "pid": os.getpid()}

    from .demo import add_demo_routes  # GET / : the demo page (streamcore/demo/)
    add_demo_routes(app)
    return app


def inspect(entry: Entry, now: float) -> dict[str, Any]:
    """One row of the stream inspector (``GET /v1/streams``)."""
    model, transport, created = entry.meta or ("", "", now)
    owner = entry.owner
    if owner is not None:
        state = owner.state.name.lower()
    elif entry.error is None:
        state = "completed"
    else:
        try:
            code = orjson.loads(entry.error)["error"]["code"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            code = None
        state = "cancelled" if code in ("cancelled", "server_shutdown") else "failed"
    buffered = 0
    for reader in entry.readers:
        buffered += reader.cursor.backlog_bytes
        transport_ = getattr(getattr(reader, "conn", None), "transport", None)
        if transport_ is not None:
            buffered += transport_.get_write_buffer_size()
    return {"id": entry.id, "object": "stream", "model": model, "transport": transport,
            "state": state, "created": int(created), "age_s": round(now - created, 3),
            "tokens": entry.log.next_seq - 1, "readers": len(entry.readers),
            "buffered_bytes": buffered, "log_bytes": entry.log.held_bytes}


async def _ws_message(ws: WebSocket, message: str | bytes, catalog: Catalog) -> None:
    """One client message of the ``/v1/ws`` protocol (see the README)."""
    request_id: str | None = None
    try:
        command = wsapi.parse_client_message(message)
        request_id = command.id
        if isinstance(command, wsapi.Start):
            chat = parse_chat_object(command.body, stream_implied=True)
            stream = await catalog.source(chat)
            # No ``end``: the source leaves its done message on the entry as it ends
            # (``Entry.ws_end``, what a resume sends too), with no closure per request.
            ws.stream(request_id, stream, sse_end=SSE_DONE, disconnect=command.disconnect)
        elif isinstance(command, wsapi.Resume):  # any stream of ours, SSE-started too
            await ws.resume(request_id, command.stream, command.after, epoch=command.epoch,
                            exact=command.exact)
        elif ws.cancel(request_id):
            await ws.send(wsapi.cancelled_message(wsapi.key_of(request_id)).decode())
        else:
            raise RequestError("no running request with this id", param="id",
                               code="not_found")
    except RequestError as exc:
        if isinstance(exc, wsapi.BadMessage):
            request_id = exc.request_id
        await ws.send(wsapi.error_message(wsapi.key_of(request_id), exc.envelope()).decode())
