"""Peer (WebSocket only): the `websockets` library's asyncio server on uvloop."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import uvloop
from common import FINISH, ROLE, chunk, parse_args, tokens
from websockets.asyncio.server import serve


async def handler(sock) -> None:
    if sock.request.path != "/v1/ws":
        await sock.close(1008)
        return
    rate = common.token_rate()
    async for message in sock:
        request_id, count = common.ws_request(message)
        head = common.ws_head(request_id)
        await sock.send(common.ws_chunk(head, 0, ROLE).decode())
        seq = 1
        async for token in tokens(count, rate):
            await sock.send(common.ws_chunk(head, seq, chunk(token)).decode())
            seq += 1
        await sock.send(common.ws_chunk(head, seq, FINISH).decode())
        await sock.send(common.ws_done(request_id).decode())


async def main(host: str, port: int) -> None:
    async with serve(handler, host, port, compression=None, ping_interval=None,
                     max_queue=None, backlog=4096) as server:
        await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__)
    uvloop.run(main(args.host, args.port))
