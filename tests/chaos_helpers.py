"""Chaos-mode test helpers: a raw request over a real socket, what came back (bytes, how
the connection ended, how long it took), and a lenient reader of what a fault wrote."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

import orjson

from streamcore.proto.sse import Decoder, Event


def chat_body(max_tokens: int = 8, *, model: str = "synthetic", usage: bool = False,
              prompt: str = "chaos") -> bytes:
    body: dict[str, object] = {"model": model, "stream": True, "max_tokens": max_tokens,
                               "messages": [{"role": "user", "content": prompt}]}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


@dataclass
class Got:
    data: bytes
    elapsed: float
    #: "eof", "reset" or "timeout"
    ended: str

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    @property
    def rest(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.lower() == name:
                return value.strip()
        return None

    def chunks(self) -> tuple[list[bytes], list[bytes], bool]:
        """(chunk-size lines, chunk data, whether the last chunk came); a chunk cut short
        is the last of the data."""
        lines: list[bytes] = []
        datas: list[bytes] = []
        buf = self.rest
        while buf:
            line, sep, buf = buf.partition(b"\r\n")
            if not sep:
                break
            lines.append(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                return lines, datas, True
            datas.append(buf[:size])
            buf = buf[size + 2:]
        return lines, datas, False

    def body(self) -> bytes:
        if self.header(b"transfer-encoding") == b"chunked":
            return b"".join(self.chunks()[1])
        return self.rest

    def events(self) -> list[Event]:
        """The events (ids, times and the like masked: :func:`normalized`)."""
        return Decoder(max_line_bytes=1 << 30, max_event_bytes=1 << 30).feed(
            normalized(self.body()))

    def texts(self) -> list[str]:
        return [e.data for e in self.events()]

    def content(self) -> str:
        out = []
        for data in self.texts():
            if data.startswith("{") and '"choices"' in data:
                for choice in orjson.loads(data)["choices"]:
                    out.append(choice["delta"].get("content") or "")
        return "".join(out)


def request(port: int, body: bytes, *, chaos: str | None = None, seed: int | None = 7,
            path: str = "/v1/chat/completions", method: str = "POST",
            timeout: float = 10.0, keep_alive: bool | None = None) -> Got:
    """One request on a new connection; reads until the server ends it, or (a request
    without faults, or ``keep_alive``) until the response is complete."""
    if keep_alive is None:
        keep_alive = chaos is None
    headers = [b"host: 127.0.0.1", b"content-type: application/json",
               b"content-length: %d" % len(body)]
    if chaos is not None:
        headers.append(b"x-chaos: " + chaos.encode())
    if seed is not None and chaos is not None:
        headers.append(b"x-chaos-seed: %d" % seed)
    started = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(timeout)
    sock.sendall(b"%s %s HTTP/1.1\r\n%s\r\n\r\n%s" % (method.encode(), path.encode(),
                                                     b"\r\n".join(headers), body))
    data = b""
    ended = "eof"
    try:
        while True:
            piece = sock.recv(1 << 20)
            if not piece:
                break
            data += piece
            if keep_alive and (data.endswith(b"\r\n0\r\n\r\n") or (
                    b"content-length" in data and _complete(data))):
                break
    except ConnectionResetError:
        ended = "reset"
    except TimeoutError:
        ended = "timeout"
    finally:
        sock.close()
    return Got(data, time.monotonic() - started, ended)


def _complete(data: bytes) -> bool:
    head, sep, rest = data.partition(b"\r\n\r\n")
    found = re.search(rb"content-length: (\d+)", head)
    return bool(sep) and found is not None and len(rest) >= int(found.group(1))


_IDS = [(re.compile(rb"\b[0-9a-f]{16}-(?:[0-9a-f]{6}-)?(\d+)"), rb"STREAM-\1"),
        (re.compile(rb"x-stream-id: [0-9a-f]{16}"), rb"x-stream-id: STREAM"),
        (re.compile(rb"x-stream-epoch: [0-9a-f]+"), rb"x-stream-epoch: EPOCH"),
        (re.compile(rb'"stream":"[0-9a-f]{16}","epoch":"[0-9a-f]+"'), rb'"stream":"S"'),
        (re.compile(rb"chatcmpl-[0-9a-f]+"), rb"chatcmpl-ID"),
        (re.compile(rb'"created":\d+'), rb'"created":0'),
        (re.compile(rb"date: [^\r]+"), rb"date: DATE")]


def normalized(data: bytes) -> bytes:
    """The bytes with what differs between two runs of one request masked: stream and
    completion ids, the creation time, the Date header."""
    for pattern, replacement in _IDS:
        data = pattern.sub(replacement, data)
    return data
