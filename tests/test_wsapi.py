"""The ``/v1/ws`` message protocol (:mod:`streamcore.proto.wsapi`): client messages parsed,
server messages framed, decoded by a real WebSocket client."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from streamcore.errors import RequestError, envelope
from streamcore.proto import wsapi
from streamcore.proto.wsapi import (
    MAX_ID_LENGTH,
    BadMessage,
    Cancel,
    ChunkFramer,
    Start,
    cancelled_message,
    done_message,
    error_message,
    key_of,
    parse_client_message,
)


def client_messages(data: bytes) -> list[str]:
    """Server frames as a real (wsproto) client reads them: whole text messages."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    out: list[str] = []
    parts: list[str] = []
    for event in client.events():
        assert isinstance(event, TextMessage), event
        parts.append(event.data)
        if event.message_finished:
            out.append("".join(parts))
            parts = []
    assert not parts
    return out


# -- client to server ------------------------------------------------------------------


@pytest.mark.parametrize("message", [
    b'{"type":"request","id":"r1","body":{"model":"m"}}',
    '{"type":"request","id":"r1","body":{"model":"m"}}',
])
def test_request(message: str | bytes) -> None:
    assert parse_client_message(message) == Start("r1", {"model": "m"})


def test_request_without_body_is_left_to_the_body_validator() -> None:
    assert parse_client_message(b'{"type":"request","id":"x"}') == Start("x", None)


def test_cancel() -> None:
    assert parse_client_message(b'{"type":"cancel","id":"r1"}') == Cancel("r1")


def refused(message: bytes) -> BadMessage:
    with pytest.raises(BadMessage) as info:
        parse_client_message(message)
    return info.value


def test_not_json() -> None:
    exc = refused(b"{nope")
    assert (exc.request_id, exc.code, exc.param, exc.status) == (None, "invalid_json", None,
                                                                 400)
    assert exc.message.startswith("the message is not valid JSON")
    assert isinstance(exc, RequestError)


@pytest.mark.parametrize("message", [b"[]", b'"request"', b"1", b"null"])
def test_not_an_object(message: bytes) -> None:
    exc = refused(message)
    assert (exc.request_id, exc.code, exc.param) == (None, "invalid_type", None)


@pytest.mark.parametrize("request_id", [None, "", 1, ["r"], "x" * (MAX_ID_LENGTH + 1)])
def test_bad_id(request_id: Any) -> None:
    doc: dict[str, Any] = {"type": "request"}
    if request_id is not None:
        doc["id"] = request_id
    exc = refused(orjson.dumps(doc))
    assert (exc.request_id, exc.code, exc.param) == (None, "invalid_value", "id")


def test_longest_id_is_accepted() -> None:
    request_id = "x" * MAX_ID_LENGTH
    assert parse_client_message(orjson.dumps({"type": "cancel", "id": request_id})) == Cancel(
        request_id)


@pytest.mark.parametrize("kind", [None, "chunk", "REQUEST", 1])
def test_bad_type_names_the_request(kind: Any) -> None:
    doc: dict[str, Any] = {"id": "r7"}
    if kind is not None:
        doc["type"] = kind
    exc = refused(orjson.dumps(doc))
    assert (exc.request_id, exc.code, exc.param) == ("r7", "invalid_value", "type")


def test_key_of_is_json() -> None:
    assert key_of("r1") == b'"r1"'
    assert key_of('a"b\\c') == b'"a\\"b\\\\c"'
    assert key_of(None) == b"null"


# -- server to client --------------------------------------------------------------------


def test_done_and_cancelled_messages() -> None:
    key = key_of("r1")
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert orjson.loads(done_message(key, "stop", usage)) == {
        "type": "done", "id": "r1", "finish_reason": "stop", "usage": usage}
    assert done_message(key, None, None) == (
        b'{"type":"done","id":"r1","finish_reason":null,"usage":null}')
    assert cancelled_message(key) == b'{"type":"cancelled","id":"r1"}'


def test_error_message_splices_the_envelope() -> None:
    env = envelope("bad model", param="model", code="model_not_found")
    message = error_message(key_of("r1"), env)
    assert message == (b'{"type":"error","id":"r1","error":{"message":"bad model",'
                       b'"type":"invalid_request_error","param":"model",'
                       b'"code":"model_not_found"}}')
    doc = orjson.loads(message)
    assert list(doc) == ["type", "id", "error"]
    assert doc["error"] == orjson.loads(env)["error"]
    assert orjson.loads(error_message(b"null", env))["id"] is None


@pytest.mark.parametrize("not_envelope", [b"", b"{}", b'{"message":"x"}', b'["error"]',
                                          b' {"error":{}}'])
def test_error_message_refuses_what_is_not_an_envelope(not_envelope: bytes) -> None:
    with pytest.raises(ValueError, match="not an error envelope"):
        error_message(b'"r1"', not_envelope)


