"""Chaos for one HTTP response, sans-I/O: the server's bytes in (its head, its chunked
event stream), the faulty bytes and pauses out (:mod:`streamcore.proto.chaos`).

The stages, in order: the head (status faults, header faults, ``X-Chaos`` and
``X-Chaos-Seed`` added); the body de-chunked and cut into events at their blank lines;
the LLM faults (events dropped, repeated, swapped, an error event); the SSE faults (each
event's lines rewritten); the HTTP framing (one chunk per event, extensions, a truncated
chunk, no last chunk, or a Content-Length); the transport stage (:class:`~.chaos.Wire`).
A response that is not a chunked event stream (a JSON answer, a 4xx) goes through the
head and transport stages only.
"""

from __future__ import annotations

from itertools import pairwise

from ..errors import envelope
from .chaos import (
    CLOSE,
    COMMENT_FLOOD,
    HUGE_EVENT_BYTES,
    LONG_TTFT_S,
    STALL_S,
    Action,
    Selection,
    Wire,
)
from .http import CRLF, LAST_CHUNK, chunk_head

_HEAD_END = b"\r\n\r\n"
_EVENT_END = b"\n\n"
_STATUS = {"status-429": (b"429 Too Many Requests", "rate_limit_exceeded",
                          "rate_limit_error"),
           "status-503": (b"503 Service Unavailable", "service_unavailable", "server_error")}
#: The error the ``error-event`` fault puts inside the stream (OpenAI's shape).
ERROR_EVENT = b"data: " + envelope("chaos: the model failed mid-stream", "server_error",
                                   None, "chaos_error_event") + _EVENT_END
_CONTENT = b'"delta":{"content":"'
#: What the ``odd-ids`` fault appends to every id: a space, a colon, a tab, 2-, 3- and
#: 4-byte characters (all valid in an id: 9.2.6 forbids only NUL).
_ODD_ID = b" odd:id\t" + "\u00e9\u20ac \U0001f642".encode()


def _kind(block: bytes) -> str:
    if _CONTENT in block:
        return "token"
    if b"data: [DONE]" in block:
        return "done"
    if b'"finish_reason":"' in block:
        return "finish"
    if b'"usage":{' in block:
        return "usage"
    return "other"


def _member_cuts(data: bytes) -> list[int]:
    """Where a JSON text may take a line break: after each comma between members (outside
    strings)."""
    cuts = []
    in_string = escaped = False
    for i, byte in enumerate(data):
        if escaped:
            escaped = False
        elif byte == 0x5C and in_string:  # backslash
            escaped = True
        elif byte == 0x22:  # quote
            in_string = not in_string
        elif byte == 0x2C and not in_string:  # comma
            cuts.append(i + 1)
    return cuts


