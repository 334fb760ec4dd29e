"""Whole exchanges with an upstream: a non-streamed chat completion (the first upstream of
its routes that answers, the others as fallbacks), any other endpoint's JSON answer relayed
as it is, and an upstream's model list (``GET /v1/models``, for discovery).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import orjson

from ..aio.upstream import Unavailable
from ..errors import RequestError
from ..limits import Limits
from ..proto.openai import ChatRequest
from ..proto.upstream import (
    Body,
    Event,
    Head,
    UpstreamError,
)
from .upstream_server import RETRYABLE, Route, Upstream, refusal, upstream_body

log = logging.getLogger("streamcore")

# -- whole exchanges: non-streamed answers, model lists --------------------------------------


class _Collect:
    """A consumer that reads one whole exchange, at most ``limit`` body bytes."""

    __slots__ = ("body", "future", "head", "limit")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.head: Head | None = None
        self.body = bytearray()
        self.limit = limit

    def upstream_events(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Head):
                self.head = event
            elif isinstance(event, Body):
                self.body += event.data
                if len(self.body) > self.limit and not self.future.done():
                    self.future.set_exception(UpstreamError(
                        f"the upstream's answer exceeds {self.limit} bytes "
                        "(upstream_max_event_bytes)"))
            elif not self.future.done():
                self.future.set_result(None)

    def upstream_read(self, data: bytes) -> bool:
        return False

    def upstream_body(self, data: bytes) -> None:
        self.upstream_events([Body(data)])

    def upstream_failed(self, exc: UpstreamError) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


async def exchange(upstream: Upstream, limits: Limits, method: str, path: str,
                   body: bytes = b"") -> tuple[Head, bytes]:
    """One whole request and response; :class:`Unavailable` when the upstream cannot be
    reached, times out or breaks HTTP."""
    loop = asyncio.get_running_loop()
    conn = await upstream.pool(loop, limits).acquire()
    collect = _Collect(loop, limits.upstream_max_event_bytes)
    conn.consumer = collect
    conn.send(conn.session.request(method, path, upstream.headers(), body))
    timeout = limits.upstream_head_timeout_s + limits.upstream_first_token_timeout_s
    try:
        await asyncio.wait_for(collect.future, timeout)
    except TimeoutError:
        conn.abort()
        raise Unavailable(f"{upstream.target.url()} did not answer within {timeout:g} s",
                          504, "upstream_timeout") from None
    except UpstreamError as exc:
        conn.abort()
        raise Unavailable(f"{upstream.target.url()}: {exc.message}", 502,
                          "upstream_protocol_error") from None
    except asyncio.CancelledError:
        conn.abort()  # the client left: the upstream's work stops too
        raise
    assert collect.head is not None
    conn.release()
    return collect.head, bytes(collect.body)


async def _first_answer(routes: Sequence[Route], limits: Limits, method: str,
                        endpoint: str, body_of: Callable[[Route], bytes],
                        ) -> tuple[Route, Head, bytes]:
    """The first upstream's whole answer, trying the next after an unreachable upstream
    or a refusal that allows it (``RETRYABLE``); the last error if none answers."""
    error: RequestError | None = None
    for i, route in enumerate(routes):
        where = f"upstream {route.upstream.target.url()}"
        try:
            head, data = await exchange(route.upstream, limits, method,
                                        route.upstream.path(endpoint), body_of(route))
        except Unavailable as exc:
            log.warning("%s: %s", where, exc.message)
            error = exc
            continue
        if head.status in RETRYABLE and i + 1 < len(routes):
            error = refusal(head.status, data, head.headers, where)
            continue
        return route, head, data
    assert error is not None
    raise error


async def complete(chat: ChatRequest, routes: Sequence[Route], limits: Limits) -> tuple[
        int, bytes, bytes]:
    """A non-streamed chat completion: ``(status, body, content type)`` of the first
    upstream that answers (the next one is tried after a refusal that allows it)."""
    route, head, data = await _first_answer(
        routes, limits, "POST", "/chat/completions",
        lambda r: upstream_body(chat, r.model, stream=False))
    where = f"upstream {route.upstream.target.url()}"
    if head.status != 200:
        raise refusal(head.status, data, head.headers, where)
    try:  # under the client's name for the model (an alias stays the alias)
        obj = orjson.loads(data)
        if isinstance(obj, dict) and obj.get("model") != chat.model:
            obj["model"] = chat.model
            data = orjson.dumps(obj)
    except orjson.JSONDecodeError:
        raise RequestError(f"{where} answered 200 with a body that is not JSON",
                           status=502, type="upstream_error",
                           code="upstream_protocol_error") from None
    return 200, data, head.header(b"content-type") or b"application/json"


async def list_models(upstream: Upstream, limits: Limits) -> tuple[str, ...]:
    """The model ids an upstream's ``GET /v1/models`` lists."""
    head, data = await exchange(upstream, limits, "GET", upstream.path("/models"))
    if head.status != 200:
        raise Unavailable(f"{upstream.target.url()}/models answered {head.status}", 502,
                          "upstream_error")
    try:
        listed = orjson.loads(data)["data"]
        return tuple(m["id"] for m in listed
                     if isinstance(m, dict) and isinstance(m.get("id"), str))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise Unavailable(f"{upstream.target.url()}/models is not an OpenAI model list", 502,
                          "upstream_error") from None


async def relay(method: str, endpoint: str, body: bytes, routes: Sequence[Route],
                limits: Limits) -> tuple[int, bytes, bytes]:
    """Any other ``/v1/*`` request, not streamed: the first upstream's answer as it is
    (``(status, body, content type)``); the next is tried after a refusal that allows it."""

    def body_of(route: Route) -> bytes:  # the upstream's name for the model, if one is
        if body and route.model:
            try:
                obj = orjson.loads(body)
            except orjson.JSONDecodeError:
                return body
            if isinstance(obj, dict) and "model" in obj:
                return orjson.dumps({**obj, "model": route.model})
        return body

    _, head, data = await _first_answer(routes, limits, method, endpoint, body_of)
    return head.status, data, head.header(b"content-type") or b"application/json"
