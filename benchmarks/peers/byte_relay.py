"""Reference (the floor for a gateway in Python): a byte-level TCP relay on uvloop.

``python benchmarks/peers/byte_relay.py --port P --upstream 127.0.0.1:U`` opens one upstream
connection per client connection and copies bytes both ways as they come: no HTTP, no SSE,
no JSON -- every read is written to the other side in the callback that read it, and a side
whose peer does not take its bytes stops being read (``pause_writing`` pauses the other
side's reading), as a proxy must.  What it costs per relayed token is what uvloop and the
kernel cost for one read and one write, which any Python gateway pays before its own work;
``benchmarks/gateway.py --fronts relay`` measures it beside the others.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvloop


class Side(asyncio.Protocol):
    """One socket of a relayed pair; ``other`` is the side its bytes go to."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.other: Side | None = None
        self.pending: list[bytes] | None = []  # bytes read before the other side exists

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is not None and other.transport is not None:
            other.transport.write(data)
        elif self.pending is not None:
            self.pending.append(data)

    def pause_writing(self) -> None:  # our peer reads slowly: stop reading the other side
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


class Client(Side):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        up = Side()
        up.other = self
        try:
            await loop.create_connection(lambda: up, *self.upstream)
        except OSError:
            if self.transport is not None:
                self.transport.close()
            return
        self.other = up
        for data in self.pending or ():
            up.transport.write(data)
        self.pending = None


async def main(host: str, port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream), host, port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, up_port = args.upstream.rpartition(":")
    uvloop.run(main(args.host, args.port, (host, int(up_port))))
