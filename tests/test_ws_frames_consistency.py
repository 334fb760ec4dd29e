"""Our zero-copy data frames and wsproto's own output share one byte stream: whatever the
mix, a client parses exactly the messages sent, in order, and the close after them; and
wsproto's state (its compression context included) is not disturbed by our frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from streamcore.proto import ws
from streamcore.proto.http import Request

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def server(deflate: bool) -> ws.WSSession:
    headers = [(b"host", b"a"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-key", KEY), (b"sec-websocket-version", b"13")]
    if deflate:
        headers.append((b"sec-websocket-extensions", b"permessage-deflate"))
    accepted = ws.accept(Request("GET", b"/", "/", "", headers), deflate=deflate)
    assert bool(accepted.extensions) == deflate
    return ws.WSSession(accepted, max_frame=1 << 20, max_message=1 << 20)


def client(deflate: bool) -> Connection:
    extensions = []
    if deflate:
        ext = PerMessageDeflate()
        ext.finalize("permessage-deflate")
        extensions.append(ext)
    return Connection(ConnectionType.CLIENT, extensions=extensions)


Step = tuple[str, str]
steps = st.lists(st.tuples(st.sampled_from(["ours", "wsproto", "ping"]),
                           st.text(max_size=300)), max_size=30)


@pytest.mark.parametrize("deflate", [False, True])
@settings(max_examples=60, deadline=None)
@given(plan=steps)
def test_mixed_frames_decode_exactly(deflate: bool, plan: list[Step]) -> None:
    session = server(deflate)
    wire = bytearray()
    expected: list[str] = []
    for kind, text in plan:
        if kind == "ours":  # what WSReader writes: header + shared payload buffers
            payload = text.encode()
            wire += ws.text_header(len(payload)) + payload
            expected.append(text)
        elif kind == "wsproto":  # compressed when negotiated: context must stay in step
            wire += session.message(text)
            expected.append(text)
        else:
            wire += session.ping(b"p")
    wire += session.close(ws.NORMAL, "bye")
    peer = client(deflate)
    peer.receive_data(bytes(wire))
    got: list[str] = []
    parts: list[str] = []
    closed = None
    for event in peer.events():
        if isinstance(event, TextMessage):
            parts.append(event.data)
            if event.message_finished:
                got.append("".join(parts))
                parts = []
        elif isinstance(event, CloseConnection):
            closed = event.code
        else:
            assert isinstance(event, Ping | Message)
    assert got == expected
    assert closed == ws.NORMAL
    assert not session.open  # wsproto knows it sent the close: no data frame after it
