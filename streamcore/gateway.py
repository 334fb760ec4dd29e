"""The daemon's app: OpenAI-compatible endpoints wired to a token source.

``POST /v1/chat/completions`` (``stream: true`` over SSE, ``stream: false`` as one JSON
body), ``GET /v1/ws`` (the same streams over WebSocket, several per socket), ``GET
/v1/models``, ``GET /healthz``.  Bad input is refused before a stream starts, with a 4xx
(or a typed WebSocket error message) and an OpenAI-style error naming the ``param``.
"""

from __future__ import annotations

import time
from typing import Any

from .aio.stream import Stream
from .aio.websocket import WebSocket
from .app import App, EventStream, Request, Response
from .errors import RequestError
from .limits import Limits
from .proto import wsapi
from .proto.jsonbytes import json_string
from .proto.openai import (
    ChatRequest,
    ChunkTemplate,
    completion_body,
    new_completion_id,
    parse_chat_object,
    parse_chat_request,
    usage_object,
)
from .sources.synthetic import Generation, Run, SyntheticModel

#: The data of the event that ends an OpenAI SSE stream (not JSON: clients compare the
#: data field to it).
SSE_DONE = b"[DONE]"


class ChatStream:
    """One streamed answer, pushed into its stream: the role chunk, a chunk per token, the
    finish chunk and, if asked, the usage chunk.  A push source (see
    :class:`~streamcore.aio.stream.PushSource`): no task and no future per token."""

    __slots__ = ("chat", "count", "fixed", "generation", "run", "stream", "template")

    def __init__(self, chat: ChatRequest, generation: Generation) -> None:
        self.chat = chat
        self.generation = generation
        self.template = ChunkTemplate(new_completion_id(), chat.model,
                                      include_usage=chat.include_usage)
        self.count = 0
        #: The bytes every token frame has besides its JSON string.
        self.fixed = len(self.template.prefix) + len(self.template.suffix)
        self.run: Run | None = None
        self.stream: Stream | None = None
        chat.raw = {}  # what a long-lived stream keeps of its request: only what it uses
        chat.messages = []

    def start_push(self, stream: Stream) -> None:
        self.stream = stream
        stream.push((self.template.role(),))
        self.run = self.generation.run(self)

    def emit(self, text: str) -> bool:
        """One token: one JSON string between the template's shared prefix and suffix."""
        template = self.template
        data = json_string(text)
        return self.stream.push(  # type: ignore[union-attr]
            (template.prefix, data, template.suffix), self.fixed + len(data))

    def done(self) -> None:
        stream = self.stream
        assert stream is not None and self.run is not None
        self.count = self.run.i
        template = self.template
        stream.push((template.finish(self.generation.finish_reason),))
        if self.chat.include_usage:
            stream.push((template.usage(self.generation.prompt_tokens, self.count),))
        stream.end()

    def resume_push(self) -> None:
        if self.run is not None:
            self.run.resume()

    def cancel_push(self) -> None:
        if self.run is not None:
            self.count = self.run.i
            self.run.cancel()

    def done_message(self, key: bytes) -> bytes:
        """The WebSocket gateway's last message for this request."""
        return wsapi.done_message(key, self.generation.finish_reason,
                                  usage_object(self.generation.prompt_tokens, self.count))


def build_app(models: list[SyntheticModel] | None = None, limits: Limits | None = None) -> App:
    """The gateway with the given models (default: one synthetic model)."""
    app = App(limits=limits, name="streamcore-gateway")
    registry = {model.name: model for model in (models or [SyntheticModel()])}
    started = int(time.time())

    def start(chat: ChatRequest) -> Generation:
        model = registry.get(chat.model)
        if model is None:
            raise RequestError(f"The model `{chat.model}` does not exist", status=404,
                               param="model", code="model_not_found")
        return model.start(chat)

    @app.route("POST", "/v1/chat/completions")
    async def chat_completions(request: Request) -> Response | EventStream:
        chat = parse_chat_request(request.body)
        generation = start(chat)
        if chat.stream:
            return EventStream(ChatStream(chat, generation), sse_end=SSE_DONE)
        tokens = [token async for token in generation]
        return Response(completion_body(new_completion_id(), chat.model, "".join(tokens),
                                        generation.finish_reason, generation.prompt_tokens,
                                        len(tokens)))

    @app.route("GET", "/v1/streams/{stream_id}")
    async def read_stream(request: Request) -> EventStream:
        """A streamed completion by its id (the X-Stream-Id header, or the part of an
        event id before the last '-'): from the start, or after Last-Event-ID.  This is
        how a browser's EventSource, which can only GET, follows a POSTed stream."""
        return EventStream(None, sse_end=SSE_DONE, resume=request.path_params["stream_id"])

    @app.websocket("/v1/ws")
    async def chat_socket(ws: WebSocket) -> None:
        async for message in ws:
            await _ws_message(ws, message, start)

    @app.route("GET", "/v1/models")
    async def list_models(request: Request) -> dict[str, object]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": started, "owned_by": "streamcore",
             **model.describe()}
            for name, model in registry.items()]}

    @app.route("GET", "/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "ok"}

    from .demo import add_demo_routes  # GET / : the demo page (streamcore/demo/)
    add_demo_routes(app)
    return app


async def _ws_message(ws: WebSocket, message: str | bytes, start: Any) -> None:
    """One client message of the ``/v1/ws`` protocol (see the README)."""
    request_id: str | None = None
    try:
        command = wsapi.parse_client_message(message)
        request_id = command.id
        if isinstance(command, wsapi.Start):
            chat = parse_chat_object(command.body, stream_implied=True)
            stream = ChatStream(chat, start(chat))
            key = wsapi.key_of(request_id)
            ws.stream(request_id, stream, end=lambda: stream.done_message(key))
        elif ws.cancel(request_id):
            await ws.send(wsapi.cancelled_message(wsapi.key_of(request_id)).decode())
        else:
            raise RequestError("no running request with this id", param="id",
                               code="not_found")
    except RequestError as exc:
        if isinstance(exc, wsapi.BadMessage):
            request_id = exc.request_id
        await ws.send(wsapi.error_message(wsapi.key_of(request_id), exc.envelope()).decode())
