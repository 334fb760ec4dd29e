"""A hypothesis state machine over one WebSocket connection's life (``proto/ws.py``
``WSSession``): the client's messages (text and binary, in fragments, with Pings between
the fragments), Pings and Pongs, its Close, protocol errors and EOF, delivered in random
segments; the server's messages, its Close, and Pongs held while its output is full.

Checked after every step: the state follows ``WS_STATES`` (OPEN; CLOSING after our Close;
CLOSED after the peer's Close; FAILED after a protocol error or EOF, each with its RFC 6455
code) and every transition goes through the table; every message comes out once, in
order, as sent, as soon as its last byte is in; exactly one ``Closed`` ends the events and
nothing follows it; a Close of the peer's is echoed with its code while we were OPEN (RFC
6455 section 5.5.1), a failure answered with its code (section 7.1.7); every Pong answers a
Ping received, in order, the latest Ping is answered once its bytes are in (section 5.5.3)
unless Pongs are held, and never more Pongs than Pings; the message being gathered stays
under the message limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from ws_helpers import BINARY, CLOSE, CONT, PING, PONG, TEXT, ServerFrames, upgrade_request
from ws_helpers import frame as any_frame

from streamcore.proto import ws
from streamcore.proto.state import State, Table

MAX_MESSAGE = 256
MASK = b"\x5a\x0f\xf0\xa5"


def frame(opcode: int, payload: bytes = b"", **kw: object) -> bytes:
    """A client frame with a fixed mask (hypothesis replays examples byte for byte)."""
    kw.setdefault("mask", MASK)
    return any_frame(opcode, payload, **kw)  # type: ignore[arg-type]
MAX_FRAGMENTS = 6


@dataclass
class Item:
    kind: str  # "message", "ping", "pong", "close", "bad"
    data: bytes
    end: int = 0  # offset on the wire after its last byte
    message: str | bytes | None = None
    payload: bytes = b""  # a ping's
    code: int = 0  # a close's or a failure's
    pings: list[tuple[int, bytes]] = field(default_factory=list)  # (end, payload) inside


def close_frame(code: int | None) -> bytes:
    return frame(CLOSE, b"" if code is None else struct.pack("!H", code) + b"bye")


BAD = {
    "unmasked": (frame(TEXT, b"hi", masked=False), 1002),
    "bad_utf8": (frame(TEXT, b"ok\xff"), 1007),
    "too_big": (frame(BINARY, b"x" * (MAX_MESSAGE + 1)), 1009),
    "reserved_opcode": (frame(0x3, b"x"), 1002),
    "fragmented_ping": (frame(PING, b"p", fin=False), 1002),
    "rsv_bit": (frame(TEXT, b"x", rsv=4), 1002),
    "stray_continuation": (frame(CONT, b"x"), 1002),
    "bad_close_code": (frame(CLOSE, struct.pack("!H", 999)), 1002),
    "too_many_fragments": (b"".join(frame(TEXT if i == 0 else CONT, b"a", fin=False)
                                    for i in range(MAX_FRAGMENTS + 1)), 1009),
    "control_too_long": (frame(PING, b"p" * 126), 1002),
}


class RecordingTable(Table):
    def __init__(self) -> None:
        super().__init__("websocket", ws.OPEN, ws.WS_STATES.transitions)
        self.log: list[str] = []

    def next(self, state: State, event: str) -> State:
        target = super().next(state, event)
        self.log.append(event)
        return target


class WSLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = RecordingTable()
        self._saved = ws.WS_STATES
        ws.WS_STATES = self.table
        accepted = ws.accept(upgrade_request(), max_message=MAX_MESSAGE)
        self.session = ws.WSSession(accepted, max_frame=MAX_MESSAGE, max_message=MAX_MESSAGE,
                                    max_fragments=MAX_FRAGMENTS)
        self.wire = b""
        self.fed = 0
        self.items: list[Item] = []
        self.received: list[str | bytes] = []
        self.closed: list[ws.Closed] = []
        self.server_frames = ServerFrames()
        self.pongs: list[bytes] = []
        self.pings_in: list[bytes] = []  # payloads of pings delivered (whole), in order
        self.echo: list[int] = []  # close codes we sent
        self.we_closed = False
        self.eof = False

    def teardown(self) -> None:
        ws.WS_STATES = self._saved

    # -- the client ---------------------------------------------------------------------

    def _queue(self, item: Item) -> None:
        self.wire += item.data
        item.end = len(self.wire)
        self.items.append(item)

    @precondition(lambda self: not self.eof)
    @rule(text=st.text(max_size=40), binary=st.booleans(), parts=st.integers(1, 4),
          ping_between=st.booleans())
    def send_message(self, text: str, binary: bool, parts: int, ping_between: bool) -> None:
        data = text.encode()
        message: str | bytes = data if binary else text
        cuts = sorted({len(data) * i // parts for i in range(1, parts)})
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        wire = b""
        item = Item("message", b"", message=message)
        for i, piece in enumerate(pieces):
            opcode = (BINARY if binary else TEXT) if i == 0 else CONT
            wire += frame(opcode, piece, fin=i == len(pieces) - 1)
            if ping_between and i < len(pieces) - 1:
                # RFC 6455 section 5.4: control frames may come between fragments.
                payload = b"mid%d" % len(self.wire + wire)
                wire += frame(PING, payload)
                item.pings.append((len(self.wire) + len(wire), payload))
        item.data = wire
        self._queue(item)

    @precondition(lambda self: not self.eof)
    @rule(payload=st.binary(max_size=20))
    def send_ping(self, payload: bytes) -> None:
        self._queue(Item("ping", frame(PING, payload), payload=payload))

    @precondition(lambda self: not self.eof)
    @rule()
    def send_pong(self) -> None:
        self._queue(Item("pong", frame(PONG, b"unsolicited")))

    @precondition(lambda self: not self.eof)
    @rule(code=st.sampled_from([None, 1000, 1001, 1011, 3000, 4999]))
    def send_close(self, code: int | None) -> None:
        self._queue(Item("close", close_frame(code), code=1005 if code is None else code))

    @precondition(lambda self: not self.eof)
    @rule(kind=st.sampled_from(sorted(BAD)))
    def send_bad(self, kind: str) -> None:
        data, code = BAD[kind]
        self._queue(Item("bad", data, code=code))

    @precondition(lambda self: not self.eof and self.fed < len(self.wire))
    @rule(size=st.integers(1, 300))
    def deliver(self, size: int) -> None:
        data = self.wire[self.fed:self.fed + size]
        before = self.fed
        self.fed += len(data)
        self._events(self.session.receive(data), before)

    @precondition(lambda self: not self.eof and self.fed == len(self.wire))
    @rule()
    def lose_connection(self) -> None:
        self.eof = True
        self._events(self.session.receive(None), self.fed)

    @rule()
    def parse_more(self) -> None:
        if self.session.backlog:
            self._events(self.session.parse_more(), self.fed)

    # -- the server ---------------------------------------------------------------------

    @rule(code=st.sampled_from([1000, 1001, 1008]))
    def server_close(self, code: int) -> None:
        was_open = self.session.state is ws.OPEN
        out = self.session.close(code)
        if was_open:
            assert self.session.state is ws.CLOSING
            self.we_closed = True
            self._server_bytes(out)
        else:
            assert out == b""

    @rule(text=st.text(max_size=10))
    def server_message(self, text: str) -> None:
        out = self.session.message(text)
        if self.session.state is ws.OPEN:
            assert self.server_frames.feed(out) == [(TEXT, True, text.encode())]
        else:
            assert out == b""

    @rule(hold=st.booleans())
    def hold_pongs(self, hold: bool) -> None:
        """Our output is full (hold) or drained again (release: the latest Pong goes)."""
        self.session.hold_pongs = hold
        if not hold:
            self.session.answer_ping()
            self._take_outbox()

    # -- the model ----------------------------------------------------------------------

    def _server_bytes(self, data: bytes) -> None:
        for opcode, fin, payload in self.server_frames.feed(data):
            assert fin
            if opcode == PONG:
                self.pongs.append(payload)
            elif opcode == CLOSE:
                self.echo.append(struct.unpack("!H", payload[:2])[0] if payload else 1005)

    def _take_outbox(self) -> None:
        out = b"".join(self.session.outbox)
        self.session.outbox.clear()
        self._server_bytes(out)

    def _events(self, events: list[ws.Received | ws.Closed], before: int) -> None:
        for event in events:
            assert not self.closed, f"{event} after {self.closed}"
            if isinstance(event, ws.Received):
                self.received.append(event.data)
            else:
                self.closed.append(event)
        # Pings whose last byte came in this call (and before any end).
        limit = self._end_offset()
        for item in self.items:
            pings = [(item.end, item.payload)] if item.kind == "ping" else item.pings
            for end, payload in pings:
                if before < end <= min(self.fed, limit):
                    self.pings_in.append(payload)
        self._take_outbox()

    def _end_offset(self) -> int:
        """Where the events end on the wire: after the first close or bad item."""
        for item in self.items:
            if item.kind in ("close", "bad"):
                return item.end
        return len(self.wire) + 1

    @invariant()
    def messages_in_order_as_soon_as_complete(self) -> None:
        expected = [i.message for i in self.items if i.kind == "message"
                    and i.end <= min(self.fed, self._end_offset())]
        if not self.session.backlog and not self.closed:
            assert self.received == expected
        else:
            assert self.received == expected[:len(self.received)]

    @invariant()
    def state_follows_the_table(self) -> None:
        session = self.session
        # The first Close or bad item, once its bytes are in; a bad one may be refused
        # from its first bytes on (a header that says enough).
        first = next((i for i in self.items if i.kind in ("close", "bad")), None)
        ender = first if first is not None and (
            first.end <= self.fed or (self.closed and first.kind == "bad"
                                      and self.fed > first.end - len(first.data))) else None
        if session.backlog:
            return
        if ender is not None:
            assert len(self.closed) == 1, (ender, self.closed)
            assert self.closed[0].code == ender.code
            if ender.kind == "bad":
                assert session.state is ws.FAILED and self.table.log[-1] == "fail"
                if not self.we_closed:
                    assert self.echo[-1] == ender.code  # failed with its code (7.1.7)
            else:
                assert session.state is ws.CLOSED and self.table.log[-1] == "recv_close"
                if not self.we_closed:  # echoed (5.5.1)
                    assert self.echo == [ender.code if ender.code != 1005 else 1000] or \
                        self.echo == [ender.code]
        elif self.eof:
            assert [c.code for c in self.closed] == [1006]
            assert session.state is ws.FAILED and self.table.log[-1] == "lost"
        elif self.we_closed:
            assert session.state is ws.CLOSING and not self.closed
        else:
            assert session.state is ws.OPEN and not self.closed
        assert len(self.echo) <= 1  # one Close from us, ever (section 5.5.1)

    @invariant()
    def pongs_answer_pings(self) -> None:
        # Every Pong is a Ping's payload, in order (a subsequence), never more of them.
        it = iter(self.pings_in)
        assert all(any(p == q for q in it) for p in self.pongs), (self.pongs, self.pings_in)
        assert len(self.pongs) <= len(self.pings_in)
        if (self.pings_in and not self.session.hold_pongs and not self.session.backlog
                and self.session.state is ws.OPEN):
            assert self.pongs and self.pongs[-1] == self.pings_in[-1]

    @invariant()
    def gathered_message_is_bounded(self) -> None:
        session = self.session
        parts = session._part or []
        assert sum(len(p.encode() if isinstance(p, str) else p) for p in parts) <= MAX_MESSAGE


WSLifecycle.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                         deadline=None)
test_ws_lifecycle = WSLifecycle.TestCase
