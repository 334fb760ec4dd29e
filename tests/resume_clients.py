"""Blocking clients over raw sockets for the resume tests: one SSE (h11) and one WebSocket
(wsproto) client that read a stream's events and can be cut after any number of bytes
(between events, mid-event, mid-chunk, mid-frame), reporting only what they received
whole: what a real client that lost its connection knows."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import h11
import orjson
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request, TextMessage

from streamcore.proto.cursor import parse_cursor
from streamcore.proto.sse import Decoder


@dataclass
class Reading:
    """What one connection delivered whole."""

    #: (seq, chunk object) of every chunk received whole, in order.
    chunks: list[tuple[int, Any]] = field(default_factory=list)
    #: (seq, snapshot object), if a snapshot came.
    snapshot: tuple[int, Any] | None = None
    stream: str | None = None
    epoch: str | None = None
    #: The end marker came: ``[DONE]`` on SSE, ``done`` on WebSocket.
    done: bool = False
    #: An error event or message (its ``error`` object).
    error: Any = None
    status: int = 0
    cut: bool = False


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _cut(sock: socket.socket, reset: bool) -> None:
    if reset:  # an RST, as a dropped network does not send, but a killed process does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def sse(port: int, method: str, target: str, *, body: Any = None,
        headers: list[tuple[str, str]] | None = None, cut_after: int | None = None,
        reset: bool = False) -> Reading:
    """One SSE request; with ``cut_after``, the connection is dropped once that many body
    bytes (after the response head) were read, wherever they end."""
    sock = _connect(port)
    conn = h11.Connection(h11.CLIENT)
    data = orjson.dumps(body) if body is not None else b""
    hdrs = [("host", "127.0.0.1"), *(headers or [])]
    if body is not None:
        hdrs += [("content-type", "application/json"), ("content-length", str(len(data)))]
    sock.sendall(conn.send(h11.Request(method=method, target=target, headers=hdrs)))
    if data:
        sock.sendall(conn.send(h11.Data(data=data)))
    sock.sendall(conn.send(h11.EndOfMessage()))
    got = Reading()
    decoder = Decoder()
    budget = cut_after
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                want = 4096 if budget is None or not got.status else min(4096, budget)
                if want == 0:
                    got.cut = True
                    return got
                chunk = sock.recv(want)
                if not chunk:
                    return got
                if budget is not None and got.status:
                    budget -= len(chunk)
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                got.status = event.status_code
                heads = dict(event.headers)
                got.stream = heads.get(b"x-stream-id", b"").decode() or None
                got.epoch = heads.get(b"x-stream-epoch", b"").decode() or None
            elif isinstance(event, h11.Data):
                for sse_event in decoder.feed(bytes(event.data)):
                    _sse_event(got, sse_event)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return got
    finally:
        _cut(sock, reset and got.cut)


def _sse_event(got: Reading, event: Any) -> None:
    if event.data == "[DONE]":
        got.done = True
        return
    try:
        doc = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        doc = {"text": event.data}  # a plain app's item
    if "error" in doc:
        got.error = doc["error"]
        return
    position = parse_cursor(event.id)
    assert position is not None, event.id
    got.stream, got.epoch = position.stream, position.epoch
    if event.event == "snapshot":
        got.snapshot = (position.seq, doc)
    else:
        got.chunks.append((position.seq, doc))


def ws(port: int, message: dict[str, Any], *, cut_after: int | None = None,
       reset: bool = False) -> Reading:
    """One ``/v1/ws`` request (``request`` or ``resume``) on a new socket; with
    ``cut_after``, the socket is dropped once that many bytes after the handshake's
    answer were read."""
    sock = _connect(port)
    conn = WSConnection(ConnectionType.CLIENT)
    sock.sendall(conn.send(Request(host="127.0.0.1", target="/v1/ws")))
    got = Reading()
    budget = cut_after
    parts: list[str] = []
    open_ = False
    try:
        while True:
            want = 4096 if budget is None else min(4096, budget)
            if want == 0:
                got.cut = True
                return got
            data = sock.recv(want if open_ else 1)  # the handshake byte by byte: exact
            if not data:
                return got
            if budget is not None and open_:
                budget -= len(data)
            conn.receive_data(data)
            for event in conn.events():
                if isinstance(event, AcceptConnection):
                    open_ = True
                    got.status = 101
                    sock.sendall(conn.send(Message(data=orjson.dumps(message).decode())))
                elif isinstance(event, TextMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        if _ws_message(got, orjson.loads("".join(parts))):
                            return got
                        parts = []
    finally:
        _cut(sock, reset and got.cut)


def _ws_message(got: Reading, doc: dict[str, Any]) -> bool:
    """Record one message; True at the request's end."""
    kind = doc["type"]
    if kind == "stream":
        got.stream, got.epoch = doc["stream"], doc["epoch"]
    elif kind == "chunk":
        got.chunks.append((doc["seq"], doc["chunk"]))
    elif kind == "snapshot":
        got.snapshot = (doc["seq"], doc["snapshot"])
    elif kind == "done":
        got.done = True
        return True
    elif kind == "error":
        got.error = doc["error"]
        return True
    return False


def text_of(chunks: list[tuple[int, Any]]) -> str:
    return "".join(choice["delta"].get("content") or ""
                   for _, chunk in chunks for choice in chunk.get("choices", ()))
