"""Fuzz target: the SSE decoder gives the same events at any cut, or SSEDecodeError.

Fed whole, a stream of LF-terminated events goes through the decoder's fast path for whole
events; fed byte by byte, through the line-by-line state machine: the two are compared on
every input, and on each input re-shaped into such events (``data:``/``id:`` blocks) so
that the fast path is reached with arbitrary values most of the time.

The gateway's two ways (``feed_raw``: a simple event's data undecoded; ``feed_around``: runs
of one layout's events as their middles) give the same events as ``feed``, whole and cut;
the input is also re-shaped into events of that layout around its pieces."""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from streamcore.proto.sse import Decoder, Event, SSEDecodeError
from streamcore.proto.upstream import LITERAL

#: The layout ``feed_around`` is given (a chat chunk's, short) and its middle: a JSON
#: string as the gateway takes it (proto/upstream.py LITERAL).
PREFIX, SUFFIX = b'{"c":', b',"n":null}'


def decode(parts: list[bytes], way: str = "feed") -> list[tuple[str, str]] | str:
    """The events as (data, type), and the last event ID and retry at the end."""
    decoder = Decoder(max_line_bytes=512, max_event_bytes=1024)
    events: list[tuple[str, str]] = []
    try:
        for part in parts:
            if way == "feed":
                items: list[object] = list(decoder.feed(part))
            elif way == "raw":
                items = list(decoder.feed_raw(part))
            else:
                items = list(decoder.feed_around(part, PREFIX, SUFFIX, LITERAL))
            for item in items:
                if isinstance(item, list):
                    for middle in item:
                        assert re.fullmatch(LITERAL, middle), middle
                        events.append(((PREFIX + middle + SUFFIX).decode(), "message"))
                elif isinstance(item, bytes):
                    events.append((item.decode("utf-8", "replace"), "message"))
                else:
                    assert isinstance(item, Event)
                    events.append((item.data, item.event))
        decoder.close()
    except SSEDecodeError:
        return "error"
    events.append((decoder.last_event_id, str(decoder.retry)))
    return events


def shaped(data: bytes) -> bytes:
    """``data`` as events of the common shape: each LF-separated piece a ``data:`` block,
    every third after an ``id:`` line (the pieces may hold CR, NUL, invalid UTF-8...)."""
    out = []
    for i, piece in enumerate(data.split(b"\n")):
        out.append((b"id: %d\n" % i if i % 3 == 2 else b"") + b"data: " + piece + b"\n\n")
    return b"".join(out)


def around(data: bytes) -> bytes:
    """``data`` as events of the layout: each LF-separated piece the middle of one, every
    other one after an ``id:`` line, every fifth one quoted as a string."""
    out = []
    for i, piece in enumerate(data.split(b"\n")):
        middle = b'"%s"' % piece if i % 5 == 4 else piece
        out.append((b"id: %d\n" % i if i % 2 else b"") + b"data: " + PREFIX + middle + SUFFIX
                   + b"\n\n")
    return b"".join(out)


def check(data: bytes) -> None:
    whole = decode([data])
    cut = data[0] % (len(data) + 1) if data else 0
    for way in ("feed", "raw", "around"):
        assert decode([data], way) == whole, way
        assert decode([data[:cut], data[cut:]], way) == whole, way
        if len(data) < 4096:
            assert decode([bytes([b]) for b in data], way) == whole, way


def target(data: bytes) -> None:
    check(data)
    check(shaped(data))
    check(around(data))


if __name__ == "__main__":
    main(target)
