"""WebSocket (RFC 6455, RFC 7692) server session on wsproto, sans-I/O.

wsproto parses frames, validates UTF-8, answers pings and runs the close handshake and the
permessage-deflate codec.  We add what a server facing the internet needs:

* the opening handshake checked against our parsed HTTP request (section 4.2.1), with an
  ``Origin`` allow-list (section 10.2: cross-site WebSocket hijacking) and subprotocol and
  extension negotiation;
* size limits checked from each frame *header*, before its payload is read (a wsproto
  extension hook sees the declared length first): frame and message size, and the number
  of frames of one message, 1009;
* bounded parsing work per call (:data:`EVENTS_PER_CALL`; :attr:`WSSession.backlog` says
  there is more), fragments gathered into one buffer, and one Pong for the latest of the
  Pings received (section 5.5.3), held while the connection says its output is full;
* a permessage-deflate whose inflater never produces more than the message limit
  (``zlib`` ``max_length``): a decompression bomb ends in 1009, not in memory growth;
* data frames for streamed tokens built here as a 2-10 byte header in front of payload
  buffers the token pipe already holds (no copy, no compression: RFC 7692 section 6 lets
  any message go uncompressed, and an uncompressed message does not touch the
  compression context).  wsproto's state is consulted before every such frame, and only
  whole (FIN) messages are written this way, so its outbound fragmentation state is
  never entered behind its back.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits
from wsproto.utilities import generate_accept_token

from ..errors import ProtocolError
from .http import CRLF, Request, http_date
from .state import State, Table

#: wsproto events parsed per :meth:`WSSession.receive` (or :meth:`~WSSession.parse_more`)
#: before the session hands the loop back: a millisecond or two of work, whatever one
#: read of the socket holds (a tiny frame costs wsproto about 4 us).
EVENTS_PER_CALL = 256
#: Pings answered one Pong each per parse call; above it only the latest is answered (RFC
#: 6455 section 5.5.3 allows a Pong for the most recent Ping only).  A client that pings a
#: few times in a row gets every Pong (Autobahn cases 2.10 and 2.11 check it); a flood
#: gets one Pong per call of EVENTS_PER_CALL events.
PONGS_PER_CALL = 16

#: What a wsproto Connection's event queue is until TCP ends (see WSSession.__init__).
_NO_EVENTS: tuple[()] = ()

def _at_rest(conn: Connection) -> bool:
    """wsproto's parser is between messages, with no byte of the next one: dropping it
    loses nothing (a new one starts where it would be)."""
    proto = conn._proto
    decoder = proto._frame_decoder
    return (decoder.header is None and not decoder.buffer.buffer
            and proto._message_decoder.opcode is None)


# RFC 6455 section 7.4.1 status codes.
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
#: Never on the wire: the code of a connection that ended without a Close (7.1.5).
ABNORMAL = 1006


class _Limits(Extension):
    """Not negotiated: an inbound hook that sees each frame's declared payload length
    before the payload is read (RFC 6455 section 5.2), so that oversize frames and
    messages are refused with 1009 without buffering them."""

    name = "streamcore-limits"

    def __init__(self, max_frame: int, max_message: int, max_fragments: int = 4096) -> None:
        self.max_frame = max_frame
        self.max_message = max_message
        self.max_fragments = max_fragments
        # Made with each wsproto parser (WSSession._wsproto), which exists only while a
        # frame or message is under way: this state starts at a message boundary.
        self._message = 0  # bytes of the current message's completed frames
        self._frames = 0  # completed frames of the current message
        self._frame = 0  # declared length of the frame being read (0 for control frames)
        self._data = False  # the frame being read is a data frame

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False  # never negotiated: a local hook only

    def frame_inbound_header(self, proto: object, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        # wsproto calls this again when it re-parses a header whose mask had not fully
        # arrived, so nothing is added up here: a frame counts once it is complete.
        if payload_length > self.max_frame:
            return CloseReason.MESSAGE_TOO_BIG
        if opcode.iscontrol():
            self._frame = 0
            self._data = False
        else:
            if opcode is not Opcode.CONTINUATION:
                self._message = 0
                self._frames = 0
            self._frame = payload_length
            self._data = True
            if self._message + payload_length > self.max_message:
                return CloseReason.MESSAGE_TOO_BIG
            if self._frames >= self.max_fragments:
                # Each frame costs a parse however small: a million 2-byte fragments
                # under the byte limit were 13 s of CPU.
                return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)

    def frame_inbound_complete(self, proto: object, fin: bool) -> None:
        self._message += self._frame
        if self._data:
            self._frames += 1
        self._frame = 0


_BOUNDS: dict[tuple[int, int, int], tuple[int, int, int]] = {}


def _bounds(max_frame: int, max_message: int, max_fragments: int) -> tuple[int, int, int]:
    """One tuple per distinct set of limits, however many sockets hold it (a server has
    one; 64 bytes per idle socket otherwise)."""
    key = (max_frame, max_message, max_fragments)
    return _BOUNDS.setdefault(key, key)


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflated messages never exceed ``max_message`` bytes."""

    def __init__(self, max_message: int) -> None:
        super().__init__()
        self.max_message = max_message
        self._inflated = 0

    def frame_inbound_payload_data(self, proto: object, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(bytes(data))

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        room = self.max_message - self._inflated + 1  # max_length=0 would mean unbounded
        inflater = self._decompressor
        assert inflater is not None  # set by frame_inbound_header for compressed messages
        try:
            out: bytes = inflater.decompress(data, room)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message or inflater.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(self, proto: object, fin: bool) -> bytes | CloseReason | None:
        if not fin:
            return None
        if not (self._inbound_is_compressible and self._inbound_compressed):
            self._inbound_compressed = None
            self._inflated = 0
            return None
        # RFC 7692 section 7.2.2: append 00 00 ff ff to the message, then inflate.
        out = self._inflate(b"\x00\x00\xff\xff")
        self._inflated = 0
        self._inbound_compressed = None
        if isinstance(out, CloseReason):
            return out
        no_takeover = self.client_no_context_takeover
        if no_takeover:
            self._decompressor = None
        return out


class HandshakeError(ProtocolError):
    """An upgrade request we refuse (RFC 6455 section 4.2.1): answered, then closed."""

    code = "websocket_handshake"


def close_reason(text: str) -> str:
    """``text`` cut to what a Close frame's reason may hold: 123 bytes of UTF-8 (a control
    frame's payload is at most 125 bytes, section 5.5, two of them the code)."""
    data = text.encode()
    return text if len(data) <= 123 else data[:123].decode("utf-8", "ignore")


@dataclass(slots=True)
class Accepted:
    """A handshake we accept: the 101 response and the negotiated options."""

    response: bytes
    subprotocol: str | None
    extensions: list[Extension]


def accept(request: Request, *, subprotocols: tuple[str, ...] = (), deflate: bool = False,
           origins: frozenset[str] | None = None, max_message: int = 1 << 22) -> Accepted:
    """Check an upgrade request (RFC 6455 section 4.2.1) and build the 101 response.

    Raises :class:`ProtocolError`: 400 for a malformed handshake, 426 (with the version we
    speak) for another protocol version, 403 for an Origin not in ``origins``.
    """
    if request.method != "GET" or request.http_version != b"1.1":
        raise HandshakeError("a WebSocket handshake is an HTTP/1.1 GET")
    if b"upgrade" not in request.header_tokens(b"connection"):
        raise HandshakeError("missing 'Connection: Upgrade'")
    if request.header_tokens(b"sec-websocket-version") != [b"13"]:
        # Section 4.4: say which version we speak.
        raise HandshakeError("unsupported WebSocket version (13 only)", status=426,
                             headers=[(b"sec-websocket-version", b"13")])
    key = request.header(b"sec-websocket-key")
    try:
        if key is None or len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise HandshakeError("missing or malformed Sec-WebSocket-Key") from None
    if origins is not None:
        origin = (request.header(b"origin") or b"").decode("latin-1")
        if origin not in origins:
            shown = origin if len(origin) <= 80 else origin[:80] + "..."
            raise HandshakeError(f"origin {shown!r} is not allowed", status=403)
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-accept", generate_accept_token(key)),
        (b"date", http_date()),
    ]
    chosen = None
    # Subprotocol names are case-sensitive tokens (RFC 6455 section 4.1): not lowercased.
    offered = [token.strip().decode("latin-1") for name, value in request.headers
               if name == b"sec-websocket-protocol" for token in value.split(b",")
               if token.strip()]
    for proto in offered:
        if proto in subprotocols:
            chosen = proto
            headers.append((b"sec-websocket-protocol", proto.encode()))
            break
    extensions: list[Extension] = []
    if deflate:
        for offer in _extension_offers(request):
            if offer.split(";", 1)[0].strip() != PerMessageDeflate.name:
                continue
            ext = BoundedDeflate(max_message)
            answer = ext.accept(offer)
            # wsproto's accept() gives the parameters to answer with ("" for a bare
            # offer), True, or None when it cannot accept this offer.
            if answer is None or answer is False:
                continue
            extensions.append(ext)
            reply = f"{ext.name}; {answer}" if isinstance(answer, str) and answer else ext.name
            headers.append((b"sec-websocket-extensions", reply.encode()))
            break
    lines = [b"HTTP/1.1 101 Switching Protocols", *(k + b": " + v for k, v in headers)]
    return Accepted(CRLF.join(lines) + CRLF + CRLF, chosen, extensions)


