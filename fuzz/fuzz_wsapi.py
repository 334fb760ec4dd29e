"""Fuzz target: ``/v1/ws`` client messages into ``proto.wsapi.parse_client_message``.

Invariant: a message (as text and as bytes) is a ``Start`` or a ``Cancel``, or is refused
with ``BadMessage`` (a ``RequestError``, answered as an ``error`` message whose JSON is
valid and whose text does not echo unbounded input); nothing else escapes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson

from fuzz._driver import main
from streamcore.proto.wsapi import BadMessage, Cancel, Start, parse_client_message


def target(data: bytes) -> None:
    for message in (data, data.decode("utf-8", "replace")):
        try:
            parsed = parse_client_message(message)
        except BadMessage as exc:
            assert 400 <= exc.status < 500
            orjson.loads(exc.envelope())
            assert len(exc.message) < 1000, len(exc.message)
            continue
        assert isinstance(parsed, Start | Cancel), parsed


if __name__ == "__main__":
    main(target)
