"""One paced upstream read through the gateway's sans-I/O reading, two ways: the general
path (``UpstreamSession.receive`` -> ``Body`` -> ``ChunkReader.feed`` -> ``literal``, what
every read took before session 8) and the fused path for a read that is one whole chunk
holding one event of the learned layout (``receive_chunk`` -> ``ChunkReader.one``).

A paced model's every token is such a read (one chunk, one ``id:``/``data:`` event).  No
sockets, no loop: the parsing the gateway does per paced token, in isolation, timed
(best of ``--repeat``) and counted (function calls per read, cProfile).  Both paths give
the same literal for every read (checked).

    python benchmarks/paced_read.py [--reads 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from streamcore.proto.jsonbytes import json_string
from streamcore.proto.upstream import Body, ChunkReader, UpstreamSession, parse_target

LAYOUT = ('{"id":"chatcmpl-c1b52468315300007ed932b9","object":"chat.completion.chunk",'
          '"created":1796333289,"model":"synthetic","choices":[{"index":0,"delta":'
          '{"content":%s},"logprobs":null,"finish_reason":null}],"usage":null}')
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def reads(n: int) -> list[bytes]:
    words = ["Pipe", " token", " stream", "s", ",", " and", " the", " wire"]
    out = []
    for i in range(n):
        event = b"id: 2b8f4c1445c9eff0-067ea0-%d\ndata: %s\n\n" % (
            i + 3, (LAYOUT % json_string(words[i % len(words)]).decode()).encode())
        out.append(b"%x\r\n%s\r\n" % (len(event), event))
    return out


def ready() -> tuple[UpstreamSession, ChunkReader]:
    """A session past its head and a reader that learned the layout."""
    session = UpstreamSession(parse_target("http://127.0.0.1:1/v1"))
    session.request("POST", "/v1/chat/completions", [], b"{}")
    session.receive(HEAD)
    reader = ChunkReader()
    for word in ("a", "b"):
        reader.read(LAYOUT % json_string(word).decode())
    reader.feed(b"data: x\n\n")
    return session, reader


def general(data: list[bytes]) -> list[bytes | None]:
    session, reader = ready()
    out: list[bytes | None] = []
    for read in data:
        for event in session.receive(read):
            if isinstance(event, Body):
                for item in reader.feed(event.data):
                    out.append(reader.literal(item) if isinstance(item, bytes) else None)
    return out


def fused(data: list[bytes]) -> list[bytes | None]:
    session, reader = ready()
    out: list[bytes | None] = []
    for read in data:
        body = session.receive_chunk(read)
        assert body is not None
        out.append(reader.one(body))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    data = reads(args.reads)
    assert general(data) == fused(data) and None not in fused(data)
    paths: dict[str, Callable[[list[bytes]], list[bytes | None]]] = {
        "general": general, "fused": fused}
    for name, path in paths.items():
        best = min(_timed(path, data) for _ in range(args.repeat))
        profiler = cProfile.Profile()
        profiler.runcall(path, data)
        calls = pstats.Stats(profiler).total_calls  # type: ignore[attr-defined]
        print(f"{name:8s} {best / args.reads * 1e6:6.2f} us per read, "
              f"{calls / args.reads:5.1f} calls per read")


def _timed(path: Callable[[list[bytes]], list[bytes | None]], data: list[bytes]) -> float:
    start = time.perf_counter()
    path(data)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
