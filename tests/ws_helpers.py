"""WebSocket test helpers: hand-built frames, handshakes, and a raw-socket client.

Frames are built here byte by byte (RFC 6455 section 5.2) so that tests can send what no
client library will: unmasked frames, reserved bits, fragmented control frames, headers
that declare more than they carry.
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import socket
import struct
import time
import zlib

from streamcore.proto import http

# Opcodes (RFC 6455 section 5.2).
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's sample nonce
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # ... and its Sec-WebSocket-Accept


def frame_header(opcode: int, length: int, *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = b"\x00\x00\x00\x00") -> bytes:
    """A frame header; ``mask`` None means unmasked (a server frame)."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    mask_bit = 0x80 if mask is not None else 0
    if length < 126:
        head = struct.pack("!BB", first, mask_bit | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    return head + (mask or b"")


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    if mask == b"\x00\x00\x00\x00" or not payload:
        return payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          masked: bool = True, mask: bytes | None = None) -> bytes:
    """A whole frame, masked with a random key by default (a client frame)."""
    if not masked:
        return frame_header(opcode, len(payload), fin=fin, rsv=rsv, mask=None) + payload
    key = os.urandom(4) if mask is None else mask
    return frame_header(opcode, len(payload), fin=fin, rsv=rsv, mask=key) + apply_mask(
        payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def deflate_raw(chunks: list[bytes] | bytes) -> bytes:
    """RFC 7692 section 7.2.1: raw deflate, sync-flushed, with the 00 00 ff ff tail
    removed."""
    comp = zlib.compressobj(wbits=-15)
    out = [comp.compress(c) for c in ([chunks] if isinstance(chunks, bytes) else chunks)]
    out.append(comp.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(out)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def upgrade_headers(*, key: bytes = KEY, version: bytes = b"13",
                    extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"127.0.0.1"), (b"upgrade", b"websocket"),
               (b"connection", b"Upgrade"), (b"sec-websocket-version", version)]
    if key:
        headers.append((b"sec-websocket-key", key))
    return headers + list(extra or [])


def upgrade_request(headers: list[tuple[bytes, bytes]] | None = None, *,
                    method: str = "GET", path: str = "/") -> http.Request:
    """An already-parsed upgrade request, as the HTTP layer hands it to ``ws.accept``."""
    return http.Request(method=method, target=path.encode(), path=path, query="",
                        headers=upgrade_headers() if headers is None else headers)


def parse_request_bytes(data: bytes) -> http.Request:
    """A raw HTTP request head (e.g. one wsproto's client wrote) as an ``http.Request``."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _version = lines[0].split(b" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    path = target.decode().split("?")[0]
    return http.Request(method=method.decode(), target=target, path=path, query="",
                        headers=headers)


def handshake_bytes(path: str = "/", extra: list[tuple[bytes, bytes]] | None = None,
                    key: bytes | None = None) -> tuple[bytes, bytes]:
    """A raw client handshake and the key it used."""
    key = key or base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Upgrade: websocket",
             b"Connection: Upgrade", b"Sec-WebSocket-Key: " + key,
             b"Sec-WebSocket-Version: 13"]
    lines += [name + b": " + value for name, value in extra or []]
    return b"\r\n".join(lines) + b"\r\n\r\n", key


class ServerFrames:
    """An incremental parser of unmasked server frames (for raw-socket clients)."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        self.buffer += data
        out: list[tuple[int, bool, bytes]] = []
        while True:
            buf = self.buffer
            if len(buf) < 2:
                return out
            fin = bool(buf[0] & 0x80)
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return out
                length = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return out
                length = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            assert not buf[1] & 0x80, "a server frame must not be masked"
            if len(buf) < pos + length:
                return out
            out.append((opcode, fin, bytes(buf[pos:pos + length])))
            del self.buffer[:pos + length]


class RawWS:
    """A WebSocket client on a raw socket: handshake by hand, then frames by hand."""

    def __init__(self, port: int, path: str = "/", *, rcvbuf: int | None = None,
                 extra: list[tuple[bytes, bytes]] | None = None, timeout: float = 5.0,
                 first: bytes = b"") -> None:
        """Connect and shake hands; ``first``: bytes (frames) sent in the same write as
        the upgrade request."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so that the advertised window (and its scale) follows it.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.frames = ServerFrames()
        self.pending: list[tuple[int, bool, bytes]] = []
        self.closed = False
        self.reset = False
        request, _ = handshake_bytes(path, extra)
        self.sock.sendall(request + first)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096 if rcvbuf is None else 1)
            if not chunk:
                raise AssertionError(f"closed during the handshake: {bytes(head)!r}")
            head += chunk
        response, _, rest = bytes(head).partition(b"\r\n\r\n")
        self.response_head = response + b"\r\n\r\n"
        assert self.response_head.startswith(b"HTTP/1.1 101"), self.response_head
        self.pending = self.frames.feed(rest)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kw: object) -> None:
        self.sock.sendall(frame(opcode, payload, **kw))  # type: ignore[arg-type]

    def recv_frames(self, timeout: float = 3.0, *, until_close: bool = False,
                    count: int = 1) -> list[tuple[int, bool, bytes]]:
        """Frames until ``count`` have arrived (or a Close, with ``until_close``), the
        socket ends, or ``timeout``."""
        got, self.pending = self.pending, []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            if until_close and any(op == CLOSE for op, _, _ in got):
                break
            if not until_close and len(got) >= count:
                break
            ready, _, _ = select.select([self.sock], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self.closed = self.reset = True
                break
            if not data:
                self.closed = True
                break
            got += self.frames.feed(data)
        return got

    def wait_closed(self, timeout: float) -> bool:
        """Read (and drop) everything until the server ends the TCP connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            ready, _, _ = select.select([self.sock], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                self.closed = self.reset = True
                break
            if not data:
                self.closed = True
                break
            self.frames.feed(data)
        return self.closed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawWS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
