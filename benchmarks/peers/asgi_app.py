"""The job as a raw ASGI 3 app (no framework): run by uvicorn (httptools or h11/wsproto),
hypercorn and granian.  One ``send`` per event, as a hand-written ASGI streamer does."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
from common import DONE, FINISH, ROLE, chunk, sse_event, tokens

SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]


async def read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return body
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def http(scope, receive, send) -> None:
    if scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
        await send({"type": "http.response.start", "status": 404,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return
    count = common.max_tokens(await read_body(receive))
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": sse_event(ROLE), "more_body": True})
    async for token in tokens(count, common.token_rate()):
        await send({"type": "http.response.body", "body": sse_event(chunk(token)),
                    "more_body": True})
    await send({"type": "http.response.body", "body": sse_event(FINISH), "more_body": True})
    await send({"type": "http.response.body", "body": sse_event(DONE)})


async def websocket(scope, receive, send) -> None:
    if scope["path"] != "/v1/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    message = await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    rate = common.token_rate()
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        request_id, count = common.ws_request(message.get("text") or message.get("bytes"))
        head = common.ws_head(request_id)
        await send({"type": "websocket.send", "text": common.ws_chunk(head, 0, ROLE).decode()})
        seq = 1
        async for token in tokens(count, rate):
            await send({"type": "websocket.send",
                        "text": common.ws_chunk(head, seq, chunk(token)).decode()})
            seq += 1
        await send({"type": "websocket.send",
                    "text": common.ws_chunk(head, seq, FINISH).decode()})
        await send({"type": "websocket.send", "text": common.ws_done(request_id).decode()})


async def lifespan(scope, receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send) -> None:
    kind = scope["type"]
    if kind == "http":
        await http(scope, receive, send)
    elif kind == "websocket":
        await websocket(scope, receive, send)
    elif kind == "lifespan":
        await lifespan(scope, receive, send)
