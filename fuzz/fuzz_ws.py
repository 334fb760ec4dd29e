"""Fuzz target: after a valid handshake, WSSession yields messages within the limit and at
most one Closed with an RFC 6455 code; nothing else escapes."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from streamcore.proto import ws
from streamcore.proto.http import Request

HANDSHAKE = Request(
    method="GET", target=b"/", path="/", query="",
    headers=[(b"host", b"a"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
             (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
             (b"sec-websocket-version", b"13"),
             (b"sec-websocket-extensions", b"permessage-deflate")],
)
MAX = 4096
# Codes a peer may send (RFC 6455 7.4.1 and the IANA registry) plus 1005/1006 (local only).
CODES = {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def target(data: bytes) -> None:
    deflate = bool(data[:1]) and data[0] & 1 == 1
    accepted = ws.accept(HANDSHAKE, deflate=deflate, max_message=MAX)
    session = ws.WSSession(accepted, max_frame=MAX, max_message=MAX)
    closed = 0
    cut = data[0] % (len(data) + 1) if data else 0
    for part in (data[:cut], data[cut:], None):
        for event in session.receive(part):
            if isinstance(event, ws.Received):
                size = len(event.data.encode() if isinstance(event.data, str) else event.data)
                assert size <= MAX, size
            else:
                closed += 1
                assert event.code in CODES or 3000 <= event.code < 5000, event.code
    assert closed <= 1


if __name__ == "__main__":
    main(target)
