"""Peer: FastAPI (Starlette) + sse-starlette's EventSourceResponse on uvicorn (httptools,
uvloop): what most Python LLM gateways are written in."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import uvicorn
from common import DONE, FINISH_S, ROLE_S, chunk_str, parse_args, tokens
from fastapi import FastAPI, Request
from sse_starlette import EventSourceResponse

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> EventSourceResponse:
    count = common.max_tokens(await request.json())
    rate = common.token_rate()

    async def events():
        yield {"data": ROLE_S}
        async for token in tokens(count, rate):
            yield {"data": chunk_str(token)}
        yield {"data": FINISH_S}
        yield {"data": DONE.decode()}

    return EventSourceResponse(events())


if __name__ == "__main__":
    args = parse_args(__doc__)
    uvicorn.run(app, host=args.host, port=args.port, loop="uvloop", http="httptools",
                lifespan="on", log_level="warning", access_log=False, backlog=4096,
                timeout_keep_alive=30)
