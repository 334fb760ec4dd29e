"""The OpenAI chat-completions wire format: request validation and chunk templates (the
error envelope is :func:`streamcore.errors.envelope`).

A streamed token costs one ``orjson.dumps(token)``: the rest of its chunk is the stream's
prefix and suffix, encoded once when the stream starts (:class:`ChunkTemplate`), and the
three buffers travel together as one pipe frame.  The shapes follow the OpenAI API
reference for ``POST /v1/chat/completions`` (``chat.completion`` and
``chat.completion.chunk`` objects).
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import RequestError, shown
from .jsonbytes import dumps

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass(slots=True)
class ChatRequest:
    """A validated chat-completion request."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    max_tokens: int | None = None
    #: The field ``max_tokens`` came from (``max_completion_tokens`` wins when both are set),
    #: so that an error about its value names what the client sent.
    max_tokens_param: str = "max_tokens"
    #: Stop sequences: the answer ends before the first of them, which is not sent.
    stop: tuple[str, ...] = ()
    include_usage: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    def prompt_text(self) -> str:
        """The text of every message, for sources that derive output from the prompt."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    p["text"] for p in content if isinstance(p, dict) and
                    isinstance(p.get("text"), str)
                )
        return "\n".join(parts)


def _bad(message: str, param: str | None, code: str | None = None) -> RequestError:
    return RequestError(message, status=400, param=param, code=code)


#: orjson decodes an integer literal beyond 64 bits (below -2**63 or above 2**64 - 1) to a
#: float; a float this large that is a whole number is reported as the integer it was sent as.
_INT64 = 2**63

#: At most this many stop sequences (as the OpenAI API).
MAX_STOP_SEQUENCES = 4


def _int_param(body: dict[str, Any], name: str, low: int, high: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:  # (the common case skips these two checks)
        if isinstance(value, float) and value.is_integer() and abs(value) >= _INT64:
            raise _bad(f"'{name}' must be an integer {_bound(low, high)}, got an integer "
                       f"out of range ({value:.3g})", name, "invalid_value")
        # bool is an int subclass in Python; JSON true is not an integer.
        if not isinstance(value, int) or isinstance(value, bool):
            raise _bad(f"'{name}' must be an integer, got {_json_type(value)}", name,
                       "invalid_type")
    if value < low or (high is not None and value > high):
        raise _bad(f"'{name}' must be {_bound(low, high)}, got {value}", name,
                   "invalid_value")
    return value


def _bound(low: int, high: int | None) -> str:
    return f">= {low}" if high is None else f"between {low} and {high}"


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type (what the client sent, not Python's name).
    Never null: its callers take a null parameter as an absent one."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _stop_param(body: dict[str, Any]) -> tuple[str, ...]:
    """``stop`` (sent, not null): a string, or an array of up to 4 strings; none of them
    empty."""
    value = body["stop"]
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad(f"'stop' must be a string or an array of strings, got "
                   f"{_json_type(value)}", "stop", "invalid_type")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise _bad(f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences, got "
                   f"{len(stops)}", "stop", "invalid_value")
    if not all(stops):
        raise _bad("'stop' sequences must not be empty strings", "stop", "invalid_value")
    return tuple(stops)


def _number_param(body: dict[str, Any], name: str, low: float, high: float) -> None:
    """``name`` (sent, not null): a number from ``low`` to ``high``."""
    value = body[name]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"'{name}' must be a number", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", name,
                   "invalid_value")


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a request body; raises :class:`RequestError` naming the offending param."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    return parse_chat_object(data)


def parse_chat_object(data: Any, *, stream_implied: bool = False) -> ChatRequest:
    """Validate an already-decoded request (the WebSocket gateway's ``body``).

    ``stream_implied``: the transport always streams (``/v1/ws``), so ``stream`` need not
    be sent (if sent it must still be a boolean) and ``stream_options`` is allowed without
    it; the request comes back with ``stream`` true.
    """
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object", None, "invalid_type")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string", "model",
                   "missing_required_parameter" if model is None else "invalid_type")
    messages = data.get("messages")
    if messages is None:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages", "invalid_type")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"'messages[{i}]' must be an object", f"messages[{i}]", "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # (a list is unhashable: fuzz)
            raise _bad(f"'messages[{i}].role' must be one of {sorted(ROLES)}, "
                       f"got {shown(str(role))}",
                       f"messages[{i}].role", "invalid_value")
        content = message.get("content")
        if not (content is None or isinstance(content, (str, list))):
            raise _bad(f"'messages[{i}].content' must be a string or an array of parts",
                       f"messages[{i}].content", "invalid_type")
        if content is None and role not in ("assistant", "function"):
            raise _bad(f"'messages[{i}].content' is required", f"messages[{i}].content",
                       "missing_required_parameter")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad("'stream' must be a boolean", "stream", "invalid_type")
    if stream_implied:
        stream = True
    # The optional fields: a membership test each when absent (most requests send few of
    # them; sent as null is absent too), the checks only for those sent.
    if "n" in data and data["n"] is not None and _int_param(data, "n", 1, 128) != 1:
        raise _bad("only n=1 is supported", "n", "unsupported_value")
    max_tokens_param = "max_completion_tokens"
    max_tokens = (_int_param(data, max_tokens_param, 1, None)
                  if max_tokens_param in data else None)
    if max_tokens is None:
        max_tokens_param = "max_tokens"
        max_tokens = (_int_param(data, max_tokens_param, 1, None)
                      if max_tokens_param in data else None)
    stop = _stop_param(data) if "stop" in data and data["stop"] is not None else ()
    if "temperature" in data and data["temperature"] is not None:
        _number_param(data, "temperature", 0.0, 2.0)
    if "top_p" in data and data["top_p"] is not None:
        _number_param(data, "top_p", 0.0, 1.0)
    include_usage = False
    options = data.get("stream_options") if "stream_options" in data else None
    if options is not None:
        if not stream:
            raise _bad("'stream_options' is only allowed when 'stream' is true",
                       "stream_options", "invalid_value")
        if not isinstance(options, dict):
            raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
        usage = options.get("include_usage", False)
        if not isinstance(usage, bool):
            raise _bad("'stream_options.include_usage' must be a boolean",
                       "stream_options.include_usage", "invalid_type")
        include_usage = usage
    return ChatRequest(model=model, messages=messages, stream=stream, max_tokens=max_tokens,
                       max_tokens_param=max_tokens_param, stop=stop,
                       include_usage=include_usage, raw=data)


_ID_PREFIX = "chatcmpl-" + os.urandom(6).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))


def new_completion_id() -> str:
    """Unique per process run (random prefix, counter): no system call per request."""
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


class ChunkTemplate:
    """The bytes of one stream's chunks, made once; a token adds only its own JSON string."""

    __slots__ = ("completion_id", "created", "include_usage", "model", "prefix", "suffix",
                 "tail")

    def __init__(self, completion_id: str, model: str, *, include_usage: bool = False,
                 created: int | None = None) -> None:
        self.completion_id = completion_id
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.include_usage = include_usage
        # The bytes orjson makes of the chunk object's first four keys (in this order),
        # formatted rather than encoded from a dict: made per stream, and kept only inside
        # ``prefix`` (a stream lives long and idle: every byte kept is per connection).
        self.prefix = (b'{"id":%b,"object":"chat.completion.chunk","created":%d,'
                       b'"model":%b%b' % (orjson.dumps(completion_id), self.created,
                                          orjson.dumps(model), _CONTENT))
        #: What follows ``choices`` in every chunk, and what follows a token's string
        #: (shared constants, not made per stream).
        self.tail = _TAIL_USAGE if include_usage else _TAIL
        self.suffix = _SUFFIX_USAGE if include_usage else _SUFFIX

    @property
    def head(self) -> bytes:
        """The chunk object's first four keys (``prefix`` without its ``choices``)."""
        return self.prefix[:-len(_CONTENT)]

    def role(self) -> bytes:
        """The first chunk: the assistant role with empty content, as OpenAI sends it (the
        bytes ``_chunk`` would make of it, tests/test_openai.py)."""
        return b"".join((self.head, _ROLE_CHOICES, self.tail))

    def finish(self, reason: str) -> bytes:
        """The last choice chunk: an empty delta and the finish reason."""
        return b"".join((self.head, _FINISH_CHOICES, orjson.dumps(reason), b"}]", self.tail))

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The ``stream_options.include_usage`` chunk: no choices, the usage totals."""
        return self.usage_chunk(usage_object(prompt_tokens, completion_tokens))

    def usage_chunk(self, usage: dict[str, Any]) -> bytes:
        """The usage chunk with ``usage`` as it is (an upstream's may hold more fields)."""
        return dumps({"id": self.completion_id, "object": "chat.completion.chunk",
                      "created": self.created, "model": self.model, "choices": [],
                      "usage": usage})


_CONTENT = b',"choices":[{"index":0,"delta":{"content":'
_TAIL = b"}"
_TAIL_USAGE = b',"usage":null}'
_SUFFIX = b'},"logprobs":null,"finish_reason":null}]' + _TAIL
_SUFFIX_USAGE = b'},"logprobs":null,"finish_reason":null}]' + _TAIL_USAGE
_ROLE_CHOICES = (b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                 b'"logprobs":null,"finish_reason":null}]')
_FINISH_CHOICES = b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":'


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(completion_id: str, model: str, text: str, finish_reason: str,
                    prompt_tokens: int, completion_tokens: int) -> bytes:
    """The ``stream: false`` response: one ``chat.completion`` object."""
    return orjson.dumps({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage_object(prompt_tokens, completion_tokens),
    })



class ChatText:
    """What a chat stream's snapshot needs (docs/resume.md): the text and finish state of
    the chunks that left its log, folded as they leave it (:attr:`TokenLog.fold`: once per
    compaction of the ring, never per token), and of the chunks still in it when a
    snapshot is asked for.

    Per choice: the ``content`` text, the role and the ``finish_reason``; the ``usage`` of
    the stream.  Other deltas (tool calls, logprobs) are not kept: a snapshot is the text.
    At most ``max_bytes`` of text: above it the text is dropped and :meth:`snapshot`
    gives None (the reader then gets the exact-replay error, ``fell_behind``)."""

    __slots__ = ("finish", "kept_bytes", "max_bytes", "meta", "overflow", "texts", "usage")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        #: ``id``, ``created``, ``model`` of the first chunk.
        self.meta: dict[str, Any] = {}
        self.texts: dict[int, str] = {}
        self.finish: dict[int, str | None] = {}
        self.usage: Any = None
        self.kept_bytes = 0
        self.overflow = False

    def fold(self, frames: list[tuple[bytes, ...]]) -> None:
        """Frames leaving the log: their text joins the kept text."""
        if not self.overflow:
            self._add(self, frames)
            if self.kept_bytes > self.max_bytes:
                self.overflow = True
                self.texts = {}
                self.kept_bytes = 0

    @staticmethod
    def _add(into: ChatText, frames: list[tuple[bytes, ...]]) -> None:
        parts: dict[int, list[str]] = {}
        for frame in frames:
            try:
                chunk = orjson.loads(b"".join(frame))
            except orjson.JSONDecodeError:
                continue  # not a chunk of ours: nothing of the text
            if not isinstance(chunk, dict) or "error" in chunk:
                continue
            if not into.meta:
                into.meta = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
            if chunk.get("usage") is not None:
                into.usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                index = choice.get("index", 0)
                delta = choice.get("delta")
                content = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(content, str) and content:
                    parts.setdefault(index, []).append(content)
                if choice.get("finish_reason") is not None or index not in into.finish:
                    into.finish[index] = choice.get("finish_reason")
        for index, texts in parts.items():
            added = "".join(texts)
            into.texts[index] = into.texts.get(index, "") + added
            into.kept_bytes += len(added)

    def snapshot(self, frames: list[tuple[bytes, ...]]) -> bytes | None:
        """The snapshot of the kept text and ``frames`` (the log's, up to the snapshot's
        cursor), as a ``chat.completion.snapshot`` object; None once the text overflowed."""
        if self.overflow:
            return None
        whole = ChatText(self.max_bytes)
        whole.meta, whole.usage = self.meta, self.usage
        whole.texts, whole.finish = dict(self.texts), dict(self.finish)
        self._add(whole, frames)
        choices = [{"index": index, "message": {"role": "assistant",
                                                "content": whole.texts.get(index, "")},
                    "finish_reason": reason}
                   for index, reason in sorted(whole.finish.items())]
        return dumps({**whole.meta, "object": "chat.completion.snapshot", "choices": choices,
                      "usage": whole.usage})
