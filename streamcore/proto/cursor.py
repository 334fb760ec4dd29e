"""The cursor: where a reader is in a stream, as it travels on the wire.

One module owns the format, so that SSE resume, the WebSocket protocol and a shared store
all read and write the same thing.  A stream's events carry one sequence, counted from 1;
the cursor is the same on every transport:

- the SSE event id (WHATWG HTML 9.2.6, the ``id`` field, sent back by a reconnecting
  ``EventSource`` as ``Last-Event-ID``, 9.2.4)::

      <stream id>-<epoch>-<sequence number>

- the ``/v1/ws`` envelope: ``"seq"`` of each ``chunk`` message, with ``"stream"`` and
  ``"epoch"`` told once per request by its ``stream`` message;
- the query ``?starting_after=<seq>[&epoch=<epoch>]`` of ``GET /v1/streams/{id}``.

The stream id is what :func:`new_stream_id` makes (16 lowercase hex digits) or an id an
embedder chose within :data:`STREAM_ID_CHARS` (no ``-``: the split is never ambiguous).

The **epoch** names one history of the stream (Centrifugo's offset + epoch): a store that
lost a stream's history and carries the stream on (a shared store restarted, the owner's
lease lost) gives it a new epoch, so a client can tell "the history I hold a position in
is gone" (another epoch: a snapshot, or the ``history_lost`` error) from "the stream
ended" (its epoch, at its end: 204).  Epochs are random (:func:`new_epoch`), never counted:
a store that lost everything cannot know which numbers it gave before.

The older form ``<stream id>-<sequence number>`` (no epoch) is still read: such a cursor
is taken as a position in whatever history the stream has now.  The parser is strict, and
bounded: a client controls this string.
"""

from __future__ import annotations

import os
import re
import threading
from typing import NamedTuple
from urllib.parse import parse_qsl

from ..errors import RequestError
from ..limits import DISCONNECT_POLICIES

#: Longest stream id accepted (bytes).  Ours are 16; an embedder's may be a UUID (36).
MAX_STREAM_ID_LENGTH = 64
#: Most digits of a sequence number: 18 fit in 63 bits, a billion years of tokens.
MAX_SEQ_DIGITS = 18
#: Characters of a stream id: unreserved URI characters (RFC 3986 section 2.3), so an id
#: goes into a path (``/v1/streams/{id}``) and an SSE field as it is.
STREAM_ID_CHARS = "A-Za-z0-9._~"
#: Longest epoch accepted; ours are 6 hex digits (24 random bits: a client holding a
#: cursor of the previous epoch mistakes the new one for it once in 16 million changes).
MAX_EPOCH_LENGTH = 16

_STREAM_ID = re.compile(rf"[{STREAM_ID_CHARS}]{{1,{MAX_STREAM_ID_LENGTH}}}\Z")
_EPOCH = re.compile(rf"[0-9a-f]{{1,{MAX_EPOCH_LENGTH}}}\Z")
# ASCII digits only: str.isdigit() also accepts '²' and other digits int() refuses.
_EVENT_ID = re.compile(
    rf"([{STREAM_ID_CHARS}]{{1,{MAX_STREAM_ID_LENGTH}}})"
    rf"(?:-([0-9a-f]{{1,{MAX_EPOCH_LENGTH}}}))?-([0-9]{{1,{MAX_SEQ_DIGITS}}})\Z")
_SEQ = re.compile(rf"[0-9]{{1,{MAX_SEQ_DIGITS}}}\Z")


class Position(NamedTuple):
    """A parsed cursor: the last event a client has, in which history of which stream."""

    stream: str
    #: None: the cursor named no epoch (the older form, or a query without one).
    epoch: str | None
    seq: int


def new_stream_id() -> str:
    """A fresh, unguessable stream id: 64 random bits as 16 hex digits."""
    return os.urandom(8).hex()


def new_epoch() -> str:
    """A fresh epoch: 24 random bits as 6 hex digits."""
    return os.urandom(3).hex()


#: Streams whose ids and epochs one read of the system's random source makes.
IDS_PER_READ = 64
_ID_BYTES = 11  # 8 for the id, 3 for the epoch
_pool = b""  # random bytes read and not used yet
_lock = threading.Lock()
_taken = 0


