"""Peer: streamcore as a user embeds it, written only against the public API: an
``@app.stream`` async generator yielding ``orjson.dumps(chunk)`` per token (paced, if asked,
by ``asyncio.sleep`` against the ideal schedule), and an ``@app.websocket`` handler that
sends one ``ws.send_json`` per chunk.  Beside the daemon (``streamcore``, its built-in
synthetic model, a push source on a timer wheel) in every workload, so that the results
never report only the fastest internal path.


"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import orjson
from common import CREATED, parse_args

import streamcore


def chunk(token: str | None, finish: str | None = None,
          role: bool = False) -> dict[str, object]:
    """The chunk a user's handler builds per token (the same bytes as common.chunk)."""
    if role:
        delta: dict[str, str] = {"role": "assistant", "content": ""}
    elif token is None:
        delta = {}
    else:
        delta = {"content": token}
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
            "model": "synthetic",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}


def build(rate: float) -> streamcore.App:
    limits = streamcore.Limits(max_connections=200_000, max_connections_per_ip=0)
    app = streamcore.App(limits=limits)

    @app.stream("POST", "/v1/chat/completions", sse_end=b"[DONE]")
    async def chat(request: streamcore.Request):  # type: ignore[no-untyped-def]
        count = common.max_tokens(request.body)
        yield orjson.dumps(chunk(None, role=True))
        async for token in common.tokens(count, rate):
            yield orjson.dumps(chunk(token))
        yield orjson.dumps(chunk(None, "length"))

    @app.websocket("/v1/ws")
    async def ws(socket: streamcore.WebSocket) -> None:
        async for message in socket:
            request_id, count = common.ws_request(message)
            await socket.send_json({"type": "chunk", "id": request_id, "seq": 0,
                                    "chunk": chunk(None, role=True)})
            seq = 1
            async for token in common.tokens(count, rate):
                await socket.send_json({"type": "chunk", "id": request_id, "seq": seq,
                                        "chunk": chunk(token)})
                seq += 1
            await socket.send_json({"type": "chunk", "id": request_id, "seq": seq,
                                    "chunk": chunk(None, "length")})
            await socket.send_json({"type": "done", "id": request_id})

    return app


if __name__ == "__main__":
    args = parse_args(__doc__)
    app = build(args.token_rate)
    streamcore.run(app, args.host, args.port, limits=app.limits)
