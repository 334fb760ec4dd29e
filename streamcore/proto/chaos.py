"""Chaos mode, sans-I/O: the named faults, their selection, and the transport stage.

A chaotic response is the server's own bytes run through a transducer
(:mod:`streamcore.proto.chaos_http` for HTTP/SSE, :mod:`streamcore.proto.chaos_ws` for
WebSocket) that returns *actions*: ``bytes`` to write, a ``float`` to pause for (seconds;
``0.0`` is one turn of the event loop, so the write before it leaves in its own
``write(2)``), or one of :data:`CLOSE`, :data:`RESET`, :data:`EOF`.  Every choice a fault
makes (where to cut, which chunk to repeat) comes from a ``random.Random(seed)``, so the
same bytes in and the same seed give the same actions out.

:data:`FAULTS` is the table of every fault: what it does on the wire and what a correct
client must do (``GET /v1/chaos/faults`` serves it; docs/chaos.md is made from it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from urllib.parse import parse_qs

from ..errors import RequestError

#: Close the connection (TCP FIN) once what is written is sent.
CLOSE = "close"
#: Reset the connection (TCP RST).
RESET = "reset"
#: Half-close: TCP FIN for our direction, the connection still reads.
EOF = "eof"

Action = bytes | float | str

#: How long the stall faults wait (seconds): long enough for a client to notice, short
#: enough for a test suite.
STALL_S = 0.5
#: The ``long-ttft`` fault's wait before the first token (seconds).
LONG_TTFT_S = 2.5
#: The ``delay`` fault's wait before every event or message (seconds).
DELAY_S = 0.01
#: The ``huge-event`` fault's padding (bytes): more than any sane line buffer holds.
HUGE_EVENT_BYTES = 4 * 1024 * 1024
#: How many comment lines the ``comments`` fault writes before every event.
COMMENT_FLOOD = 20

TEXT = "text"  # the client must return the exact answer
ERROR = "error"  # the client must raise or report an error, not return an answer
EITHER = "text or error"  # both are correct; hanging or a wrong text is not
REPLACED = "text with U+FFFD"  # the answer, the invalid byte decoded as U+FFFD

HTTP = "http"
WS = "websocket"
BOTH = "both"


@dataclass(frozen=True, slots=True)
class Fault:
    name: str
    category: str
    #: What it does on the wire.
    does: str
    #: What a correct client must do.
    client_must: str
    #: The outcome a correct client reaches (TEXT, ERROR, EITHER, REPLACED).
    expect: str
    #: Which responses it applies to (HTTP, WS, BOTH).
    applies: str = HTTP

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "category": self.category, "applies_to": self.applies,
                "does": self.does, "client_must": self.client_must, "expect": self.expect}


_SAME = "read the same answer as without the fault"
_TRUNCATED = "report an error: the answer is incomplete, never return it as a success"

_TABLE = [
    # transport
    Fault("split-bytes", "transport", "every byte of the response in its own write(2)",
          _SAME, TEXT, BOTH),
    Fault("split-random", "transport", "writes cut at seeded points, 1 to 16 bytes apart",
          _SAME, TEXT, BOTH),
    Fault("split-utf8", "transport", "every multi-byte UTF-8 character cut across two "
          "writes (ask the model synthetic-utf8 for such characters)",
          "decode UTF-8 across reads, never per read: " + _SAME, TEXT, BOTH),
    Fault("delay", "transport", f"a {DELAY_S * 1000:g} ms pause before every event or "
          "message", _SAME, TEXT, BOTH),
    Fault("stall-head", "transport", f"a {STALL_S:g} s pause before the response head",
          "wait (within its timeout): " + _SAME, TEXT),
    Fault("stall-first-token", "transport", f"a {STALL_S:g} s pause before the first "
          "content event or message", "wait: " + _SAME, TEXT, BOTH),
    Fault("stall-mid", "transport", f"a {STALL_S:g} s pause before the 3rd to 5th event "
          "or message (seeded)", "wait: " + _SAME, TEXT, BOTH),
    Fault("reset-mid-event", "transport", "a TCP reset in the middle of the 3rd to 5th "
          "event or message (seeded)", _TRUNCATED, ERROR, BOTH),
    Fault("close-mid-event", "transport", "a clean TCP close (FIN) in the middle of the "
          "3rd to 5th event or message (seeded), no final chunk or Close frame",
          _TRUNCATED, ERROR, BOTH),
    Fault("half-close", "transport", "after the 3rd to 5th event or message (seeded), "
          "a FIN for the server's direction (shutdown(SHUT_WR)); the server still reads",
          _TRUNCATED, ERROR, BOTH),
    # HTTP/1.1
    Fault("chunk-truncated", "http", "the chunk of the 3rd to 5th event declares its full "
          "size, half of it is sent, then the connection closes", _TRUNCATED, ERROR),
    Fault("no-final-chunk", "http", "the whole stream, [DONE] included, but no last "
          "chunk (0 CRLF CRLF): the connection closes instead",
          "return the answer once [DONE] is read, or report the broken body", EITHER),
    Fault("chunk-extensions", "http", "every chunk-size line carries extensions "
          "(;chaos=1;q=\"a b\"), which RFC 9112 section 7.1.1 says to ignore", _SAME, TEXT),
    Fault("no-charset", "http", "Content-Type: text/event-stream without charset "
          "(an event stream is always UTF-8, WHATWG HTML 9.2.5)", _SAME, TEXT),
    Fault("content-length", "http", "the stream sent whole with a Content-Length, not "
          "chunked", _SAME, TEXT),
    Fault("status-429", "http", "429 Too Many Requests, Retry-After: 1, an OpenAI error "
          "body (rate_limit_exceeded), no stream",
          "raise a rate-limit error (after honouring Retry-After if it retries)", ERROR),
    Fault("status-503", "http", "503 Service Unavailable, Retry-After: 1, an OpenAI error "
          "body, no stream", "raise a server error (after honouring Retry-After if it "
          "retries)", ERROR),
    # SSE, valid but tricky (WHATWG HTML 9.2.5-9.2.6)
    Fault("crlf", "sse", "every line ends with CRLF", _SAME, TEXT),
    Fault("cr", "sse", "every line ends with a lone CR", _SAME, TEXT),
    Fault("mixed-eol", "sse", "each line ends with CRLF, CR or LF (seeded)", _SAME, TEXT),
    Fault("crlf-split", "sse", "every line ends with CRLF, and every CR and its LF are "
          "written separately", "not read a CR at the end of a read as one line break and "
          "the LF after it as another: " + _SAME, TEXT),
    Fault("bom", "sse", "a UTF-8 byte order mark (EF BB BF) before the first event",
          "skip the BOM: " + _SAME, TEXT),
    Fault("no-space", "sse", "fields without the space after the colon (data:{...}, "
          "id:...)", _SAME, TEXT),
    Fault("comments", "sse", f"{COMMENT_FLOOD} comment lines before every event, some "
          "looking like data (:data: {})", "ignore comments: " + _SAME, TEXT),
    Fault("empty-data", "sse", "an empty data: line before each JSON data line (the "
          "event's data then starts with a line feed, which JSON allows; [DONE] is left "
          "alone)", _SAME, TEXT),
    Fault("multiline-data", "sse", "each JSON payload split over several data: lines "
          "(at commas between members)", "join data lines with LF: " + _SAME, TEXT),
    Fault("event-retry", "sse", "every event carries event: message and retry: 3000",
          _SAME, TEXT),
    Fault("odd-ids", "sse", "event ids with spaces, a colon, a tab and non-ASCII "
          "characters", _SAME, TEXT),
    # SSE, invalid
    Fault("invalid-utf8", "sse-invalid", "a 0xFF byte at the start of the 2nd to 4th "
          "token's content (seeded)", "decode it as U+FFFD (WHATWG: UTF-8 decode with "
          "replacement), or report an error; not hang or drop the rest", REPLACED),
    Fault("no-final-blank", "sse-invalid", "the last event (data: [DONE]) without its "
          "final blank line", "discard the incomplete event (9.2.5): return the answer "
          "(its finish chunk arrived) or report the missing [DONE]; not hang", EITHER),
    Fault("nul-id", "sse-invalid", "every id contains a NUL", "ignore those id fields "
          "(9.2.6): " + _SAME, TEXT),
    Fault("huge-event", "sse-invalid", f"the first token's event padded to "
          f"{HUGE_EVENT_BYTES // 1024 // 1024} MiB (a \"chaos_padding\" member)",
          "read it, or refuse it with an error; never grow without bound or hang", EITHER),
    # LLM semantics
    Fault("error-event", "llm", "after the 2nd to 4th token, an {\"error\": ...} event "
          "inside the 200 stream; the stream ends", "raise the error; never read it as "
          "content or return the partial answer as a success", ERROR),
    Fault("cut-before-done", "llm", "the stream ends cleanly without data: [DONE]",
          _TRUNCATED, ERROR),
    Fault("cut-before-finish", "llm", "the stream ends cleanly before the finish chunk "
          "(no finish_reason, no usage, no [DONE])", _TRUNCATED, ERROR),
    Fault("duplicate-chunk", "llm", "the 2nd to 4th token's event sent twice (same id)",
          "drop the repeat (same event id) or report it: " + _SAME, TEXT),
    Fault("skip-chunk", "llm", "the 2nd to 4th token's event left out (its id skipped)",
          "report the gap in event ids; not return a text with a hole", ERROR),
    Fault("reorder-chunks", "llm", "the 2nd to 4th token's event swapped with the next "
          "(ids out of order)", "reorder by id or report it; not return a shuffled text",
          TEXT),
    Fault("no-usage", "llm", "the usage chunk of stream_options.include_usage left out",
          "return the text and report the missing usage", TEXT),
    Fault("long-ttft", "llm", f"a {LONG_TTFT_S:g} s pause before the first token",
          "wait (a read timeout is per read, not per stream): " + _SAME, TEXT),
    # WebSocket (RFC 6455)
    Fault("ws-fragment", "websocket", "every message as a text frame and continuation "
          "frames of 1 to 8 bytes (UTF-8 characters cut across frames)",
          "reassemble (section 5.4): " + _SAME, TEXT, WS),
    Fault("ws-ping", "websocket", "a Ping before every frame (between fragments too)",
          "answer with Pongs (section 5.5.2): " + _SAME, TEXT, WS),
    Fault("ws-drop", "websocket", "after the 3rd to 5th message, TCP closed without a "
          "Close frame", "report an abnormal closure (1006): " + _TRUNCATED, ERROR, WS),
    Fault("ws-no-pong", "websocket", "the server never answers a Ping",
          "on a stream longer than its keepalive timeout: see the Ping unanswered, close "
          "and report the dead peer", ERROR, WS),
]
#: Close codes of RFC 6455 section 7.4.1 and the IANA registry a server may send, and one
#: of each private range.
WS_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                  3000, 4000)
_TABLE += [Fault(f"ws-close-{code}", "websocket", f"after the 3rd to 5th message, a Close "
                 f"frame with code {code}", "end the stream with that code: "
                 + ("an answer cut short by a normal close is still incomplete: "
                    if code == 1000 else "") + _TRUNCATED, ERROR, WS)
           for code in WS_CLOSE_CODES]

FAULTS: dict[str, Fault] = {fault.name: fault for fault in _TABLE}


def listing() -> dict[str, object]:
    """What ``GET /v1/chaos/faults`` answers."""
    return {"object": "list", "data": [fault.describe() for fault in _TABLE]}


@dataclass(frozen=True, slots=True)
class Chaos:
    """A server's chaos settings (``App.chaos``): faults applied to every response
    (``faults``), or to the requests that ask for them by ``X-Chaos`` / ``?chaos=``;
    ``seed``: the default seed (None: a new one per response, sent in ``X-Chaos-Seed``)."""

    faults: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.faults, None)


@dataclass(frozen=True, slots=True)
class Selection:
    faults: frozenset[str]
    seed: int

    def rng(self) -> random.Random:
        return random.Random(self.seed)

    def header(self) -> bytes:
        return ",".join(sorted(self.faults)).encode()


def _check(names: tuple[str, ...], applies: str | None) -> None:
    unknown = [name for name in names if name not in FAULTS]
    if unknown:
        raise RequestError(f"unknown chaos fault {unknown[0][:60]!r}; valid faults: "
                           + ", ".join(FAULTS), param="chaos", code="unknown_fault")
    wrong = [name for name in names if FAULTS[name].applies not in (BOTH, applies)]
    if applies is not None and wrong:
        raise RequestError(f"chaos fault {wrong[0]!r} applies to "
                           f"{FAULTS[wrong[0]].applies} responses only", param="chaos",
                           code="inapplicable_fault")


def select(chaos: Chaos, header: bytes | None, query: str, seed_header: bytes | None, *,
           websocket: bool, fresh_seed: int) -> Selection | None:
    """The faults of one request: ``X-Chaos`` (``header``) or ``?chaos=``, else the
    server's that apply to it (a WebSocket fault to a WebSocket, ...); the seed from
    ``X-Chaos-Seed`` or ``?chaos_seed=``, else the server's, else ``fresh_seed``.  None:
    no fault.  :class:`RequestError` (400) for an unknown fault name (listing the valid
    ones), one that does not apply, or a bad seed."""
    params = parse_qs(query) if "chaos" in query else {}
    text = header.decode("latin-1") if header is not None else ",".join(params.get("chaos", ()))
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    applies = WS if websocket else HTTP
    if names:
        _check(names, applies)
    else:  # the server's faults: those that apply to this response
        names = tuple(name for name in chaos.faults if FAULTS[name].applies in (BOTH, applies))
        if not names:
            return None
    seed_text = (seed_header.decode("latin-1") if seed_header is not None
                 else next(iter(params.get("chaos_seed", ())), None))
    seed = chaos.seed if chaos.seed is not None else fresh_seed
    if seed_text is not None:
        try:
            seed = int(seed_text)
        except ValueError:
            raise RequestError(f"the chaos seed must be an integer, got {seed_text[:40]!r}",
                               param="chaos_seed", code="invalid_value") from None
    return Selection(frozenset(names), seed)


class Wire:
    """The transport stage, shared by both transducers: the pauses, the cut points and
    the endings of the faults of category ``transport``.  A *unit* is one SSE event (with
    its chunk framing) or one WebSocket message."""

    __slots__ = ("actions", "cut_at", "dead", "faults", "rng", "seen_token", "units")

    def __init__(self, faults: frozenset[str], rng: random.Random) -> None:
        self.faults = faults
        self.rng = rng
        self.actions: list[Action] = []
        self.units = 0
        #: The unit the stall-mid, reset, close and half-close faults act at.
        self.cut_at = rng.randint(2, 4)
        self.seen_token = False
        #: Nothing more is written (the connection was cut).
        self.dead = False

    def take(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    def pause(self, seconds: float) -> None:
        self.actions.append(seconds)

    def end(self, how: str) -> None:
        """Cut the connection: CLOSE, RESET or EOF; nothing more is written."""
        if not self.dead:
            self.actions.append(how)
            self.dead = True

    def unit(self, data: bytes, *, token: bool, start: int = 0, tail: int = 0) -> None:
        """One event or message: ``data[start:len(data) - tail]`` is the event itself
        (a cut mid-event falls inside it), between its framing; ``token``: it carries
        content."""
        if self.dead:
            return
        faults = self.faults
        i = self.units
        self.units += 1
        if "delay" in faults:
            self.pause(DELAY_S)
        if token and not self.seen_token:
            self.seen_token = True
            if "stall-first-token" in faults:
                self.pause(STALL_S)
        if i == self.cut_at:
            if "stall-mid" in faults:
                self.pause(STALL_S)
            cut = "reset-mid-event" in faults or "close-mid-event" in faults
            if cut and len(data) - tail - start >= 2:
                self.write(data[:self.rng.randint(start + 1, len(data) - tail - 1)])
                self.end(RESET if "reset-mid-event" in faults else CLOSE)
                return
        self.write(data)
        if i == self.cut_at and "half-close" in faults:
            self.end(EOF)

    def write(self, data: bytes) -> None:
        """Bytes, cut into writes as the split faults say."""
        if self.dead or not data:
            return
        faults = self.faults
        if "split-bytes" in faults:
            cuts = list(range(1, len(data)))
        elif "split-random" in faults:
            cuts = []
            at = self.rng.randint(1, 16)
            while at < len(data):
                cuts.append(at)
                at += self.rng.randint(1, 16)
        else:
            cuts = []
            if "split-utf8" in faults:  # before the 2nd byte of each multi-byte character
                cuts += [i for i in range(1, len(data))
                         if 0x80 <= data[i] < 0xC0 and data[i - 1] >= 0xC0]
            if "crlf-split" in faults:  # between a CR and its LF
                start = data.find(b"\r\n")
                while start >= 0:
                    cuts.append(start + 1)
                    start = data.find(b"\r\n", start + 2)
            cuts.sort()
        last = 0
        for at in cuts:
            self.actions += (data[last:at], 0.0)
            last = at
        self.actions.append(data[last:])
