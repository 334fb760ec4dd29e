"""The error types (:mod:`streamcore.errors`): who is at fault, what each answers with, and the
one builder of the OpenAI error envelope."""

from __future__ import annotations

import orjson
import pytest

from streamcore import errors
from streamcore.errors import (
    BodyTooLarge,
    Cancelled,
    FellBehind,
    HandlerFailed,
    HeadTooLarge,
    InternalError,
    Overloaded,
    ProtocolError,
    RequestError,
    StreamcoreError,
    StreamError,
    envelope,
)
from streamcore.proto.ws import HandshakeError
from streamcore.proto.wsapi import BadMessage

#: (instance, status, close_code, type, code, message)
CASES = [
    (StreamcoreError("boom"), 500, 1011, "server_error", "internal_error", "boom"),
    (ProtocolError("bad"), 400, 1002, "invalid_request_error", "protocol_error", "bad"),
    (HeadTooLarge(5000, 4096), 431, 1002, "invalid_request_error", "protocol_error",
     "request head of 5000 bytes exceeds the limit of 4096"),
    (HeadTooLarge(30, 20, "header count"), 431, 1002, "invalid_request_error",
     "protocol_error", "header count of 30 bytes exceeds the limit of 20"),
    (BodyTooLarge(70000, 65536), 413, 1002, "invalid_request_error", "protocol_error",
     "request body of 70000 bytes exceeds the limit of 65536"),
    (RequestError("no"), 400, 1008, "invalid_request_error", None, "no"),
    (Overloaded("busy", 3), 503, 1008, "server_error", "overloaded", "busy"),
    (StreamError("gone"), 500, 1011, "stream_error", "stream_error", "gone"),
    (FellBehind(3, 10), 500, 1011, "stream_error", "fell_behind",
     "event 3 is no longer in the replay log (oldest held: 10)"),
    (Cancelled(), 500, 1011, "stream_error", "cancelled",
     "the stream was cancelled: its client left"),
    (HandlerFailed(KeyError("secret")), 500, 1011, "stream_error", "stream_error",
     "the stream failed: KeyError"),
    (InternalError(), 500, 1011, "server_error", "internal_error", "internal server error"),
    (HandshakeError("nope"), 400, 1002, "invalid_request_error", "websocket_handshake",
     "nope"),
    (BadMessage("bad id", None, param="id", code="invalid_value"), 400, 1008,
     "invalid_request_error", "invalid_value", "bad id"),
]


@pytest.mark.parametrize(("exc", "status", "close_code", "type_", "code", "message"), CASES,
                         ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None)
def test_each_error_carries_what_to_answer_with(exc: StreamcoreError, status: int,
                                                close_code: int, type_: str,
                                                code: str | None, message: str) -> None:
    assert (exc.status, exc.close_code, exc.type, exc.code) == (status, close_code, type_, code)
    assert exc.message == message == str(exc)
    doc = orjson.loads(exc.envelope())
    assert doc == {"error": {"message": message, "type": type_, "param": exc.param,
                             "code": code}}


def test_who_is_at_fault() -> None:
    assert issubclass(HeadTooLarge, ProtocolError) and issubclass(BodyTooLarge, ProtocolError)
    assert issubclass(Overloaded, RequestError)
    for cls in (FellBehind, Cancelled, HandlerFailed):
        assert issubclass(cls, StreamError)
    for cls in (ProtocolError, RequestError, StreamError, InternalError):
        assert issubclass(cls, StreamcoreError) and issubclass(cls, Exception)


def test_instance_overrides_leave_the_class_defaults_alone() -> None:
    exc = RequestError("x", status=404, close_code=4000, type="t", code="c", param="p",
                       headers=[(b"a", b"b")])
    assert (exc.status, exc.close_code, exc.type, exc.code, exc.param) == (404, 4000, "t",
                                                                           "c", "p")
    assert exc.headers == [(b"a", b"b")]
    plain = RequestError("y")
    assert (plain.status, plain.close_code, plain.type, plain.code, plain.param) == (
        400, 1008, "invalid_request_error", None, None)
    assert plain.headers == [] and plain.headers is not RequestError("z").headers


def test_overloaded_says_when_to_retry() -> None:
    assert Overloaded("busy", 7).headers == [(b"retry-after", b"7")]


def test_fell_behind_keeps_its_numbers() -> None:
    exc = FellBehind(3, 10)
    assert (exc.wanted_seq, exc.first_seq) == (3, 10)


def test_handler_failed_never_carries_the_exception_text() -> None:
    exc = HandlerFailed(RuntimeError("password=hunter2"))
    assert b"hunter2" not in exc.envelope()


def test_envelope_exact_bytes() -> None:
    assert envelope("bad") == (
        b'{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}')
    assert envelope("m\u00e9\"x", "server_error", "messages[0].role", "invalid_value") == (
        '{"error":{"message":"m\u00e9\\"x","type":"server_error",'
        '"param":"messages[0].role","code":"invalid_value"}}').encode()


def test_envelope_is_an_exact_size_buffer() -> None:
    import tracemalloc

    # orjson's result keeps its whole write buffer (KiBs); an envelope may be kept in a
    # stream's log, so it is copied to its exact size.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [envelope("x" * 10) for _ in range(200)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert all(type(data) is bytes for data in kept)
    assert grown < 200 * (len(kept[0]) + 100), grown


def test_envelope_is_the_one_builder() -> None:
    exc = RequestError("no", param="model", code="invalid_value")
    assert exc.envelope() == envelope("no", "invalid_request_error", "model", "invalid_value")
    assert errors.envelope is envelope
