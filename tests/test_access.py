"""Who may call (streamcore.proto.access): CORS, API keys, JSON-only bodies -- the rules
sans-I/O, then through a real gateway with real clients (httpx, httpx-sse, the openai SDK,
websockets); and no key ever in a log line or a response."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import httpx_sse
import openai
import orjson
import pytest
from conftest import Served
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

import streamcore
from streamcore.gateway import build_app
from streamcore.proto.access import Access, Unauthorized, UnsupportedMediaType, require_json
from streamcore.proto.http import Request
from streamcore.sources.synthetic import SyntheticModel
from streamcore.sources.upstream_server import Upstream

KEY = "sk-test-0123456789abcdef"
ORIGIN = "https://app.example"
BODY = {"model": "synthetic", "stream": True, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hello there"}]}


def req(method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"") -> Request:
    return Request(method, b"/x", "/x", "", headers or [], body)


# -- the rules, sans-I/O -----------------------------------------------------------------


def test_cors_headers_only_for_an_allowed_origin() -> None:
    access = Access.of([ORIGIN + "/"])  # a trailing slash in the configuration is dropped
    assert access.cors_headers(req(headers=[(b"origin", ORIGIN.encode())])) == [
        (b"access-control-allow-origin", ORIGIN.encode()), (b"vary", b"Origin"),
        (b"access-control-expose-headers", b"X-Stream-Id")]
    assert access.cors_headers(req(headers=[(b"origin", b"https://evil.example")])) == []
    assert access.cors_headers(req()) == []  # not a cross-origin request
    assert Access().cors_headers(req(headers=[(b"origin", ORIGIN.encode())])) == []
    anyone = Access.of(["*"])
    assert anyone.cors_headers(req(headers=[(b"origin", b"https://x")]))[0] == (
        b"access-control-allow-origin", b"https://x")


def test_preflight() -> None:
    access = Access.of([ORIGIN])
    asks = [(b"origin", ORIGIN.encode()), (b"access-control-request-method", b"POST")]
    headers = dict(access.preflight(req("OPTIONS", asks)) or [])
    assert headers[b"access-control-allow-origin"] == ORIGIN.encode()
    assert b"POST" in headers[b"access-control-allow-methods"]
    assert b"authorization" in headers[b"access-control-allow-headers"]
    # Not a preflight: no Origin, no requested method, not OPTIONS.
    assert access.preflight(req("OPTIONS", asks[1:])) is None
    assert access.preflight(req("OPTIONS", asks[:1])) is None
    assert access.preflight(req("POST", asks)) is None
    # A preflight from an origin not allowed: answered, without CORS headers.
    assert access.preflight(req("OPTIONS", [(b"origin", b"https://evil"),
                                            (b"access-control-request-method", b"POST")])) == []


@pytest.mark.parametrize("value", [None, b"Bearer wrong", b"Basic " + KEY.encode(),
                                   b"Bearer", b"Bearer " + KEY.encode() + b"x", b""])
def test_a_missing_or_wrong_key_is_401(value: bytes | None) -> None:
    access = Access.of(api_keys=["other-key", KEY])
    headers = [] if value is None else [(b"authorization", value)]
    with pytest.raises(Unauthorized) as caught:
        access.authorize(req(headers=headers))
    assert caught.value.status == 401
    assert (b"www-authenticate", b'Bearer realm="streamcore"') in caught.value.headers
    assert KEY not in caught.value.message


def test_a_right_key_passes_and_no_keys_means_open() -> None:
    access = Access.of(api_keys=["other-key", KEY])
    for value in (b"Bearer " + KEY.encode(), b"bearer  " + KEY.encode(), b"Bearer other-key"):
        access.authorize(req(headers=[(b"authorization", value)]))
    Access().authorize(req())


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/x-www-form-urlencoded",
                                          b"multipart/form-data; boundary=x", None])
def test_a_json_endpoint_refuses_other_bodies(content_type: bytes | None) -> None:
    headers = [] if content_type is None else [(b"content-type", content_type)]
    with pytest.raises(UnsupportedMediaType) as caught:
        require_json(req("POST", headers, b'{"a": 1}'))
    assert caught.value.status == 415


@pytest.mark.parametrize("content_type", [b"application/json", b"Application/JSON; charset=utf-8",
                                          b"application/merge-patch+json"])
def test_a_json_endpoint_takes_json(content_type: bytes) -> None:
    require_json(req("POST", [(b"content-type", content_type)], b"{}"))
    require_json(req("POST", [], b""))  # no body, nothing to refuse


# -- through a real gateway ------------------------------------------------------------------


def gateway(serve: Callable[..., Served], **options: Any) -> Served:
    limits = streamcore.Limits(heartbeat_interval_s=60.0)
    return serve(build_app([SyntheticModel(tokens_per_s=0)], limits, **options), limits)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


def test_api_key_over_http_and_the_openai_sdk(serve: Callable[..., Served],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="streamcore")
    served = gateway(serve, api_keys=[KEY])
    url = f"{served.url}/v1/chat/completions"
    assert_error(httpx.post(url, json=BODY), 401, "invalid_api_key")
    wrong = httpx.post(url, json=BODY, headers={"authorization": "Bearer nope"})
    assert_error(wrong, 401, "invalid_api_key")
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{served.url}/healthz").status_code == 200  # public
    assert httpx.get(f"{served.url}/").status_code == 200  # the demo page: public
    assert httpx.get(f"{served.url}/v1/models").status_code == 401

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0)
    chunks = list(client.chat.completions.create(**BODY))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 3
    # The key is in no log line and no response.
    assert KEY not in caplog.text
    assert KEY not in wrong.text


def test_api_key_on_the_websocket_handshake(serve: Callable[..., Served]) -> None:
    served = gateway(serve, api_keys=[KEY])
    ws_url = f"ws://127.0.0.1:{served.port}/v1/ws"

    async def run() -> str:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, open_timeout=5):
                pass
        assert refused.value.response.status_code == 401
        async with connect(ws_url, open_timeout=5,
                           additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            await ws.send(orjson.dumps({"type": "request", "id": "a", "body": BODY}).decode())
            while True:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                if message["type"] not in ("stream", "chunk"):  # stream: names it
                    return str(message["type"])

    assert asyncio.run(run()) == "done"


def test_cors_preflight_and_headers_on_every_answer(serve: Callable[..., Served]) -> None:
    served = gateway(serve, cors_origins=[ORIGIN], api_keys=[KEY])
    url = f"{served.url}/v1/chat/completions"
    pre = httpx.options(url, headers={"origin": ORIGIN, "access-control-request-method": "POST",
                                      "access-control-request-headers": "authorization"})
    assert pre.status_code == 204, pre.text
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"]
    assert "content-length" not in pre.headers
    evil = httpx.options(url, headers={"origin": "https://evil.example",
                                       "access-control-request-method": "POST"})
    assert evil.status_code == 204 and "access-control-allow-origin" not in evil.headers

    auth = {"origin": ORIGIN, "authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", url, json=BODY, headers=auth) as source:
        head = source.response.headers
        assert head["access-control-allow-origin"] == ORIGIN
        assert head["access-control-expose-headers"] == "X-Stream-Id" and head["x-stream-id"]
        assert [e.data for e in source.iter_sse()][-1] == "[DONE]"
    # An error a page must be able to read: 401 and 404 carry the CORS headers too.
    refused = httpx.post(url, json=BODY, headers={"origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    missing = httpx.get(f"{served.url}/v1/streams/0123456789abcdef", headers=auth)
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"] == ORIGIN
    # No Origin, no CORS header.
    plain = httpx.post(url, json={**BODY, "stream": False},
                       headers={"authorization": f"Bearer {KEY}"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_a_cross_site_form_post_never_reaches_the_handler(serve: Callable[..., Served]) -> None:
    served = gateway(serve)
    url = f"{served.url}/v1/chat/completions"
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        got = httpx.post(url, content=orjson.dumps(BODY), headers={"content-type": content_type})
        assert_error(got, 415, "unsupported_media_type")
    ok = httpx.post(url, content=orjson.dumps({**BODY, "stream": False}),
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_an_event_stream_carries_its_handlers_headers(serve: Callable[..., Served]) -> None:
    app = streamcore.App(cors_origins=["*"])

    async def items() -> Any:
        yield "one"

    @app.route("GET", "/s")
    async def handler(request: streamcore.Request) -> streamcore.EventStream:
        return streamcore.EventStream(items(), headers=[(b"cache-control-extra", b"x"),
                                                       (b"x-handler", b"yes")])

    served = serve(app)
    with httpx.Client(timeout=5) as client, httpx_sse.connect_sse(
            client, "GET", f"{served.url}/s", headers={"origin": "https://a"}) as source:
        assert source.response.headers["x-handler"] == "yes"
        assert source.response.headers["access-control-allow-origin"] == "https://a"
        assert [e.data for e in source.iter_sse()] == ["one"]


def test_the_upstream_key_goes_only_upstream(serve: Callable[..., Served],
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="streamcore")
    upstream_key = "sk-upstream-secret-987"
    upstream = gateway(serve, api_keys=[upstream_key])
    good = serve(build_app(limits=streamcore.Limits(upstream_head_hold_s=0.5), upstreams=[
        Upstream.parse(f"{upstream.url}/v1 key={upstream_key} models=synthetic")]))
    bad = serve(build_app(upstreams=[
        Upstream.parse(f"{upstream.url}/v1 key=wrong models=synthetic")]))
    with httpx.Client(timeout=10) as client:
        with httpx_sse.connect_sse(client, "POST", f"{good.url}/v1/chat/completions",
                                   json=BODY) as source:
            events = [e.data for e in source.iter_sse()]
            assert events[-1] == "[DONE]"
            assert upstream_key not in str(source.response.headers)
        assert upstream_key not in "".join(events)
        # The upstream refusing the gateway's key is the gateway's fault, not the client's:
        # 502, never a 401 the client would take for its own key.
        refused = client.post(f"{bad.url}/v1/chat/completions", json=BODY)
        error = assert_error(refused, 502, "upstream_auth")
        assert "wrong" not in error["message"]
    assert upstream_key not in caplog.text
