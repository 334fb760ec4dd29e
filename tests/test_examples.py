"""The examples run as their README says, as separate processes."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import httpx_sse
import pytest
from conftest import ROOT, assert_openai_error


@dataclass
class Example:
    proc: subprocess.Popen[bytes]
    url: str = ""
    buffer: bytes = b""

    def readline(self, timeout: float = 5.0) -> str:
        """The next line of the example's stdout ("" if none within ``timeout``)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                return ""
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode() + "\n"


@pytest.fixture
def embed() -> Iterator[Example]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "embed.py"),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        example = Example(proc)
        line = example.readline(timeout=15)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, f"no ready line: {line!r} (exit {proc.poll()})"
        example.url = f"http://127.0.0.1:{match.group(1)}"
        yield example
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_embed_streams_the_prompt_words(embed: Example) -> None:
    with httpx.Client(timeout=10) as client:
        with httpx_sse.connect_sse(client, "POST", f"{embed.url}/v1/generate",
                                   json={"prompt": "hello streaming  world"}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = list(source.iter_sse())
        assert [e.data for e in events] == ["hello ", "streaming ", "world "]
        assert all(e.id for e in events)
        assert embed.readline() == "generation closed\n"
        assert client.get(f"{embed.url}/hello").json() == {"hello": "world"}
        assert client.get(f"{embed.url}/hello?name=you").json() == {"hello": "you"}
        response = client.get(f"{embed.url}/hello?name=" + "x" * 101)
        assert response.status_code == 400
        assert assert_openai_error(response.content)["param"] == "name"
        response = client.get(f"{embed.url}/nope")
        assert response.status_code == 404
        assert_openai_error(response.content)


def test_embed_generation_closes_when_the_client_goes_away(embed: Example) -> None:
    """By default a stream lingers (Limits.resume_grace_s) for a reconnect with
    Last-Event-ID, then its generation is closed; ``X-Disconnect-Policy: cancel`` closes
    it at once."""
    prompt = " ".join(f"w{i}" for i in range(200))  # 10 s at 50 ms a word
    for policy, before, after in (("cancel", 0.0, 2.0), (None, 1.0, 7.0)):
        headers = {"X-Disconnect-Policy": policy} if policy else {}
        with httpx.Client(timeout=10) as client, client.stream(
                "POST", f"{embed.url}/v1/generate", json={"prompt": prompt},
                headers=headers) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:")) == "data: w0 "
        started = time.monotonic()
        if before:  # still generating, for a reconnect within the window
            assert embed.readline(timeout=before) == ""
        assert embed.readline(timeout=after) == "generation closed\n", policy
        assert time.monotonic() - started < after


def test_embed_stops_cleanly_on_sigterm(embed: Example) -> None:
    assert httpx.get(f"{embed.url}/hello", timeout=5).status_code == 200
    embed.proc.send_signal(signal.SIGTERM)
    assert embed.proc.wait(10) == 0


def test_embed_sigterm_lets_a_stream_finish(embed: Example) -> None:
    prompt = " ".join(f"w{i}" for i in range(10))
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(
            client, "POST", f"{embed.url}/v1/generate", json={"prompt": prompt}) as source:
        iterator = source.iter_sse()
        first = next(iterator).data
        embed.proc.send_signal(signal.SIGTERM)
        rest = [e.data for e in iterator]
    assert [first, *rest] == [f"w{i} " for i in range(10)]
    assert embed.proc.wait(10) == 0
