"""Chaos for one WebSocket connection, sans-I/O: the server's frames in (RFC 6455 section
5.2; a server's frames are never masked), the faulty frames and pauses out
(:mod:`streamcore.proto.chaos`).  The handshake's 101 response is not ours to change."""

from __future__ import annotations

import struct

from .chaos import CLOSE, Action, Selection, Wire

_TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_FIN, _RSV1 = 0x80, 0x40
#: The Ping the ``ws-ping`` fault sends (its payload: a client's Pong must echo it).
PING = b"\x89\x05chaos"


def frame(first: int, payload: bytes) -> bytes:
    """An unmasked frame: ``first`` is its first byte (FIN, RSV, opcode)."""
    size = len(payload)
    if size < 126:
        return bytes((first, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


class WSChaos:
    """``feed(bytes)`` what the server writes after its 101 response, get back the
    actions; ``close()`` when the server closes the connection."""

    def __init__(self, selection: Selection) -> None:
        self.faults = selection.faults
        self.rng = selection.rng()
        self.wire = Wire(self.faults, self.rng)
        self._buf = b""
        self._close_code = next((int(name[9:]) for name in self.faults
                                 if name.startswith("ws-close-")), None)

    def feed(self, data: bytes) -> list[Action]:
        self._buf += data
        while True:
            buf = self._buf
            if len(buf) < 2:
                break
            size = buf[1] & 0x7F
            start = 2
            if size == 126:
                start = 4
            elif size == 127:
                start = 10
            if len(buf) < start:
                break
            if start > 2:
                size = int.from_bytes(buf[2:start], "big")
            if len(buf) < start + size:
                break
            self._buf = buf[start + size:]
            self._frame(buf[0], buf[start:start + size], buf[:start + size])
        return self.wire.take()

    def close(self) -> list[Action]:
        """The server closes (the caller then closes the transport)."""
        return self.wire.take()

    def _frame(self, first: int, payload: bytes, raw: bytes) -> None:
        faults = self.faults
        wire = self.wire
        opcode = first & 0x0F
        if opcode == _PONG and "ws-no-pong" in faults:
            return
        if opcode not in (_TEXT, _BINARY) or not first & _FIN:
            wire.write(raw)
            return
        if wire.units == wire.cut_at:
            if "ws-drop" in faults:
                wire.end(CLOSE)
                return
            if self._close_code is not None:
                wire.write(frame(_FIN | _CLOSE,
                                 struct.pack("!H", self._close_code) + b"chaos"))
                wire.dead = True  # the peer's Close is answered by the server: not by us
                return
        frames = [raw]
        if "ws-fragment" in faults and len(payload) > 1:
            frames = []
            at = 0
            while at < len(payload):
                step = self.rng.randint(1, 8)
                last = at + step >= len(payload)
                # The first frame keeps the opcode and RSV1 (a compressed message, RFC 7692
                # section 6.1); the others are continuations (opcode 0).
                head = (first & (_RSV1 | 0x0F) if at == 0 else 0) | (_FIN if last else 0)
                frames.append(frame(head, payload[at:at + step]))
                at += step
        if "ws-ping" in faults:
            frames = [part for piece in frames for part in (PING, piece)]
        wire.unit(b"".join(frames), token=True, start=2)
