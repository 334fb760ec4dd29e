"""The gateway in front of upstream LLM servers (issue 9), over real sockets only.

Upstreams: a second streamcore on the synthetic model, and the scripted servers of
``tests/upstreams.py`` that misbehave on purpose.  The gateway under test is served
in-process (``serve``) with small limits; clients are the ``openai`` SDK, httpx-sse,
``websockets`` and raw sockets.
"""

from __future__ import annotations

import asyncio
import logging
import re
import select
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx_sse
import openai
import orjson
import pytest
from certs import TestCerts, make_certs
from conftest import (
    ROOT,
    RawClient,
    Served,
    assert_openai_error,
    free_port,
    parse_responses,
    serve_cli,
    wait_for,
)
from upstreams import Exchange, ScriptedUpstream, chat_chunks, chunk
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from streamcore.gateway import Catalog, build_app
from streamcore.limits import Limits
from streamcore.proto.openai import parse_chat_request
from streamcore.sources.synthetic import SyntheticModel
from streamcore.sources.upstream import UpstreamChat
from streamcore.sources.upstream_server import Route, Upstream
from streamcore.tls import server_context

#: Small bounds: every timeout here fires within a second.
LIMITS = Limits(
    upstream_head_hold_s=0.3,
    upstream_idle_timeout_s=0.5,
    upstream_head_timeout_s=1.0,
    upstream_first_token_timeout_s=1.0,
    upstream_connect_timeout_s=1.0,
    heartbeat_interval_s=0.1,
    keepalive_timeout_s=2.0,
    disconnect_policy="cancel",  # a client that leaves stops its upstream request at once
)
MESSAGES = [{"role": "user", "content": "please explain in plain words how a gateway "
             "streams tokens from a model server to many readers at once"}]
TOKENS = [f"tok{i} " for i in range(20)]
DONE = "[DONE]"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def upstream() -> Iterator[Callable[..., ScriptedUpstream]]:
    """``upstream(script, **kw) -> ScriptedUpstream``, closed at teardown."""
    started: list[ScriptedUpstream] = []

    def start(script: Any, **kw: Any) -> ScriptedUpstream:
        up = ScriptedUpstream(script, **kw)
        started.append(up)
        return up

    yield start
    for up in started:
        up.close()
    for up in started:
        assert not up.errors, up.errors


@pytest.fixture
def gateway(serve: Callable[..., Served]) -> Callable[..., Served]:
    """``gateway(*specs, limits=LIMITS, models=None) -> Served``: the daemon's app in front
    of the upstreams given as ``--upstream`` specs."""

    def start(*specs: str, limits: Limits = LIMITS,
              models: list[SyntheticModel] | None = None) -> Served:
        upstreams = [Upstream.parse(spec) for spec in specs]
        return serve(build_app(models, limits, upstreams=upstreams), limits)

    return start


@pytest.fixture
def synthetic(serve: Callable[..., Served]) -> Served:
    """A second streamcore: the upstream that behaves."""
    models = [SyntheticModel(), SyntheticModel(name="paced", tokens_per_s=400.0)]
    return serve(build_app(models))


def streaming(ex_tokens: list[str] = TOKENS, delay: float = 0.0, **kw: Any) -> Any:
    """An upstream that answers well: streamed when asked, else a whole completion."""
    async def script(ex: Exchange) -> None:
        if ex.streamed:
            await ex.chat_stream(ex_tokens, delay=delay, **kw)
        else:
            await ex.chat_answer(ex_tokens)
    return script


def body(model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": True, **extra}


# ------------------------------------------------------------------------------ clients


@dataclass
class Got:
    """One streamed response as an SSE client saw it."""

    status: int
    headers: httpx.Headers
    events: list[httpx_sse.ServerSentEvent] = field(default_factory=list)
    body: bytes = b""

    @property
    def datas(self) -> list[str]:
        return [e.data for e in self.events]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [orjson.loads(d) for d in self.datas if d != DONE]

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in self.chunks if c.get("choices"))

    @property
    def error(self) -> dict[str, Any] | None:
        errors = [c["error"] for c in self.chunks if "error" in c]
        assert len(errors) <= 1, errors
        return errors[0] if errors else None


def sse(url: str, payload: dict[str, Any], timeout: float = 5.0) -> Got:
    with httpx.Client(timeout=timeout) as client, httpx_sse.connect_sse(
            client, "POST", f"{url}/v1/chat/completions", json=payload) as source:
        response = source.response
        got = Got(response.status_code, response.headers)
        if response.status_code != 200:
            response.read()
            got.body = response.content
            return got
        assert response.headers["content-type"].startswith("text/event-stream")
        deadline = time.monotonic() + 2 * timeout  # heartbeats reset httpx's read timeout
        for event in source.iter_sse():
            got.events.append(event)
            assert time.monotonic() < deadline, f"the stream did not end: {got.datas[-5:]}"
    return got


def check_complete(got: Got, model: str = "m") -> str:
    """A whole stream: ids, one completion id, our model name, [DONE] once and last."""
    assert got.status == 200, got.body
    assert got.datas.count(DONE) == 1 and got.datas[-1] == DONE, got.datas[-3:]
    assert got.error is None
    stream_id = got.headers["x-stream-id"] + "-" + got.headers["x-stream-epoch"]
    assert [e.id for e in got.events[:-1]] == [
        f"{stream_id}-{i}" for i in range(1, len(got.events))]
    chunks = got.chunks
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["id"] != "chatcmpl-upstream"
    assert {c["model"] for c in chunks} == {model}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    return got.text


def check_failed(got: Got, code: str | None = None, *, message: str | None = None,
                 tokens: int | None = None) -> dict[str, Any]:
    """A stream that failed after its 200: an error event, last, and no [DONE]."""
    assert got.status == 200, got.body
    assert DONE not in got.datas, "a failed stream must not end with [DONE]"
    error = got.error
    assert error is not None, got.datas
    assert "error" in orjson.loads(got.datas[-1]), "the error event comes last"
    assert_openai_error(got.datas[-1].encode())
    if code is not None:
        assert error["code"] == code, error
    if message is not None:
        assert re.search(message, error["message"]), error
    if tokens is not None:
        assert got.text == "".join(TOKENS[:tokens])
    return error


def ws_request(url: str, payload: dict[str, Any], *, request_id: str = "r1",
               timeout: float = 5.0) -> list[dict[str, Any]]:
    """One request on ``/v1/ws``: every message for it, up to its done or error."""
    with ws_connect(url.replace("http://", "ws://") + "/v1/ws", open_timeout=timeout) as ws:
        ws.send(orjson.dumps({"type": "request", "id": request_id, "body": payload}).decode())
        return ws_until_end(ws, request_id, timeout)


