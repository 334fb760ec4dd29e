"""The cursor: where a reader is in a stream, as it travels on the wire.

One module owns the format, so that SSE resume, the WebSocket protocol and a shared store
all read and write the same thing.  Today a cursor travels as an SSE event id
(WHATWG HTML 9.2.6, the ``id`` field, sent back by a reconnecting ``EventSource`` as
``Last-Event-ID``, 9.2.4)::

    <stream id>-<sequence number>

The stream id is what :func:`new_stream_id` makes (16 lowercase hex digits) or an id an
embedder chose within :data:`STREAM_ID_CHARS`; the sequence number counts a stream's
events from 1.  The parser is strict, and bounded: a client controls this string.
"""

from __future__ import annotations

import os
import re

#: Longest stream id accepted (bytes).  Ours are 16; an embedder's may be a UUID (36).
MAX_STREAM_ID_LENGTH = 64
#: Most digits of a sequence number: 18 fit in 63 bits, a billion years of tokens.
MAX_SEQ_DIGITS = 18
#: Characters of a stream id: unreserved URI characters (RFC 3986 section 2.3), so an id
#: goes into a path (``/v1/streams/{id}``) and an SSE field as it is.
STREAM_ID_CHARS = "A-Za-z0-9._~"

_STREAM_ID = re.compile(rf"[{STREAM_ID_CHARS}]{{1,{MAX_STREAM_ID_LENGTH}}}\Z")
# ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses.
_EVENT_ID = re.compile(
    rf"([{STREAM_ID_CHARS}]{{1,{MAX_STREAM_ID_LENGTH}}})-([0-9]{{1,{MAX_SEQ_DIGITS}}})\Z")


def new_stream_id() -> str:
    """A fresh, unguessable stream id: 64 random bits as 16 hex digits."""
    return os.urandom(8).hex()


def valid_stream_id(stream_id: str) -> bool:
    return _STREAM_ID.match(stream_id) is not None


def event_id(stream_id: str, seq: int) -> str:
    """The SSE event id of event ``seq`` of ``stream_id``."""
    return f"{stream_id}-{seq}"


def id_prefix(stream_id: str) -> bytes:
    """What every event id of a stream starts with, encoded once per reader; the framer
    appends the sequence number (see :mod:`streamcore.proto.sse`)."""
    return stream_id.encode("ascii") + b"-"


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(stream id, seq)`` of an event id, or None if ``value`` is not one of ours."""
    match = _EVENT_ID.match(value)
    if match is None:
        return None
    return match.group(1), int(match.group(2))
