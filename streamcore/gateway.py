"""The daemon's app: OpenAI-compatible endpoints wired to a token source.

``POST /v1/chat/completions`` (``stream: true`` over SSE, ``stream: false`` as one JSON
body), ``GET /v1/models``, ``GET /healthz``.  Bad input is refused before the stream starts
with a 4xx and an OpenAI-style error naming the ``param``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from .app import App, EventStream, Request, Response
from .errors import RequestError
from .limits import Limits
from .proto.openai import (
    ChatRequest,
    ChunkTemplate,
    completion_body,
    new_completion_id,
    parse_chat_request,
)
from .sources.synthetic import Generation, SyntheticModel

#: The end of an OpenAI stream (not JSON: clients compare the data field to it).
SSE_DONE = b"data: [DONE]\n\n"


def chat_frames(request: ChatRequest, generation: Generation,
                template: ChunkTemplate) -> AsyncIterator[tuple[bytes, ...]]:
    """The chunk frames of one streamed answer: role, tokens, finish, usage."""

    async def frames() -> AsyncIterator[tuple[bytes, ...]]:
        yield (template.role(),)
        count = 0
        token = template.token
        async for text in generation:
            yield token(text)
            count += 1
        yield (template.finish(generation.finish_reason),)
        if request.include_usage:
            yield (template.usage(generation.prompt_tokens, count),)

    return frames()


def build_app(models: list[SyntheticModel] | None = None, limits: Limits | None = None) -> App:
    """The gateway with the given models (default: one synthetic model)."""
    app = App(limits=limits, name="streamcore-gateway")
    registry = {model.name: model for model in (models or [SyntheticModel()])}
    started = int(time.time())

    def model_for(chat: ChatRequest) -> SyntheticModel:
        model = registry.get(chat.model)
        if model is None:
            raise RequestError(f"The model `{chat.model}` does not exist", status=404,
                               param="model", code="model_not_found")
        return model

    @app.route("POST", "/v1/chat/completions")
    async def chat_completions(request: Request) -> Response | EventStream:
        chat = parse_chat_request(request.body)
        generation = model_for(chat).start(chat)
        completion_id = new_completion_id()
        if chat.stream:
            template = ChunkTemplate(completion_id, chat.model,
                                     include_usage=chat.include_usage)
            return EventStream(chat_frames(chat, generation, template), sse_end=SSE_DONE)
        tokens = [token async for token in generation]
        return Response(completion_body(completion_id, chat.model, "".join(tokens),
                                        generation.finish_reason, generation.prompt_tokens,
                                        len(tokens)))

    @app.route("GET", "/v1/models")
    async def list_models(request: Request) -> dict[str, object]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": started, "owned_by": "streamcore"}
            for name in registry]}

    @app.route("GET", "/healthz")
    async def healthz(request: Request) -> dict[str, str]:
        return {"status": "ok"}

    return app
