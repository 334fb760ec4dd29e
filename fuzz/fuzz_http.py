"""Fuzz target: HTTPSession accepts a request or raises ProtocolError, within its limits;
and its fast path (issue 14) says exactly what h11 says.

The input's first four bytes seed how the rest is cut (whole, byte by byte, at random
points), answered (whole, streamed, closing, with responses h11 writes or refuses on its
own, an upgrade) and ended (EOF or not); the rest goes, so cut and answered, into a
session on its fast path and into one forced onto h11 (``fuzz/_http_diff.py``).  Both
must say the same at every step; a request either returns is within the bounds; a
refusal is a 4xx/5xx.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._driver import main
from fuzz._http_diff import LIMITS, random_plan, transcript


def target(data: bytes) -> None:
    rng = random.Random(data[:4])
    body = data[4:]
    plan = random_plan(rng, len(body))
    fast, _ = transcript(body, plan, fast=True)
    slow, _ = transcript(body, plan, fast=False)
    assert fast == slow, (body, plan, fast, slow)
    for step in fast:
        if step[0] == "request":
            request_key = step[1]
            assert isinstance(request_key, tuple)
            assert len(request_key[5]) <= LIMITS.max_body_bytes  # the body
            assert len(request_key[4]) <= LIMITS.max_header_count  # the headers
        elif step[0] == "refused":
            status = step[1]
            assert isinstance(status, int) and 400 <= status < 600, status


if __name__ == "__main__":
    main(target)
