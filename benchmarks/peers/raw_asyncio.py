"""Reference (the floor): a minimal ``asyncio.Protocol`` on uvloop writing frames encoded in
advance, one ``transport.write`` per token.  No framework, no validation beyond what the
job needs: what any Python server must at least cost per write.

SSE on ``POST /v1/chat/completions`` (chunked, keep-alive) and WebSocket on ``GET /v1/ws``
(RFC 6455 handshake by hand; client frames are unmasked here, server frames go unmasked as the RFC
says).  Unpaced streams write until the transport pauses and go on when it resumes; paced
streams are a chain of ``loop.call_at`` timers on the ideal schedule.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common
import uvloop
from common import DONE, FINISH, ROLE, TOKEN, chunk, parse_args, sse_event

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
SSE_ROLE = _http_chunk(sse_event(ROLE))
SSE_TOKEN = _http_chunk(sse_event(chunk(TOKEN)))  # the one pre-encoded frame per token
SSE_END = _http_chunk(sse_event(FINISH)) + _http_chunk(sse_event(DONE)) + b"0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
TOKEN_CHUNK = chunk(TOKEN)


def ws_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


class Protocol(asyncio.Protocol):
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.ws = False
        self.paused = False
        self.count = 0
        self.i = -1  # -1: idle; else the next token index of the current stream
        self.start = 0.0
        self.ws_prefix = b""
        self.ws_request_id = ""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.i >= 0 and self.rate <= 0:
            self.pump()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.ws:
            self.ws_frames()
        elif self.i < 0:
            self.http_request()

    # -- HTTP ---------------------------------------------------------------------------

    def http_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1")
        lines = head.split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4:end + 4 + length]
        self.buf = self.buf[end + 4 + length:]
        if method == "GET" and path == "/v1/ws" and "websocket" in headers.get("upgrade",
                                                                                "").lower():
            key = headers["sec-websocket-key"].encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                 b"connection: Upgrade\r\nsec-websocket-accept: " + accept +
                                 b"\r\n\r\n")
            self.ws = True
            if self.buf:
                self.ws_frames()
            return
        if method != "POST" or path != "/v1/chat/completions":
            self.transport.write(NOT_FOUND)
            return
        self.count = common.max_tokens(body)
        self.transport.write(SSE_HEAD + SSE_ROLE)
        self.begin()

    # -- WebSocket ------------------------------------------------------------------------

    def ws_frames(self) -> None:
        while self.i < 0 and len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n = b1 & 0x7F
            pos = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n = struct.unpack_from("!H", self.buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n = struct.unpack_from("!Q", self.buf, 2)[0]
                pos = 10
            masked = b1 & 0x80
            if len(self.buf) < pos + (4 if masked else 0) + n:
                return
            payload = self.buf[pos + 4 if masked else pos:][:n]
            if masked:
                mask = self.buf[pos:pos + 4]
                payload = bytes(b ^ mask[j & 3] for j, b in enumerate(payload))
            self.buf = self.buf[pos + (4 if masked else 0) + n:]
            opcode = b0 & 0x0F
            if opcode == 8:
                self.transport.write(b"\x88\x02\x03\xe8")
                self.transport.close()
                return
            if opcode == 9:
                self.transport.write(b"\x8a" + bytes((len(payload),)) + payload)
                continue
            if opcode != 1:
                continue
            self.ws_request_id, self.count = common.ws_request(payload)
            self.ws_prefix = common.ws_head(self.ws_request_id)
            self.transport.write(ws_frame(common.ws_chunk(self.ws_prefix, 0, ROLE)))
            self.begin()

    # -- the stream -----------------------------------------------------------------------

    def begin(self) -> None:
        self.i = 0
        self.start = self.loop.time()
        if self.rate <= 0:
            self.pump()
        else:
            self.tick()

    def frame(self) -> bytes:
        if self.ws:
            return ws_frame(self.ws_prefix + b"%d" % (self.i + 1) + b',"chunk":' + TOKEN_CHUNK
                            + b"}")
        return SSE_TOKEN

    def pump(self) -> None:
        transport = self.transport
        while self.i < self.count and not self.paused and transport is not None:
            transport.write(self.frame())
            self.i += 1
        if self.i >= self.count:
            self.end()

    def tick(self) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(self.frame())
        self.i += 1
        if self.i >= self.count:
            self.end()
            return
        self.timer = self.loop.call_at(self.start + self.i / self.rate, self.tick)

    def end(self) -> None:
        transport = self.transport
        self.i = -1
        if transport is None:
            return
        if self.ws:
            transport.write(ws_frame(common.ws_chunk(self.ws_prefix, self.count + 1, FINISH)))
            transport.write(ws_frame(common.ws_done(self.ws_request_id)))
            if self.buf:
                self.ws_frames()
        else:
            transport.write(SSE_END)
            if self.buf:
                self.http_request()


async def main(host: str, port: int, rate: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Protocol(rate), host, port, backlog=4096,
                                      reuse_address=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    args = parse_args(__doc__)
    uvloop.run(main(args.host, args.port, args.token_rate))