def ws_until_end(ws: ClientConnection, request_id: str,
                 timeout: float = 5.0) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + 2 * timeout
    while True:
        assert time.monotonic() < deadline, f"the request did not end: {messages[-5:]}"
        message = orjson.loads(ws.recv(timeout=timeout))
        assert message["id"] == request_id, message
        if message["type"] == "stream":  # names the stream, for a resume
            continue
        messages.append(message)
        if message["type"] in ("done", "error", "cancelled"):
            return messages


def ws_text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["chunk"]["choices"][0]["delta"].get("content") or ""
                   for m in messages if m["type"] == "chunk" and m["chunk"]["choices"])


def ws_failed(messages: list[dict[str, Any]], code: str | None = None) -> dict[str, Any]:
    assert messages[-1]["type"] == "error", messages[-3:]
    assert not [m for m in messages if m["type"] == "done"]
    error = messages[-1]["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    chunks = [m for m in messages if m["type"] == "chunk"]
    assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
    return error


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0,
                         timeout=10)


# ============================================================ 1. tokens in order, complete


def sdk_stream_text(client: openai.OpenAI, model: str, **kw: Any) -> tuple[str, Any]:
    stream = client.chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                            stream=True, **kw)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_openai_sdk_through_the_gateway_gives_the_upstreams_own_answer(
        gateway: Callable[..., Served], synthetic: Served) -> None:
    gw = gateway(f"{synthetic.url}/v1 models=synthetic,paced")
    for model in ("synthetic", "paced"):
        direct, _ = sdk_stream_text(sdk(synthetic.url), model, max_tokens=50)
        via, chunks = sdk_stream_text(sdk(gw.url), model, max_tokens=50,
                                      stream_options={"include_usage": True})
        assert via == direct and len(direct.split()) >= 40
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 50
        assert chunks[-1].model_extra is not None
        assert chunks[-1].usage.model_extra == {"source": "upstream"}
        assert len({c.id for c in chunks}) == 1
        # Not streamed: relayed whole, the same text.
        completion = sdk(gw.url).chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=50)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == direct
        assert completion.model == model


def test_httpx_sse_through_the_gateway(gateway: Callable[..., Served],
                                       synthetic: Served) -> None:
    gw = gateway(f"{synthetic.url}/v1 models=paced")
    direct = sse(synthetic.url, body("paced", max_tokens=30))
    via = sse(gw.url, body("paced", max_tokens=30))
    assert check_complete(via, "paced") == check_complete(direct, "paced")
    # Our own ids, and resume works on them as on any stream.
    stream_id = via.headers["x-stream-id"]
    with httpx.Client(timeout=5) as client, httpx_sse.connect_sse(
            client, "GET", f"{gw.url}/v1/streams/{stream_id}",
            headers={"Last-Event-ID": f"{stream_id}-10"}) as source:
        rest = [e.data for e in source.iter_sse()]
    assert rest == via.datas[10:]


def test_websocket_through_the_gateway(gateway: Callable[..., Served],
                                       synthetic: Served) -> None:
    gw = gateway(f"{synthetic.url}/v1 models=synthetic")
    direct = sse(synthetic.url, body("synthetic", max_tokens=25))
    messages = ws_request(gw.url, body("synthetic", max_tokens=25,
                                       stream_options={"include_usage": True}))
    chunks = [m for m in messages if m["type"] == "chunk"]
    assert [m["seq"] for m in chunks] == list(range(1, len(chunks) + 1))
    assert ws_text(messages) == check_complete(direct, "synthetic")
    done = messages[-1]
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 25
    assert done["usage"]["source"] == "upstream"


