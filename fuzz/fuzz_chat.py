"""Fuzz target: JSON bodies into the chat-completion validator (``parse_chat_request``).

Invariant: a body is accepted (a ``ChatRequest``) or refused with a ``RequestError`` whose
status is 4xx and whose envelope is valid JSON of at most a few hundred bytes more than
the limits allow (no unbounded echo of the input); nothing else escapes.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson

from fuzz._driver import main
from streamcore.errors import RequestError
from streamcore.proto.openai import ChatRequest, parse_chat_request


def target(data: bytes) -> None:
    try:
        request = parse_chat_request(data)
    except RequestError as exc:
        assert 400 <= exc.status < 500, exc.status
        body = orjson.loads(exc.envelope())
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert len(exc.message) < 1000, len(exc.message)
        return
    assert isinstance(request, ChatRequest)


if __name__ == "__main__":
    main(target)
