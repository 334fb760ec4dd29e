"""The HTTP fast path (issue 14) over real sockets: the same bytes sent to a server whose
connections use the fast path and to one whose sessions are forced onto h11 get the same
bytes back (Date and the stream's own ids aside) -- pipelined requests the fast path takes
and ones it declines, bodies split from their heads, streamed and whole responses, HEAD,
HTTP/1.0, Connection: close, a smuggling shape refused after a valid request."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import RawClient, Served

import streamcore.aio.connection as connection_module
from streamcore import App, Request, Response
from streamcore.proto.http import HTTPSession


class Counting(HTTPSession):
    """The fast-path session, counting the requests it parsed without h11."""

    taken = 0

    def receive(self, data: bytes) -> object:  # type: ignore[override]
        return self._count(super().receive(data))

    def next_cycle(self) -> tuple[bool, object]:  # type: ignore[override]
        keep, request = super().next_cycle()
        return keep, self._count(request)

    def _count(self, request: object) -> object:
        if request is not None and self._conn is None:
            Counting.taken += 1
        return request


def make_app() -> App:
    app = App()

    @app.route("GET", "/json")
    async def json(request: Request) -> dict[str, str]:
        return {"path": request.path, "query": request.query}

    @app.route("POST", "/echo")
    async def echo(request: Request) -> Response:
        return Response(request.body, content_type=b"application/octet-stream")

    @app.route("GET", "/empty")
    async def empty(request: Request) -> Response:
        return Response(b"", 204)

    @app.stream("GET", "/stream")
    async def stream(request: Request) -> AsyncIterator[str]:
        for i in range(3):
            yield f"tok{i}"

    return app


GET = b"GET /json?a=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
HEAD = b"HEAD /json HTTP/1.1\r\nHost: h\r\n\r\n"
STREAM = b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n"
EMPTY = b"GET /empty HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
CHUNKED = (b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n")
OLD = b"GET /json HTTP/1.0\r\n\r\n"
CLOSE = b"GET /json HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
DUP_CL = b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"

#: (sends, pause between them in seconds): each a conversation on one connection.
CONVERSATIONS = [
    ([GET + POST + HEAD + STREAM + EMPTY + CHUNKED + GET + OLD], 0.0),
    ([GET, POST[:40], POST[40:], STREAM, CHUNKED, HEAD, CLOSE], 0.05),
    ([STREAM + GET + POST, CLOSE], 0.05),
    ([GET + DUP_CL + GET], 0.0),
    ([POST[:-3], POST[-3:] + OLD], 0.05),
]

_VARYING = [re.compile(rb"date: [^\r]*"), re.compile(rb"x-stream-(?:id|epoch): [^\r]*")]


def converse(port: int, sends: list[bytes], pause: float) -> bytes:
    with RawClient(port) as client:
        for data in sends:
            client.send(data)
            time.sleep(pause)
        out = client.read_until_close(3.0).data
    ids = re.findall(rb"x-stream-id: ([^\r]*)", out)
    for value in ids:
        out = out.replace(value, b"<id>")
    for pattern in _VARYING:
        out = pattern.sub(b"<varies>", out)
    return re.sub(rb"<id>-[^-\r\n]*-", b"<id>-<epoch>-", out)


def test_a_fast_server_answers_what_an_h11_server_answers(
        serve: Callable[..., Served], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "HTTPSession", Counting)
    fast = serve(make_app())
    answers = [converse(fast.port, sends, pause) for sends, pause in CONVERSATIONS]
    assert Counting.taken >= 14  # (the rest were declined, or behind a declined one)
    monkeypatch.setattr(connection_module, "HTTPSession",
                        functools.partial(HTTPSession, fast=False))
    slow = serve(make_app())
    for (sends, pause), answer in zip(CONVERSATIONS, answers, strict=True):
        assert converse(slow.port, sends, pause) == answer, sends
    assert answers[0].count(b"HTTP/1.1 200 OK") == 7 and b"hello world" in answers[0]
    assert answers[3].count(b"HTTP/1.1 ") == 2 and b"400 Bad Request" in answers[3]
