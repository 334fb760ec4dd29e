"""Fuzz target: the SSE decoder gives the same events at any cut, or SSEDecodeError.

Fed whole, a stream of LF-terminated events goes through the decoder's fast path for whole
events; fed byte by byte, through the line-by-line state machine: the two are compared on
every input, and on each input re-shaped into such events (``data:``/``id:`` blocks) so
that the fast path is reached with arbitrary values most of the time."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from streamcore.proto.sse import Decoder, Event, SSEDecodeError


def decode(parts: list[bytes]) -> list[Event] | str:
    decoder = Decoder(max_line_bytes=512, max_event_bytes=1024)
    events: list[Event] = []
    try:
        for part in parts:
            events += decoder.feed(part)
        events += decoder.close()
    except SSEDecodeError:
        return "error"
    return events


def shaped(data: bytes) -> bytes:
    """``data`` as events of the common shape: each LF-separated piece a ``data:`` block,
    every third after an ``id:`` line (the pieces may hold CR, NUL, invalid UTF-8...)."""
    out = []
    for i, piece in enumerate(data.split(b"\n")):
        out.append((b"id: %d\n" % i if i % 3 == 2 else b"") + b"data: " + piece + b"\n\n")
    return b"".join(out)


def check(data: bytes) -> None:
    whole = decode([data])
    cut = data[0] % (len(data) + 1) if data else 0
    assert decode([data[:cut], data[cut:]]) == whole
    if len(data) < 4096:
        assert decode([bytes([b]) for b in data]) == whole


def target(data: bytes) -> None:
    check(data)
    check(shaped(data))


if __name__ == "__main__":
    main(target)
