"""An intercepting transport: drives a real connection protocol on a real event loop, records
every byte the protocol writes, and lets the test play the kernel (``pause_writing`` /
``resume_writing``, a close that never finishes, a lost connection).

A connection is built the way a listening :class:`streamcore.Server` builds it: from the
server's context (``server.ctx``), with the server constructed inside the running loop but
never listening.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

import streamcore
from streamcore.aio.connection import HTTPConnection
from streamcore.proto.sse import Decoder, Event


class FakeTransport(asyncio.Transport):
    """Records ``write``/``writelines`` calls; never blocks (the test says when the
    "kernel" is full by calling the protocol's ``pause_writing``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, close_completes: bool = True) -> None:
        super().__init__()
        self.loop = loop
        #: ``(method, bytes)`` per call, in order.
        self.calls: list[tuple[str, bytes]] = []
        self.protocol: Any = None
        #: Whether ``close()`` ends in ``connection_lost`` (False: a peer that never lets the
        #: close drain).
        self.close_completes = close_completes
        self.closing = False
        self.aborted = False
        self.reading = True
        self.reading_calls: list[str] = []
        self.buffer_limits: tuple[int, int] | None = None
        self._lost = False

    # -- what the protocol calls ---------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._lost, "write after connection_lost"
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        assert not self._lost, "writelines after connection_lost"
        self.calls.append(("writelines", b"".join(bytes(b) for b in list_of_data)))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.buffer_limits = (high or 0, low or 0)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False
        self.reading_calls.append("pause")

    def resume_reading(self) -> None:
        self.reading = True
        self.reading_calls.append("resume")

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.close_completes:
            self.loop.call_soon(self.lose)

    def abort(self) -> None:
        self.aborted = True
        self.closing = True
        self.loop.call_soon(self.lose)

    def is_closing(self) -> bool:
        return self.closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol  # type: ignore[no-any-return]

    # -- what the test calls ---------------------------------------------------------------

    def lose(self, exc: Exception | None = None) -> None:
        """The connection is gone (as the loop reports it once)."""
        if not self._lost:
            self._lost = True
            self.closing = True
            self.protocol.connection_lost(exc)

    @property
    def lost(self) -> bool:
        return self._lost

    @property
    def data(self) -> bytes:
        return b"".join(data for _, data in self.calls)

    def feed(self, data: bytes) -> None:
        """Bytes from the peer, to whatever protocol owns the transport now."""
        self.protocol.data_received(data)


def make_server(app: streamcore.App, limits: streamcore.Limits | None = None) -> streamcore.Server:
    """A server's shared context, as ``Server.__init__`` builds it (call inside the loop)."""
    return streamcore.Server(app, limits or app.limits)


def connect(server: streamcore.Server, *, close_completes: bool = True) -> tuple[
        HTTPConnection, FakeTransport]:
    conn = HTTPConnection(server.ctx)
    transport = FakeTransport(server.loop, close_completes=close_completes)
    transport.set_protocol(conn)
    conn.connection_made(transport)
    return conn, transport


async def spin(iterations: int = 20) -> None:
    """Let the loop run ``iterations`` times (call_soon callbacks, task steps)."""
    for _ in range(iterations):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], Any], *, timeout: float = 5.0) -> None:
    """Run the loop until ``predicate()`` holds (or fail after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout}s: {predicate}")
        await asyncio.sleep(0)


def server_closed(transport: FakeTransport) -> bool:
    """Whether the server has written a WebSocket Close frame (one write of its own; cheap
    enough to poll, unlike decoding everything written so far)."""
    return any(data[:1] == b"\x88" for _, data in transport.calls)


def split_head(data: bytes) -> tuple[bytes, bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:200]!r}"
    return head + sep, body


def unchunk(body: bytes) -> tuple[bytes, bool]:
    """A chunked body's payload, and whether its last chunk arrived (strict framing)."""
    out = bytearray()
    pos = 0
    while pos < len(body):
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end], 16)
        start = line_end + 2
        if size == 0:
            assert body[start:] == b"\r\n", body[start:]
            return bytes(out), True
        out += body[start:start + size]
        assert body[start + size:start + size + 2] == b"\r\n"
        pos = start + size + 2
    return bytes(out), False


def sse_events(data: bytes) -> tuple[bytes, list[Event], bool]:
    """A chunked SSE response's head, its events and whether it ended."""
    head, body = split_head(data)
    payload, ended = unchunk(body)
    return head, Decoder().feed(payload), ended


def ws_client_events(data: bytes) -> list[Any]:
    """Server frames after a 101 head, as a real (wsproto) client reads them: whole
    messages (str or bytes), pings and the Close."""
    head, frames = split_head(data)
    assert head.startswith(b"HTTP/1.1 101 "), head
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frames)
    out: list[Any] = []
    parts: list[Any] = []
    for event in client.events():
        if isinstance(event, Message):
            parts.append(event.data)
            if event.message_finished:
                joined: Any = ("".join(parts) if isinstance(event, TextMessage)
                               else b"".join(parts))
                out.append(joined)
                parts = []
        elif isinstance(event, CloseConnection | Ping):
            out.append(event)
        else:  # a server sends nothing else
            raise AssertionError(event)
    return out


def client_frame(message: str | bytes) -> bytes:
    """One masked client frame (RFC 6455 section 5.3), via wsproto's client."""
    client = Connection(ConnectionType.CLIENT)
    event = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
    return client.send(event)


def client_close(code: int = 1000) -> bytes:
    return Connection(ConnectionType.CLIENT).send(CloseConnection(code=code))


UPGRADE = (b"GET %b HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def upgrade(path: str) -> bytes:
    return UPGRADE % path.encode()