def _extension_offers(request: Request) -> list[str]:
    offers: list[str] = []
    for name, value in request.headers:
        if name == b"sec-websocket-extensions":
            offers.extend(part.strip() for part in value.decode("latin-1").split(","))
    return offers


class PackedHeaders(Sequence[tuple[bytes, bytes]]):
    """Header pairs in one buffer, NUL-separated: what a socket keeps of its upgrade
    request for its whole life (``ws.request``).  Seven pairs as a list are 14 bytes
    objects and 7 tuples, ~0.9 KB per socket; packed, ~0.3 KB.  (No field value holds a
    NUL, RFC 9110 section 5.5; :func:`keep_request` packs none that does.)"""

    __slots__ = ("_blob", "_count")

    def __init__(self, pairs: Sequence[tuple[bytes, bytes]]) -> None:
        self._count = len(pairs)
        self._blob = b"\0".join(part for pair in pairs for part in pair)

    def _pairs(self) -> list[tuple[bytes, bytes]]:
        parts = self._blob.split(b"\0")
        return list(zip(parts[::2], parts[1::2], strict=False))

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> tuple[bytes, bytes]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[bytes, bytes]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._pairs()[index]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._pairs())


def keep_request(request: Request) -> Request:
    """The upgrade request as a socket keeps it: its headers packed (:class:`PackedHeaders`),
    unless a name or value holds a NUL (then as they are).  The by-name dict a lookup made
    (``Request.fields``) is not kept: it would hold every name and value again for the
    socket's life (~450 bytes per idle socket); a later lookup makes it anew."""
    headers = request.headers
    if any(b"\0" in name or b"\0" in value for name, value in headers):
        return dataclasses.replace(request, fields=None)
    return dataclasses.replace(request, headers=PackedHeaders(headers), fields=None)