class HTTPChaos:
    """``feed(bytes)`` what the server writes for one response, get back the actions;
    ``close()`` when the server closes the connection."""

    def __init__(self, selection: Selection) -> None:
        self.faults = faults = selection.faults
        self.selection = selection
        self.rng = rng = selection.rng()
        self.wire = Wire(faults, rng)
        self._buf = b""
        self._head: list[bytes] | None = None
        self._sse = False
        self._pending = b""
        self._units: list[tuple[bytes, bool, int]] | None = (
            [] if "content-length" in faults else None)
        self._tokens = 0
        #: The token event the LLM faults act on.
        self._target = rng.randint(1, 3)
        self._held: bytes | None = None
        self._events = 0
        self._eol = b"\n"
        self._ended = False

    # -- input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> list[Action]:
        if self._ended:
            return []
        if self._head is None:
            self._buf += data
            end = self._buf.find(_HEAD_END)
            if end < 0:
                return []
            head, data = self._buf[:end + 4], self._buf[end + 4:]
            self._buf = b""
            self._on_head(head)
        if not self._sse:
            self.wire.write(data)
        else:
            self._buf += data
            self._dechunk()
        return self.wire.take()

    def close(self) -> list[Action]:
        """The server closes (the caller then closes the transport): what is held goes
        out, a Content-Length response cut short included."""
        if self._units is not None and not self._ended:
            self._finish()
        return self.wire.take()

    def _on_head(self, head: bytes) -> None:
        faults = self.faults
        wire = self.wire
        status = next((name for name in _STATUS if name in faults), None)
        if status is not None:
            line, code, kind = _STATUS[status]
            body = envelope(f"chaos: {status}", kind, None, code)
            wire.write(b"HTTP/1.1 %b\r\ncontent-type: application/json\r\n"
                       b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n"
                       b"%b\r\n%b" % (line, len(body), self._chaos_headers(), body))
            self._head = []
            self._end()
            return
        lines = head[:-4].split(CRLF)
        self._sse = any(line.lower().startswith(b"content-type: text/event-stream")
                        for line in lines) and b"transfer-encoding: chunked" in lines
        if "no-charset" in faults:
            lines = [b"content-type: text/event-stream" if line.lower().startswith(
                b"content-type: text/event-stream") else line for line in lines]
        if self._units is not None and self._sse:
            lines.remove(b"transfer-encoding: chunked")
        else:
            self._units = None
        self._head = lines
        if "stall-head" in faults:
            wire.pause(STALL_S)
        if self._units is None:
            wire.write(self._head_bytes())

    def _head_bytes(self, *extra: bytes) -> bytes:
        assert self._head is not None
        return CRLF.join([*self._head, *extra]) + CRLF + self._chaos_headers() + CRLF

    def _chaos_headers(self) -> bytes:
        return b"x-chaos: %b\r\nx-chaos-seed: %d\r\n" % (self.selection.header(),
                                                        self.selection.seed)

    def _dechunk(self) -> None:
        """Our own chunks (well-formed: we framed them)."""
        while not self._ended:
            buf = self._buf
            line_end = buf.find(CRLF)
            if line_end < 0:
                return
            size = int(buf[:line_end], 16)
            if size == 0:
                if len(buf) < line_end + 4:
                    return
                self._finish()
                return
            if len(buf) < line_end + 2 + size + 2:
                return
            self._pending += buf[line_end + 2:line_end + 2 + size]
            self._buf = buf[line_end + 4 + size:]
            while not self._ended:
                cut = self._pending.find(_EVENT_END)
                if cut < 0:
                    break
                block, self._pending = self._pending[:cut + 2], self._pending[cut + 2:]
                for out in self._llm(block):
                    self._event(out)

    # -- the LLM faults ------------------------------------------------------------------

    def _llm(self, block: bytes) -> list[bytes]:
        faults = self.faults
        kind = _kind(block)
        out = [block]
        if kind == "token":
            i = self._tokens
            self._tokens += 1
            if i == 0 and "long-ttft" in faults:
                self.wire.pause(LONG_TTFT_S)
            if i == self._target:
                if "error-event" in faults:  # then the body's proper end, and close
                    self._event(ERROR_EVENT)
                    self._pending = b""
                    self._finish()
                    self.wire.end(CLOSE)
                    return []
                if "skip-chunk" in faults:
                    return []
                if "duplicate-chunk" in faults:
                    return [block, block]
                if "reorder-chunks" in faults:
                    self._held = block
                    return []
        if self._held is not None:
            out.append(self._held)
            self._held = None
        if kind == "done" and ("cut-before-done" in faults or "cut-before-finish" in faults):
            return []
        if kind in ("finish", "usage") and "cut-before-finish" in faults:
            return []
        if kind == "usage" and "no-usage" in faults:
            return []
        return out

    # -- the SSE faults, then the framing ------------------------------------------------

    def _event(self, block: bytes) -> None:
        faults = self.faults
        kind = _kind(block)
        token = kind == "token"
        if token and self._tokens == self._target + 1 and "invalid-utf8" in faults:
            block = block.replace(_CONTENT, _CONTENT + b"\xff", 1)
        if token and self._tokens == 1 and "huge-event" in faults:
            block = block.replace(b"data: {", b'data: {"chaos_padding":"%b",'
                                  % (b"x" * HUGE_EVENT_BYTES), 1)
        lines = block[:-2].split(b"\n")
        if "multiline-data" in faults:
            lines = [piece for line in lines for piece in self._multiline(line)]
        if "empty-data" in faults:
            lines = [new for line in lines
                     for new in ([b"data:", line] if line.startswith(b"data: {") else [line])]
        if "nul-id" in faults or "odd-ids" in faults:
            odd = b"\0" if "nul-id" in faults else _ODD_ID
            lines = [line + odd if line.startswith(b"id: ") else line for line in lines]
        if "event-retry" in faults:
            lines = [b"event: message", b"retry: 3000", *lines]
        if "no-space" in faults:
            lines = [line.replace(b": ", b":", 1) if line[:1] != b":" else line
                     for line in lines]
        if "comments" in faults:
            lines = [b": keep-alive", b":data: {}", *([b":"] * (COMMENT_FLOOD - 2)), *lines]
        if kind != "done" or "no-final-blank" not in faults:
            lines.append(b"")  # the blank line that dispatches the event
        data = b"".join(self._eol_of(line) for line in lines)
        if self._events == 0 and "bom" in faults:
            data = b"\xef\xbb\xbf" + data
        self._events += 1
        self._frame(data, token)

    def _multiline(self, line: bytes) -> list[bytes]:
        if not line.startswith(b"data: {"):
            return [line]
        data = line[6:]
        cuts = [0, *_member_cuts(data), len(data)]
        return [b"data: " + data[a:b] for a, b in pairwise(cuts)
                if b > a]

    def _eol_of(self, line: bytes) -> bytes:
        faults = self.faults
        if "crlf" in faults or "crlf-split" in faults:
            eol = b"\r\n"
        elif "cr" in faults:
            eol = b"\r"
        elif "mixed-eol" in faults:
            choices = (b"\r\n", b"\r", b"\n")
            # A CR then an empty line ended by LF would read as one CRLF: one break, not two.
            eol = self.rng.choice(choices[:2] if self._eol == b"\r" and not line else choices)
        else:
            eol = b"\n"
        self._eol = eol
        return line + eol

    def _frame(self, data: bytes, token: bool) -> None:
        faults = self.faults
        if self._units is not None:
            self._units.append((data, token, 0))
            return
        head = chunk_head(len(data))
        if "chunk-extensions" in faults:
            head = head[:-2] + b';chaos=1;q="a b"\r\n'
        if "chunk-truncated" in faults and self.wire.units == self.wire.cut_at:
            self.wire.unit(head + data[:len(data) // 2], token=token, start=len(head))
            self.wire.end(CLOSE)
            self._end()
            return
        self.wire.unit(head + data + CRLF, token=token, start=len(head), tail=2)

    def _end(self) -> None:
        self._ended = True
        self.wire.end(CLOSE)

    def _finish(self) -> None:
        """The server's last chunk arrived (or, with Content-Length, its close)."""
        wire = self.wire
        self._ended = True
        rest = self._pending  # a heartbeat comment after the last event, say
        units = self._units
        if units is not None:
            body = b"".join(data for data, _, _ in units) + rest
            wire.write(self._head_bytes(b"content-length: %d" % len(body)))
            for data, token, start in units:
                wire.unit(data, token=token, start=start)
            wire.write(rest)
            return
        if rest:  # its lines end as the events' do
            lines = rest.split(b"\n")
            self._frame(b"".join(map(self._eol_of, lines[:-1])) + lines[-1], False)
        if "no-final-chunk" in self.faults:
            wire.end(CLOSE)
            return
        wire.write(LAST_CHUNK)
