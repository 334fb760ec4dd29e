"""The ``/v1/ws`` message protocol: JSON text messages, several requests per socket.

Client to server (parsed by :func:`parse_client_message`)::

    {"type": "request", "id": "r1", "body": {<chat completion request>},
     "disconnect": "linger"}                      (``disconnect`` optional)
    {"type": "resume", "id": "r2", "stream": "<stream id>", "after": 7,
     "epoch": "<epoch>", "replay": "exact"}        (``epoch``, ``replay`` optional)
    {"type": "cancel", "id": "r1"}

Server to client (made here, and nowhere else)::

    {"type": "stream", "id": "r1", "stream": "<stream id>", "epoch": "<epoch>"}
    {"type": "snapshot", "id": "r2", "seq": 7, "snapshot": {<chat.completion.snapshot>}}
    {"type": "chunk", "id": "r1", "seq": 1, "chunk": {<chat.completion.chunk>}}
    {"type": "done", "id": "r1", "finish_reason": "stop", "usage": {...}}
    {"type": "cancelled", "id": "r1"}
    {"type": "error", "id": "r1", "error": {"message", "type", "param", "code"}}

A request's ``id`` is the client's; it travels JSON-encoded (its *key*), made once per
request.  ``seq`` is the stream's cursor (:mod:`streamcore.proto.cursor`), the same number
an SSE reader of the stream sees in its event ids; the ``stream`` message, first of every
request (started or resumed), names the stream and its epoch, so that a client cut off
can resume it on any transport (docs/resume.md).  A stream without a key (a plain
stream route over WebSocket) sends each payload as a message of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import RequestError
from .cursor import MAX_SEQ_DIGITS, disconnect_policy, valid_epoch, valid_stream_id
from .jsonbytes import dumps
from .pipe import Frame
from .sse import lines_data
from .ws import text_header

#: Longest request id a client may choose (characters).
MAX_ID_LENGTH = 256


@dataclass(slots=True)
class Start:
    """``{"type": "request"}``: start a streamed completion."""

    id: str
    body: Any
    #: The request's own disconnect policy (None: the server's).
    disconnect: str | None = None


@dataclass(slots=True)
class Resume:
    """``{"type": "resume"}``: read an existing stream after event ``after``."""

    id: str
    stream: str
    after: int
    epoch: str | None = None
    #: ``"replay": "exact"``: never a snapshot (docs/resume.md).
    exact: bool = False


@dataclass(slots=True)
class Cancel:
    """``{"type": "cancel"}``: stop one request now."""

    id: str


class BadMessage(RequestError):
    """A client message we refuse, with the request id it named (None if it had no
    usable one): answered with an ``error`` message, the socket kept."""

    def __init__(self, message: str, request_id: str | None, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.request_id = request_id


def parse_client_message(message: str | bytes) -> Start | Resume | Cancel:
    """One client message; :class:`BadMessage` naming what is wrong."""
    try:
        data = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise BadMessage(f"the message is not valid JSON: {exc}", None,
                         code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadMessage("a message must be a JSON object", None, code="invalid_type")
    request_id = data.get("id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_LENGTH:
        raise BadMessage(f"'id' must be a non-empty string (at most {MAX_ID_LENGTH} "
                         "characters)", None, param="id", code="invalid_value")
    kind = data.get("type")
    if kind == "request":
        policy = data.get("disconnect")
        if policy is not None and not isinstance(policy, str):
            policy = "?"
        try:
            return Start(request_id, data.get("body"), disconnect_policy(policy))
        except RequestError as exc:
            raise BadMessage(exc.message, request_id, param="disconnect",
                             code="invalid_value") from None
    if kind == "resume":
        return _resume(data, request_id)
    if kind == "cancel":
        return Cancel(request_id)
    raise BadMessage("'type' must be 'request', 'resume' or 'cancel'", request_id,
                     param="type", code="invalid_value")


def _resume(data: dict[str, Any], request_id: str) -> Resume:
    stream = data.get("stream")
    if not isinstance(stream, str) or not valid_stream_id(stream):
        raise BadMessage("'stream' must be a stream id (the 'stream' message's)", request_id,
                         param="stream", code="invalid_value")
    after = data.get("after", 0)
    if type(after) is not int or not 0 <= after < 10**MAX_SEQ_DIGITS:
        raise BadMessage("'after' must be the seq of the last chunk received (0: none)",
                         request_id, param="after", code="invalid_value")
    epoch = data.get("epoch")
    if epoch is not None and (not isinstance(epoch, str) or not valid_epoch(epoch)):
        raise BadMessage("'epoch' must be the 'stream' message's epoch", request_id,
                         param="epoch", code="invalid_value")
    replay = data.get("replay", "snapshot")
    if replay not in ("exact", "snapshot"):
        raise BadMessage("'replay' must be 'exact' or 'snapshot'", request_id,
                         param="replay", code="invalid_value")
    return Resume(request_id, stream, after, epoch, replay == "exact")


def key_of(request_id: str | None) -> bytes:
    """A request id as it stands in every message of the request (JSON)."""
    return dumps(request_id)


# -- server to client --------------------------------------------------------------------


def frame(message: bytes) -> list[bytes]:
    """One whole message as an unmasked text frame (RFC 6455 section 5.2)."""
    return [text_header(len(message)), message]


def done_message(key: bytes, finish_reason: str | None, usage: dict[str, int] | None) -> bytes:
    return (b'{"type":"done","id":' + key + b',"finish_reason":' + dumps(finish_reason)
            + b',"usage":' + dumps(usage) + b"}")


def stream_message(key: bytes, stream_id: str, epoch: str) -> bytes:
    """The first message of a request: which stream (and history) its chunks are of."""
    return (b'{"type":"stream","id":' + key + b',"stream":' + dumps(stream_id)
            + b',"epoch":' + dumps(epoch) + b"}")


def snapshot_message(key: bytes, seq: int, snapshot: bytes) -> bytes:
    """The stream so far through ``seq`` (a JSON object), for a resume whose cursor the
    log no longer held: the chunks after it follow."""
    return b'{"type":"snapshot","id":' + key + b',"seq":%d,"snapshot":%b}' % (seq, snapshot)


def cancelled_message(key: bytes) -> bytes:
    return b'{"type":"cancelled","id":' + key + b"}"


def error_message(key: bytes, envelope: bytes) -> bytes:
    """The ``error`` message for an OpenAI error envelope (``{"error": {...}}``, made by
    :func:`streamcore.errors.envelope`): the same object with ``type`` and ``id`` first."""
    if not envelope.startswith(b'{"error":'):
        raise ValueError("not an error envelope")
    return b'{"type":"error","id":' + key + b"," + envelope[1:]


def json_value(data: bytes) -> bytes:
    """``data`` as a JSON value for a message's ``chunk``: itself if it is JSON (an OpenAI
    event), else a JSON string of it (``[DONE]``, plain text).  Only for relayed events,
    whose data is the upstream's."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return dumps(data.decode("utf-8", "replace"))
    return data


