"""Fuzz target: ``Last-Event-ID`` / cursor strings into ``proto.cursor.parse_event_id``.

Invariant: any string gives None or ``(stream id, seq)`` (``parse_cursor``: with its epoch,
valid if given) with a valid stream id and
``0 <= seq < 10**18``, and ``event_id`` of that pair parses back to it; nothing raises (the
header is decoded from latin-1 bytes, as the server does, and also as UTF-8 with
replacement, for non-ASCII digits such as '²').
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from streamcore.proto.cursor import (
    MAX_SEQ_DIGITS,
    event_id,
    parse_cursor,
    parse_event_id,
    valid_epoch,
    valid_stream_id,
)


def target(data: bytes) -> None:
    for text in (data.decode("latin-1"), data.decode("utf-8", "replace")):
        parsed = parse_event_id(text)
        if parsed is None:
            continue
        stream_id, seq = parsed
        assert valid_stream_id(stream_id), stream_id
        assert 0 <= seq < 10**MAX_SEQ_DIGITS, seq
        assert parse_event_id(event_id(stream_id, seq)) == parsed
        position = parse_cursor(text)
        assert position is not None
        if position.epoch is not None:
            assert valid_epoch(position.epoch)
        assert parse_cursor(event_id(position.stream, position.seq, position.epoch)) == position


if __name__ == "__main__":
    main(target)
