"""Fuzz target: the upstream client's response parser and the chunk splice.

1. Arbitrary bytes as an upstream's answer to a request (``UpstreamSession``): events or
   ``UpstreamError``, never another exception; the same events (bodies joined), or the same
   error, however the bytes are cut (whole, at one point, byte by byte); at most one
   ``Head`` and one ``End``, in that order; reusable only after an ``End``.
2. The same bytes as text in the place of a content string of a learned chunk layout, and
   as a whole chunk (``ChunkReader``): whatever the reader takes by its splice is exactly
   what ``read_chunk`` makes of the chunk.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson

from fuzz._driver import main
from streamcore.proto.jsonbytes import json_string
from streamcore.proto.upstream import (
    BadChunk,
    Body,
    Chunk,
    ChunkReader,
    End,
    Head,
    UpstreamError,
    UpstreamSession,
    parse_target,
    read_chunk,
)

TARGET = parse_target("http://127.0.0.1:8001/v1")
LAYOUT = ('{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
          '[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}')


def parse(parts: list[bytes]) -> tuple[list[object], str, bool]:
    s = UpstreamSession(TARGET, max_head_bytes=512)
    s.request("POST", "/v1/chat/completions", [], b"{}")
    events: list[object] = []
    verdict = "ok"
    try:
        for part in parts:
            if part:  # b"" is the end of the connection: fed once, last
                events += s.receive(part)
        events += s.receive(b"")
    except UpstreamError:
        verdict = "error"
    joined: list[object] = []
    for event in events:
        if isinstance(event, Body) and joined and isinstance(joined[-1], Body):
            joined[-1] = Body(joined[-1].data + event.data)
        elif not (isinstance(event, Body) and not event.data):
            joined.append(event)
    return joined, verdict, s.reusable


def check_session(data: bytes) -> None:
    whole = parse([data])
    events, _, reusable = whole
    heads = [i for i, e in enumerate(events) if isinstance(e, Head)]
    ends = [i for i, e in enumerate(events) if isinstance(e, End)]
    assert len(heads) <= 1 and len(ends) <= 1, events
    assert not ends or (heads and heads[0] < ends[0] == len(events) - 1), events
    assert not reusable  # the EOF fed last never leaves a connection to reuse
    cut = data[0] % (len(data) + 1) if data else 0
    others = [parse([data[:cut], data[cut:]])]
    if len(data) < 2048:
        others.append(parse([bytes([b]) for b in data]))
    for other in others:
        # An error loses the events of its own read: only the verdict is compared then.
        assert other == whole if whole[1] == "ok" else other[1] == "error", (whole, other)


def outcome(text: str) -> Chunk | str:
    try:
        return read_chunk(text)
    except BadChunk:
        return "bad"


def check_splice(data: bytes) -> None:
    reader = ChunkReader()
    reader.read(LAYOUT % '"first"')
    text = data.decode("utf-8", "replace")
    for chunk in (LAYOUT % text, LAYOUT % json_string(text).decode(), text):
        literal = reader.content(chunk)
        if literal is not None:
            content = orjson.loads(literal)
            assert literal == json_string(content)
            assert outcome(chunk) == Chunk(content=content), chunk


def target(data: bytes) -> None:
    check_session(data)
    check_splice(data)


if __name__ == "__main__":
    main(target)
