"""Fuzz target: an upstream's HTTP response bytes into the upstream client session
(``proto/upstream.py`` ``UpstreamSession``), its body through the SSE ``Decoder`` the
gateway uses and each event's data through ``read_chunk``; a refusal's body through
``refusal`` (what a client is told).

Invariant: the response gives a head, body bytes and an end, or ``UpstreamError`` (502) —
nothing else escapes; no head over ``MAX_HEAD`` bytes is accepted, however the bytes are
cut; the event stream gives events or ``SSEDecodeError``; each event is ``[DONE]``, a
``Chunk`` with well-typed fields (a passed-on chunk re-encodes as JSON), or ``BadChunk``;
a refusal becomes a 4xx/5xx ``RequestError`` with a well-formed envelope.  The input cut
once at a point its first byte picks, in one piece, or (under 2 KiB) byte by byte, gives the
same outcome.

And the splice of ``ChunkReader`` (the gateway's hot path): the input as text in the place
of the content string of a learned chunk layout, escaped or not, and as a whole chunk --
whatever the reader takes by its splice is exactly what ``read_chunk`` makes of the chunk,
and a read that is that chunk as one whole event (``ChunkReader.one``, a paced token's
path) is taken exactly when the splice takes it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson

from fuzz._driver import main
from streamcore.errors import RequestError
from streamcore.proto.jsonbytes import json_string
from streamcore.proto.sse import Decoder, SSEDecodeError
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
from streamcore.sources.upstream_server import refusal

TARGET = parse_target("http://127.0.0.1:8001/v1")
MAX_HEAD = 512
MAX_EVENT = 1024
LAYOUT = ('{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
          '[{"index":0,"delta":{"content":%s},"logprobs":null,"finish_reason":null}]}')


def exchange(parts: list[bytes]) -> tuple[Any, ...]:
    """The response's outcome: ``("error",)`` or the head, the body and whether it ended."""
    session = UpstreamSession(TARGET, max_head_bytes=MAX_HEAD)
    session.request("POST", "/v1/chat/completions", [(b"content-type", b"application/json")],
                    b"{}")
    head: Head | None = None
    body = bytearray()
    ended = False
    try:
        for part in [*(p for p in parts if p), b""]:  # (b"" is the upstream's EOF)
            for event in session.receive(part):
                assert not ended, "an event after the end"
                if isinstance(event, Head):
                    assert head is None, "two final heads"
                    size = sum(len(k) + len(v) + 4 for k, v in event.headers)
                    assert size <= MAX_HEAD, size
                    head = event
                elif isinstance(event, Body):
                    assert head is not None, "a body before the head"
                    body += event.data
                else:
                    assert isinstance(event, End)
                    ended = True
            if ended:
                break
    except UpstreamError as exc:
        assert exc.status == 502
        return ("error",)
    assert ended or not session.reusable
    return ("ok", head, bytes(body), ended)


def read_stream(body: bytes) -> list[object]:
    """The body as the gateway reads a 200 event stream."""
    decoder = Decoder(max_line_bytes=MAX_EVENT, max_event_bytes=MAX_EVENT)
    try:
        events = decoder.feed(body) + decoder.close()
    except SSEDecodeError:
        return ["decode error"]
    out: list[object] = []
    for event in events:
        if event.data == "[DONE]":
            out.append("done")
            continue
        try:
            chunk = read_chunk(event.data)
        except BadChunk:
            out.append("bad chunk")
            continue
        assert chunk.content is None or (isinstance(chunk.content, str) and chunk.content)
        assert chunk.finish_reason is None or isinstance(chunk.finish_reason, str)
        assert chunk.usage is None or isinstance(chunk.usage, dict)
        assert chunk.error is None or isinstance(chunk.error, dict)
        if chunk.other is not None:
            assert isinstance(chunk.other, dict)
            orjson.dumps(dict(chunk.other, id="chatcmpl-x", model="m", created=1))
        out.append((chunk.content, chunk.finish_reason, chunk.error is not None))
    return out


def outcome(text: str) -> Chunk | str:
    try:
        return read_chunk(text)
    except BadChunk:
        return "bad chunk"


def check_splice(data: bytes) -> None:
    reader = ChunkReader()
    reader.read(LAYOUT % '"first"')
    reader.read(LAYOUT % '"second"')  # learned from the second content chunk
    reader.feed(b"data: x\n\n")  # past the stream's start: a read may be taken whole
    text = data.decode("utf-8", "replace")
    for chunk in (LAYOUT % text, LAYOUT % json_string(text).decode(), text):
        literal = reader.literal(chunk.encode())
        if literal is not None:
            content = orjson.loads(literal)
            assert literal == json_string(content)
            assert outcome(chunk) == Chunk(content=content), chunk
        # The same chunk as one whole event of a read, one chunk of the body (the paced
        # path, ChunkReader.one_chunk): taken exactly when the splice takes it, if it can
        # be one data line.
        event = b"id: 7\ndata: " + chunk.encode() + b"\n\n"
        taken = reader.one_chunk(b"%x\r\n%b\r\n" % (len(event), event))
        if not any(c in chunk for c in "\r\n\0"):
            assert taken == literal, chunk
        else:
            assert taken is None, chunk


def target(data: bytes) -> None:
    check_splice(data)
    cut = data[0] % (len(data) + 1) if data else 0
    whole = exchange([data])
    assert exchange([data[:cut], data[cut:]]) == whole, "the outcome depends on the cut"
    if len(data) < 2048:
        assert exchange([bytes([b]) for b in data]) == whole, "byte by byte, another outcome"
    if whole[0] != "ok" or whole[1] is None:
        return
    _, head, body, _ = whole
    if head.status == 200 and (head.header(b"content-type") or b"").startswith(
            b"text/event-stream"):
        read_stream(body)
    else:
        error = refusal(head.status, body[:MAX_EVENT], head.headers, "upstream")
        assert isinstance(error, RequestError) and 400 <= error.status < 600, error.status
        envelope = orjson.loads(error.envelope())
        assert set(envelope["error"]) == {"message", "type", "param", "code"}


if __name__ == "__main__":
    main(target)