def new_id_and_epoch() -> tuple[str, str]:
    """:func:`new_stream_id` and :func:`new_epoch`: 11 bytes of ``os.urandom`` (as
    unguessable as both), read for :data:`IDS_PER_READ` streams at a time (a
    ``getrandom`` call per new stream otherwise).  Each byte is used once; a forked
    child starts with a pool of its own (``os.register_at_fork``)."""
    global _pool, _taken
    with _lock:  # loops in several threads: no two streams get the same bytes
        taken = _taken
        if taken >= len(_pool):
            _pool = os.urandom(_ID_BYTES * IDS_PER_READ)
            taken = 0
        _taken = taken + _ID_BYTES
        random = _pool[taken:taken + _ID_BYTES]
    random_hex = random.hex()
    return random_hex[:16], random_hex[16:]


def _forget_pool() -> None:
    global _lock, _pool, _taken
    _pool, _taken = b"", 0
    _lock = threading.Lock()  # a lock held in the parent at the fork stays held


os.register_at_fork(after_in_child=_forget_pool)


def valid_stream_id(stream_id: str) -> bool:
    return _STREAM_ID.match(stream_id) is not None


def valid_epoch(epoch: str) -> bool:
    return _EPOCH.match(epoch) is not None


def event_id(stream_id: str, seq: int, epoch: str | None = None) -> str:
    """The SSE event id of event ``seq`` of ``stream_id`` in ``epoch`` (None: the older
    form without one)."""
    return f"{stream_id}-{seq}" if epoch is None else f"{stream_id}-{epoch}-{seq}"


def id_prefix(stream_id: str, epoch: str | None = None) -> bytes:
    """What every event id of a stream starts with, encoded once per reader; the framer
    appends the sequence number (see :mod:`streamcore.proto.sse`)."""
    # event_id's format without its number (tests/test_cursor.py holds the two together)
    return (f"{stream_id}-" if epoch is None else f"{stream_id}-{epoch}-").encode("ascii")


def parse_cursor(value: str) -> Position | None:
    """The position an event id names, or None if ``value`` is not one of ours."""
    match = _EVENT_ID.match(value)
    if match is None:
        return None
    return Position(match.group(1), match.group(2), int(match.group(3)))


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(stream id, seq)`` of an event id (its epoch left out), or None."""
    position = parse_cursor(value)
    return None if position is None else (position.stream, position.seq)


class ResumeQuery(NamedTuple):
    """What the query of a stream request says about where and how to resume."""

    #: ``starting_after``: the last event the client has (None: not given).
    after: int | None
    #: ``epoch``: the history that ``after`` counts in (None: not given).
    epoch: str | None
    #: ``replay=exact``: never a snapshot; a cursor the log no longer holds is an error.
    exact: bool


def resume_query(query: str) -> ResumeQuery:
    """``starting_after``, ``epoch`` and ``replay`` of a query string (other parameters
    are left to the route); a bad value is the client's error, naming it."""
    after: int | None = None
    epoch: str | None = None
    exact = False
    try:
        fields = parse_qsl(query, keep_blank_values=True, max_num_fields=32)
    except ValueError:  # more fields than that: no resume query of ours
        raise RequestError("too many query parameters", code="invalid_value") from None
    for name, value in fields:
        if name == "starting_after":
            if _SEQ.match(value) is None:
                raise RequestError("starting_after must be a sequence number (the last "
                                   "event received; 0 for all)", param="starting_after",
                                   code="invalid_value")
            after = int(value)
        elif name == "epoch":
            if not valid_epoch(value):
                raise RequestError(f"epoch must be 1 to {MAX_EPOCH_LENGTH} lowercase hex "
                                   "digits", param="epoch", code="invalid_value")
            epoch = value
        elif name == "replay":
            if value not in ("exact", "snapshot"):
                raise RequestError("replay must be 'exact' or 'snapshot'", param="replay",
                                   code="invalid_value")
            exact = value == "exact"
    return ResumeQuery(after, epoch, exact)


def disconnect_policy(value: str | None) -> str | None:
    """A request's own disconnect policy (the ``X-Disconnect-Policy`` header, ``disconnect``
    of a ``/v1/ws`` request), None if it gave none; another value is the client's error."""
    if value is None or value == "":
        return None
    if value not in DISCONNECT_POLICIES:
        raise RequestError(f"the disconnect policy must be one of "
                           f"{', '.join(DISCONNECT_POLICIES)}", param="X-Disconnect-Policy",
                           code="invalid_value")
    return value
