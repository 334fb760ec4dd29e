"""Fuzz target: the SSE decoder gives the same events at any cut, or SSEDecodeError."""

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


def target(data: bytes) -> None:
    whole = decode([data])
    cut = data[0] % (len(data) + 1) if data else 0
    assert decode([data[:cut], data[cut:]]) == whole
    if len(data) < 256:
        assert decode([bytes([b]) for b in data]) == whole


if __name__ == "__main__":
    main(target)