def test_scripted_upstream_tokens_in_order_on_both_transports(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(streaming(delay=0.002))
    gw = gateway(up.spec())
    got = sse(gw.url, body())
    assert check_complete(got) == "".join(TOKENS)
    messages = ws_request(gw.url, body())
    assert ws_text(messages) == "".join(TOKENS)
    assert messages[-1]["type"] == "done" and messages[-1]["finish_reason"] == "stop"
    # What the upstream was asked: its model name, streamed, with the usage.
    sent = up.conns[0].requests[0]
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.json()["stream"] is True
    assert sent.json()["stream_options"] == {"include_usage": True}
    assert sent.json()["messages"] == MESSAGES
    # One kept-alive upstream connection carried both.
    assert len(up.conns) == 1 and len(up.conns[0].requests) == 2


def test_tool_calls_and_other_chunks_are_relayed_under_our_id(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    tool = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get", "arguments": "{}"}}]}

    async def script(ex: Exchange) -> None:
        await ex.head()
        await ex.event(chunk("m", {"role": "assistant", "content": None}))
        await ex.event(chunk("m", {"reasoning_content": "hmm"}))
        await ex.event(chunk("m", tool))
        await ex.event(chunk("m", {}, "tool_calls"))
        await ex.done()

    gw = gateway(upstream(script).spec())
    got = sse(gw.url, body())
    check_complete(got)
    chunks = got.chunks
    assert chunks[1]["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    assert chunks[2]["choices"][0]["delta"] == tool
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_aliases(gateway: Callable[..., Served], synthetic: Served) -> None:
    gw = gateway(f"{synthetic.url}/v1 models=synthetic alias=fast:synthetic "
                 "alias=gpt-4o:paced")
    direct = check_complete(sse(synthetic.url, body("synthetic", max_tokens=12)),
                            "synthetic")
    assert check_complete(sse(gw.url, body("fast", max_tokens=12)), "fast") == direct
    assert check_complete(sse(gw.url, body("gpt-4o", max_tokens=12)), "gpt-4o") == direct
    completion = sdk(gw.url).chat.completions.create(
        model="fast", messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    assert completion.model == "fast" and completion.choices[0].message.content == direct


def test_models_merged_and_unknown_model(gateway: Callable[..., Served], synthetic: Served,
                                         upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(streaming())
    gw = gateway(f"{synthetic.url}/v1 models=synthetic,paced alias=fast:synthetic",
                 up.spec("models=m,paced"), models=[SyntheticModel(name="local")])
    listed = [m.id for m in sdk(gw.url).models.list()]
    assert listed == ["local", "synthetic", "paced", "fast", "m"]
    for m in httpx.get(f"{gw.url}/v1/models", timeout=5).json()["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gw.url).chat.completions.create(model="nope", messages=MESSAGES,  # type: ignore[arg-type]
                                            stream=True)
    assert caught.value.code == "model_not_found" and caught.value.param == "model"
    messages = ws_request(gw.url, body("nope"))
    assert ws_failed(messages, "model_not_found")
    assert not up.conns  # nothing asked upstream for it


def test_models_discovered_from_the_upstream(gateway: Callable[..., Served],
                                             synthetic: Served) -> None:
    gw = gateway(f"{synthetic.url}/v1")
    assert [m.id for m in sdk(gw.url).models.list()] == ["synthetic", "paced"]
    direct = check_complete(sse(synthetic.url, body("paced", max_tokens=8)), "paced")
    assert check_complete(sse(gw.url, body("paced", max_tokens=8)), "paced") == direct
    with pytest.raises(openai.NotFoundError):
        sdk(gw.url).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]


def test_a_stream_to_upstreams_whose_models_are_known_starts_without_an_await() -> None:
    """Catalog.source_now: the routes of a model when every upstream's models are known
    (listed, or discovered within the TTL), so that chat_now starts the stream in the
    request's call; None while a discovery is due or no upstream serves the model (the
    handler then resolves it, and answers 404)."""
    listed = Upstream.parse("http://127.0.0.1:9/v1 models=a,b alias=fast:a")
    found = Upstream.parse("http://127.0.0.1:10/v1")
    catalog = Catalog({"local": SyntheticModel(name="local")}, [listed, found], Limits())
    assert catalog.routes_now("a") is None  # `found`'s models are not known yet
    catalog._found[id(found)] = (time.monotonic() + 60, ("a", "c"))
    assert catalog.routes_now("a") == [Route(listed, "a"), Route(found, "a")]
    assert catalog.routes_now("fast") == [Route(listed, "a")]
    assert catalog.routes_now("c") == [Route(found, "c")]
    assert catalog.routes_now("nope") is None
    chat = parse_chat_request(orjson.dumps({"model": "c", "stream": True,
                                            "messages": MESSAGES}))
    source = catalog.source_now(chat)
    assert isinstance(source, UpstreamChat) and source.routes == [Route(found, "c")]
    chat = parse_chat_request(orjson.dumps({"model": "local", "stream": True,
                                            "messages": MESSAGES}))
    assert not isinstance(catalog.source_now(chat), UpstreamChat)  # the synthetic model's
    catalog._found[id(found)] = (time.monotonic() - 1, ("a", "c"))  # the TTL is over
    assert catalog.routes_now("c") is None


# ============================================================ 2. backpressure


def chat_request(port: int, payload: dict[str, Any]) -> bytes:
    data = orjson.dumps(payload)
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (port, len(data)) + data)


def sse_datas(raw: bytes) -> list[bytes]:
    """The data fields of a chunked SSE response read by a raw client."""
    (response,) = parse_responses(raw)
    assert response.status == 200 and response.complete
    return [line[6:] for line in response.body.split(b"\n") if line.startswith(b"data: ")]


def kernel_send_buffer_max() -> int:
    """The largest send buffer Linux autotunes a TCP socket to (tcp_wmem's third field):
    what the kernel may hold, outside the gateway, for a client that stopped reading."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


BIG_TOKEN = "x" * 2000


@pytest.mark.parametrize("log_kib", [256, 32])
def test_a_client_that_stops_reading_stalls_the_upstreams_writes(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream],
        log_kib: int) -> None:
    gw_limits = LIMITS.replace(stream_log_bytes=log_kib * 1024)
    # What the gateway may hold for one stream: its log, the output's high-water mark and
    # one flush; plus the kernel's buffers on both sides: the gateway's send buffer to the
    # client (autotuned up to tcp_wmem's maximum), the upstream's send buffer (32 KiB,
    # doubled by the kernel) and the gateway's receive buffer from it (it stops reading).
    held_bound = gw_limits.stream_log_bytes + 2 * gw_limits.write_high_water_bytes
    kernel = kernel_send_buffer_max() + 2 * 1024 * 1024
    count = 3 * (held_bound + kernel) // len(BIG_TOKEN) + 100
    tokens = [f"{i:05d}{BIG_TOKEN}" for i in range(count)]
    wanted = sum(len(orjson.dumps(c)) + 8 for c in chat_chunks(tokens, include_usage=True))
    up = upstream(streaming(tokens), sndbuf=32 * 1024)
    gw = gateway(up.spec(), limits=gw_limits)

    def gateway_state() -> tuple[int, int, int]:
        """What the gateway holds for the stream: the paused output bytes (admission), the
        stream's log, the client's transport buffer."""
        entries = gw.server.store.live()
        held = entries[0].log.held_bytes if entries else 0
        buffered = sum(c.transport.get_write_buffer_size() for c in gw.server.connections
                       if c.transport is not None)
        return gw.server.admission.paused_bytes, held, buffered

    with RawClient(gw.port, rcvbuf=4096, timeout=10) as client:
        client.send(chat_request(gw.port, body(stream_options={"include_usage": True})))
        # The client reads nothing: the upstream's writes stall.
        wait_for(lambda: up.conns and up.conns[0].written > 0)
        # Stalled: no byte more for 0.4 s (the kernel's buffers fill for a while first:
        # over a second under coverage's tracer on a loaded machine, hence the long
        # deadline; what is asserted is where the writes stop, below).
        samples = [up.conns[0].written]
        deadline = time.monotonic() + 20
        while len(samples) < 5 or samples[-1] != samples[-5]:
            assert time.monotonic() < deadline, f"the upstream kept writing: {samples}"
            time.sleep(0.1)
            samples.append(up.conns[0].written)
        stalled_at = samples[-1]
        assert stalled_at <= held_bound + kernel < wanted // 3, (stalled_at, wanted)
        paused, held, buffered = gw.call(gateway_state)
        assert held <= gw_limits.stream_log_bytes
        assert paused <= gw_limits.write_high_water_bytes
        assert buffered <= 2 * gw_limits.write_high_water_bytes
        print(f"\nbackpressure: the upstream wanted to send {wanted} bytes, wrote "
              f"{stalled_at} and stalled; the gateway held: log {held} B, client transport "
              f"buffer {buffered} B, admission's paused estimate {paused} B")
        # Now the client reads (with a larger window): everything arrives, intact, in order.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        client.read_until(b"data: [DONE]\n\n", timeout=20)
        raw = client.read_until(b"\r\n0\r\n\r\n", timeout=5)
    datas = sse_datas(raw)
    assert datas[-1] == b"[DONE]"
    chunks = [orjson.loads(d) for d in datas[:-1]]
    assert not [c for c in chunks if "error" in c]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]] == tokens
    assert chunks[-1]["usage"]["completion_tokens"] == count
    assert up.conns[0].written > wanted  # its SSE bytes, and the HTTP framing


# ============================================================ 3. disconnect and cancel

#: Client FIN (or cancel) -> upstream sees its connection closed, seconds, by case.
ABORT_TIMES: dict[str, float] = {}
LONG = [f"w{i} " for i in range(400)]  # 400 tokens at 10 ms: 4 s, far longer than a test


def slow_then_fast() -> list[Any]:
    """The first request gets a long, paced answer; the next ones a quick one."""
    return [streaming(LONG, delay=0.01), streaming()]


def check_aborted(up: ScriptedUpstream, t0: float, case: str, *,
                  within: float = 0.5) -> float:
    """The first upstream connection was closed by the gateway soon after ``t0``, before the
    upstream could send its whole answer."""
    record = up.wait_closed(0, timeout=3)
    took = record.peer_closed_at - t0  # type: ignore[operator]
    ABORT_TIMES[case] = took
    print(f"\n{case}: the upstream saw its connection closed ({record.peer_close}) "
          f"{took * 1000:.1f} ms after the client's FIN or cancel")
    assert 0 <= took < within, took
    assert len(record.requests) == 1
    return took


def check_not_reused(up: ScriptedUpstream, gw: Served) -> None:
    """The next request opens a new upstream connection and completes."""
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert len(up.conns) == 2, up.conns
    assert len(up.conns[1].requests) == 1


def test_client_disconnect_aborts_the_upstream_request(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(slow_then_fast())
    gw = gateway(up.spec())
    with RawClient(gw.port) as client:
        client.send(chat_request(gw.port, body()))
        client.read_until(b"w3 ")
        t0 = time.monotonic()
        client.sock.shutdown(socket.SHUT_WR)  # the client's FIN
        check_aborted(up, t0, "SSE client disconnect")
    check_not_reused(up, gw)


def test_client_disconnect_with_a_resume_grace_aborts_at_its_end(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(slow_then_fast())
    gw = gateway(up.spec(), limits=LIMITS.replace(disconnect_policy="linger", resume_grace_s=0.6))
    with RawClient(gw.port) as client:
        client.send(chat_request(gw.port, body()))
        client.read_until(b"w3 ")
        t0 = time.monotonic()
        client.close()
        time.sleep(0.3)
        assert up.conns[0].peer_closed_at is None, "aborted before the grace ended"
        took = check_aborted(up, t0, "SSE client gone, resume_grace_s 0.6", within=1.2)
        assert took >= 0.55  # the loop's timers are of millisecond grain and may fire early
    check_not_reused(up, gw)


def test_cancel_endpoint_aborts_the_upstream_request(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(slow_then_fast())
    # Even with a resume grace, an explicit cancel stops the model at once.
    gw = gateway(up.spec(), limits=LIMITS.replace(disconnect_policy="linger", resume_grace_s=5.0))
    with RawClient(gw.port) as client:
        client.send(chat_request(gw.port, body()))
        head = client.read_until(b"w3 ")
        stream_id = re.search(rb"x-stream-id: (\S+)", head).group(1).decode()  # type: ignore[union-attr]
        with RawClient(gw.port) as other:  # any client of the stream may cancel it
            t0 = time.monotonic()
            other.send(b"POST /v1/streams/%s/cancel HTTP/1.1\r\nhost: x\r\n"
                       b"content-length: 0\r\n\r\n" % stream_id.encode())
            check_aborted(up, t0, "POST /v1/streams/{id}/cancel")
            (response,) = parse_responses(other.read_until(b"}"))
        assert response.status == 200
        assert response.json() == {"id": stream_id, "object": "stream.cancel",
                                   "status": "cancelled"}
        raw = client.read_until(b"\r\n0\r\n\r\n")
    datas = sse_datas(raw)
    assert b"[DONE]" not in datas
    assert orjson.loads(datas[-1])["error"]["code"] == "cancelled"
    again = httpx.post(f"{gw.url}/v1/streams/{stream_id}/cancel", timeout=5)
    assert again.json()["status"] == "already_ended"
    check_not_reused(up, gw)


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_websocket_cancel_and_close_abort_the_upstream_request(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream],
        how: str) -> None:
    up = upstream(slow_then_fast())
    gw = gateway(up.spec())
    with ws_connect(f"ws://127.0.0.1:{gw.port}/v1/ws", open_timeout=5) as ws:
        ws.send(orjson.dumps({"type": "request", "id": "r1", "body": body()}).decode())
        seen = ""
        while "w3 " not in seen:
            message = orjson.loads(ws.recv(timeout=3))
            if message["type"] == "stream":  # names the stream, for a resume
                continue
            assert message["type"] == "chunk", message
            seen += message["chunk"]["choices"][0]["delta"].get("content") or ""
        t0 = time.monotonic()
        if how == "cancel":
            ws.send('{"type": "cancel", "id": "r1"}')
            check_aborted(up, t0, "WebSocket cancel")
            messages = ws_until_end(ws, "r1")
            assert messages[-1] == {"type": "cancelled", "id": "r1"}
            assert not [m for m in messages if m["type"] in ("done", "error")]
            # The socket goes on: the next request on it opens a new upstream connection.
            ws.send(orjson.dumps({"type": "request", "id": "r2", "body": body()}).decode())
            messages = ws_until_end(ws, "r2")
            assert ws_text(messages) == "".join(TOKENS)
            assert len(up.conns) == 2 and len(up.conns[1].requests) == 1
            return
        ws.socket.shutdown(socket.SHUT_WR)  # the client's FIN, without a close handshake
        check_aborted(up, t0, "WebSocket client disconnect")
    check_not_reused(up, gw)


async def answer_then_linger(ex: Exchange) -> None:
    """A whole answer that says ``connection: close``, the socket left open a while."""
    await ex.head(headers=[("connection", "close")], length=None)
    for c in chat_chunks(TOKENS):
        await ex.event(c)
    await ex.done()
    await asyncio.sleep(0.5)  # a server that closes late: the gateway must not send on it


def test_an_upstreams_connection_close_is_honoured(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(answer_then_linger)
    gw = gateway(up.spec())
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert len(up.conns) == 2 and [len(c.requests) for c in up.conns] == [1, 1]


async def done_then_linger(ex: Exchange) -> None:
    """A whole answer and [DONE], but the chunked body never ends (no last chunk)."""
    await ex.head()
    for c in chat_chunks(TOKENS):
        await ex.event(c)
    await ex.event(b"[DONE]")
    await ex.stall()


def test_an_exchange_that_never_ends_after_done_is_closed_after_the_idle_bound(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    """The client's stream is complete at [DONE]; the upstream's connection, whose
    response never ended, is closed once upstream_idle_timeout_s passed, never reused."""
    up = upstream(done_then_linger)
    gw = gateway(up.spec())
    t0 = time.monotonic()
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    closed = wait_for(lambda: up.conns[0].peer_closed_at, timeout=5.0)
    assert closed - t0 >= 0.4, "closed before upstream_idle_timeout_s (0.5 s)"
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert len(up.conns) == 2 and [len(c.requests) for c in up.conns] == [1, 1]


# ============================================================ 4. failures: honest endings


def tokens_then(then: Callable[[Exchange], Any], n: int = 3,
                **head: Any) -> Callable[[Exchange], Any]:
    """A 200 stream of ``n`` tokens (role first), then ``then(ex)``."""
    async def script(ex: Exchange) -> None:
        await ex.head(**head)
        for c in list(chat_chunks(TOKENS[:n], finish=None)):
            await ex.event(c)
        await asyncio.sleep(0.05)  # the tokens go out first
        await then(ex)
    return script


def answer(status: int, error: dict[str, Any] | None, headers: tuple[tuple[str, str], ...]
           = ()) -> Callable[[Exchange], Any]:
    async def script(ex: Exchange) -> None:
        await ex.json({"error": error} if error is not None else {"detail": "no"}, status,
                      headers)
    return script


async def chunked_refusal(ex: Exchange) -> None:
    """A refusal whose body is chunked, each chunk its own read (the gateway takes a read
    of one whole chunk without the general parse)."""
    await ex.head(503, content_type="application/json")
    await asyncio.sleep(0.05)
    await ex.body(b'{"error": {"message": "too busy, ')
    await asyncio.sleep(0.05)
    await ex.body(b'try later", "type": "server_error", "code": null}}')
    await asyncio.sleep(0.05)
    await ex.end()


async def stall(ex: Exchange) -> None:
    await ex.stall()


async def head_then_stall(ex: Exchange) -> None:
    await ex.head()
    await ex.stall()


async def die_mid_event(ex: Exchange) -> None:
    await ex.body(b'data: {"id":"x","object":"chat.comp')
    ex.close()


async def reset_mid_event(ex: Exchange) -> None:
    await ex.body(b'data: {"id":"x","object":"chat.comp')
    await asyncio.sleep(0.05)
    await ex.reset()


async def not_json(ex: Exchange) -> None:
    await ex.event(b"hello, world")
    await ex.stall()


async def oversize_event(ex: Exchange) -> None:
    await ex.body(b"data: " + b"x" * 10_000)
    await ex.stall()


async def error_in_stream(ex: Exchange) -> None:
    await ex.event({"error": {"message": "the GPU is on fire", "type": "server_error",
                              "code": "gpu_fire"}})
    await ex.stall()


async def error_first(ex: Exchange) -> None:
    await ex.head()
    await error_in_stream(ex)


async def end_without_finish(ex: Exchange) -> None:
    await ex.end()


async def close_without_finish(ex: Exchange) -> None:
    ex.close()


async def bad_chunk_framing(ex: Exchange) -> None:
    await ex.write(b"zz\r\n")
    await ex.stall()


@dataclass
class Failure:
    script: Callable[[Exchange], Any]
    #: The error's code, on both transports.
    code: str
    #: What an SSE client gets: 200 and an error event, or a real status (head held).
    status: int = 200
    #: Tokens relayed before the error event.
    tokens: int = 3
    limits: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    read_body: bool = True
    big_body: bool = False
    #: The upstream's answer was complete (a refusal with a body): its connection is kept.
    kept: bool = False
    #: The upstream's Retry-After, passed through with its status.
    retry_after: str | None = None


FAILURES = {
    "stall_before_head_while_held": Failure(
        stall, "upstream_timeout", 504, 0, {"upstream_head_timeout_s": 0.2},
        message="response head"),
    "stall_before_head_hold_0": Failure(
        stall, "upstream_timeout", 200, 0,
        {"upstream_head_timeout_s": 0.2, "upstream_head_hold_s": 0}, message="response head"),
    "stall_before_head_after_the_hold": Failure(
        stall, "upstream_timeout", 200, 0,
        {"upstream_head_timeout_s": 0.5, "upstream_head_hold_s": 0.1}),
    "stall_before_first_token_while_held": Failure(
        head_then_stall, "upstream_timeout", 504, 0, {"upstream_first_token_timeout_s": 0.2},
        message="no token"),
    "stall_mid_stream": Failure(
        tokens_then(stall), "upstream_timeout", message="sent nothing for"),
    # The total bound holds whatever the phase (one timer serves every deadline).
    "stall_before_head_past_the_total_while_held": Failure(
        stall, "upstream_timeout", 504, 0, {"upstream_total_timeout_s": 0.2},
        message=r"longer than upstream_total_timeout_s \(0.2 s\)"),
    "stall_mid_stream_past_the_total": Failure(
        tokens_then(stall), "upstream_timeout",
        limits={"upstream_total_timeout_s": 0.6, "upstream_idle_timeout_s": 5.0},
        message=r"longer than upstream_total_timeout_s \(0.6 s\)"),
    "die_mid_event": Failure(tokens_then(die_mid_event), "upstream_error",
                             message="closed|malformed"),
    "reset_mid_event": Failure(tokens_then(reset_mid_event), "upstream_error"),
    "bad_chunk_framing": Failure(tokens_then(bad_chunk_framing), "upstream_error"),
    "not_json_chunk": Failure(tokens_then(not_json), "upstream_error",
                              message="malformed chunk"),
    "oversize_event": Failure(tokens_then(oversize_event), "upstream_error",
                              limits={"upstream_max_event_bytes": 4096},
                              message="malformed event stream"),
    "error_in_200_stream": Failure(tokens_then(error_in_stream), "upstream_error",
                                   message="the GPU is on fire"),
    "error_as_the_first_event_while_held": Failure(
        error_first, "gpu_fire", 502, 0, message="the GPU is on fire"),
    "error_as_the_first_event_after_the_hold": Failure(
        error_first, "gpu_fire", 200, 0, {"upstream_head_hold_s": 0},
        message="the GPU is on fire"),
    "end_without_finish_or_done": Failure(tokens_then(end_without_finish), "upstream_error",
                                          message="without finishing"),
    "close_without_finish_or_done": Failure(
        tokens_then(close_without_finish, close_delimited=True), "upstream_error",
        message="without finishing"),
    "never_reads_the_request_body": Failure(
        stall, "upstream_timeout", 504, 0, {"upstream_head_timeout_s": 0.2},
        read_body=False, big_body=True),
    "200_not_an_event_stream": Failure(answer(200, {"message": "?"}),
                                       "upstream_protocol_error", 502, 0, kept=True),
    "429": Failure(answer(429, {"message": "slow down", "type": "rate_limit_error",
                                "code": "rate_limit_exceeded"}, (("retry-after", "7"),)),
                   "rate_limit_exceeded", 429, 0, message="^slow down$", kept=True,
                   retry_after="7"),
    "500": Failure(answer(500, {"message": "oops", "type": "server_error", "code": None}),
                   "upstream_500", 502, 0, message="oops", kept=True),
    "503_chunked": Failure(chunked_refusal, "upstream_503", 502, 0,
                           message="too busy, try later", kept=True),
    "503_not_json": Failure(answer(503, None, (("retry-after", "3"),)), "upstream_503", 502,
                            0, message="503", kept=True, retry_after="3"),
}


@pytest.mark.parametrize("case", FAILURES.values(), ids=FAILURES.keys())
def test_failures_are_honest_on_both_transports(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream],
        case: Failure) -> None:
    up = upstream(case.script, read_body=case.read_body)
    gw = gateway(up.spec(), limits=LIMITS.replace(**case.limits))
    payload = body()
    if case.big_body:  # more than the socket buffers take: the gateway's send waits
        payload["messages"] = [{"role": "user", "content": "x" * 3_000_000}]
    # SSE
    got = sse(gw.url, payload)
    if case.status != 200:
        assert got.status == case.status, (got.status, got.body)
        assert got.headers["content-type"] == "application/json"
        assert got.headers.get("retry-after") == case.retry_after
        error = assert_openai_error(got.body)
    else:
        error = check_failed(got, tokens=case.tokens)
    assert error["code"] == case.code, error
    if case.message is not None:
        assert re.search(case.message, error["message"]), error
    # WebSocket: the same error, named the same way, and no done.
    messages = ws_request(gw.url, payload)
    ws_error = ws_failed(messages, case.code)
    assert ws_text(messages) == "".join(TOKENS[:case.tokens])
    assert ws_error["message"] == error["message"] or case.code == "upstream_error"
    if case.kept:
        assert len(up.conns) == 1 and len(up.conns[0].requests) == 2
    else:
        assert len(up.conns) == 2, "a failed exchange's connection is not reused"


async def redirect(ex: Exchange) -> None:
    await ex.head(302, [("location", "http://elsewhere/")], content_type=None, length=0)
    ex.complete = True


async def not_json_body(ex: Exchange) -> None:
    await ex.head(200, content_type="application/json", length=5)
    await ex.write(b"hello")
    ex.complete = True


async def die_mid_body(ex: Exchange) -> None:
    await ex.head(200, content_type="application/json", length=500)
    await ex.write(b'{"id": "x", "choi')
    ex.close()


NOT_STREAMED = {
    "429": (FAILURES["429"].script, 429, "rate_limit_exceeded"),
    "500": (FAILURES["500"].script, 502, "upstream_500"),
    "redirect": (redirect, 502, "upstream_protocol_error"),
    "200_not_json": (not_json_body, 502, "upstream_protocol_error"),
    "die_mid_body": (die_mid_body, 502, "upstream_protocol_error"),
    "stall": (stall, 504, "upstream_timeout"),
}


@pytest.mark.parametrize(("script", "status", "code"), NOT_STREAMED.values(),
                         ids=NOT_STREAMED.keys())
def test_failures_of_a_non_streamed_request(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream],
        script: Any, status: int, code: str) -> None:
    gw = gateway(upstream(script).spec(),
                 limits=LIMITS.replace(upstream_head_timeout_s=0.2,
                                       upstream_first_token_timeout_s=0.2))
    response = httpx.post(f"{gw.url}/v1/chat/completions", timeout=5,
                          json={"model": "m", "messages": MESSAGES})
    assert response.status_code == status, response.text
    assert assert_openai_error(response.content)["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "7"


def test_after_the_hold_comments_keep_the_stream_alive_until_the_error(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    gw = gateway(upstream(stall).spec(), limits=LIMITS.replace(
        upstream_head_hold_s=0.1, upstream_head_timeout_s=0.6, heartbeat_interval_s=0.1))
    with RawClient(gw.port) as client:
        client.send(chat_request(gw.port, body()))
        head = client.read_until(b"\r\n\r\n", timeout=0.5)  # committed after the hold
        assert head.startswith(b"HTTP/1.1 200 ")
        raw = client.read_until(b"\r\n0\r\n\r\n", timeout=3)
    (response,) = parse_responses(raw)
    comments = [line for line in response.body.split(b"\n") if line.startswith(b":")]
    assert len(comments) >= 3, "heartbeat comments while waiting"
    datas = sse_datas(raw)
    assert len(datas) == 1 and b"upstream_timeout" in datas[0]


# ============================================================ 5. fallback before the first byte


def test_fallback_to_the_next_upstream_before_the_first_byte(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    busy = upstream(answer(503, {"message": "busy", "type": "server_error", "code": None}))
    good = upstream(streaming())
    nobody = free_port()  # nothing listens: the connection is refused
    gw = gateway(f"http://127.0.0.1:{nobody}/v1 models=m", busy.spec(), good.spec())
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert ws_text(ws_request(gw.url, body())) == "".join(TOKENS)
    completion = httpx.post(f"{gw.url}/v1/chat/completions", timeout=5,
                            json={"model": "m", "messages": MESSAGES})
    assert completion.status_code == 200
    assert completion.json()["choices"][0]["message"]["content"] == "".join(TOKENS)
    assert len(busy.conns[0].requests) == 3 and len(good.conns) >= 1


def test_fallback_after_an_error_event_before_the_first_token(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    failing = upstream(error_first)
    good = upstream(streaming())
    gw = gateway(failing.spec(), good.spec())
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert ws_text(ws_request(gw.url, body())) == "".join(TOKENS)
    assert len(failing.conns) == 2, "the failed exchange's connection is not reused"


def test_a_client_error_is_not_retried_elsewhere(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    bad = upstream(answer(400, {"message": "context too long", "type": "invalid_request_error",
                                "code": "context_length_exceeded"}))
    good = upstream(streaming())
    gw = gateway(bad.spec(), good.spec())
    got = sse(gw.url, body())
    assert got.status == 400
    assert assert_openai_error(got.body)["code"] == "context_length_exceeded"
    assert not good.conns


def test_no_fallback_once_a_token_went_out(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    dies = upstream(tokens_then(die_mid_event))
    good = upstream(streaming())
    gw = gateway(dies.spec(), good.spec())
    check_failed(sse(gw.url, body()), "upstream_error", tokens=3)
    ws_failed(ws_request(gw.url, body()), "upstream_error")
    assert not good.conns, "a stream that started must not be restarted elsewhere"


def test_every_upstream_refusing_gives_the_last_refusal(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    first = upstream(answer(503, {"message": "busy", "type": "server_error", "code": None}))
    second = upstream(answer(429, {"message": "slow down", "type": "rate_limit_error",
                                   "code": "rate_limit_exceeded"}, (("retry-after", "2"),)))
    gw = gateway(first.spec(), second.spec())
    got = sse(gw.url, body())
    assert got.status == 429 and got.headers["retry-after"] == "2"
    nobody = free_port()
    gw = gateway(f"http://127.0.0.1:{nobody}/v1 models=m")
    got = sse(gw.url, body())
    assert got.status == 502
    assert assert_openai_error(got.body)["code"] == "upstream_unreachable"
    ws_failed(ws_request(gw.url, body()), "upstream_unreachable")


# ============================================================ 6. usage on every exit

UPSTREAM_USAGE = {"prompt_tokens": 11, "completion_tokens": 20, "total_tokens": 31}
LOG_LINE = re.compile(r"stream (\S+): (\w+).* via \S+, model (\S+), (\d+) chunks, "
                      r"usage (\{.*\}) \((upstream|counted)\)")


def stream_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, int], str]]:
    """(stream id, outcome, usage, source) of each stream's log line."""
    import ast

    lines = []
    for record in caplog.records:
        match = LOG_LINE.match(record.getMessage())
        if match:
            lines.append((match[1], match[2], ast.literal_eval(match[5]), match[6]))
    return lines


def test_usage_on_completion(gateway: Callable[..., Served],
                             upstream: Callable[..., ScriptedUpstream],
                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamcore")
    gw = gateway(upstream(streaming(usage=UPSTREAM_USAGE)).spec())
    got = sse(gw.url, body(stream_options={"include_usage": True}))
    check_complete(got)
    assert got.chunks[-1]["choices"] == [] and got.chunks[-1]["usage"] == {
        **UPSTREAM_USAGE, "source": "upstream"}
    assert all(c["usage"] is None for c in got.chunks[:-1])
    # Not asked: no usage chunk, but the log line has it.
    got = sse(gw.url, body())
    check_complete(got)
    assert all("usage" not in c for c in got.chunks)
    stream_id = got.headers["x-stream-id"]
    wait_for(lambda: any(line[0] == stream_id for line in stream_logs(caplog)))
    assert (stream_id, "completed", UPSTREAM_USAGE, "upstream") in stream_logs(caplog)
    # WebSocket: the done message carries it.
    done = ws_request(gw.url, body())[-1]
    assert done["type"] == "done" and done["usage"] == {**UPSTREAM_USAGE, "source": "upstream"}


def test_usage_on_upstream_failure_mid_stream(gateway: Callable[..., Served],
                                              upstream: Callable[..., ScriptedUpstream],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamcore")
    gw = gateway(upstream(tokens_then(die_mid_event, n=4)).spec())
    counted = {"prompt_tokens": 0, "completion_tokens": 4, "total_tokens": 4}
    got = sse(gw.url, body(stream_options={"include_usage": True}))
    check_failed(got, "upstream_error", tokens=4)
    usage_chunk = got.chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == {**counted,
                                                                     "source": "counted"}
    stream_id = got.headers["x-stream-id"]
    wait_for(lambda: any(line[0] == stream_id for line in stream_logs(caplog)))
    assert (stream_id, "failed", counted, "counted") in stream_logs(caplog)
    # Not asked: no usage chunk before the error.
    got = sse(gw.url, body())
    check_failed(got, "upstream_error", tokens=4)
    assert all("usage" not in c for c in got.chunks[:-1])
    # WebSocket, asked: the usage chunk, then the error.
    messages = ws_request(gw.url, body(stream_options={"include_usage": True}))
    ws_failed(messages, "upstream_error")
    assert messages[-2]["chunk"]["usage"] == {**counted, "source": "counted"}


@pytest.mark.parametrize("how", ["disconnect", "cancel_endpoint", "ws_cancel"])
def test_usage_on_client_cancel_is_in_the_log_line(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream],
        caplog: pytest.LogCaptureFixture, how: str) -> None:
    caplog.set_level(logging.INFO, logger="streamcore")
    up = upstream(slow_then_fast())
    gw = gateway(up.spec())
    if how == "ws_cancel":
        with ws_connect(f"ws://127.0.0.1:{gw.port}/v1/ws", open_timeout=5) as ws:
            ws.send(orjson.dumps({"type": "request", "id": "r1", "body": body()}).decode())
            assert orjson.loads(ws.recv(timeout=3))["type"] == "stream"  # names it
            for _ in range(6):  # the role and 5 tokens
                assert orjson.loads(ws.recv(timeout=3))["type"] == "chunk"
            ws.send('{"type": "cancel", "id": "r1"}')
            up.wait_closed(0)
    else:
        with RawClient(gw.port) as client:
            client.send(chat_request(gw.port, body()))
            head = client.read_until(b"w4 ")
            if how == "disconnect":
                client.close()
            else:
                stream_id = re.search(rb"x-stream-id: (\S+)", head).group(1).decode()  # type: ignore[union-attr]
                httpx.post(f"{gw.url}/v1/streams/{stream_id}/cancel", timeout=5)
            up.wait_closed(0)
    ((_, outcome, usage, source),) = wait_for(lambda: stream_logs(caplog))
    assert outcome == "cancelled" and source == "counted"
    # At least what the client saw, at most what the upstream had sent when it was cut.
    assert 5 <= usage["completion_tokens"] <= len(LONG)
    assert usage["total_tokens"] == usage["completion_tokens"] + usage["prompt_tokens"]


# ============================================================ 7. TLS to an upstream


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_https_upstream_with_a_ca_file(gateway: Callable[..., Served],
                                       serve: Callable[..., Served], certs: TestCerts) -> None:
    tls_upstream = serve(build_app([SyntheticModel()]), None,
                         server_context(certs.cert, certs.key))
    assert tls_upstream.url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    with httpx.Client(verify=trusting, timeout=5) as client, httpx_sse.connect_sse(
            client, "POST", f"{tls_upstream.url}/v1/chat/completions",
            json=body("synthetic", max_tokens=20)) as source:
        direct = "".join(orjson.loads(e.data)["choices"][0]["delta"].get("content") or ""
                         for e in source.iter_sse() if e.data != DONE)
    gw = gateway(f"{tls_upstream.url}/v1 models=synthetic ca-file={certs.ca}")
    assert check_complete(sse(gw.url, body("synthetic", max_tokens=20)), "synthetic") == direct
    assert ws_text(ws_request(gw.url, body("synthetic", max_tokens=20))) == direct
    completion = sdk(gw.url).chat.completions.create(
        model="synthetic", messages=MESSAGES, max_tokens=20)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == direct
    # Discovery over TLS too.
    gw = gateway(f"{tls_upstream.url}/v1 ca-file={certs.ca}")
    assert [m.id for m in sdk(gw.url).models.list()] == ["synthetic"]


def test_https_upstream_not_trusted_without_the_ca_file(
        gateway: Callable[..., Served], serve: Callable[..., Served], certs: TestCerts) -> None:
    tls_upstream = serve(build_app([SyntheticModel()]), None,
                         server_context(certs.cert, certs.key))
    # A hold long enough for a TLS handshake on a loaded machine: the refusal is a status.
    gw = gateway(f"{tls_upstream.url}/v1 models=synthetic",
                 limits=LIMITS.replace(upstream_head_hold_s=5.0))
    got = sse(gw.url, body("synthetic"))
    assert got.status == 502
    error = assert_openai_error(got.body)
    assert error["code"] == "upstream_unreachable"
    assert "CERTIFICATE_VERIFY_FAILED" in error["message"]


def test_ca_file_option_errors(certs: TestCerts, tmp_path: Any) -> None:
    url = "https://127.0.0.1:9/v1"
    assert Upstream.parse(f"{url} ca-file={certs.ca}").ca_file == str(certs.ca)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    for spec, message in [
        (f"http://127.0.0.1:9/v1 ca-file={certs.ca}", "ca-file is for an https URL"),
        (f"{url} ca-file={tmp_path / 'missing.pem'}", "cannot load CA certificates"),
        (f"{url} ca-file={not_pem}", "cannot load CA certificates"),
        (f"{url} ca-file=", "is not name=value"),
    ]:
        with pytest.raises(ValueError, match=message):
            Upstream.parse(spec)


# ============================================================ 8. the CLI


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamcore", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def banner_of(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> str:
    """The first line ``streamcore serve`` printed (its banner is out before /healthz)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no banner"
    return proc.stdout.readline().decode()


def test_cli_gateway_in_front_of_another_streamcore() -> None:
    with serve_cli("--token-rate", "0", "--log-level", "warning") as model_server, \
            serve_cli("--upstream", f"{model_server.url}/v1 models=synthetic alias=fast:synthetic",
                      "--log-level", "warning") as gw:
        banner = banner_of(gw.proc)
        assert f"serving the models of {model_server.url}/v1 on {gw.url}" in banner, banner
        direct = check_complete(sse(model_server.url, body("synthetic", max_tokens=30)),
                                "synthetic")
        text, chunks = sdk_stream_text(sdk(gw.url), "fast", max_tokens=30,
                                       stream_options={"include_usage": True})
        assert text == direct and chunks[-1].usage.completion_tokens == 30
        assert [m.id for m in sdk(gw.url).models.list()] == ["synthetic", "fast"]


def test_cli_upstream_key_goes_upstream_only(
        upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(streaming())
    with serve_cli("--upstream", up.spec("models=m key=sekrit-key"),
                   "--log-level", "debug") as gw:
        assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
        assert httpx.get(f"{gw.url}/v1/models", timeout=5).status_code == 200
    assert up.conns[0].requests[0].headers["authorization"] == "Bearer sekrit-key"
    out, err = gw.proc.communicate()
    assert b"sekrit" not in out + err, "the upstream key must never be logged"


@pytest.mark.parametrize(("spec", "message"), [
    ("ftp://127.0.0.1:9/v1", "the scheme must be http or https"),
    ("127.0.0.1:9", "the scheme must be http or https"),
    ("http://127.0.0.1:9/v1?key=x", "no query"),
    ("http://127.0.0.1:9/v1 bogus=1", "unknown option 'bogus'"),
    ("http://127.0.0.1:9/v1 models", "'models' is not name=value"),
    ("http://127.0.0.1:9/v1 alias=fast", "alias='fast' is not NAME:MODEL"),
    ("http://127.0.0.1:9/v1 key-env=STREAMCORE_TEST_UNSET_VARIABLE",
     r"\$STREAMCORE_TEST_UNSET_VARIABLE is not set"),
    ("http://127.0.0.1:9/v1 key-file=/nonexistent/key", "/nonexistent/key"),
    ("http://127.0.0.1:9/v1 ca-file=/etc/hostname", "ca-file is for an https URL"),
    ("https://127.0.0.1:9/v1 ca-file=/nonexistent/ca.pem", "cannot load CA certificates"),
    ("   ", "an empty --upstream"),
])
def test_cli_bad_upstream_specs(spec: str, message: str) -> None:
    result = run_cli("serve", "--port", "0", "--upstream", spec)
    assert result.returncode == 2, result
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


# ============================================================ more: keep-alive races, non-streamed


async def close_at_once(ex: Exchange) -> None:
    ex.close()


def test_a_kept_alive_connection_closed_as_the_request_went_is_retried_once(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    """The upstream closes an idle kept-alive connection just as the gateway sends on it: a
    new connection is tried once (nothing went out to the client)."""
    up = upstream([streaming(), close_at_once, streaming()])
    gw = gateway(up.spec())
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert check_complete(sse(gw.url, body())) == "".join(TOKENS)
    assert [len(c.requests) for c in up.conns] == [2, 1]


def test_a_non_streamed_request_whose_client_leaves_aborts_the_upstream_request(
        gateway: Callable[..., Served], upstream: Callable[..., ScriptedUpstream]) -> None:
    up = upstream(stall)
    gw = gateway(up.spec(), limits=LIMITS.replace(upstream_head_timeout_s=5.0))
    with RawClient(gw.port) as client:
        client.send(chat_request(gw.port, {"model": "m", "messages": MESSAGES}))
        wait_for(lambda: up.conns and up.conns[0].requests)
        t0 = time.monotonic()
        client.sock.shutdown(socket.SHUT_WR)
        check_aborted(up, t0, "non-streamed request, client disconnect")
