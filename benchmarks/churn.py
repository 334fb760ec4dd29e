"""Connection churn: C concurrent clients, each in a loop for D seconds: connect, POST one
streamed chat completion of T tokens, read it to its last chunk, close.  Prints the
number of streams.  Used by ``cost.sh churn`` to measure a new stream's setup cost.

    python benchmarks/churn.py PORT [C=16] [D=10] [T=1]
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial

import uvloop

LAST_CHUNK = b"0\r\n\r\n"


def request(tokens: int) -> bytes:
    body = (b'{"model":"synthetic","messages":[{"role":"user","content":"hello there"}],'
            b'"stream":true,"max_tokens":%d}' % tokens)
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (len(body), body))


class Client(asyncio.Protocol):
    def __init__(self, req: bytes, done: asyncio.Future[None]) -> None:
        self.req = req
        self.done = done
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-16:]
        if self.tail.endswith(LAST_CHUNK) and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def main(port: int, concurrency: int, duration: float, tokens: int) -> int:
    loop = asyncio.get_running_loop()
    req = request(tokens)
    end = time.monotonic() + duration
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < end:
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(partial(Client, req, done), "127.0.0.1", port)
            await done
            count += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count


if __name__ == "__main__":
    defaults = ["16", "10", "1"]
    argv = sys.argv[2:5] + defaults[len(sys.argv[2:5]):]
    print(uvloop.run(main(int(sys.argv[1]), int(argv[0]), float(argv[1]), int(argv[2]))))
