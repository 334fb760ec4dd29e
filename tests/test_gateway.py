"""The OpenAI-compatible gateway, judged by real clients: httpx + httpx-sse and the official
``openai`` SDK (sync and async), in-process and through the ``streamcore serve`` CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import httpx_sse
import openai
import orjson
import pytest
from conftest import (
    FAST_LIMITS,
    ROOT,
    Served,
    assert_openai_error,
    free_port,
    serve_cli,
    wait_for,
)

from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel

MESSAGES = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": "tell me about token streams"}]
#: A prompt of 16 words or more (the synthetic model's vocabulary per answer is 32 words).
LONG_MESSAGES = [{"role": "user", "content": "please explain in plain words how a server "
                  "can stream tokens to many readers at once without growing memory"}]


@pytest.fixture
def gateway(serve: Callable[..., Served]) -> Served:
    models = [SyntheticModel(), SyntheticModel(name="paced", tokens_per_s=100.0)]
    return serve(build_app(models, FAST_LIMITS), FAST_LIMITS)


def chat(url: str, client: httpx.Client, **body: Any) -> list[httpx_sse.ServerSentEvent]:
    payload = {"model": "synthetic", "messages": MESSAGES, "stream": True, **body}
    with httpx_sse.connect_sse(client, "POST", f"{url}/v1/chat/completions",
                               json=payload) as source:
        response = source.response
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(source.iter_sse())


def check_stream(events: list[httpx_sse.ServerSentEvent], *, tokens: int | None,
                 finish: str, usage: bool, model: str = "synthetic") -> list[str]:
    """The OpenAI stream shape; returns the content tokens."""
    assert events[-1].data == "[DONE]"
    chunks = [orjson.loads(e.data) for e in events[:-1]]
    errors = [c["error"] for c in chunks if "error" in c]
    assert not errors, f"the stream failed mid-way: {errors}"
    for event in events[:-1]:
        assert event.id, "every event carries an id"
    assert len({e.id for e in events[:-1]}) == len(events) - 1
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == model
        assert isinstance(c["created"], int)
        if usage:
            assert "usage" in c
        else:
            assert "usage" not in c
    role, *rest = chunks
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}]
    if usage:
        *rest, usage_chunk = rest
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == len(rest) - 1
        u = usage_chunk["usage"]
        assert u["prompt_tokens"] > 0
        assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert all(c["usage"] is None for c in chunks[:-1])
    *token_chunks, finish_chunk = rest
    assert finish_chunk["choices"] == [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": finish}]
    texts = []
    for c in token_chunks:
        (choice,) = c["choices"]
        assert choice["index"] == 0 and choice["finish_reason"] is None
        assert set(choice["delta"]) == {"content"}
        texts.append(choice["delta"]["content"])
    if tokens is not None:
        assert len(texts) == tokens
    assert all(isinstance(t, str) and t for t in texts)
    return texts


# ---------------------------------------------------------------------------- httpx + SSE


@pytest.mark.parametrize("max_tokens", [1, 5, 40])
def test_stream_max_tokens(gateway: Served, max_tokens: int) -> None:
    with httpx.Client(timeout=10) as client:
        events = chat(gateway.url, client, max_tokens=max_tokens)
    check_stream(events, tokens=max_tokens, finish="length", usage=False)


def test_long_answers_to_a_short_prompt(gateway: Served) -> None:
    """More tokens than the prompt has words + 16 (the synthetic model draws from 32 words
    only for prompts of 16 words or more)."""
    short = [{"role": "user", "content": "hi"}]
    with httpx.Client(timeout=10) as client:
        events = chat(gateway.url, client, messages=short, max_tokens=40)
        check_stream(events, tokens=40, finish="length", usage=False)
        response = client.post(f"{gateway.url}/v1/chat/completions",
                               json={"model": "synthetic", "messages": short,
                                     "max_tokens": 40})
        assert response.status_code == 200, response.text


def test_long_answers_to_a_long_prompt(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        events = chat(gateway.url, client, messages=LONG_MESSAGES, max_tokens=60)
    check_stream(events, tokens=60, finish="length", usage=False)


def test_stream_with_usage(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        events = chat(gateway.url, client, max_tokens=7,
                      stream_options={"include_usage": True})
    check_stream(events, tokens=7, finish="length", usage=True)


def test_stream_max_completion_tokens(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        events = chat(gateway.url, client, max_completion_tokens=3)
    check_stream(events, tokens=3, finish="length", usage=False)


def test_stream_natural_stop(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        unlimited = check_stream(chat(gateway.url, client), tokens=None, finish="stop",
                                 usage=False)
        # max_tokens is the answer's length, even beyond the natural one.
        longer = check_stream(chat(gateway.url, client, max_tokens=len(unlimited) + 50),
                              tokens=len(unlimited) + 50, finish="length", usage=False)
    assert longer[:len(unlimited)] == unlimited
    assert len(unlimited) >= SyntheticModel().default_tokens


def test_stream_is_deterministic_and_paced_model_gives_the_same_text(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        first = check_stream(chat(gateway.url, client, max_tokens=20), tokens=20,
                             finish="length", usage=False)
        second = check_stream(chat(gateway.url, client, max_tokens=20), tokens=20,
                              finish="length", usage=False)
        paced = check_stream(chat(gateway.url, client, model="paced", max_tokens=20),
                             tokens=20, finish="length", usage=False, model="paced")
    assert first == second == paced


def test_non_streaming_gives_the_streamed_text(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client:
        streamed = check_stream(chat(gateway.url, client, max_tokens=12), tokens=12,
                                finish="length", usage=False)
        response = client.post(f"{gateway.url}/v1/chat/completions",
                               json={"model": "synthetic", "messages": MESSAGES,
                                     "max_tokens": 12})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "".join(streamed)
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 12


# ---------------------------------------------------------------------------- openai SDK


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10)


def test_openai_sdk_stream_and_non_stream(gateway: Served) -> None:
    client = sdk(gateway.url)
    stream = client.chat.completions.create(model="synthetic", messages=MESSAGES,
                                            stream=True, max_tokens=15,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    tokens = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert len(tokens) == 15
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 15
    completion = client.chat.completions.create(model="synthetic", messages=MESSAGES,
                                                max_tokens=15)
    assert completion.choices[0].message.content == "".join(tokens)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 15


def test_openai_async_sdk(gateway: Served) -> None:
    async def main() -> tuple[list[str], str | None]:
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x",
                                      max_retries=0, timeout=10) as client:
            stream = await client.chat.completions.create(
                model="paced", messages=MESSAGES, stream=True, max_tokens=10)
            tokens = [c.choices[0].delta.content async for c in stream
                      if c.choices and c.choices[0].delta.content]
            completion = await client.chat.completions.create(
                model="paced", messages=MESSAGES, max_tokens=10)
            return tokens, completion.choices[0].message.content

    tokens, text = asyncio.run(main())
    assert len(tokens) == 10
    assert "".join(tokens) == text


def test_openai_sdk_concurrent_streams(gateway: Served) -> None:
    async def one(client: openai.AsyncOpenAI, i: int) -> str:
        stream = await client.chat.completions.create(
            model="paced", messages=[{"role": "user", "content": f"prompt {i}"}],
            stream=True, max_tokens=10)
        return "".join([c.choices[0].delta.content async for c in stream
                        if c.choices and c.choices[0].delta.content])

    async def main() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x",
                                      max_retries=0, timeout=10) as client:
            return await asyncio.gather(*(one(client, i) for i in range(8)))

    texts = asyncio.run(main())
    client = sdk(gateway.url)
    for i, text in enumerate(texts):
        expected = client.chat.completions.create(
            model="paced", messages=[{"role": "user", "content": f"prompt {i}"}],
            max_tokens=10).choices[0].message.content
        assert text == expected


def test_openai_sdk_models(gateway: Served) -> None:
    ids = [m.id for m in sdk(gateway.url).models.list()]
    assert ids == ["synthetic", "paced"]


def test_openai_sdk_errors(gateway: Served) -> None:
    client = sdk(gateway.url)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=MESSAGES, stream=True)
    assert not_found.value.status_code == 404
    assert not_found.value.code == "model_not_found"
    assert not_found.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="synthetic",
                                       messages=[{"role": "wizard", "content": "x"}],
                                       stream=True)
    assert bad.value.status_code == 400
    assert bad.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="synthetic", messages=MESSAGES, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="synthetic", messages=[])
    assert bad.value.param == "messages"


# ---------------------------------------------------------------------------- validation

GOOD = {"model": "synthetic", "messages": MESSAGES}

INVALID = [
    # (name, body, status, param, code)
    ("invalid_json", b'{"model": "synthetic", "messages": [', 400, None, "invalid_json"),
    ("empty_body", b"", 400, None, "invalid_json"),
    ("not_an_object", b'[{"model": "synthetic"}]', 400, None, "invalid_type"),
    ("missing_model", {"messages": MESSAGES}, 400, "model", "missing_required_parameter"),
    ("model_not_string", {**GOOD, "model": 5}, 400, "model", "invalid_type"),
    ("missing_messages", {"model": "synthetic"}, 400, "messages",
     "missing_required_parameter"),
    ("messages_not_list", {**GOOD, "messages": "hi"}, 400, "messages", "invalid_type"),
    ("messages_empty", {**GOOD, "messages": []}, 400, "messages", "invalid_type"),
    ("message_not_object", {**GOOD, "messages": ["hi"]}, 400, "messages[0]", "invalid_type"),
    ("bad_role", {**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, 400,
     "messages[0].role", "invalid_value"),
    ("missing_content", {**GOOD, "messages": [MESSAGES[0], {"role": "user"}]}, 400,
     "messages[1].content", "missing_required_parameter"),
    ("max_tokens_string", {**GOOD, "max_tokens": "5"}, 400, "max_tokens", "invalid_type"),
    ("max_tokens_bool", {**GOOD, "max_tokens": True}, 400, "max_tokens", "invalid_type"),
    ("max_tokens_zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens", "invalid_value"),
    ("n_2", {**GOOD, "n": 2}, 400, "n", "unsupported_value"),
    ("stream_not_bool", {**GOOD, "stream": "yes"}, 400, "stream", "invalid_type"),
    ("stream_options_without_stream", {**GOOD, "stream_options": {"include_usage": True}},
     400, "stream_options", "invalid_value"),
    ("include_usage_not_bool", {**GOOD, "stream": True,
                                "stream_options": {"include_usage": 1}},
     400, "stream_options.include_usage", "invalid_type"),
    ("temperature_too_high", {**GOOD, "temperature": 3}, 400, "temperature", "invalid_value"),
    ("unknown_model", {**GOOD, "model": "gpt-nope"}, 404, "model", "model_not_found"),
    ("unknown_model_streaming", {**GOOD, "model": "gpt-nope", "stream": True}, 404, "model",
     "model_not_found"),
]


@pytest.mark.parametrize(("body", "status", "param", "code"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_validation_errors(gateway: Served, body: Any, status: int, param: str | None,
                           code: str) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{gateway.url}/v1/chat/completions", content=content,
                                headers={"content-type": "application/json"})
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        error = assert_openai_error(response.content)
        assert error["param"] == param
        assert error["code"] == code
        assert error["type"] == "invalid_request_error"
        # A refused request leaves the connection usable.
        assert client.get(f"{gateway.url}/healthz").status_code == 200


def test_models_and_healthz(gateway: Served) -> None:
    models = httpx.get(f"{gateway.url}/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["synthetic", "paced"]
    for m in models["data"]:
        assert m["object"] == "model" and isinstance(m["created"], int)
    assert httpx.get(f"{gateway.url}/healthz", timeout=5).json() == {"status": "ok"}
    response = httpx.get(f"{gateway.url}/v1/chat/completions", timeout=5)
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_client_disconnect_mid_stream_leaves_the_gateway_healthy(gateway: Served) -> None:
    with httpx.Client(timeout=10) as client, client.stream(
            "POST", f"{gateway.url}/v1/chat/completions",
            json={**GOOD, "model": "paced", "stream": True, "max_tokens": 1000}) as response:
        next(response.iter_lines())
    wait_for(lambda: gateway.call(lambda: len(gateway.server.connections)) == 0)
    with httpx.Client(timeout=10) as client:
        check_stream(chat(gateway.url, client, max_tokens=3), tokens=3, finish="length",
                     usage=False)


# ---------------------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamcore", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=30)


def test_serve_help_lists_every_limit() -> None:
    result = run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    for field in dataclasses.fields(Limits):
        flag = "--" + field.name.replace("_", "-")
        assert flag in result.stdout, flag
        assert "STREAMCORE_" + field.name.upper() in result.stdout.replace("\n", "").replace(
            " ", "")
    assert "--port" in result.stdout and "--token-rate" in result.stdout


def test_serve_rejects_bad_limits() -> None:
    result = run_cli("serve", "--port", "0", "--max-body-bytes", "-1")
    assert result.returncode == 2
    assert "max_body_bytes" in result.stderr


@pytest.fixture
def cli_gateway() -> Iterator[Any]:
    with serve_cli("--token-rate", "0", "--log-level", "warning") as cli:
        yield cli


def test_cli_gateway_streams(cli_gateway: Any) -> None:
    with httpx.Client(timeout=10) as client:
        events = chat(cli_gateway.url, client, max_tokens=9,
                      stream_options={"include_usage": True})
    tokens = check_stream(events, tokens=9, finish="length", usage=True)
    completion = sdk(cli_gateway.url).chat.completions.create(
        model="synthetic", messages=MESSAGES, max_tokens=9)
    assert completion.choices[0].message.content == "".join(tokens)


def test_cli_env_port_and_limits() -> None:
    port = free_port()
    env = {"STREAMCORE_PORT": str(port), "STREAMCORE_MAX_BODY_BYTES": "200",
           "STREAMCORE_MODEL": "from-env", "STREAMCORE_LOG_LEVEL": "warning"}
    with serve_cli(env=env, port=port) as cli:
        assert cli.url.endswith(f":{port}")
        models = httpx.get(f"{cli.url}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["from-env"]
        response = httpx.post(f"{cli.url}/v1/chat/completions", timeout=5,
                              content=b'{"pad": "' + b"x" * 300 + b'"}')
        assert response.status_code == 413
        assert_openai_error(response.content)


def test_cli_flag_wins_over_env() -> None:
    port = free_port()
    with serve_cli("--model", "from-flag", "--log-level", "warning",
                   env={"STREAMCORE_MODEL": "from-env",
                        "STREAMCORE_PORT": str(free_port())}) as cli:
        assert cli.port != port
        models = httpx.get(f"{cli.url}/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["from-flag"]


def test_sigterm_drains_an_in_flight_stream_and_exits_0() -> None:
    with serve_cli("--token-rate", "25", "--log-level", "warning") as cli:
        payload = {"model": "synthetic", "messages": LONG_MESSAGES, "stream": True,
                   "max_tokens": 25}
        events: list[httpx_sse.ServerSentEvent] = []
        with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
                client, "POST", f"{cli.url}/v1/chat/completions", json=payload) as source:
            iterator = source.iter_sse()
            events += [next(iterator) for _ in range(3)]  # role + 2 tokens: mid-stream
            cli.proc.send_signal(signal.SIGTERM)

            def refusing() -> bool:
                try:
                    httpx.get(f"{cli.url}/healthz", timeout=1)
                except httpx.HTTPError:
                    return True
                return False

            # New connections are refused while the stream drains.
            wait_for(refusing, timeout=3)
            assert cli.proc.poll() is None, "exited before the stream finished"
            events += list(iterator)
        check_stream(events, tokens=25, finish="length", usage=False)
        assert cli.proc.wait(10) == 0
        stderr = cli.proc.stderr.read().decode() if cli.proc.stderr else ""
        assert "Traceback" not in stderr, stderr


def test_sigterm_with_idle_keepalive_connection_exits_promptly() -> None:
    with serve_cli("--log-level", "warning") as cli, httpx.Client(timeout=5) as client:
        assert client.get(f"{cli.url}/healthz").status_code == 200  # kept alive
        cli.proc.send_signal(signal.SIGTERM)
        assert cli.proc.wait(5) == 0


def test_sigint_stops() -> None:
    with serve_cli("--log-level", "warning") as cli:
        cli.proc.send_signal(signal.SIGINT)
        assert cli.proc.wait(5) == 0


def test_port_in_use_is_a_clean_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli("serve", "--port", str(port))
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