class ChunkFramer:
    """A stream's frames as WebSocket text messages, for one request on one socket.

    With a key: ``{"type":"chunk","id":<key>,"seq":N,"chunk":<payload>}``.  Without: the
    payload itself is the message.  The payload buffers are shared, never copied, except
    into the one buffer of a sparse stream's single message.
    """

    __slots__ = ("head", "key", "lines")

    def __init__(self, key: bytes | None, lines: bool = False) -> None:
        self.key = key
        #: The frames are SSE field lines (a relayed upstream event's, see
        #: :attr:`~streamcore.store.base.Entry.sse_lines`): a message carries their data.
        self.lines = lines
        # A %-format with the key inside it: a "%" of the client's id must not format.
        self.head = (b'{"type":"chunk","id":' + key.replace(b"%", b"%%")
                     + b',"seq":%d,"chunk":') if key is not None else None

    def message(self, seq: int, frame: Frame, size: int) -> bytes:
        """One message of ``size`` payload bytes, header included, in one buffer (a
        sparse stream's token: one ``write(2)``)."""
        if self.lines:
            data = json_value(lines_data(frame))
            frame, size = (data,), len(data)
        head = self.head
        if head is None:
            return b"".join((text_header(size), *frame))
        prefix = head % seq
        return b"".join((text_header(len(prefix) + size + 1), prefix, *frame, b"}"))

    def messages(self, seq: int, frames: list[Frame]) -> list[bytes]:
        """Messages ``seq``, ``seq + 1``, ... as buffers sharing the frames' bytes."""
        bufs: list[bytes] = []
        head = self.head
        for frame in frames:
            if self.lines:
                frame = (json_value(lines_data(frame)),)
            size = sum(map(len, frame))
            if head is None:
                bufs.append(text_header(size))
                bufs.extend(frame)
            else:
                prefix = head % seq
                bufs.append(text_header(len(prefix) + size + 1))
                bufs.append(prefix)
                bufs.extend(frame)
                bufs.append(b"}")
            seq += 1
        return bufs
