"""The sans-I/O WebSocket core (:mod:`streamcore.proto.ws`): bytes in, events out.

Client frames come from wsproto's own client (the reference encoder) or are built by hand
(:mod:`ws_helpers`) when a test needs a frame no library would send.  Every scenario is fed
all at once, byte by byte and at random cut points; the events must be the same.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ws_helpers import (
    ACCEPT,
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    ServerFrames,
    close_payload,
    deflate_raw,
    frame,
    frame_header,
    parse_request_bytes,
    upgrade_headers,
    upgrade_request,
)
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from streamcore.errors import ProtocolError
from streamcore.proto import ws

MAX_FRAME = 4096
MAX_MESSAGE = 16384


def new_session(*, max_frame: int = MAX_FRAME, max_message: int = MAX_MESSAGE,
                deflate: bool = False, offer: bytes | None = None) -> ws.WSSession:
    extra = [(b"sec-websocket-extensions", offer)] if offer else []
    accepted = ws.accept(upgrade_request(upgrade_headers(extra=extra)), deflate=deflate,
                         max_message=max_message)
    return ws.WSSession(accepted, max_frame=max_frame, max_message=max_message)


def feed(data: bytes, cuts: list[int] | None = None, **kw: Any) -> tuple[
        list[ws.Received | ws.Closed], ws.WSSession]:
    """Feed ``data`` to a new session in pieces split at ``cuts``."""
    session = new_session(**kw)
    events: list[ws.Received | ws.Closed] = []
    points = sorted({c for c in (cuts or []) if 0 < c < len(data)})
    start = 0
    for point in [*points, len(data)]:
        events += session.receive(data[start:point])
        start = point
    return events, session


def same(events: list[ws.Received | ws.Closed]) -> list[object]:
    """Events as compared across cut points: a failure's reason text (which says where
    in the current buffer the parser was) is not compared, its code is."""
    return [e.code if isinstance(e, ws.Closed) and e.code in (1002, 1007, 1009) else e
            for e in events]


def all_ways(data: bytes, **kw: Any) -> tuple[list[ws.Received | ws.Closed],
                                                  ws.WSSession]:
    """Feed at once and byte by byte; both must give the same events (returned)."""
    whole, session = feed(data, **kw)
    single, _ = feed(data, list(range(1, len(data))), **kw)
    assert same(single) == same(whole), "byte-by-byte feeding changed the events"
    return whole, session


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def outbox_frames(session: ws.WSSession) -> list[tuple[int, bool, bytes]]:
    return ServerFrames().feed(b"".join(session.outbox))


def closed_code(events: list[ws.Received | ws.Closed]) -> int:
    closed = [e for e in events if isinstance(e, ws.Closed)]
    assert len(closed) == 1, events
    assert events[-1] is closed[0], "nothing may follow Closed"
    return closed[0].code


# -------------------------------------------------------------------- messages and cuts


def conversation() -> tuple[bytes, list[ws.Received | ws.Closed]]:
    """A client conversation: text (multi-byte UTF-8, fragmented), binary, ping, close."""
    c = client()
    data = b"".join([
        c.send(TextMessage("hello")),
        c.send(TextMessage("h\u00e9llo w\u00f6rld \u2603 \U0001f600", message_finished=False)),
        c.send(Ping(b"mid-message ping")),  # control frames may interleave (5.4)
        c.send(TextMessage(" and more \u00fc", message_finished=True)),
        c.send(BytesMessage(bytes(range(256)) * 3)),
        c.send(TextMessage("x" * 300)),  # 16-bit length
        c.send(BytesMessage(b"")),
        c.send(TextMessage("")),
        c.send(CloseConnection(1000, "bye")),
    ])
    expected: list[ws.Received | ws.Closed] = [
        ws.Received("hello"),
        ws.Received("h\u00e9llo w\u00f6rld \u2603 \U0001f600 and more \u00fc"),
        ws.Received(bytes(range(256)) * 3),
        ws.Received("x" * 300),
        ws.Received(b""),
        ws.Received(""),
        ws.Closed(1000, "bye"),
    ]
    return data, expected


def test_conversation_all_at_once_and_byte_by_byte() -> None:
    data, expected = conversation()
    events, session = all_ways(data)
    assert events == expected
    assert isinstance(events[2].data, bytes)  # type: ignore[union-attr]
    frames = outbox_frames(session)
    assert frames == [(PONG, True, b"mid-message ping"),
                      (CLOSE, True, close_payload(1000, "bye"))]
    assert session.closed == ws.Closed(1000, "bye")
    assert session.state is ws.CLOSED and not session.open


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_conversation_random_cuts(data: st.DataObject) -> None:
    raw, expected = conversation()
    cuts = data.draw(st.lists(st.integers(1, len(raw) - 1), max_size=40))
    events, session = feed(raw, cuts)
    assert events == expected
    assert outbox_frames(session)[0] == (PONG, True, b"mid-message ping")


MESSAGES = st.lists(st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300),
), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), MESSAGES)
def test_random_messages_fragmented_and_cut(data: st.DataObject,
                                            messages: list[str | bytes]) -> None:
    """Any messages, split into any fragments (with pings between), fed in any pieces,
    arrive whole and in order."""
    wire = b""
    for message in messages:
        raw = message.encode() if isinstance(message, str) else message
        opcode = TEXT if isinstance(message, str) else BINARY
        splits = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=3)))
        pieces = [raw[a:b] for a, b in zip([0, *splits], [*splits, len(raw)], strict=True)]
        for i, piece in enumerate(pieces):
            wire += frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1)
            if data.draw(st.booleans()):
                wire += frame(PING, b"p%d" % i)
    wire += frame(CLOSE, close_payload(1000))
    cuts = data.draw(st.lists(st.integers(1, max(1, len(wire) - 1)), max_size=30))
    events, _ = feed(wire, cuts)
    assert events == [ws.Received(m) for m in messages] + [ws.Closed(1000)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_failures_are_the_same_at_any_cut(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PROTOCOL_ERRORS)))
    wire = frame(TEXT, b"fine") + PROTOCOL_ERRORS[name] + frame(TEXT, b"after")
    cuts = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=20))
    events, session = feed(wire, cuts)
    assert same(events) == [ws.Received("fine"), 1002], name
    assert outbox_frames(session)[-1][2][:2] == b"\x03\xea"


def test_hand_built_fragments_with_handshake_tail() -> None:
    """Frames that arrived with the handshake (``tail``) are parsed on the first call."""
    data = (frame(TEXT, b"ab", fin=False) + frame(CONT, b"cd", fin=False)
            + frame(CONT, b"ef"))
    accepted = ws.accept(upgrade_request())
    session = ws.WSSession(accepted, max_frame=MAX_FRAME, max_message=MAX_MESSAGE,
                           tail=data[:7])
    events = session.receive(b"")
    events += session.receive(data[7:])
    assert events == [ws.Received("abcdef")]


# ---------------------------------------------------------------------------- size limits


def test_fragmented_message_over_max_message_is_1009() -> None:
    fragment = b"a" * (MAX_FRAME - 1)  # every frame is under the frame limit
    count = MAX_MESSAGE // len(fragment) + 2
    data = frame(TEXT, fragment, fin=False)
    data += b"".join(frame(CONT, fragment, fin=False) for _ in range(count - 2))
    data += frame(CONT, fragment)
    events, session = all_ways(data)
    assert closed_code(events) == 1009
    assert not any(isinstance(e, ws.Received) for e in events)
    assert outbox_frames(session)[-1][:2] == (CLOSE, True)
    assert outbox_frames(session)[-1][2][:2] == b"\x03\xf1"  # 1009 on the wire


@pytest.mark.parametrize("cut_each_frame", [False, True])
def test_message_of_too_many_fragments_is_1009(cut_each_frame: bool) -> None:
    """Each frame costs a parse however small: a message of more than max_fragments frames
    is refused with 1009 (under the byte limit), whether its frames come in one read or
    one read each (the frame-limit hook is made with each wsproto parser: its count must
    hold for the whole message, however the reads fall)."""
    session = ws.WSSession(ws.accept(upgrade_request(upgrade_headers())),
                           max_frame=MAX_FRAME, max_message=MAX_MESSAGE, max_fragments=8)
    frames = [frame(TEXT, b"a", fin=False), *(frame(CONT, b"a", fin=False) for _ in range(8)),
              frame(CONT, b"a")]
    events: list[ws.Received | ws.Closed] = []
    for chunk in (frames if cut_each_frame else [b"".join(frames)]):
        events += session.receive(chunk)
    assert closed_code(events) == 1009
    assert not any(isinstance(e, ws.Received) for e in events)
    at_limit = ws.WSSession(ws.accept(upgrade_request(upgrade_headers())),
                            max_frame=MAX_FRAME, max_message=MAX_MESSAGE, max_fragments=8)
    ok = [frames[0], *frames[1:7], frame(CONT, b"a")]  # 8 frames: at the limit
    assert at_limit.receive(b"".join(ok)) == [ws.Received("a" * 8)]


def frames_fed_one_by_one(frames: list[bytes], **kw: Any) -> list[ws.Received | ws.Closed]:
    """Cut at frame boundaries only (byte-by-byte cuts are covered, and fail for another
    reason, in test_mask_split_across_reads_is_counted_once)."""
    cuts = [sum(map(len, frames[:i])) for i in range(1, len(frames))]
    events, _ = feed(b"".join(frames), cuts, **kw)
    whole, _ = feed(b"".join(frames), **kw)
    assert events == whole
    return events


def test_message_exactly_at_limit_passes() -> None:
    fragment = b"b" * (MAX_MESSAGE // 4)
    frames = [frame(BINARY, fragment, fin=False), frame(CONT, fragment, fin=False),
              frame(CONT, fragment, fin=False), frame(CONT, fragment)]
    assert frames_fed_one_by_one(frames) == [ws.Received(fragment * 4)]
    over = [*frames[:3], frame(CONT, fragment + b"!")]
    assert closed_code(frames_fed_one_by_one(over)) == 1009


def test_frame_header_over_max_frame_is_1009_before_payload() -> None:
    """Only the header (with its mask) is sent: the verdict must not wait for payload."""
    for length in (MAX_FRAME + 1, 1 << 16, 1 << 40):
        session = new_session()
        events = session.receive(frame_header(BINARY, length, mask=b"abcd"))
        assert closed_code(events) == 1009, length
        assert outbox_frames(session) == [(CLOSE, True, outbox_frames(session)[0][2])]
        assert outbox_frames(session)[0][2][:2] == b"\x03\xf1"


def test_mask_split_across_reads_is_counted_once() -> None:
    """A continuation frame whose 4 mask bytes arrive in two TCP reads: wsproto runs the
    extension header hook again when it re-parses the header, and the message size must
    not be counted twice (a 12 KiB message under a 16 KiB limit is not too big)."""
    part = b"d" * 4000
    data = frame(BINARY, part, fin=False) + frame(CONT, part, fin=False) + frame(CONT, part)
    session = new_session()
    events: list[ws.Received | ws.Closed] = []
    second = len(frame(BINARY, part, fin=False))
    # Cut inside the second frame's mask (2 header bytes + 2 length bytes + 2 mask bytes).
    for piece in (data[:second + 6], data[second + 6:second + 7], data[second + 7:]):
        events += session.receive(piece)
    assert events == [ws.Received(part * 3)]


def test_frame_at_max_frame_passes() -> None:
    events, _ = all_ways(frame(BINARY, b"z" * MAX_FRAME))
    assert events == [ws.Received(b"z" * MAX_FRAME)]


def test_control_frames_do_not_count_towards_the_message() -> None:
    fragment = b"c" * (MAX_MESSAGE // 2)
    frames = [frame(BINARY, fragment, fin=False), frame(PING, b"p" * 125),
              frame(CONT, fragment)]
    events = frames_fed_one_by_one(frames, max_frame=MAX_MESSAGE)
    assert events == [ws.Received(fragment * 2)]
    _, session = feed(b"".join(frames), max_frame=MAX_MESSAGE)
    assert outbox_frames(session) == [(PONG, True, b"p" * 125)]


# ---------------------------------------------------------------- invalid data and errors


@pytest.mark.parametrize("payload", [
    b"\xff", b"abc\xc3", b"\xed\xa0\x80",  # lone byte, truncated, a UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"ok \xc0\xaf",  # overlong encoding
])
def test_invalid_utf8_text_is_1007(payload: bytes) -> None:
    events, session = all_ways(frame(TEXT, payload))
    assert closed_code(events) == 1007
    assert outbox_frames(session)[-1][2][:2] == b"\x03\xef"


def test_invalid_utf8_split_across_fragments_is_1007() -> None:
    data = frame(TEXT, b"ok \xe2\x82", fin=False) + frame(CONT, b"\x28 no")
    events, _ = all_ways(data)
    assert closed_code(events) == 1007


def test_utf8_character_split_across_fragments_is_fine() -> None:
    euro = "\u20ac".encode()
    data = frame(TEXT, b"price " + euro[:1], fin=False) + frame(CONT, euro[1:] + b"5")
    events, _ = all_ways(data)
    assert events == [ws.Received("price \u20ac5")]


PROTOCOL_ERRORS = {
    "unmasked client frame": frame(TEXT, b"hello", masked=False),
    "rsv1 without an extension": frame(TEXT, b"hello", rsv=4),
    "rsv2": frame(TEXT, b"hello", rsv=2),
    "rsv3": frame(BINARY, b"hello", rsv=1),
    "fragmented ping": frame(PING, b"ab", fin=False) + frame(CONT, b"cd"),
    "fragmented close": frame(CLOSE, close_payload(1000), fin=False),
    "opcode 3": frame(0x3, b"x"),
    "opcode 7": frame(0x7, b""),
    "opcode 0xb": frame(0xB, b""),
    "opcode 0xf": frame(0xF, b"x"),
    "ping over 125 bytes": frame(PING, b"p" * 126),
    "continuation without a message": frame(CONT, b"x"),
    "new message inside a fragmented one": (frame(TEXT, b"a", fin=False)
                                            + frame(TEXT, b"b")),
    "close with a 1-byte payload": frame(CLOSE, b"\x03"),
    "close code 999": frame(CLOSE, close_payload(999)),
    "close code 1005 on the wire": frame(CLOSE, close_payload(1005)),
    "close code 1006 on the wire": frame(CLOSE, close_payload(1006)),
}


@pytest.mark.parametrize("name", sorted(PROTOCOL_ERRORS))
def test_protocol_errors_are_1002(name: str) -> None:
    events, session = all_ways(PROTOCOL_ERRORS[name])
    assert closed_code(events) == 1002, name
    assert not any(isinstance(e, ws.Received) for e in events)
    out = outbox_frames(session)
    assert out and out[-1][0] == CLOSE and out[-1][2][:2] == b"\x03\xea", out


@pytest.mark.parametrize("name", sorted(PROTOCOL_ERRORS))
def test_nothing_is_parsed_after_a_protocol_error(name: str) -> None:
    """Once the connection is failed (RFC 6455 section 7.1.7), bytes after the bad
    frame are not data: no message and no second Closed, however the bytes are cut."""
    data = PROTOCOL_ERRORS[name] + frame(TEXT, b"after") + frame(
        CLOSE, close_payload(1000))
    events, _ = all_ways(data)
    assert closed_code(events) == 1002
    assert events == [events[-1]]


def test_close_reason_invalid_utf8_is_1007() -> None:
    events, _ = all_ways(frame(CLOSE, b"\x03\xe8\xff\xfe"))
    assert closed_code(events) == 1007


# -------------------------------------------------------------------- ping, pong, close


def test_ping_gets_a_pong_with_its_payload() -> None:
    for payload in (b"", b"x", bytes(range(125))):
        events, session = all_ways(frame(PING, payload))
        assert events == []
        assert outbox_frames(session) == [(PONG, True, payload)]


def test_a_few_pings_in_one_read_each_get_their_pong_a_flood_one() -> None:
    """RFC 6455 section 5.5.3 allows a Pong for the latest Ping only; a client that pings a
    few times in a row still gets every Pong, in order (Autobahn 2.10, 2.11), while a flood
    in one read gets one (the latest's), not one per Ping."""
    session = new_session()
    session.receive(b"".join(frame(PING, b"p%d" % i) for i in range(10)))
    pongs = ServerFrames().feed(b"".join(session.outbox))
    assert pongs == [(PONG, True, b"p%d" % i) for i in range(10)]
    session = new_session()
    flood = ws.EVENTS_PER_CALL
    session.receive(b"".join(frame(PING, b"f%d" % i) for i in range(flood)))
    pongs = ServerFrames().feed(b"".join(session.outbox))
    assert pongs == [(PONG, True, b"f%d" % (flood - 1))]


def test_unsolicited_pong_is_ignored() -> None:
    events, session = all_ways(frame(PONG, b"hi") + frame(TEXT, b"after"))
    assert events == [ws.Received("after")]
    assert session.outbox == []


@pytest.mark.parametrize("code, reason", [(1000, ""), (1001, "going"), (3000, "app"),
                                          (4999, "\u00e9t\u00e9")])
def test_peer_close_is_echoed(code: int, reason: str) -> None:
    events, session = all_ways(frame(CLOSE, close_payload(code, reason)))
    assert events == [ws.Closed(code, reason)]
    assert outbox_frames(session) == [(CLOSE, True, close_payload(code, reason))]
    assert session.close() == b""  # the handshake is over
    assert session.message("late") == b""


def test_empty_close_is_answered_with_an_empty_close() -> None:
    """1005 means "no status" and must never be put on the wire (RFC 6455 7.4.1)."""
    events, session = all_ways(frame(CLOSE))
    assert events == [ws.Closed(1005)]
    assert outbox_frames(session) == [(CLOSE, True, b"")]


def test_server_initiated_close_then_peer_reply() -> None:
    session = new_session()
    out = ServerFrames().feed(session.close(1001, "bye"))
    assert out == [(CLOSE, True, close_payload(1001, "bye"))]
    assert session.state is ws.CLOSING
    # Messages the peer sent before it saw our Close are still delivered (7.1.3).
    events = session.receive(frame(TEXT, b"late") + frame(CLOSE, close_payload(1001)))
    assert events == [ws.Received("late"), ws.Closed(1001)]
    assert session.outbox == []  # nothing to echo: we started it
    assert session.receive(frame(TEXT, b"more")) == []


def test_tcp_end_without_close_is_1006() -> None:
    session = new_session()
    assert session.receive(frame(TEXT, b"x")) == [ws.Received("x")]
    assert session.receive(None) == [ws.Closed(1006)]
    assert session.closed == ws.Closed(1006)
    assert session.outbox == []


def test_outgoing_messages_are_valid_server_frames() -> None:
    session = new_session()
    c = client()
    c.receive_data(session.message("hi \u2603") + session.message(b"\x00\x01")
                   + session.ping(b"pp"))
    events = list(c.events())
    assert [(type(e).__name__, e.data if isinstance(e, Message) else
             e.payload if isinstance(e, Ping) else None)
            for e in events] == [("TextMessage", "hi \u2603"),
                                 ("BytesMessage", b"\x00\x01"), ("Ping", b"pp")]


# -------------------------------------------------------------------------- text_header


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_header_matches_wsproto(n: int) -> None:
    server = Connection(ConnectionType.SERVER)
    payload = "a" * n
    wire = server.send(TextMessage(payload))
    header = ws.text_header(n)
    assert wire == header + payload.encode()
    assert ServerFrames().feed(header + payload.encode()) == [(TEXT, True, payload.encode())]


# ---------------------------------------------------------------------- permessage-deflate


def deflate_client_pair(*, max_message: int = MAX_MESSAGE) -> tuple[WSConnection,
                                                                   ws.WSSession]:
    """A wsproto client offering permessage-deflate, and our session that accepted it."""
    c = WSConnection(ConnectionType.CLIENT)
    request_bytes = c.send(Request(host="127.0.0.1", target="/",
                                   extensions=[PerMessageDeflate()]))
    accepted = ws.accept(parse_request_bytes(request_bytes), deflate=True,
                         max_message=max_message)
    assert accepted.extensions, "permessage-deflate was not negotiated"
    c.receive_data(accepted.response)
    events = list(c.events())
    assert isinstance(events[0], AcceptConnection)
    assert [e.name for e in events[0].extensions] == ["permessage-deflate"]
    return c, ws.WSSession(accepted, max_frame=max_message, max_message=max_message)


def test_deflate_negotiated_round_trip() -> None:
    c, session = deflate_client_pair()
    text = "compress me " * 500
    data = c.send(TextMessage(text)) + c.send(BytesMessage(b"\x00" * 10000))
    assert len(data) < 1000  # it really was compressed
    assert data[0] & 0x40, "RSV1 (compressed) not set by the client"
    assert session.receive(data) == [ws.Received(text), ws.Received(b"\x00" * 10000)]
    # And the other way: our compressed message inflates in the client.
    c.receive_data(session.message(text))
    assert [e.data for e in c.events()] == [text]  # type: ignore[attr-defined]


def test_deflate_round_trip_byte_by_byte() -> None:
    c, session = deflate_client_pair()
    messages = ["first " * 100, "second \u2603 " * 50, "third"]
    data = b"".join(c.send(TextMessage(m)) for m in messages)
    events = []
    for i in range(len(data)):
        events += session.receive(data[i:i + 1])
    assert events == [ws.Received(m) for m in messages]


def test_deflate_not_negotiated_unless_enabled() -> None:
    offer = b"permessage-deflate; client_max_window_bits"
    accepted = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", offer)])), deflate=False)
    assert accepted.extensions == []
    assert b"sec-websocket-extensions" not in accepted.response.lower()
    session = ws.WSSession(accepted, max_frame=MAX_FRAME, max_message=MAX_MESSAGE)
    events = session.receive(frame(TEXT, deflate_raw(b"hello"), rsv=4))
    assert closed_code(events) == 1002


@pytest.mark.parametrize("offer", [b"permessage-deflate",
                                   b"permessage-deflate; client_max_window_bits"])
def test_deflate_offer_is_accepted(offer: bytes) -> None:
    """A bare ``permessage-deflate`` offer (Firefox's; RFC 7692 section 7.1: every
    parameter is optional) is accepted like one with parameters."""
    accepted = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", offer)])), deflate=True)
    assert len(accepted.extensions) == 1
    lines = [x for x in accepted.response.split(b"\r\n")
             if x.lower().startswith(b"sec-websocket-extensions:")]
    assert len(lines) == 1 and lines[0].split(b":", 1)[1].strip().startswith(
        b"permessage-deflate"), lines
    session = ws.WSSession(accepted, max_frame=MAX_FRAME, max_message=MAX_MESSAGE)
    assert session.receive(frame(TEXT, deflate_raw(b"hello " * 10), rsv=4)) == [
        ws.Received("hello " * 10)]


OFFERS = [b"permessage-deflate", b"permessage-deflate; client_max_window_bits"]


def bomb(total: int) -> bytes:
    chunk = b"\x00" * (1 << 20)
    return deflate_raw([chunk] * (total // len(chunk)))


@pytest.mark.parametrize("offer", OFFERS)
@pytest.mark.parametrize("fragmented", [False, True])
def test_deflate_bomb_is_1009_in_bounded_memory(fragmented: bool, offer: bytes) -> None:
    max_message = 1 << 20
    payload = bomb(50 << 20)  # 50 MiB of zeros in ~50 KiB
    assert len(payload) < 100_000
    if fragmented:
        step = 1000
        pieces = [payload[i:i + step] for i in range(0, len(payload), step)]
        data = frame(BINARY, pieces[0], fin=False, rsv=4)
        data += b"".join(frame(CONT, p, fin=False) for p in pieces[1:-1])
        data += frame(CONT, pieces[-1])
    else:
        data = frame(BINARY, payload, rsv=4)
    session = new_session(deflate=True, offer=offer, max_message=max_message,
                          max_frame=max_message)
    tracemalloc.start()
    try:
        events = []
        for i in range(0, len(data), 4096):
            events += session.receive(data[i:i + 4096])
            if session.closed:
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert closed_code(events) == 1009
    assert not any(isinstance(e, ws.Received) for e in events)
    assert peak < 4 * max_message, f"peak {peak} bytes while inflating a bomb"


@pytest.mark.parametrize("offer", OFFERS)
def test_deflate_message_exactly_at_limit_passes(offer: bytes) -> None:
    max_message = 1 << 16
    session = new_session(deflate=True, offer=offer, max_message=max_message,
                          max_frame=max_message)
    events = session.receive(frame(BINARY, deflate_raw(b"y" * max_message), rsv=4))
    assert events == [ws.Received(b"y" * max_message)]
    events = session.receive(frame(BINARY, deflate_raw(b"y" * (max_message + 1)), rsv=4))
    assert closed_code(events) == 1009


def test_deflate_garbage_is_1007() -> None:
    """Undecodable compressed data is invalid payload data (RFC 7692 section 8.1.2,
    failing the connection; Autobahn expects 1007 or 1002)."""
    session = new_session(deflate=True, offer=OFFERS[1])
    events = session.receive(frame(BINARY, b"\xff\xff\xff\xff garbage", rsv=4))
    assert closed_code(events) in (1002, 1007)


# ------------------------------------------------------------------------------ handshake


def test_accept_builds_the_rfc_accept_token() -> None:
    accepted = ws.accept(upgrade_request())
    head = accepted.response
    assert head.startswith(b"HTTP/1.1 101 ")
    assert head.endswith(b"\r\n\r\n")
    lines = {line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip()
             for line in head.split(b"\r\n")[1:] if line}
    assert lines[b"sec-websocket-accept"] == ACCEPT
    assert lines[b"upgrade"].lower() == b"websocket"
    assert lines[b"connection"].lower() == b"upgrade"
    assert accepted.subprotocol is None
    assert b"sec-websocket-protocol" not in lines


def test_accept_token_for_random_keys() -> None:
    for _ in range(20):
        key = base64.b64encode(os.urandom(16))
        head = ws.accept(upgrade_request(upgrade_headers(key=key))).response
        expected = base64.b64encode(hashlib.sha1(
            key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert b"sec-websocket-accept: " + expected + b"\r\n" in head


def test_handshake_accepted_by_wsproto_client() -> None:
    c = WSConnection(ConnectionType.CLIENT)
    data = c.send(Request(host="127.0.0.1", target="/chat", subprotocols=["v2", "v1"]))
    accepted = ws.accept(parse_request_bytes(data), subprotocols=("v1", "v2"))
    c.receive_data(accepted.response)
    event = next(c.events())
    assert isinstance(event, AcceptConnection)
    assert event.subprotocol == "v2"  # the first offered that we speak
    assert accepted.subprotocol == "v2"


def reject(headers: list[tuple[bytes, bytes]], **kw: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        ws.accept(upgrade_request(headers), **kw)  # type: ignore[arg-type]
    return info.value


def test_missing_key_is_400() -> None:
    assert reject(upgrade_headers(key=b"")).status == 400


@pytest.mark.parametrize("key", [b"short", b"!!!not base64!!!", base64.b64encode(b"x" * 15),
                                 base64.b64encode(b"x" * 17)])
def test_malformed_key_is_400(key: bytes) -> None:
    assert reject(upgrade_headers(key=key)).status == 400


@pytest.mark.parametrize("version", [b"8", b"7", b"14", b"13, 8", b""])
def test_other_version_is_426(version: bytes) -> None:
    assert reject(upgrade_headers(version=version)).status == 426


def test_missing_version_is_426() -> None:
    headers = [h for h in upgrade_headers() if h[0] != b"sec-websocket-version"]
    assert reject(headers).status == 426


def test_not_get_or_no_connection_upgrade_is_400() -> None:
    with pytest.raises(ProtocolError) as info:
        ws.accept(upgrade_request(method="POST"))
    assert info.value.status == 400
    headers = [h for h in upgrade_headers() if h[0] != b"connection"]
    assert reject(headers).status == 400
    headers = [(k, b"keep-alive, Upgrade" if k == b"connection" else v)
               for k, v in upgrade_headers()]
    assert ws.accept(upgrade_request(headers)).response.startswith(b"HTTP/1.1 101")


def test_origin_allow_list() -> None:
    allowed = frozenset({"https://good.example"})
    bad = upgrade_headers(extra=[(b"origin", b"https://evil.example")])
    assert reject(bad, origins=allowed).status == 403
    assert reject(upgrade_headers(), origins=allowed).status == 403  # no Origin at all
    good = upgrade_headers(extra=[(b"origin", b"https://good.example")])
    assert ws.accept(upgrade_request(good), origins=allowed).response.startswith(
        b"HTTP/1.1 101")
    # Without an allow-list any origin passes.
    assert ws.accept(upgrade_request(bad)).response.startswith(b"HTTP/1.1 101")


def test_subprotocol_negotiation() -> None:
    offer = upgrade_headers(extra=[(b"sec-websocket-protocol", b"chat.v1, chat.v2")])
    accepted = ws.accept(upgrade_request(offer), subprotocols=("chat.v2", "chat.v1"))
    assert accepted.subprotocol in ("chat.v1", "chat.v2")
    assert (b"sec-websocket-protocol: " + accepted.subprotocol.encode() + b"\r\n"
            in accepted.response)
    session = ws.WSSession(accepted, max_frame=MAX_FRAME, max_message=MAX_MESSAGE)
    assert session.subprotocol == accepted.subprotocol
    # Nothing in common: no subprotocol header (RFC 6455 section 4.2.2).
    none = ws.accept(upgrade_request(offer), subprotocols=("other",))
    assert none.subprotocol is None
    assert b"sec-websocket-protocol" not in none.response.lower()
    # Offered in two header lines.
    two = upgrade_headers(extra=[(b"sec-websocket-protocol", b"a"),
                                 (b"sec-websocket-protocol", b"b")])
    assert ws.accept(upgrade_request(two), subprotocols=("b",)).subprotocol == "b"


def test_subprotocol_case_is_preserved() -> None:
    """Subprotocol names are case-sensitive tokens (RFC 6455 section 4.1, 11.5): a
    server that speaks ``Chat.V1`` must match and echo it exactly."""
    offer = upgrade_headers(extra=[(b"sec-websocket-protocol", b"Chat.V1")])
    accepted = ws.accept(upgrade_request(offer), subprotocols=("Chat.V1",))
    assert accepted.subprotocol == "Chat.V1"
    assert b"sec-websocket-protocol: Chat.V1\r\n" in accepted.response


def test_deflate_offer_parameters() -> None:
    offer = (b"permessage-deflate; client_max_window_bits; server_no_context_takeover, "
             b"permessage-deflate")
    accepted = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", offer)])), deflate=True)
    assert len(accepted.extensions) == 1
    line = [x for x in accepted.response.split(b"\r\n")
            if x.lower().startswith(b"sec-websocket-extensions")]
    assert len(line) == 1 and b"permessage-deflate" in line[0]
    unknown = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", b"x-webkit-deflate-frame")])), deflate=True)
    assert unknown.extensions == []
    assert b"sec-websocket-extensions" not in unknown.response.lower()


def test_compressed_frame_after_no_context_takeover() -> None:
    """With client_no_context_takeover every message starts a fresh inflater."""
    c = WSConnection(ConnectionType.CLIENT)
    data = c.send(Request(host="h", target="/", extensions=[
        PerMessageDeflate(client_no_context_takeover=True)]))
    accepted = ws.accept(parse_request_bytes(data), deflate=True)
    c.receive_data(accepted.response)
    assert isinstance(next(c.events()), AcceptConnection)
    session = ws.WSSession(accepted, max_frame=MAX_MESSAGE, max_message=MAX_MESSAGE)
    messages = ["same text " * 20] * 3
    out = b"".join(c.send(TextMessage(m)) for m in messages)
    assert session.receive(out) == [ws.Received(m) for m in messages]


def test_zlib_sanity() -> None:
    # The helper really produces what RFC 7692 says a sender sends.
    raw = deflate_raw(b"hello")
    d = zlib.decompressobj(-15)
    assert d.decompress(raw + b"\x00\x00\xff\xff") == b"hello"


# ----------------------------------------------------------- the lifecycle (WS_STATES)


class Tracked(ws.WSSession):
    """A session that records every state it passes through."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.path: list[str] = []
        super().__init__(*args, **kw)
        self.path.append(self.state.name)

    def _to(self, event: str) -> None:
        super()._to(event)
        self.path.append(self.state.name)


def tracked(tail: bytes = b"") -> Tracked:
    accepted = ws.accept(upgrade_request())
    return Tracked(accepted, max_frame=MAX_FRAME, max_message=MAX_MESSAGE, tail=tail)


def test_states_when_the_peer_closes_first() -> None:
    session = tracked()
    assert session.open
    session.receive(frame(CLOSE, close_payload(1000)))
    assert session.path == ["OPEN", "CLOSED"] and not session.open
    session.receive(None)  # then TCP ends: no further transition
    assert session.path == ["OPEN", "CLOSED"]


def test_states_when_we_close_first_and_the_peer_answers() -> None:
    session = tracked()
    session.close(1000)
    assert session.path == ["OPEN", "CLOSING"] and not session.open
    assert session.ping(b"x") == b""  # nothing but the handshake after our Close
    session.receive(frame(CLOSE, close_payload(1000)))
    assert session.path == ["OPEN", "CLOSING", "CLOSED"]


def test_states_when_we_close_first_and_tcp_ends() -> None:
    session = tracked()
    session.close(1001)
    assert session.receive(None) == [ws.Closed(1006)]
    assert session.path == ["OPEN", "CLOSING", "FAILED"]


def test_states_on_a_protocol_error() -> None:
    session = tracked()
    events = session.receive(frame(TEXT, b"x", masked=False))  # client frames are masked
    assert [e.code for e in events if isinstance(e, ws.Closed)] == [1002]
    assert session.path == ["OPEN", "FAILED"]
    assert outbox_frames(session)[0][0] == CLOSE  # answered with its code


def test_states_when_tcp_is_lost() -> None:
    session = tracked()
    assert session.receive(None) == [ws.Closed(1006)]
    assert session.path == ["OPEN", "FAILED"]
    assert session.receive(None) == [] and session.receive(b"x") == []


def test_a_handshake_tail_is_parsed_first() -> None:
    session = tracked(tail=frame(TEXT, b"early"))
    assert session.receive(b"") == [ws.Received("early")]
    session = tracked(tail=frame(TEXT, b"first"))
    assert session.receive(frame(TEXT, b"second")) == [ws.Received("first"),
                                                       ws.Received("second")]
    session = tracked(tail=frame(TEXT, b"only"))
    assert session.receive(None) == [ws.Received("only"), ws.Closed(1006)]


def test_a_tail_then_tcp_end_with_nothing_complete() -> None:
    session = tracked(tail=frame(TEXT, b"cut")[:3])
    assert session.receive(None) == [ws.Closed(1006)]
    assert session.path == ["OPEN", "FAILED"]


def test_the_limits_hook_is_never_negotiated() -> None:
    assert ws._Limits(10, 10).offer() is False


def deflate_bits(fields: list[tuple[int, int, bool]]) -> bytes:
    """Raw deflate bits (RFC 1951 section 3.1.1): ``(value, width, huffman)``; Huffman
    codes are packed most significant bit first, other fields least significant first."""
    bits: list[int] = []
    for value, width, huffman in fields:
        order = reversed(range(width)) if huffman else range(width)
        bits += [(value >> i) & 1 for i in order]
    assert len(bits) % 8 == 0
    return bytes(sum(bit << j for j, bit in enumerate(bits[i:i + 8]))
                 for i in range(0, len(bits), 8))


def test_deflate_output_that_only_the_tail_releases_is_bounded_too() -> None:
    """A compressed message that ends just before a match's distance code: it inflates to
    5 bytes, and the 258-byte match comes out only with the 00 00 ff ff tail appended at
    the message's end (RFC 7692 section 7.2.2).  That last inflate is bounded as well."""
    literal = (0b110010000 + 200 - 144, 9, True)  # fixed Huffman, literal 200 (9 bits)
    payload = deflate_bits([(0, 1, False), (1, 2, False),  # not final; fixed Huffman
                            *[literal] * 5,
                            (0b11000000 + 285 - 280, 8, True)])  # length 258; no distance
    inflater = zlib.decompressobj(-15)
    assert len(inflater.decompress(payload)) == 5
    assert len(inflater.decompress(b"\x00\x00\xff\xff")) == 258
    session = new_session(deflate=True, offer=b"permessage-deflate", max_message=100)
    assert closed_code(session.receive(frame(BINARY, payload, rsv=4))) == 1009
    roomy = new_session(deflate=True, offer=b"permessage-deflate", max_message=1000)
    assert roomy.receive(frame(BINARY, payload, rsv=4)) == [ws.Received(bytes([200]) * 263)]


def test_a_deflate_offer_wsproto_cannot_accept_is_skipped() -> None:
    bad = b"permessage-deflate; server_max_window_bits=7"
    accepted = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", bad + b", permessage-deflate")])), deflate=True)
    assert len(accepted.extensions) == 1
    assert b"sec-websocket-extensions: permessage-deflate\r\n" in accepted.response
    alone = ws.accept(upgrade_request(upgrade_headers(
        extra=[(b"sec-websocket-extensions", bad)])), deflate=True)
    assert alone.extensions == [] and b"sec-websocket-extensions" not in alone.response


# ------------------------------------------------- bounded work per call (parse_more)


def test_a_flood_of_messages_is_parsed_in_slices_in_order() -> None:
    peer = client()
    count = 2 * ws.EVENTS_PER_CALL + 7
    data = b"".join(peer.send(TextMessage(str(i))) for i in range(count))
    session = new_session()
    slices = [session.receive(data)]
    while session.backlog:
        slices.append(session.parse_more())
    assert [len(s) for s in slices] == [ws.EVENTS_PER_CALL, ws.EVENTS_PER_CALL, 7]
    assert [e for s in slices for e in s] == [ws.Received(str(i)) for i in range(count)]


@pytest.mark.parametrize("ending", ["close", "fail", "lost"])
def test_nothing_is_parsed_after_closed(ending: str) -> None:
    """Frames after the peer's Close, a protocol error, or the end of TCP are never
    parsed, by parse_more as by receive."""
    late = client().send(TextMessage("late"))
    session = new_session()
    if ending == "close":
        events = session.receive(client().send(CloseConnection(code=1000)) + late)
    elif ending == "fail":
        events = session.receive(b"\x81\x05hello" + late)  # unmasked: 1002
    else:
        events = session.receive(late[:3]) + session.receive(None)
    assert closed_code(events) == {"close": 1000, "fail": 1002, "lost": 1006}[ending]
    assert session.state.terminal and not session.backlog
    assert session.parse_more() == []
    assert session.receive(late) == [] and session.parse_more() == []


@pytest.mark.parametrize("n", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_plain_messages_are_framed_as_wsproto_frames_them(n: int) -> None:
    """Without permessage-deflate a message is framed by us (text and binary headers of
    every length class), byte for byte what wsproto makes."""
    server = Connection(ConnectionType.SERVER)
    session = new_session()
    assert session.message("a" * n) == server.send(TextMessage("a" * n))
    assert session.message(b"b" * n) == server.send(BytesMessage(b"b" * n))
    assert ws.binary_header(n) + b"b" * n == server.send(BytesMessage(b"b" * n))


def test_text_message_from_utf8_bytes() -> None:
    """ws.send_json's way: the UTF-8 of a text message framed as it is; with deflate the
    message goes through wsproto (compressed); nothing once the session is closing."""
    plain = new_session()
    assert plain.text_message("h\u00e9".encode()) == plain.message("h\u00e9")
    c, deflated = deflate_client_pair()
    c.receive_data(deflated.text_message(b'{"a":"' + b"x" * 300 + b'"}'))
    (event,) = list(c.events())
    assert isinstance(event, TextMessage) and event.data == '{"a":"' + "x" * 300 + '"}'
    plain.close()
    assert plain.text_message(b"x") == b""


@pytest.mark.parametrize("bad", [frame(CLOSE, close_payload(999)), frame(TEXT, b"\xff"),
                                 frame(TEXT, b"x", masked=False)])
def test_a_protocol_error_while_closing_fails_the_connection(bad: bytes) -> None:
    """After our Close, what comes instead of the peer's is a protocol error (RFC 6455
    section 7.1.7): FAILED with its code, not a clean close, and no second Close from us
    (tests/test_ws_lifecycle_stateful.py found it taken for the peer's answer)."""
    session = new_session()
    session.close(1000)
    session.outbox.clear()
    events = session.receive(bad)
    assert session.state is ws.FAILED
    assert closed_code(events) in (1002, 1007)
    assert session.outbox == []
    # A real answer still closes cleanly.
    session = new_session()
    session.close(1000)
    assert closed_code(session.receive(frame(CLOSE, close_payload(1000)))) == 1000
    assert session.state is ws.CLOSED


# ------------------------------------------- at rest: whole frames without wsproto's parser


def test_whole_frames_at_rest_keep_no_parser() -> None:
    """Whole masked FIN data frames at rest are parsed without wsproto, which a plain
    socket keeps only while a frame or a message is under way (issue 14: ~1 KiB)."""
    long = "é" * 200  # a 2-byte length (RFC 6455 5.2)
    data = frame(TEXT, b"one") + frame(BINARY, b"\x00\xff") + frame(TEXT, long.encode())
    events, session = feed(data)
    assert events == [ws.Received("one"), ws.Received(b"\x00\xff"), ws.Received(long)]
    assert session._conn is None
    # Cut in the 2-byte length, then in the payload: wsproto holds the part, then rests.
    cut = frame(TEXT, long.encode())
    assert session.receive(cut[:3]) == [] and session._conn is not None
    assert session.receive(cut[3:20]) == []
    assert session.receive(cut[20:]) == [ws.Received(long)]
    assert session._conn is None
    # A Ping at rest goes through wsproto, answered; the parser rests again after it.
    assert session.receive(frame(PING, b"p")) == []
    assert outbox_frames(session) == [(0xA, True, b"p")] and session._conn is None


@pytest.mark.parametrize(("data", "code"), [
    (frame_header(TEXT, 5, mask=None)[:1] + bytes((0x80 | 126,)) + (5).to_bytes(2, "big")
     + b"\0\0\0\0hello", 1002),  # a 2-byte length for 5 bytes: not minimal (5.2)
    (frame(TEXT, b"\xff\xfe"), 1007),  # not UTF-8 (8.1)
    (frame(TEXT, b"hello", masked=False), 1002),  # unmasked from a client (5.1)
    (frame(BINARY, b"x" * (MAX_FRAME + 1)), 1009),  # over the frame limit
    (frame(TEXT, b"ok", rsv=4), 1002),  # an RSV bit nothing negotiated (5.2)
    (frame(CONT, b"x"), 1002),  # a continuation with no message (5.4)
])
def test_what_the_whole_frame_parser_leaves_to_wsproto(data: bytes, code: int) -> None:
    events, _ = all_ways(frame(TEXT, b"first") + data)
    assert events[0] == ws.Received("first")
    assert closed_code(events) == code


def test_whole_frames_past_the_event_budget_wait_for_parse_more() -> None:
    count = ws.EVENTS_PER_CALL + 10
    session = new_session()
    events = session.receive(b"".join(frame(TEXT, b"%d" % i) for i in range(count)))
    assert len(events) == ws.EVENTS_PER_CALL and session.backlog
    events += session.parse_more()
    assert events == [ws.Received(str(i)) for i in range(count)]
    assert not session.backlog and session._conn is None


def test_tcp_end_at_rest_is_1006_and_ping_is_made_here() -> None:
    session = new_session()
    assert session.ping(b"hi") == b"\x89\x02hi"
    assert session.receive(None) == [ws.Closed(ws.ABNORMAL)]
    assert session.ping(b"hi") == b""


def test_kept_request_headers_are_packed_and_read_the_same() -> None:
    request = upgrade_request(upgrade_headers(extra=[(b"x-user", b"ann, bob"), (b"x-e", b"")]))
    kept = ws.keep_request(request)
    assert isinstance(kept.headers, ws.PackedHeaders)
    assert list(kept.headers) == list(request.headers) and len(kept.headers) == len(
        request.headers)
    assert kept.headers[-2] == (b"x-user", b"ann, bob") and kept.headers[-1] == (b"x-e", b"")
    assert list(kept.headers[:2]) == list(request.headers[:2])
    assert kept.header(b"x-user") == b"ann, bob" and kept.header_tokens(b"x-user") == [
        b"ann", b"bob"]
    assert kept.path == request.path and kept.method == request.method
    # A NUL (refused by RFC 9110 section 5.5, but not ours to assume): kept as it is.
    odd = upgrade_request(upgrade_headers(extra=[(b"x-odd", b"a\0b")]))
    assert ws.keep_request(odd).headers is odd.headers
    assert ws.keep_request(odd).header(b"x-odd") == b"a\0b"


def test_kept_request_does_not_keep_the_lookup_dict() -> None:
    """The handshake looked fields up by name (a dict of every name and value): the socket
    keeps the packed headers only, and a later lookup makes the dict again."""
    for extra in ([(b"x-user", b"ann")], [(b"x-user", b"ann"), (b"x-odd", b"a\0b")]):
        request = upgrade_request(upgrade_headers(extra=extra))
        assert request.header(b"x-user") == b"ann" and request.fields is not None
        kept = ws.keep_request(request)
        assert kept.fields is None
        assert kept.header(b"x-user") == b"ann"
    empty = ws.keep_request(upgrade_request([])).headers
    assert list(empty) == [] and len(empty) == 0
