"""Every other /v1/* endpoint through the gateway (issue 9): the Responses API's typed
events and legacy completions relayed event by event under streamcore's ids, with the
chat path's honest endings; JSON answers relayed as they are; GETs to the first upstream.
Real sockets: a scripted upstream (tests/upstreams.py), httpx-sse and the openai SDK."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx_sse
import openai
import orjson
import pytest
import resume_clients
from conftest import Served
from upstreams import Exchange, ScriptedUpstream

from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel
from streamcore.sources.upstream_server import Upstream

LIMITS = Limits(upstream_head_hold_s=0.3, upstream_idle_timeout_s=2.0,
                heartbeat_interval_s=60.0)

RESPONSE_EVENTS: list[dict[str, Any]] = [
    {"type": "response.created", "sequence_number": 0,
     "response": {"id": "resp_1", "object": "response", "status": "in_progress",
                  "model": "up-model", "output": []}},
    {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1",
     "output_index": 0, "content_index": 0, "delta": "Hello"},
    {"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1",
     "output_index": 0, "content_index": 0, "delta": " world"},
    {"type": "response.completed", "sequence_number": 3,
     "response": {"id": "resp_1", "object": "response", "status": "completed",
                  "model": "up-model", "output": []}},
]


def typed(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@pytest.fixture
def upstream() -> Iterator[Callable[..., ScriptedUpstream]]:
    made: list[ScriptedUpstream] = []

    def make(script: Any) -> ScriptedUpstream:
        up = ScriptedUpstream(script)
        made.append(up)
        return up

    yield make
    for up in made:
        up.close()


def gateway(serve: Callable[..., Served], up: ScriptedUpstream) -> Served:
    return serve(build_app(None, LIMITS, upstreams=[
        Upstream.parse(up.spec("models=up-model alias=fast:up-model"))]), LIMITS)


def test_responses_api_stream_relayed_event_by_event(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    async def script(ex: Exchange) -> None:
        await ex.head()
        for event in RESPONSE_EVENTS:
            await ex.body(typed(event))
        await ex.end()

    up = upstream(script)
    served = gateway(serve, up)
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{served.url}/v1/responses",
            json={"model": "fast", "input": "hi", "stream": True}) as source:
        sid = source.response.headers["x-stream-id"]
        sid += "-" + source.response.headers["x-stream-epoch"]
        events = list(source.iter_sse())
    assert [orjson.loads(e.data) for e in events] == RESPONSE_EVENTS
    # Each event keeps its name: a client that dispatches by name (an EventSource's
    # addEventListener, eventsource-parser's event.event) sees the upstream's events.
    assert [e.event for e in events] == [e["type"] for e in RESPONSE_EVENTS]
    assert [e.id for e in events] == [f"{sid}-{i}" for i in range(1, 5)]
    sent = up.conns[0].requests[0]
    assert sent.path == "/v1/responses" and sent.json()["model"] == "up-model"
    assert "stream_options" not in sent.json()  # not a chat completion: sent as given

    # The official SDK reads the relayed stream as the Responses API's own.
    sdk = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    deltas = [e.delta for e in sdk.responses.create(model="fast", input="hi", stream=True)
              if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello world"


def test_a_responses_stream_cut_before_its_end_is_an_error_not_a_success(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    async def script(ex: Exchange) -> None:
        await ex.head()
        for event in RESPONSE_EVENTS[:2]:
            await ex.body(typed(event))
        await ex.end()  # no response.completed

    served = gateway(serve, upstream(script))
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{served.url}/v1/responses",
            json={"model": "up-model", "input": "hi", "stream": True}) as source:
        events = list(source.iter_sse())
    assert [orjson.loads(e.data) for e in events[:2]] == RESPONSE_EVENTS[:2]
    error = orjson.loads(events[-1].data)["error"]
    assert error["type"] == "upstream_error" and len(events) == 3


def test_an_error_event_mid_stream_ends_it_honestly(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    async def script(ex: Exchange) -> None:
        await ex.head()
        await ex.body(typed(RESPONSE_EVENTS[1]))
        await ex.body(b'event: error\ndata: {"type":"error","code":"server_error",'
                      b'"message":"the model crashed"}\n\n')
        await ex.end()

    served = gateway(serve, upstream(script))
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{served.url}/v1/responses",
            json={"model": "up-model", "input": "hi", "stream": True}) as source:
        events = list(source.iter_sse())
    assert orjson.loads(events[0].data) == RESPONSE_EVENTS[1]
    error = orjson.loads(events[-1].data)["error"]
    assert "the model crashed" in error["message"]
    assert all(e.data != "[DONE]" for e in events)


def test_legacy_completions_stream_keeps_its_done(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    chunks = [{"id": "cmpl-1", "object": "text_completion", "model": "up-model",
               "choices": [{"text": t, "index": 0, "finish_reason": None}]} for t in ("a", "b")]

    async def script(ex: Exchange) -> None:
        await ex.head()
        for chunk in chunks:
            await ex.event(chunk)
        await ex.done()

    served = gateway(serve, upstream(script))
    sdk = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0)
    got = list(sdk.completions.create(model="up-model", prompt="p", stream=True))
    assert [c.choices[0].text for c in got] == ["a", "b"]
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{served.url}/v1/completions",
            json={"model": "up-model", "prompt": "p", "stream": True}) as source:
        data = [e.data for e in source.iter_sse()]
    assert data[-1] == "[DONE]" and len(data) == 3


def test_relayed_events_keep_names_and_lines_on_resume_and_over_websocket(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    """A relayed stream read again (Last-Event-ID over SSE, a resume over WebSocket): the
    same events, names and multi-line data as the live reader got; over WebSocket each
    message's chunk is the event's data, without the SSE fields."""
    async def script(ex: Exchange) -> None:
        await ex.head()
        await ex.body(typed(RESPONSE_EVENTS[0]))
        await ex.body(b"event: note\ndata: line one\ndata: line two\n\n")  # multi-line
        await ex.body(b"data: plain\n\n")  # no name: the default type
        await ex.body(typed(RESPONSE_EVENTS[3]))
        await ex.end()

    served = gateway(serve, upstream(script))
    with httpx.Client(timeout=10) as client:
        with httpx_sse.connect_sse(
                client, "POST", f"{served.url}/v1/responses",
                json={"model": "up-model", "input": "hi", "stream": True}) as source:
            live = [(e.event, e.data, e.id) for e in source.iter_sse()]
        assert [(name, data) for name, data, _ in live] == [
            ("response.created", orjson.dumps(RESPONSE_EVENTS[0]).decode()),
            ("note", "line one\nline two"), ("message", "plain"),
            ("response.completed", orjson.dumps(RESPONSE_EVENTS[3]).decode())]
        stream_id = live[0][2].rsplit("-", 2)[0]
        with httpx_sse.connect_sse(client, "GET", f"{served.url}/v1/streams/{stream_id}",
                                   headers={"last-event-id": live[0][2]}) as again:
            assert [(e.event, e.data, e.id) for e in again.iter_sse()] == live[1:]
    # Over WebSocket: the data of each event as the chunk (JSON ones as objects).
    got = resume_clients.ws(served.port, {"type": "resume", "id": "r", "stream": stream_id,
                                          "after": 0})
    assert [chunk for _, chunk in got.chunks] == [
        RESPONSE_EVENTS[0], "line one\nline two", "plain", RESPONSE_EVENTS[3]]


def test_json_answers_and_gets_relayed_as_they_are(
        serve: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    async def script(ex: Exchange) -> None:
        request = ex.request
        if request.path == "/v1/embeddings":
            if request.json()["input"] == "bad":
                await ex.json({"error": {"message": "bad input", "type": "invalid_request_error",
                                         "param": "input", "code": None}}, 400)
            else:
                await ex.json({"object": "list", "model": request.json()["model"],
                               "data": [{"embedding": [0.5, 0.25], "index": 0}]})
        else:
            await ex.json({"path": request.path}, 404)

    up = upstream(script)
    served = gateway(serve, up)
    ok = httpx.post(f"{served.url}/v1/embeddings", json={"model": "fast", "input": "x"})
    assert ok.status_code == 200 and ok.json()["data"][0]["embedding"] == [0.5, 0.25]
    assert ok.json()["model"] == "up-model"  # the upstream's answer, as it is
    bad = httpx.post(f"{served.url}/v1/embeddings", json={"model": "fast", "input": "bad"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    got = httpx.get(f"{served.url}/v1/files/abc?limit=2")
    assert got.status_code == 404 and got.json() == {"path": "/v1/files/abc?limit=2"}
    # The gateway's own routes still win over the relay.
    assert httpx.get(f"{served.url}/v1/models").json()["object"] == "list"
    assert httpx.get(f"{served.url}/v1/streams/nope").status_code == 404
    refused = httpx.post(f"{served.url}/v1/embeddings", content=b"x=1",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert refused.status_code == 415


def test_the_synthetic_model_serves_only_chat(serve: Callable[..., Served],
                                              upstream: Callable[..., ScriptedUpstream]) -> None:
    async def script(ex: Exchange) -> None:
        await ex.json({})

    up = upstream(script)
    served = serve(build_app([SyntheticModel()], LIMITS, upstreams=[Upstream.parse(up.spec())]),
                   LIMITS)
    got = httpx.post(f"{served.url}/v1/responses", json={"model": "synthetic", "input": "x"})
    assert got.status_code == 404 and got.json()["error"]["code"] == "unsupported_endpoint"
    unknown = httpx.post(f"{served.url}/v1/responses", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
