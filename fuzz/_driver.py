"""Run a fuzz target under atheris when it is installed, else under a seeded random driver.

Each target has a seed corpus in ``fuzz/corpus/<target>/`` (small files in the repository);
atheris starts from it and adds what it finds to a working copy (``fuzz/work/<target>/``,
not committed); the seeded driver mutates the seeds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"id: 1\ndata: hello\r\n\r\n: comment\rdata:x\n\n",
    b"\x81\x85\x00\x00\x00\x00hello\x88\x82\x00\x00\x00\x00\x03\xe8",
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 1:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 2 and out:
            del out[pos:pos + rng.randint(1, 16)]
        else:
            out[pos:pos] = rng.choice(SEEDS)
    return bytes(out)


CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def seeds(name: str) -> list[bytes]:
    """The target's seed corpus, or the shared seeds if it has none."""
    folder = os.path.join(CORPUS, name)
    if not os.path.isdir(folder):
        return SEEDS
    found = []
    for entry in sorted(os.listdir(folder)):
        with open(os.path.join(folder, entry), "rb") as f:
            found.append(f.read())
    return found or SEEDS


def main(target: Callable[[bytes], None], name: str | None = None) -> None:
    name = name or os.path.splitext(os.path.basename(sys.argv[0]))[0]
    try:
        import atheris  # type: ignore[import-not-found]
    except ImportError:
        atheris = None
    if atheris is not None and not any(a.startswith("--seconds") for a in sys.argv):
        # Coverage of streamcore's own code (imported by the target already) guides it.
        atheris.instrument_all()
        argv = list(sys.argv)
        if not any(not a.startswith("-") for a in argv[1:]):
            work = os.path.join(os.path.dirname(CORPUS), "work", name)
            os.makedirs(work, exist_ok=True)
            argv += [work, os.path.join(CORPUS, name)]
        atheris.Setup(argv, target)
        atheris.Fuzz()
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "big"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    runs = 0
    pool = seeds(name)
    for seed in pool:  # every seed as it is, first
        target(seed)
        runs += 1
    while time.monotonic() < deadline:
        target(_mutate(rng, rng.choice(pool)))
        runs += 1
    print(f"{runs} inputs, seed {args.seed}: no invariant broken")
