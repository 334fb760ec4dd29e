"""Fuzz target: HTTPSession accepts a request or raises ProtocolError, within its limits."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from streamcore.errors import ProtocolError
from streamcore.limits import Limits
from streamcore.proto.http import HTTPSession

LIMITS = Limits(max_head_bytes=1024, max_body_bytes=1024, max_header_count=16)


def target(data: bytes) -> None:
    cut = data[0] % (len(data) + 1) if data else 0
    session = HTTPSession(LIMITS)
    try:
        for part in (data[:cut], data[cut:], b""):
            request = session.receive(part)
            while request is not None:
                assert len(request.body) <= LIMITS.max_body_bytes
                assert len(request.headers) <= LIMITS.max_header_count
                session.response_head(200, [(b"content-length", b"0")], method=request.method)
                session.end_response()
                keep, request = session.next_cycle()
                if not keep:
                    return
    except ProtocolError as exc:
        assert 400 <= exc.status < 600, exc.status


if __name__ == "__main__":
    main(target)