# -- events out of the session -----------------------------------------------------------


@dataclass(slots=True)
class Received:
    """One complete message from the peer."""

    data: str | bytes


@dataclass(slots=True)
class Closed:
    """The close handshake finished or failed: ``code`` is why (1005: no status)."""

    code: int
    reason: str = ""


_H16 = struct.Struct("!BBH").pack
_H64 = struct.Struct("!BBQ").pack
_SMALL_TEXT = [bytes((0x81, n)) for n in range(126)]
_SMALL_BINARY = [bytes((0x82, n)) for n in range(126)]


def text_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented text frame (RFC 6455 section 5.2)."""
    if length < 126:
        return _SMALL_TEXT[length]
    if length < 65536:
        return _H16(0x81, 126, length)
    return _H64(0x81, 127, length)


def binary_header(length: int) -> bytes:
    """The header of an unmasked, unfragmented binary frame (RFC 6455 section 5.2)."""
    if length < 126:
        return _SMALL_BINARY[length]
    if length < 65536:
        return _H16(0x82, 126, length)
    return _H64(0x82, 127, length)


# -- the WebSocket lifecycle ---------------------------------------------------------------

_W = "websocket"
#: Messages flow both ways.
OPEN = State(_W, "OPEN")
#: We sent a Close and wait for the peer's (RFC 6455 section 7.1.2): we send no more data.
CLOSING = State(_W, "CLOSING")
#: Both Close frames are sent (section 7.1.4): the server closes TCP first (7.1.1).
CLOSED = State(_W, "CLOSED", terminal=True)
#: The connection failed (section 7.1.7): a protocol error of the peer, answered with a
#: Close carrying its code, or TCP ended without a closing handshake (1006).
FAILED = State(_W, "FAILED", terminal=True)

#: One WebSocket's life.  ``send_close``: we start the closing handshake; ``recv_close``:
#: the peer's Close (answered at once if it started); ``fail``: a protocol error of the
#: peer's; ``lost``: TCP ended without a handshake.
WS_STATES = Table("websocket", OPEN, {
    OPEN: {"send_close": CLOSING, "recv_close": CLOSED, "fail": FAILED, "lost": FAILED},
    CLOSING: {"recv_close": CLOSED, "fail": FAILED, "lost": FAILED},
    CLOSED: {},
    FAILED: {},
})


class WSSession:
    """An accepted WebSocket connection: bytes in, messages and bytes to send out.

    wsproto parses and keeps its own parser state; the connection's life, as everything
    above this class sees it, is :attr:`state` (:data:`WS_STATES`)."""

    __slots__ = ("_bounds", "_conn", "_part", "_pending_tail", "_pings", "_plain", "backlog",
                 "closed", "hold_pongs", "outbox", "state", "subprotocol")

    def __init__(self, accepted: Accepted, *, max_frame: int, max_message: int,
                 max_fragments: int = 4096, tail: bytes = b"") -> None:
        self.subprotocol = accepted.subprotocol
        #: (max_frame, max_message, max_fragments): one tuple shared by every socket with
        #: the same limits; the stateful hook is made with each parser (:meth:`_wsproto`).
        self._bounds = _bounds(max_frame, max_message, max_fragments)
        #: No extension that changes frames (permessage-deflate) was negotiated: a whole
        #: message is one plain frame, framed here without wsproto's event machinery
        #: (which costs more than the rest of a message's way out).
        self._plain = not accepted.extensions
        #: wsproto's parser: while a frame or a message is under way, always with
        #: permessage-deflate (its context lives across messages, RFC 7692 section 7.2.3),
        #: and from our Close on.  None at rest between messages of a plain socket: its
        #: objects are ~1 KiB of an idle socket, and a whole frame at rest is parsed by
        #: :meth:`_whole_frames` (the usual client message: one masked FIN frame).
        self._conn: Connection | None = None
        if not self._plain:
            self._conn = self._wsproto(accepted.extensions)
        #: The fragments of the message being received, gathered into one buffer; None
        #: between messages (a message in one frame, the usual, needs none).
        self._part: list[Any] | None = None
        #: The payloads of the Pings not answered yet (at most PONGS_PER_CALL; past it only
        #: the latest, RFC 6455 section 5.5.3), and whether to hold them (the connection's
        #: output is full: a peer that pings and never reads must not fill our memory with
        #: Pongs; while held, only the latest is kept).
        self._pings: list[bytes] = []
        self.hold_pongs = False
        #: The last call stopped after EVENTS_PER_CALL events: call :meth:`parse_more`.
        self.backlog = False
        #: Bytes the session wants sent (pongs, close replies).
        self.outbox: list[bytes] = []
        self.state = OPEN
        #: Why it closed (the code received, or sent on a failure), once it has.
        self.closed: Closed | None = None
        self._pending_tail = tail

    def _to(self, event: str) -> None:
        self.state = WS_STATES.next(self.state, event)

    @property
    def open(self) -> bool:
        return self.state is OPEN

    def receive(self, data: bytes | None) -> list[Received | Closed]:
        """Feed bytes (``None``: the TCP connection ended); returns complete messages and,
        at the end, one :class:`Closed`."""
        if self._pending_tail:
            tail, self._pending_tail = self._pending_tail, b""
            if data is None:  # the handshake's tail, then the end
                return self.receive(tail) + self.receive(None)
            data = tail + data
        if self.closed is not None or self.state.terminal:
            return []  # one Closed per connection; nothing is parsed after it
        conn = self._conn
        if data is None:
            conn = conn or self._wsproto()
            conn._events = deque()
            conn.receive_data(None)
            return self._events(EVENTS_PER_CALL)
        out: list[Received | Closed] = []
        if conn is None:
            data = self._whole_frames(data, out)
            if not data:
                self.backlog = False
                return out
            conn = self._wsproto()
        conn.receive_data(data)
        if len(out) >= EVENTS_PER_CALL:
            self.backlog = True  # the rest waits in wsproto's buffer for parse_more
            return out
        return out + self._events(EVENTS_PER_CALL - len(out))

    def parse_more(self) -> list[Received | Closed]:
        """Go on parsing what :meth:`receive` left (:attr:`backlog`).  (After a Close,
        wsproto has no event left to give: nothing is parsed after it.)"""
        return self._events(EVENTS_PER_CALL)

    def _wsproto(self, extensions: Sequence[Extension] = ()) -> Connection:
        conn = self._conn = Connection(ConnectionType.SERVER,
                                       extensions=[_Limits(*self._bounds), *extensions])
        # wsproto queues in this deque only the 1006 event of receive_data(None), which
        # receive() gives it a deque for: an empty deque is 760 bytes.
        conn._events = _NO_EVENTS  # type: ignore[assignment]
        return conn

    def _whole_frames(self, data: bytes, out: list[Received | Closed]) -> bytes:
        """Parse the whole unfragmented data frames at the start of ``data`` (at rest, a
        plain socket): FIN set, no RSV bit, text or binary, masked (RFC 6455 section 5.2;
        a client masks every frame, 5.3), a minimal length (5.2) within the limits, and
        for text valid UTF-8 (8.1).  Whatever else (a control frame, a fragment, a part
        of a frame, an error to answer) stops it: the rest goes to wsproto, whose answer
        is the RFC's.  Returns the rest."""
        pos, end = 0, len(data)
        max_frame, max_message, _ = self._bounds
        most = min(max_frame, max_message)
        while end - pos >= 6 and len(out) < EVENTS_PER_CALL:
            first, second = data[pos], data[pos + 1]
            if (first != 0x81 and first != 0x82) or second < 0x80:
                break
            size, head = second & 0x7F, pos + 6
            if size == 126:
                size, head = int.from_bytes(data[pos + 2:pos + 4]), pos + 8
                if size < 126 or end < head:
                    break
            if size > most or size == 127 or end - head < size:
                break
            mask = data[head - 4:head] * (size // 4 + 1)
            payload = (int.from_bytes(data[head:head + size], "little")
                       ^ int.from_bytes(mask[:size], "little")).to_bytes(size, "little")
            if first == 0x81:
                try:
                    out.append(Received(payload.decode()))
                except UnicodeDecodeError:
                    break
            else:
                out.append(Received(payload))
            pos = head + size
        return data[pos:] if pos else data

    def _events(self, budget: int) -> list[Received | Closed]:
        out: list[Received | Closed] = []
        pinged = len(self._pings)
        self.backlog = False
        conn = self._conn or self._wsproto()
        events = conn.events()
        for event in events:
            if isinstance(event, Message):
                part = self._part
                if part is None and event.message_finished:
                    out.append(Received(event.data))  # a message in one piece: as it is
                else:
                    if part is None:
                        part = self._part = []
                    part.append(event.data)
                    if event.message_finished:
                        self._part = None
                        out.append(Received("".join(part) if isinstance(event, TextMessage)
                                            else b"".join(part)))
            elif isinstance(event, Ping):
                pinged += 1
                if pinged > PONGS_PER_CALL or self.hold_pongs:
                    self._pings.clear()  # a flood, or a peer that does not read: the latest
                self._pings.append(bytes(event.payload))
            elif isinstance(event, Pong):
                pass  # any byte received already counts as liveness
            else:  # the last event wsproto has for a connection
                assert isinstance(event, CloseConnection)
                self.answer_ping()
                out.append(self._on_close(event))
                break
            budget -= 1
            if budget <= 0:
                self.backlog = True
                break
        events.close()  # wsproto's parser keeps its place: the rest is parsed next time
        self.answer_ping()
        if self._plain and not self.backlog and self.state is OPEN and _at_rest(conn):
            self._conn = None  # between messages: nothing of wsproto's to keep
        return out

    def answer_ping(self) -> None:
        """The Pongs of the Pings pending into the outbox, unless held (:attr:`hold_pongs`)."""
        if self._pings and not self.hold_pongs and self.closed is None:
            # Made here, not by wsproto, which refuses once the peer's Close is parsed: a
            # Ping received before that Close is still answered (section 5.5.3), first.
            # A control frame: unmasked from a server, never compressed, <= 125 bytes.
            self.outbox.extend(bytes((0x8A, len(ping))) + ping for ping in self._pings)
            self._pings = []

    def _on_close(self, event: CloseConnection) -> Closed:
        conn = self._conn
        assert conn is not None  # the Close came from it
        code = int(event.code)
        if code == ABNORMAL:  # made by wsproto when TCP ended (receive(None))
            self._to("lost")
        elif conn.state is ConnectionState.REMOTE_CLOSING:
            # The peer closed: echo its code (RFC 6455 section 5.5.1; wsproto never puts
            # 1005/1006 on the wire, section 7.4.1).
            self.outbox.append(conn.send(event.response()))
            self._to("recv_close")
        elif conn.state is ConnectionState.OPEN:
            # wsproto failed to parse: "Fail the WebSocket Connection" (section 7.1.7).
            self.outbox.append(conn.send(CloseConnection(code=code, reason=event.reason)))
            self._to("fail")
        elif conn.state is ConnectionState.CLOSED:  # the peer's answer to our Close
            self._to("recv_close")
        else:
            # Still LOCAL_CLOSING: wsproto failed to parse what came instead of the peer's
            # Close (found by tests/test_ws_lifecycle_stateful.py: it was taken for a
            # clean close).  A protocol error, section 7.1.7; our Close is out already,
            # so nothing more is sent.
            self._to("fail")
        self.closed = Closed(code, event.reason or "")
        return self.closed

    def message(self, data: str | bytes) -> bytes:
        """A whole message through wsproto (compressed when deflate was negotiated)."""
        if self.state is not OPEN:
            return b""
        if self._plain:  # one unfragmented frame (RFC 6455 section 5.2), as wsproto makes it
            if isinstance(data, str):
                payload = data.encode()
                return text_header(len(payload)) + payload
            return binary_header(len(data)) + data
        message: Message[Any] = TextMessage(data) if isinstance(data, str) else BytesMessage(data)
        assert self._conn is not None  # deflate: always there
        return self._conn.send(message)

    def text_message(self, payload: bytes) -> bytes:
        """A text message whose UTF-8 bytes the caller has (JSON from orjson): no decode
        and encode again when the frame is ours to make."""
        if self._plain and self.state is OPEN:
            return text_header(len(payload)) + payload
        return self.message(payload.decode())

    def close(self, code: int = NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake (RFC 6455 section 7.1.2); b"" once it is started
        (a peer's Close is answered in :meth:`receive`)."""
        if self.state is not OPEN:
            return b""
        self._to("send_close")
        conn = self._conn or self._wsproto()  # kept from now on
        return conn.send(CloseConnection(code=code, reason=reason))

    def ping(self, payload: bytes = b"") -> bytes:
        # A control frame: unmasked from a server, never compressed, <= 125 bytes (5.5).
        return bytes((0x89, len(payload))) + payload if self.state is OPEN else b""
