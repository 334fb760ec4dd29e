"""The examples run as their README says, as separate processes."""

from __future__ import annotations

import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import httpx_sse
import pytest
from conftest import ROOT, assert_openai_error


@pytest.fixture
def embed() -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "embed.py"),
                             "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 15
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                line = proc.stdout.readline()
                break
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, f"no ready line: {line!r} (exit {proc.poll()})"
        yield proc, f"http://127.0.0.1:{match.group(1)}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_embed_streams_the_prompt_words(embed: tuple[subprocess.Popen[str], str]) -> None:
    _, url = embed
    with httpx.Client(timeout=10) as client:
        with httpx_sse.connect_sse(client, "POST", f"{url}/v1/generate",
                                   json={"prompt": "hello streaming  world"}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = list(source.iter_sse())
        assert [e.data for e in events] == ["hello ", "streaming ", "world "]
        assert all(e.id for e in events)
        assert client.get(f"{url}/hello").json() == {"hello": "world"}
        assert client.get(f"{url}/hello?name=you").json() == {"hello": "you"}
        response = client.get(f"{url}/nope")
        assert response.status_code == 404
        assert_openai_error(response.content)


def test_embed_stops_cleanly_on_sigterm(embed: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = embed
    assert httpx.get(f"{url}/hello", timeout=5).status_code == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
