"""Peer (WebSocket only): picows, a Cython WebSocket library with a callback API, on uvloop.
Unpaced streams send until the transport pauses; paced streams are ``call_at`` timers."""

import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import uvloop
from common import FINISH, ROLE, chunk, parse_args
from picows import WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Listener(WSListener):
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.loop = asyncio.get_running_loop()
        self.transport: WSTransport | None = None
        self.paused = False
        self.i = -1
        self.count = 0
        self.head = b""
        self.request_id = ""
        self.start = 0.0
        self.timer = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.i >= 0 and self.rate <= 0:
            self.pump()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT or self.i >= 0:
            return
        self.request_id, self.count = common.ws_request(frame.get_payload_as_bytes())
        self.head = common.ws_head(self.request_id)
        transport.send(WSMsgType.TEXT, common.ws_chunk(self.head, 0, ROLE))
        self.i = 0
        self.start = self.loop.time()
        if self.rate <= 0:
            self.pump()
        else:
            self.tick()

    def message(self) -> bytes:
        return common.ws_chunk(self.head, self.i + 1, chunk(common.TOKEN))

    def pump(self) -> None:
        while self.i < self.count and not self.paused and self.transport is not None:
            self.transport.send(WSMsgType.TEXT, self.message())
            self.i += 1
        if self.i >= self.count:
            self.end()

    def tick(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.send(WSMsgType.TEXT, self.message())
        self.i += 1
        if self.i >= self.count:
            self.end()
            return
        self.timer = self.loop.call_at(self.start + self.i / self.rate, self.tick)

    def end(self) -> None:
        self.i = -1
        if self.transport is not None:
            self.transport.send(WSMsgType.TEXT,
                                common.ws_chunk(self.head, self.count + 1, FINISH))
            self.transport.send(WSMsgType.TEXT, common.ws_done(self.request_id))


async def main(host: str, port: int, rate: float) -> None:
    def factory(request: WSUpgradeRequest):
        return Listener(rate) if request.path == b"/v1/ws" else None

    server = await ws_create_server(factory, host, port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__)
    uvloop.run(main(args.host, args.port, args.token_rate))
