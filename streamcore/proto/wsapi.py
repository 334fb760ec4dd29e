"""The ``/v1/ws`` message protocol: JSON text messages, several requests per socket.

Client to server (parsed by :func:`parse_client_message`)::

    {"type": "request", "id": "r1", "body": {<chat completion request>}}
    {"type": "cancel", "id": "r1"}

Server to client (made here, and nowhere else)::

    {"type": "chunk", "id": "r1", "seq": 1, "chunk": {<chat.completion.chunk>}}
    {"type": "done", "id": "r1", "finish_reason": "stop", "usage": {...}}
    {"type": "cancelled", "id": "r1"}
    {"type": "error", "id": "r1", "error": {"message", "type", "param", "code"}}

A request's ``id`` is the client's; it travels JSON-encoded (its *key*), made once per
request.  ``seq`` is the stream's cursor (:mod:`streamcore.proto.cursor`), the same number
an SSE reader of the stream sees in its event ids.  A stream without a key (a plain
stream route over WebSocket) sends each payload as a message of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import RequestError
from .jsonbytes import dumps
from .pipe import Frame
from .ws import text_header

#: Longest request id a client may choose (characters).
MAX_ID_LENGTH = 256


@dataclass(slots=True)
class Start:
    """``{"type": "request"}``: start a streamed completion."""

    id: str
    body: Any


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


def parse_client_message(message: str | bytes) -> Start | Cancel:
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
        return Start(request_id, data.get("body"))
    if kind == "cancel":
        return Cancel(request_id)
    raise BadMessage("'type' must be 'request' or 'cancel'", request_id, param="type",
                     code="invalid_value")


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


def cancelled_message(key: bytes) -> bytes:
    return b'{"type":"cancelled","id":' + key + b"}"


def error_message(key: bytes, envelope: bytes) -> bytes:
    """The ``error`` message for an OpenAI error envelope (``{"error": {...}}``, made by
    :func:`streamcore.errors.envelope`): the same object with ``type`` and ``id`` first."""
    if not envelope.startswith(b'{"error":'):
        raise ValueError("not an error envelope")
    return b'{"type":"error","id":' + key + b"," + envelope[1:]


class ChunkFramer:
    """A stream's frames as WebSocket text messages, for one request on one socket.

    With a key: ``{"type":"chunk","id":<key>,"seq":N,"chunk":<payload>}``.  Without: the
    payload itself is the message.  The payload buffers are shared, never copied, except
    into the one buffer of a sparse stream's single message.
    """

    __slots__ = ("head", "key")

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        # A %-format with the key inside it: a "%" of the client's id must not format.
        self.head = (b'{"type":"chunk","id":' + key.replace(b"%", b"%%")
                     + b',"seq":%d,"chunk":') if key is not None else None

    def message(self, seq: int, frame: Frame, size: int) -> bytes:
        """One message of ``size`` payload bytes, header included, in one buffer (a
        sparse stream's token: one ``write(2)``)."""
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