def test_frame_is_one_unmasked_text_frame() -> None:
    message = b'{"type":"cancelled","id":"r1"}'
    data = b"".join(wsapi.frame(message))
    assert data[:2] == bytes((0x81, len(message)))
    assert client_messages(data) == [message.decode()]




@st.composite
def json_frame(draw: st.DrawFn) -> tuple[bytes, ...]:
    """One JSON value's bytes, cut into 1 to 3 buffers (a frame shares its buffers)."""
    data = orjson.dumps(draw(st.one_of(st.text(max_size=300), st.integers(-(2**63), 2**63 - 1),
                                       st.dictionaries(st.text(max_size=5), st.text(max_size=20),
                                                       max_size=3))))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=2)))
    bounds = [0, *cuts, len(data)]
    return tuple(data[a:b] for a, b in itertools.pairwise(bounds))


frames = st.lists(json_frame(), min_size=1, max_size=6)
keys = st.one_of(st.none(), st.text(max_size=20))


@given(frames, keys, st.integers(min_value=1, max_value=10**6))
def test_message_equals_messages_for_one_frame(frame_list: list[tuple[bytes, ...]],
                                               request_id: str | None, seq: int) -> None:
    framer = ChunkFramer(None if request_id is None else key_of(request_id))
    for i, frame in enumerate(frame_list):
        size = sum(map(len, frame))
        assert framer.message(seq + i, frame, size) == b"".join(
            framer.messages(seq + i, [frame]))


@given(frames, st.text(max_size=20), st.integers(min_value=1, max_value=10**6))
def test_keyed_messages_decode_as_chunk_messages(frame_list: list[tuple[bytes, ...]],
                                                 request_id: str, seq: int) -> None:
    framer = ChunkFramer(key_of(request_id))
    data = b"".join(framer.messages(seq, frame_list))
    decoded = [orjson.loads(m) for m in client_messages(data)]
    assert decoded == [{"type": "chunk", "id": request_id, "seq": seq + i,
                        "chunk": orjson.loads(b"".join(frame))}
                       for i, frame in enumerate(frame_list)]


@given(frames, st.integers(min_value=1, max_value=10**6))
def test_unkeyed_messages_are_the_payloads(frame_list: list[tuple[bytes, ...]],
                                           seq: int) -> None:
    framer = ChunkFramer(None)
    assert framer.head is None
    data = b"".join(framer.messages(seq, frame_list))
    assert client_messages(data) == [b"".join(f).decode() for f in frame_list]


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_every_header_length_form(size: int) -> None:
    payload = b'"' + b"a" * size + b'"'
    for framer in (ChunkFramer(None), ChunkFramer(key_of("k"))):
        one = framer.message(3, (payload,), len(payload))
        assert one == b"".join(framer.messages(3, [(payload,)]))
        (message,) = client_messages(one)
        if framer.key is None:
            assert message == payload.decode()
        else:
            assert orjson.loads(message)["chunk"] == "a" * size


@pytest.mark.parametrize("request_id", ["100%", "%d", "%s%%", "%(x)s", "%b%"])
def test_a_percent_in_the_key_is_not_a_format(request_id: str) -> None:
    framer = ChunkFramer(key_of(request_id))
    (message,) = client_messages(framer.message(9, (b"1",), 1))
    assert orjson.loads(message) == {"type": "chunk", "id": request_id, "seq": 9, "chunk": 1}
    (message,) = client_messages(b"".join(framer.messages(9, [(b"1",)])))
    assert orjson.loads(message)["id"] == request_id


def test_messages_share_the_frames_buffers() -> None:
    shared = b'"token"'
    framer = ChunkFramer(key_of("r"))
    bufs = framer.messages(1, [(b"{", shared, b"}")])
    assert any(buf is shared for buf in bufs)



def test_a_chunk_framer_of_field_lines_sends_their_data_as_json() -> None:
    """A relayed stream read over WebSocket: each message's chunk is its event's data, as
    it is if JSON, else as a JSON string."""
    framer = ChunkFramer(b'"r"', lines=True)
    frames = [(b"event: e\ndata: {\"a\":1}",), (b"data: [DONE]",), (b"data: x\ndata: y",)]
    expected = [{"a": 1}, "[DONE]", "x\ny"]
    one = framer.message(4, frames[0], len(frames[0][0]))
    assert orjson.loads(_text(one)) == {"type": "chunk", "id": "r", "seq": 4, "chunk": {"a": 1}}
    got = _texts(b"".join(framer.messages(1, frames)))
    assert [orjson.loads(m)["chunk"] for m in got] == expected
    bare = ChunkFramer(None, lines=True)
    assert [orjson.loads(m) for m in _texts(b"".join(bare.messages(1, frames)))] == expected
    assert wsapi.json_value(b"\xff") == b'"\xef\xbf\xbd"'


def _texts(wire: bytes) -> list[str]:
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(wire)
    return [e.data for e in client.events() if isinstance(e, TextMessage)]


def _text(wire: bytes) -> str:
    (text,) = _texts(wire)
    return text
