"""``App.route(now=...)``: a plain route's synchronous first try (the gateway's streamed
chat answers of a synthetic model start through it, without a task: issue 14).  A new
stream it returns starts at once; None, a resume, or a request with ``Last-Event-ID`` goes
to the coroutine handler; its error is the request's answer.  A real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
from conftest import Served

import streamcore


def app(calls: list[str]) -> streamcore.App:
    app = streamcore.App()

    async def words(task: bool | None) -> AsyncIterator[str]:
        yield f"task={task}"
        yield "b"

    def now(request: streamcore.Request) -> streamcore.EventStream | None:
        calls.append("now")
        mode = request.query
        if mode == "bad":
            raise streamcore.RequestError("refused by now", param="q", code="invalid_value")
        if mode == "handler":
            return None
        if mode == "resume":  # a resume is the handler's (it awaits the store)
            return streamcore.EventStream(None, resume="nope")
        return streamcore.EventStream(words(asyncio.current_task() is not None),
                                      headers=[(b"x-now", b"1")], sse_end=b"END")

    @app.route("GET", "/s", now=now)
    async def handler(request: streamcore.Request) -> streamcore.EventStream:
        calls.append("handler")
        return streamcore.EventStream(words(asyncio.current_task() is not None))

    return app


def test_now_starts_a_stream_without_the_handler(serve: Callable[..., Served]) -> None:
    calls: list[str] = []
    served = serve(app(calls))
    with httpx.Client(base_url=served.url, timeout=5) as client:
        fast = client.get("/s")
        assert fast.status_code == 200 and fast.headers["x-now"] == "1"
        assert "data: task=False\n\n" in fast.text and fast.text.endswith("data: END\n\n")
        assert calls == ["now"]

        calls.clear()
        slow = client.get("/s?handler")
        assert "data: task=True\n\n" in slow.text and "x-now" not in slow.headers
        assert calls == ["now", "handler"]

        calls.clear()
        resumed = client.get("/s?resume")
        assert resumed.status_code == 200 and calls == ["now", "handler"]

        calls.clear()
        last = f"{fast.headers['x-stream-id']}-{fast.headers['x-stream-epoch']}-1"
        again = client.get("/s", headers={"last-event-id": last})
        assert again.status_code == 200 and calls == ["handler"]

        calls.clear()
        bad = client.get("/s?bad")
        assert bad.status_code == 400 and bad.json()["error"]["message"] == "refused by now"
        assert calls == ["now"]
        assert client.get("/s").status_code == 200  # the connection went on
