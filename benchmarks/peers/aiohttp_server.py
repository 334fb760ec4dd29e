"""Peer: aiohttp.web, SSE by StreamResponse.write and WebSocket by WebSocketResponse,
on uvloop."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import uvloop
from aiohttp import WSMsgType, web
from common import DONE, FINISH, ROLE, chunk, parse_args, sse_event, tokens


async def chat_completions(request: web.Request) -> web.StreamResponse:
    count = common.max_tokens(await request.read())
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(sse_event(ROLE))
    async for token in tokens(count, common.token_rate()):
        await response.write(sse_event(chunk(token)))
    await response.write(sse_event(FINISH))
    await response.write(sse_event(DONE))
    await response.write_eof()
    return response


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse(autoping=True, heartbeat=None)
    await sock.prepare(request)
    rate = common.token_rate()
    async for message in sock:
        if message.type != WSMsgType.TEXT:
            break
        request_id, count = common.ws_request(message.data)
        head = common.ws_head(request_id)
        await sock.send_str(common.ws_chunk(head, 0, ROLE).decode())
        seq = 1
        async for token in tokens(count, rate):
            await sock.send_str(common.ws_chunk(head, seq, chunk(token)).decode())
            seq += 1
        await sock.send_str(common.ws_chunk(head, seq, FINISH).decode())
        await sock.send_str(common.ws_done(request_id).decode())
    return sock


if __name__ == "__main__":
    args = parse_args(__doc__)
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/ws", ws)
    uvloop.install()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None,
                backlog=4096)
