"""The synthetic model's request semantics, judged by real clients over real sockets:
``max_tokens`` is the answer's length (up to a cap), ``stop`` sequences end it, the fields
it ignores are said, SSE and ``/v1/ws`` validate alike, and numbers are reported with the
type the client sent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import httpx_sse
import openai
import orjson
import pytest
from conftest import ROOT, Served, assert_openai_error, serve_cli
from websockets.asyncio.client import connect

from streamcore.gateway import build_app
from streamcore.sources.synthetic import IGNORED_FIELDS, SyntheticModel

PROMPT = [{"role": "user", "content": "tell me about token streams"}]
CAP = 300


@pytest.fixture
def gateway(serve: Callable[..., Served]) -> Served:
    models = [SyntheticModel(), SyntheticModel(name="capped", max_answer_tokens=CAP)]
    return serve(build_app(models))


def sse(url: str, **body: Any) -> tuple[list[str], str, dict[str, Any] | None]:
    """(content tokens, finish_reason, usage) of one streamed completion."""
    payload = {"model": "synthetic", "messages": PROMPT, "stream": True, **body}
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{url}/v1/chat/completions", json=payload) as source:
        assert source.response.status_code == 200, source.response.read()
        data = [e.data for e in source.iter_sse()]
    assert data[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in data[:-1]]
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks[1:]
              if c["choices"] and c["choices"][0]["delta"]]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    usage = chunks[-1].get("usage")
    return tokens, finishes[0], usage


def post(url: str, content: bytes) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", content=content, timeout=10,
                      headers={"content-type": "application/json"})


def ws_exchange(served: Served, *bodies: dict[str, Any] | bytes) -> list[list[dict[str, Any]]]:
    """Send each body as a /v1/ws request (ids r0, r1, ...); every message per request,
    up to its done or error."""
    async def main() -> list[list[dict[str, Any]]]:
        got: dict[str, list[dict[str, Any]]] = {f"r{i}": [] for i in range(len(bodies))}
        async with connect(f"ws://127.0.0.1:{served.port}/v1/ws", open_timeout=5) as ws:
            for i, body in enumerate(bodies):
                if isinstance(body, bytes):  # raw JSON: what orjson cannot write
                    message = b'{"type":"request","id":"r%d","body":%s}' % (i, body)
                    await ws.send(message.decode())
                else:
                    await ws.send(orjson.dumps({"type": "request", "id": f"r{i}",
                                                "body": body}).decode())
            pending = set(got)
            while pending:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                got[message["id"]].append(message)
                if message["type"] in ("done", "error"):
                    pending.discard(message["id"])
        return [got[f"r{i}"] for i in range(len(bodies))]

    return asyncio.run(main())


def ws_tokens(messages: list[dict[str, Any]]) -> list[str]:
    return [m["chunk"]["choices"][0]["delta"]["content"] for m in messages
            if m["type"] == "chunk" and m["chunk"]["choices"]
            and "role" not in m["chunk"]["choices"][0]["delta"]
            and m["chunk"]["choices"][0]["delta"]]


# ------------------------------------------------------------------ max_tokens is the length


@pytest.mark.parametrize("max_tokens", [1, 81, 250, CAP])
def test_max_tokens_is_the_answer_length(gateway: Served, max_tokens: int) -> None:
    """Far beyond the natural length (64..80 tokens) too: finish_reason "length"."""
    tokens, finish, usage = sse(gateway.url, model="capped", max_tokens=max_tokens,
                                stream_options={"include_usage": True})
    assert len(tokens) == max_tokens
    assert finish == "length"
    assert usage is not None and usage["completion_tokens"] == max_tokens


def test_max_completion_tokens_with_the_sdk_streamed_and_not(gateway: Served) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,
                           timeout=10)
    completion = client.chat.completions.create(model="synthetic", messages=PROMPT,
                                                max_completion_tokens=500)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 500
    stream = client.chat.completions.create(model="synthetic", messages=PROMPT, stream=True,
                                            max_completion_tokens=500)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == completion.choices[0].message.content


def test_without_max_tokens_the_natural_length_stays(gateway: Served) -> None:
    default = SyntheticModel().default_tokens
    for prompt in ("one", "two", "three"):
        tokens, finish, _ = sse(gateway.url, messages=[{"role": "user", "content": prompt}])
        assert default <= len(tokens) <= default + 16
        assert finish == "stop"


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens"])
def test_over_the_cap_is_a_400_naming_the_param_sent(gateway: Served, param: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,
                           timeout=10)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="capped", messages=PROMPT, stream=True,
                                       **{param: CAP + 1})  # type: ignore[call-overload]
    assert bad.value.param == param
    assert bad.value.code == "invalid_value"
    assert str(CAP) in bad.value.message
    (error,) = ws_exchange(gateway, {"model": "capped", "messages": PROMPT,
                                     param: CAP + 1})
    assert error[0]["type"] == "error" and error[0]["error"]["param"] == param
    # The default cap is the documented constant.
    response = post(gateway.url, orjson.dumps({"model": "synthetic", "messages": PROMPT,
                                               "max_tokens": 16385}))
    assert response.status_code == 400
    assert assert_openai_error(response.content)["param"] == "max_tokens"


def test_the_cap_is_a_serve_flag() -> None:
    with serve_cli("--max-answer-tokens", "50", "--token-rate", "0",
                   "--log-level", "warning") as cli:
        (model,) = httpx.get(f"{cli.url}/v1/models", timeout=5).json()["data"]
        assert model["max_answer_tokens"] == 50
        ok = post(cli.url, orjson.dumps({"model": "synthetic", "messages": PROMPT,
                                         "max_tokens": 50}))
        assert ok.json()["usage"]["completion_tokens"] == 50
        over = post(cli.url, orjson.dumps({"model": "synthetic", "messages": PROMPT,
                                           "max_tokens": 51}))
        assert over.status_code == 400
    bad = subprocess.run([sys.executable, "-m", "streamcore", "serve", "--port", "0",
                          "--max-answer-tokens", "0"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "max_answer_tokens must be >= 1" in bad.stderr


# ------------------------------------------------------------------------------ stop


def full_text(url: str, **body: Any) -> str:
    tokens, _, _ = sse(url, **body)
    return "".join(tokens)


@pytest.mark.parametrize("pick", ["mid_token", "whole_token", "at_start", "two"])
def test_stop_ends_the_answer_before_the_sequence(gateway: Served, pick: str) -> None:
    full = sse(gateway.url, max_tokens=60)[0]
    text = "".join(full)
    if pick == "mid_token":  # a sequence that begins inside a token: that token is cut
        at = text.index(" ", 30) + 2
        stop: str | list[str] = text[at:at + 5]
    elif pick == "whole_token":  # begins at a token's space
        at = text.index(" ", 30)
        stop = text[at:at + 4]
    elif pick == "at_start":
        at = 0
        stop = text[:3]
    else:  # the earliest of several wins, whatever their order
        at = text.index(" ", 40)
        stop = ["zzz-never", text[at:at + 3], text[at + 1:at + 6]]
    expected = text[:text.find(stop if isinstance(stop, str) else stop[1])]
    tokens, finish, usage = sse(gateway.url, max_tokens=60, stop=stop,
                                stream_options={"include_usage": True})
    assert "".join(tokens) == expected
    assert finish == "stop"
    assert "".join(full[:len(tokens)]).startswith(expected)
    if pick == "mid_token":  # the last token sent is the part of its token before the cut
        assert tokens[-1] != full[len(tokens) - 1]
    assert usage is not None and usage["completion_tokens"] == len(tokens)
    # Not streamed: the same text; over WebSocket: the same tokens.
    response = post(gateway.url, orjson.dumps({"model": "synthetic", "messages": PROMPT,
                                               "max_tokens": 60, "stop": stop}))
    body = response.json()
    assert body["choices"][0]["message"]["content"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    (messages,) = ws_exchange(gateway, {"model": "synthetic", "messages": PROMPT,
                                        "max_tokens": 60, "stop": stop})
    assert ws_tokens(messages) == tokens
    assert messages[-1]["type"] == "done" and messages[-1]["finish_reason"] == "stop"


def test_a_stop_sequence_not_in_the_answer_changes_nothing(gateway: Served) -> None:
    tokens, finish, _ = sse(gateway.url, max_tokens=30, stop=["\n\n", "zzz"])
    assert len(tokens) == 30 and finish == "length"
    assert tokens == sse(gateway.url, max_tokens=30)[0]


def test_stop_with_the_sdk(gateway: Served) -> None:
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,
                           timeout=10)
    text = full_text(gateway.url, max_tokens=40)
    stop = text[20:24]
    completion = client.chat.completions.create(model="synthetic", messages=PROMPT,
                                                max_tokens=40, stop=stop)
    assert completion.choices[0].message.content == text[:text.find(stop)]
    assert completion.choices[0].finish_reason == "stop"


BAD_STOPS: list[tuple[str, Any, str]] = [
    ("number", 5, "invalid_type"),
    ("object", {"a": "b"}, "invalid_type"),
    ("array_of_numbers", ["a", 1], "invalid_type"),
    ("five", ["a", "b", "c", "d", "e"], "invalid_value"),
    ("empty_string", "", "invalid_value"),
    ("empty_in_array", ["a", ""], "invalid_value"),
]


@pytest.mark.parametrize(("stop", "code"), [c[1:] for c in BAD_STOPS],
                         ids=[c[0] for c in BAD_STOPS])
def test_bad_stop_is_a_400_on_sse_and_an_error_on_ws(gateway: Served, stop: Any,
                                                     code: str) -> None:
    body = {"model": "synthetic", "messages": PROMPT, "stream": True, "stop": stop}
    response = post(gateway.url, orjson.dumps(body))
    assert response.status_code == 400
    error = assert_openai_error(response.content)
    assert (error["param"], error["code"]) == ("stop", code)
    (messages,) = ws_exchange(gateway, body)
    assert messages[0]["type"] == "error"
    assert messages[0]["error"] == error


def test_four_stop_sequences_are_allowed(gateway: Served) -> None:
    tokens, finish, _ = sse(gateway.url, max_tokens=5, stop=["w", "x", "y", "zz"])
    assert finish in ("stop", "length") and len(tokens) <= 5


# -------------------------------------------------------------------- ignored fields


IGNORED_VALUES: dict[str, Any] = {
    "temperature": 1.7, "top_p": 0.1, "seed": 42, "frequency_penalty": 1.0,
    "presence_penalty": -1.0, "logit_bias": {"50256": -100}, "user": "someone",
    "response_format": {"type": "json_object"}, "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
}


def test_ignored_fields_are_listed_and_have_no_effect(gateway: Served) -> None:
    models = httpx.get(f"{gateway.url}/v1/models", timeout=5).json()["data"]
    synthetic = next(m for m in models if m["id"] == "synthetic")
    assert synthetic["ignored_fields"] == list(IGNORED_FIELDS)
    assert synthetic["max_answer_tokens"] == 16384
    assert next(m for m in models if m["id"] == "capped")["max_answer_tokens"] == CAP
    assert set(IGNORED_VALUES) <= set(IGNORED_FIELDS)
    plain = sse(gateway.url, max_tokens=20)
    assert sse(gateway.url, max_tokens=20, **IGNORED_VALUES) == plain
    # The SDK reads the model list, extra fields and all.
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    assert [m.id for m in client.models.list()] == ["synthetic", "capped"]


def test_the_readme_lists_the_ignored_fields() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The synthetic model"):]
    section = section[:section.index("\n## ", 1)]
    for name in IGNORED_FIELDS:
        assert f"`{name}`" in section, name


# ------------------------------------------------------- SSE and /v1/ws validate alike


def test_ws_accepts_stream_options_without_stream(gateway: Served) -> None:
    """``stream`` is implied on /v1/ws: stream_options needs no "stream": true there (and
    "stream": false does not turn it off), while SSE still refuses it without stream."""
    base = {"model": "synthetic", "messages": PROMPT, "max_tokens": 4,
            "stream_options": {"include_usage": True}}
    implied, explicit_false = ws_exchange(gateway, base, {**base, "stream": False})
    for messages in (implied, explicit_false):
        assert messages[-1]["type"] == "done", messages[-1]
        assert messages[-1]["usage"]["completion_tokens"] == 4
        usage_chunk = messages[-2]["chunk"]
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4
    response = post(gateway.url, orjson.dumps(base))
    assert response.status_code == 400
    assert assert_openai_error(response.content)["param"] == "stream_options"


def test_ws_still_type_checks_stream(gateway: Served) -> None:
    (messages,) = ws_exchange(gateway, {"model": "synthetic", "messages": PROMPT,
                                        "stream": "yes"})
    assert messages[0]["type"] == "error" and messages[0]["error"]["param"] == "stream"


# ------------------------------------------------------- numbers keep the type sent


HUGE = b"1" + b"0" * 30  # 10**30: orjson decodes integers beyond 64 bits to a float


@pytest.mark.parametrize("param", ["max_tokens", "max_completion_tokens", "n"])
@pytest.mark.parametrize("literal", [HUGE, b"-" + HUGE, b"18446744073709551616"])
def test_a_huge_integer_is_an_integer_out_of_range(gateway: Served, param: str,
                                                   literal: bytes) -> None:
    body = (b'{"model":"synthetic","messages":[{"role":"user","content":"x"}],"%s":%s}'
            % (param.encode(), literal))
    response = post(gateway.url, body)
    assert response.status_code == 400
    error = assert_openai_error(response.content)
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "integer out of range" in error["message"]
    assert "float" not in error["message"]
    (messages,) = ws_exchange(gateway, body[:-1] + b',"stream":true}')
    assert messages[0]["type"] == "error" and messages[0]["error"] == error


def test_largest_64_bit_integer_is_over_the_cap_not_a_type_error(gateway: Served) -> None:
    body = (b'{"model":"synthetic","messages":[{"role":"user","content":"x"}],'
            b'"max_tokens":18446744073709551615}')
    error = assert_openai_error(post(gateway.url, body).content)
    assert error["code"] == "invalid_value"
    assert "18446744073709551615" in error["message"] and "16384" in error["message"]


@pytest.mark.parametrize(("literal", "sent"), [(b"5.5", "number"), (b"5.0", "number"),
                                               (b'"5"', "string"), (b"true", "boolean"),
                                               (b"[5]", "array")])
def test_a_wrong_type_is_named_in_json_terms(gateway: Served, literal: bytes,
                                             sent: str) -> None:
    body = (b'{"model":"synthetic","messages":[{"role":"user","content":"x"}],'
            b'"max_tokens":%s}' % literal)
    error = assert_openai_error(post(gateway.url, body).content)
    assert (error["param"], error["code"]) == ("max_tokens", "invalid_type")
    assert error["message"].endswith(f"got {sent}")
