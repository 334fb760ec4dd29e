"""``ids=False`` (``@app.stream(..., ids=False)``, ``EventStream(..., ids=False)``): a stream
that will never be resumed sends no ``id:`` lines and no X-Stream-Id, and is not kept; the
default keeps both (resume needs them).  ``sse_end`` ends a completed stream either way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
from conftest import Served

import streamcore


def app() -> streamcore.App:
    app = streamcore.App()

    async def words() -> AsyncIterator[str]:
        for word in ("a", "b", "c"):
            yield word

    @app.stream("GET", "/plain", ids=False, sse_end=b"[DONE]")
    async def plain(request: streamcore.Request) -> AsyncIterator[str]:
        async for word in words():
            yield word

    @app.route("GET", "/validated")
    async def validated(request: streamcore.Request) -> streamcore.EventStream:
        return streamcore.EventStream(words(), ids=False)

    @app.stream("GET", "/resumable")
    async def resumable(request: streamcore.Request) -> AsyncIterator[str]:
        async for word in words():
            yield word

    return app


def test_streams_without_ids_are_not_kept(serve: Callable[..., Served]) -> None:
    served = serve(app())
    with httpx.Client(base_url=served.url, timeout=5) as client:
        plain = client.get("/plain")
        assert plain.status_code == 200 and "x-stream-id" not in plain.headers
        assert plain.text == "data: a\n\ndata: b\n\ndata: c\n\ndata: [DONE]\n\n"
        validated = client.get("/validated")
        assert validated.text == "data: a\n\ndata: b\n\ndata: c\n\n"
        assert "x-stream-id" not in validated.headers
        assert served.call(lambda: served.server.store.live()) == []
        resumable = client.get("/resumable")
        sid = resumable.headers["x-stream-id"]
        assert resumable.text.count("id: ") == 3
        assert served.call(lambda: served.server.store.find(sid)) is not None
