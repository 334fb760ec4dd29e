"""Every handler runs in a real asyncio Task (regression test for issue 8's bug: a plain
handler's first step ran outside any Task, so ``asyncio.current_task()`` was None and
``asyncio.timeout()``, httpx, the ``openai`` client and anything on anyio failed with a 500).

From a plain ``@app.route`` handler and from an ``@app.stream`` generator handler: the current
task, ``asyncio.timeout``, ``httpx.AsyncClient`` to a second real server, and a streamed chat
completion through ``openai.AsyncOpenAI`` from a streamcore gateway; and the README's pattern,
a plain handler that validates, then returns ``EventStream(agen)`` whose generator calls the
upstream model.  Real servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import httpx_sse
import orjson
import pytest
from conftest import Served
from openai import AsyncOpenAI

import streamcore
from streamcore.gateway import build_app


async def first_step_checks(other_url: str, upstream_url: str) -> dict[str, Any]:
    """What failed outside a Task; run as a handler's very first step."""
    result: dict[str, Any] = {"task": asyncio.current_task() is not None}
    async with asyncio.timeout(5):
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{other_url}/ping")
            result["httpx"] = response.json()
        result["openai"] = await openai_completion(upstream_url)
    result["task_after"] = asyncio.current_task() is not None
    return result


async def openai_completion(upstream_url: str, prompt: str = "say something") -> str:
    async with AsyncOpenAI(base_url=f"{upstream_url}/v1", api_key="x", max_retries=0,
                           timeout=5) as client:
        stream = await client.chat.completions.create(
            model="synthetic", messages=[{"role": "user", "content": prompt}], stream=True,
            max_tokens=8)
        text = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
        return "".join(text)


@pytest.fixture
def servers(serve: Callable[..., Served]) -> tuple[Served, Served]:
    """(another plain server, an upstream streamcore gateway)."""
    other = streamcore.App()

    @other.route("GET", "/ping")
    async def ping(request: streamcore.Request) -> dict[str, str]:
        return {"pong": "yes"}

    return serve(other), serve(build_app())


def app_under_test(other: Served, upstream: Served) -> streamcore.App:
    app = streamcore.App()

    @app.route("GET", "/plain")
    async def plain(request: streamcore.Request) -> dict[str, Any]:
        return await first_step_checks(other.url, upstream.url)

    @app.stream("GET", "/gen")
    async def gen(request: streamcore.Request) -> AsyncIterator[dict[str, Any]]:
        yield await first_step_checks(other.url, upstream.url)

    @app.route("POST", "/v1/generate")
    async def generate(request: streamcore.Request) -> streamcore.EventStream:
        # The README's pattern: validate (a 4xx before any event), then stream.
        body = request.json()
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise streamcore.RequestError("'prompt' must be a non-empty string",
                                          param="prompt", code="invalid_value")

        async def tokens() -> AsyncIterator[str]:
            async with AsyncOpenAI(base_url=f"{upstream.url}/v1", api_key="x",
                                   max_retries=0, timeout=5) as client:
                stream = await client.chat.completions.create(
                    model="synthetic", messages=[{"role": "user", "content": prompt}],
                    stream=True, max_tokens=8)
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content

        return streamcore.EventStream(tokens(), sse_end=b"[END]")

    return app


def check(result: dict[str, Any], expected_text: str) -> None:
    assert result == {"task": True, "httpx": {"pong": "yes"}, "openai": expected_text,
                      "task_after": True}
    assert expected_text


def test_plain_handler_runs_in_a_task(serve: Callable[..., Served],
                                      servers: tuple[Served, Served]) -> None:
    other, upstream = servers
    served = serve(app_under_test(other, upstream))
    expected = asyncio.run(openai_completion(upstream.url))
    response = httpx.get(f"{served.url}/plain", timeout=10)
    assert response.status_code == 200, response.text
    check(response.json(), expected)


def test_stream_handler_runs_in_a_task(serve: Callable[..., Served],
                                       servers: tuple[Served, Served]) -> None:
    other, upstream = servers
    served = serve(app_under_test(other, upstream))
    expected = asyncio.run(openai_completion(upstream.url))
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "GET", f"{served.url}/gen") as source:
        assert source.response.status_code == 200
        events = list(source.iter_sse())
    assert len(events) == 1
    check(orjson.loads(events[0].data), expected)


def test_validate_then_event_stream_calling_the_upstream(serve: Callable[..., Served],
                                                         servers: tuple[Served, Served]) -> None:
    other, upstream = servers
    served = serve(app_under_test(other, upstream))
    prompt = "tell me about streams"
    expected = asyncio.run(openai_completion(upstream.url, prompt))
    with httpx.Client(timeout=10) as client:
        with httpx_sse.connect_sse(client, "POST", f"{served.url}/v1/generate",
                                   json={"prompt": prompt}) as source:
            assert source.response.status_code == 200
            data = [event.data for event in source.iter_sse()]
        assert data[-1] == "[END]"
        assert "".join(data[:-1]) == expected
        bad = client.post(f"{served.url}/v1/generate", json={"prompt": ""})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "prompt"
