"""Memory the limits bound is memory really held: a real server (``tests/held_app.py``, a
subprocess, so that its RSS is its own) whose handlers yield every item type, real
clients that stop reading, and the server's RSS growth compared with what the limits say.

A stalled stream holds its log (``stream_log_bytes``, frames counted with their
bookkeeping: :data:`streamcore.proto.pipe.FRAME_OVERHEAD_BYTES`) and its transport's
buffer (``write_high_water_bytes``); an ended stream's retained log holds what the store
counts (``retained_bytes``, bounded by ``resume_budget_bytes``).  ``orjson.dumps`` returns
buffers with 1-4 KiB of slack each: kept as they are, a log of small chunks would hold 20-60
times its bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ROOT, free_port
from held_app import KINDS

pytestmark = pytest.mark.slow  # ~30 s: a server per module, its RSS settling per type

LOG_BYTES = 64 * 1024
HIGH_WATER = 16 * 1024
STALLED = 12  # streams per item type
RETAINED = 12
#: Per connection besides the log and the transport buffer (its objects, its parser).
CONN_BYTES = 16 * 1024


@contextlib.contextmanager
def held_server() -> Iterator[str]:
    """A fresh server (its heap untouched by the other item types)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "held_app.py"), str(port),
                             str(LOG_BYTES), str(HIGH_WATER)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(f"{url}/state", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.05)
        yield url
    finally:
        proc.kill()  # not a drain: its streams are stalled on purpose
        proc.wait(5)


def state(url: str) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(f"{url}/state", timeout=5).json()
    return result


def settled_rss(url: str) -> int:
    """RSS once it stops moving (the server's last writes done)."""
    last = state(url)["rss"]
    for _ in range(50):
        time.sleep(0.05)
        now = state(url)["rss"]
        if now == last:
            return int(now)
        last = now
    return int(last)


def stalled_client(port: int, path: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return sock


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_memory_held_is_what_the_limits_say(kind: str) -> None:
    with held_server() as url:
        # Retained logs first (they stay), then stalled streams on top of them.
        rss0 = settled_rss(url)
        with httpx.Client(timeout=10) as client:
            for _ in range(RETAINED):
                with client.stream("GET", f"{url}/done/{kind}?n=3000") as response:
                    assert response.status_code == 200
                    for _ in response.iter_bytes():
                        pass
        counted = state(url)["retained_bytes"] / RETAINED
        assert 0.9 * LOG_BYTES < counted <= LOG_BYTES  # the log was full, and bounded
        per_log = (settled_rss(url) - rss0) / RETAINED
        print(f"retained {kind}: {per_log / counted:.2f} of what is counted")
        assert per_log <= 1.5 * counted, (kind, per_log, counted)

        port = int(url.rsplit(":", 1)[1])
        rss0 = settled_rss(url)
        socks = [stalled_client(port, f"/stall/{kind}") for _ in range(STALLED)]
        try:
            deadline = time.monotonic() + 10
            while state(url)["paused"] < STALLED:
                assert time.monotonic() < deadline, state(url)
                time.sleep(0.02)
            per_stream = (settled_rss(url) - rss0) / STALLED
            bound = LOG_BYTES + HIGH_WATER + CONN_BYTES
            print(f"stalled {kind}: {per_stream / bound:.2f} of the bound")
            assert per_stream <= 1.5 * bound, (kind, per_stream, bound)
        finally:
            for sock in socks:
                sock.close()
