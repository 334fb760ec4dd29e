"""``streamcore serve --workers N`` (:mod:`streamcore.workers`), with real processes on an
ephemeral port: both workers take connections on the one port; a worker killed with
SIGKILL is started again and serves; SIGTERM to the supervisor lets a stream in flight
finish, stops every worker and exits 0; a worker that dies at once is restarted after
a doubling delay; the server-wide budgets are shared."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streamcore.limits import Limits
from streamcore.workers import backoff_s, share

ROOT = Path(__file__).resolve().parent.parent


class Supervised:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> dict[str, int]:
        """/healthz on a new connection (the kernel picks the worker by its addresses)."""
        with httpx.Client(timeout=5) as client:
            body = client.get(f"{self.url}/healthz", headers={"connection": "close"}).json()
        assert body["status"] == "ok"
        return {"worker": body["worker"], "pid": body["pid"]}

    def pids(self) -> dict[int, int]:
        """Each worker's pid, by index, from /healthz over new connections."""
        seen: dict[int, int] = {}
        for _ in range(400):
            found = self.health()
            seen[found["worker"]] = found["pid"]
            if len(seen) == 2:
                return seen
        pytest.fail(f"only workers {sorted(seen)} answered 400 connections")


def banner_port(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """The port of the banner's first line (printed once every worker listens)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            pytest.fail(f"no banner (exit {proc.poll()}): {buffer!r}")
        if select.select([proc.stdout], [], [], left)[0]:
            buffer += os.read(proc.stdout.fileno(), 4096)
    match = re.search(rb"http://127\.0\.0\.1:(\d+)", buffer)
    assert match, buffer
    return int(match.group(1))


@contextlib.contextmanager
def supervised(*args: str) -> Iterator[Supervised]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcore", "serve", "--port", "0", "--workers", "2", *args],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield Supervised(proc, banner_port(proc))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        proc.communicate()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def chat(url: str, tokens: int) -> str:
    """A streamed chat completion's SSE body."""
    body = {"model": "synthetic", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(timeout=20) as client:
        response = client.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.text


def test_both_workers_serve_and_a_killed_worker_is_restarted() -> None:
    with supervised("--token-rate", "0") as server:
        pids = server.pids()
        assert pids[0] != pids[1]
        assert chat(server.url, 8).endswith("data: [DONE]\n\n")
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "worker 0 was not restarted"
            with contextlib.suppress(httpx.HTTPError):
                found = server.health()
                if found["worker"] == 0 and found["pid"] != pids[0]:
                    break
            time.sleep(0.02)
        assert server.pids()[1] == pids[1]  # the other worker went on
        assert server.proc.poll() is None
        assert chat(server.url, 8).endswith("data: [DONE]\n\n")
    _, err = server.proc.communicate()
    assert b"worker 0 (pid %d) exited with -9" % pids[0] in err


def test_sigterm_drains_every_worker_and_exits_0() -> None:
    with supervised("--token-rate", "40") as server:
        pids = server.pids()
        body = {"model": "synthetic", "stream": True, "max_tokens": 30,
                "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=20) as client, client.stream(
                "POST", f"{server.url}/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("id: ")  # the stream is under way
            server.proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "data: [DONE]" in rest  # drained: the stream ran to its end
        assert server.proc.wait(20) == 0
        for pid in pids.values():
            deadline = time.monotonic() + 5
            while alive(pid):
                assert time.monotonic() < deadline, f"worker {pid} outlived the supervisor"
                time.sleep(0.02)


def test_a_worker_that_dies_at_once_is_restarted_after_a_doubling_delay() -> None:
    """A worker that cannot start (an unknown option) dies again and again: the restarts
    come 0.1, 0.2, 0.4 ... seconds apart, not in a tight loop."""
    code = ("import sys, logging; logging.basicConfig(level='INFO');"
            "from streamcore.workers import Supervisor; from streamcore.limits import Limits;"
            "s = Supervisor(['serve', '--no-such-option'], '127.0.0.1', 0, 1, Limits());"
            "sys.exit(s.run())")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = b""
    deadline = time.monotonic() + 30  # a worker's start takes ~1 s on a busy machine
    while err.count(b"restarting in") < 3 and time.monotonic() < deadline:
        if select.select([proc.stderr], [], [], 0.1)[0]:
            err += os.read(proc.stderr.fileno(), 65536)
    proc.send_signal(signal.SIGTERM)
    err += proc.communicate(timeout=20)[1]
    delays = [float(d) for d in re.findall(rb"restarting in ([\d.]+) s", err)]
    assert delays[:3] == [0.1, 0.2, 0.4], err.decode()[-3000:]


def test_backoff_doubles_up_to_its_limit() -> None:
    assert [backoff_s(n, 10.0) for n in range(5)] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert backoff_s(50, 10.0) == 10.0


def test_server_wide_budgets_are_shared_among_workers() -> None:
    limits = Limits(max_connections=10_001, max_connections_per_ip=0)
    one = share(limits, 4)
    assert one.max_connections == 2501  # rounded up: four shares hold at least the whole
    assert one.max_connections_per_ip == 0  # 0 (no cap) stays no cap
    assert one.max_buffered_bytes_total == limits.max_buffered_bytes_total // 4
    assert one.resume_budget_bytes == limits.resume_budget_bytes // 4
    assert one.stream_log_bytes == limits.stream_log_bytes  # per stream: not shared
    assert share(limits, 1) is limits
