"""The OpenAI chat-completions wire format (:mod:`streamcore.proto.openai`): request
validation naming the offending param, and the chunk templates."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamcore.errors import RequestError
from streamcore.proto.openai import (
    ChunkTemplate,
    completion_body,
    new_completion_id,
    parse_chat_object,
    parse_chat_request,
)

USER = [{"role": "user", "content": "hi"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **extra}


def refused(data: Any) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_chat_object(data)
    assert info.value.status == 400
    return info.value


def test_a_valid_request() -> None:
    chat = parse_chat_request(orjson.dumps(body(stream=True, max_tokens=5,
                                                stream_options={"include_usage": True})))
    assert (chat.model, chat.stream, chat.max_tokens, chat.include_usage) == ("m", True, 5,
                                                                              True)
    assert parse_chat_object(body(stream=None)).stream is False
    assert parse_chat_object(body(max_completion_tokens=3, max_tokens=9)).max_tokens == 3
    assert parse_chat_object(body(temperature=0, top_p=1.0)).raw["temperature"] == 0


def test_not_json() -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(b"{")
    assert info.value.code == "invalid_json" and info.value.param is None


@pytest.mark.parametrize(("data", "param", "code"), [
    ([], None, "invalid_type"),
    ({"messages": USER}, "model", "missing_required_parameter"),
    ({"model": 3, "messages": USER}, "model", "invalid_type"),
    ({"model": "m"}, "messages", "missing_required_parameter"),
    ({"model": "m", "messages": []}, "messages", "invalid_type"),
    ({"model": "m", "messages": ["hi"]}, "messages[0]", "invalid_type"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role",
     "invalid_value"),
    ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "invalid_type"),
    ({"model": "m", "messages": [{"role": "user"}]}, "messages[0].content",
     "missing_required_parameter"),
    (body(stream="yes"), "stream", "invalid_type"),
    (body(n=2), "n", "unsupported_value"),
    (body(n=True), "n", "invalid_type"),
    (body(max_tokens=0), "max_tokens", "invalid_value"),
    (body(n=129), "n", "invalid_value"),
    (body(temperature="hot"), "temperature", "invalid_type"),
    (body(temperature=True), "temperature", "invalid_type"),
    (body(temperature=2.5), "temperature", "invalid_value"),
    (body(top_p=-0.1), "top_p", "invalid_value"),
    (body(stream_options={"include_usage": True}), "stream_options", "invalid_value"),
    (body(stream=True, stream_options=[1]), "stream_options", "invalid_type"),
    (body(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage",
     "invalid_type"),
])
def test_refusals_name_the_param(data: Any, param: str | None, code: str) -> None:
    exc = refused(data)
    assert (exc.param, exc.code) == (param, code)


def test_an_assistant_message_may_have_no_content() -> None:
    chat = parse_chat_object({"model": "m", "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": []}]})
    assert len(chat.messages) == 2


def test_prompt_text_joins_strings_and_text_parts() -> None:
    chat = parse_chat_object({"model": "m", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "part one"},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     "not a part", {"type": "text", "text": 3},
                                     {"type": "text", "text": "part two"}]},
        {"role": "assistant", "content": None},
    ]})
    assert chat.prompt_text() == "be brief\npart one\npart two"


def test_chunk_template_bytes() -> None:
    template = ChunkTemplate("chatcmpl-1", "m", created=7)
    token = b'"hi"'
    chunk = orjson.loads(template.prefix + token + template.suffix)
    assert chunk == {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                     "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                "logprobs": None, "finish_reason": None}]}
    assert orjson.loads(template.role())["choices"][0]["delta"] == {"role": "assistant",
                                                                    "content": ""}
    assert orjson.loads(template.finish("length"))["choices"][0]["finish_reason"] == "length"
    with_usage = ChunkTemplate("chatcmpl-1", "m", include_usage=True, created=7)
    assert orjson.loads(with_usage.prefix + token + with_usage.suffix)["usage"] is None
    assert orjson.loads(with_usage.usage(3, 4))["usage"] == {
        "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert orjson.loads(with_usage.usage(3, 4))["choices"] == []


def test_chunk_template_formatted_bytes_are_orjson_s() -> None:
    """The head, role and finish chunks are formatted, not encoded from dicts: byte for
    byte what orjson makes of the objects (key order, escapes, a model name's unicode)."""
    for model, usage in (("m", False), ('q"\\u\u00e9\U0001d41b\n', True)):
        template = ChunkTemplate("chatcmpl-1", model, include_usage=usage, created=7)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                "model": model}
        extra = {"usage": None} if usage else {}
        assert template.role() == orjson.dumps({**base, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}], **extra})
        for reason in ("stop", "length", 'we"ird'):
            assert template.finish(reason) == orjson.dumps({**base, "choices": [
                {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}],
                **extra})
        assert template.prefix + b'"x"' + template.suffix == orjson.dumps({**base, "choices": [
            {"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}],
            **extra})


def test_completion_ids_are_unique() -> None:
    ids = {new_completion_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("chatcmpl-") for i in ids)


def test_completion_body() -> None:
    doc = orjson.loads(completion_body("c", "m", "text", "stop", 2, 3))
    assert doc["choices"][0]["message"]["content"] == "text"
    assert doc["usage"]["total_tokens"] == 5



def test_optional_fields_sent_as_null_are_absent() -> None:
    """A null optional field is an absent one (the membership tests of parse_chat_object
    skip only fields not sent); an integer field takes any int, not bool or a float."""
    nulls = {"n": None, "stop": None, "temperature": None, "top_p": None,
             "stream_options": None, "max_completion_tokens": None}
    chat = parse_chat_object(body(max_tokens=4, **nulls))
    assert (chat.max_tokens, chat.max_tokens_param, chat.stop) == (4, "max_tokens", ())
    assert parse_chat_object(body(max_tokens=None)).max_tokens is None

    class Count(int):
        pass

    assert parse_chat_object(body(max_tokens=Count(7))).max_tokens == 7
    assert refused(body(max_tokens=Count(0))).code == "invalid_value"
    assert refused(body(max_tokens=1e300)).code == "invalid_value"
    assert refused(body(max_tokens=2.0)).code == "invalid_type"
