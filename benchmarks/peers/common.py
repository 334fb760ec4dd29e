"""What every peer server shares: the job, its bytes, and its command line.

The job (the same for every server under test, streamcore included):

* ``POST /v1/chat/completions`` with a chat body whose ``max_tokens`` is T, answered over
  SSE with a role chunk, T ``chat.completion.chunk`` events whose delta is
  ``{"content": "tok"}``, a finish chunk, then ``data: [DONE]``;
* ``GET /v1/ws``: the client sends ``{"type":"request","id":ID,"body":{...}}``; the server
  answers one text message per chunk, ``{"type":"chunk","id":ID,"seq":N,"chunk":{...}}``,
  then ``{"type":"done","id":ID}``.  Several requests may follow on one socket, one at a
  time.
* pacing: ``--token-rate 0`` is as fast as the transport takes them; ``--token-rate R``
  sleeps against the ideal schedule ``start + i / R`` (as streamcore's synthetic model does),
  so timer lateness never accumulates.

Peers encode each token the way a server would (``orjson.dumps(token)`` inside a chunk
template made once); only ``raw_asyncio.py``, the floor, writes frames encoded in advance.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator

import orjson

TOKEN = "tok"
DEFAULT_TOKENS = 1000
CREATED = 1700000000

CHUNK_HEAD = (b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":%d,'
              b'"model":"synthetic","choices":' % CREATED)
PREFIX = CHUNK_HEAD + b'[{"index":0,"delta":{"content":'
SUFFIX = b'},"logprobs":null,"finish_reason":null}]}'
ROLE = CHUNK_HEAD + (b'[{"index":0,"delta":{"role":"assistant","content":""},'
                     b'"logprobs":null,"finish_reason":null}]}')
FINISH = CHUNK_HEAD + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]}'
DONE = b"[DONE]"

ROLE_S = ROLE.decode()
FINISH_S = FINISH.decode()
PREFIX_S = PREFIX.decode()
SUFFIX_S = SUFFIX.decode()


def chunk(token: str) -> bytes:
    """One content chunk's JSON: the per-token cost every peer pays."""
    return PREFIX + orjson.dumps(token) + SUFFIX


def chunk_str(token: str) -> str:
    return PREFIX_S + orjson.dumps(token).decode() + SUFFIX_S


def sse_event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


def max_tokens(body: bytes | dict, default: int = DEFAULT_TOKENS) -> int:
    """T from a chat request body (bytes or parsed)."""
    try:
        data = orjson.loads(body) if isinstance(body, bytes | bytearray | str) else body
        value = data.get("max_tokens", default)
        return int(value) if value else default
    except Exception:
        return default


def ws_request(message: bytes | str) -> tuple[str, int]:
    """(request id, T) of a WebSocket request message."""
    data = orjson.loads(message)
    return str(data.get("id", "r1")), max_tokens(data.get("body") or {})


def ws_head(request_id: str) -> bytes:
    return b'{"type":"chunk","id":' + orjson.dumps(request_id) + b',"seq":'


def ws_chunk(head: bytes, seq: int, data: bytes) -> bytes:
    """One WebSocket chunk message (seq 0 is the role chunk)."""
    return head + b"%d" % seq + b',"chunk":' + data + b"}"


def ws_done(request_id: str) -> bytes:
    return b'{"type":"done","id":' + orjson.dumps(request_id) + b"}"


def token_rate() -> float:
    return float(os.environ.get("BENCH_TOKEN_RATE", "0") or 0)


async def tokens(count: int, rate: float) -> AsyncIterator[str]:
    """``count`` tokens, unpaced (rate <= 0) or against the ideal schedule at ``rate``/s."""
    if rate <= 0:
        for _ in range(count):
            yield TOKEN
        return
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    start = loop.time()
    for i in range(count):
        delay = start + i * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield TOKEN


def parse_args(description: str) -> argparse.Namespace:
    """``--port P [--host H] [--token-rate R]``; the rate also goes to BENCH_TOKEN_RATE
    (for servers that import the app in a worker process)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-rate", type=float,
                        default=float(os.environ.get("BENCH_TOKEN_RATE", "0") or 0),
                        help="tokens/s per stream; 0 = unpaced")
    args = parser.parse_args()
    os.environ["BENCH_TOKEN_RATE"] = str(args.token_rate)
    return args
