"""The access log (``streamcore.access``): one line per request and per stream, as JSON
with ``--log-format json``; each outcome's line parsed and checked; never an API key in
any output of the server, nor a prompt unless ``--log-prompts 1``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websockets
from conftest import ROOT, free_port, wait_healthy

PROMPT = "the secret words of a user's prompt"


class Run:
    def __init__(self, url: str, out: Path, err: Path) -> None:
        self.url = url
        self.out = out
        self.err = err

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def access(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.err.read_text().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line["logger"] == "streamcore.access"]


@contextlib.contextmanager
def server(tmp: Path, name: str, *args: str) -> Iterator[Run]:
    """``streamcore serve`` with its output in files (read after it stopped)."""
    port = free_port()
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "streamcore", "serve", "--port",
                                 str(port), *args], cwd=ROOT, stdout=o, stderr=e,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        run = Run(f"http://127.0.0.1:{port}", out, err)
        try:
            wait_healthy(run.url, proc)
            yield run
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def chat(tokens: int, content: str = "hello") -> dict[str, Any]:
    return {"model": "synthetic", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": content}]}


def traffic(url: str, headers: dict[str, str]) -> str:
    """A completed stream, a client gone, a WebSocket cancel, a 404; the completed
    stream's id."""
    with httpx.Client(timeout=10, headers=headers) as client:
        done = client.post(f"{url}/v1/chat/completions", json=chat(3, PROMPT))
        assert done.text.endswith("data: [DONE]\n\n")
        with client.stream("POST", f"{url}/v1/chat/completions", json=chat(2000)) as cut:
            for line in cut.iter_lines():
                if line.startswith("data: ") and "content" in line:
                    break
        assert client.get(f"{url}/no/such").status_code == 404

    async def ws() -> None:
        async with websockets.connect(url.replace("http", "ws") + "/v1/ws",
                                      additional_headers=headers) as sock:
            await sock.send(json.dumps({"type": "request", "id": "a", "body": chat(2000)}))
            while json.loads(await sock.recv())["type"] != "chunk":
                pass
            await sock.send(json.dumps({"type": "cancel", "id": "a"}))
            while json.loads(await sock.recv())["type"] != "cancelled":
                pass

    asyncio.run(ws())
    return str(done.headers["x-stream-id"])


def test_one_json_line_per_request_and_per_stream(tmp_path: Path) -> None:
    # cancel: the client that leaves is logged as gone now, not after a linger window.
    with server(tmp_path, "a", "--token-rate", "200", "--log-format", "json",
                "--disconnect-policy", "cancel") as run:
        stream_id = traffic(run.url, {})
    lines = run.access()
    streams = {line["outcome"]: line for line in lines if line["event"] == "stream"}
    assert set(streams) == {"completed", "client_gone", "cancelled"}
    done = streams["completed"]
    assert done["stream"] == stream_id and done["model"] == "synthetic"
    assert done["transport"] == "sse" and done["error"] is None
    assert done["events"] == 5  # role, 3 tokens, finish
    assert done["usage"]["completion_tokens"] == 3 and done["usage_source"] == "counted"
    assert 0 < done["ttft_s"] <= done["duration_s"] + 0.05
    assert done["completion_id"].startswith("chatcmpl-")
    gone = streams["client_gone"]
    assert gone["transport"] == "sse" and 2 <= gone["events"] < 2002
    assert gone["error"] == "cancelled"
    cancelled = streams["cancelled"]
    assert cancelled["transport"] == "websocket" and cancelled["error"] == "cancelled"
    requests = [line for line in lines if line["event"] == "request"]
    missing = [r for r in requests if r["path"] == "/no/such"]
    assert len(missing) == 1
    assert missing[0]["method"] == "GET" and missing[0]["status"] == 404
    assert missing[0]["peer"] == "127.0.0.1" and missing[0]["duration_s"] >= 0
    assert not any(PROMPT in json.dumps(line) for line in lines)


def test_text_lines_and_prompts_only_when_asked(tmp_path: Path) -> None:
    with server(tmp_path, "t", "--token-rate", "0", "--log-prompts", "1") as run, \
            httpx.Client(timeout=10) as client:
        client.post(f"{run.url}/v1/chat/completions", json=chat(3, PROMPT))
    text = run.err.read_text()
    assert "streamcore.access: event=stream" in text and "outcome=completed" in text
    prompt = [line for line in text.splitlines() if "event=prompt" in line]
    assert len(prompt) == 1 and PROMPT in prompt[0]
    completion = prompt[0].split("completion_id=")[1].split()[0]
    assert any(f"completion_id={completion}" in line and "event=stream" in line
               for line in text.splitlines())


def test_no_api_key_in_any_output(tmp_path: Path) -> None:
    """A client key (flag and file), a wrong key a client tried, and the key the gateway
    sends upstream: none in anything either server printed, at debug level."""
    client_key, file_key, wrong_key = "sk-client-7f3a9c", "sk-file-2b8e41", "sk-wrong-c0ffee"
    upstream_key = "sk-upstream-91d2aa"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# clients\n{file_key}\n")
    with server(tmp_path, "up", "--token-rate", "200", "--log-format", "json",
                "--log-level", "debug", "--api-key", upstream_key) as up, \
            server(tmp_path, "gw", "--log-format", "json", "--log-level", "debug",
                   "--api-key", client_key, "--api-key-file", str(keys),
                   "--upstream", f"{up.url}/v1 key={upstream_key} models=synthetic") as gw:
        traffic(gw.url, {"authorization": f"Bearer {client_key}"})
        with httpx.Client(timeout=10) as client:
            assert client.post(f"{gw.url}/v1/chat/completions", json=chat(3),
                               headers={"authorization": f"Bearer {wrong_key}"}
                               ).status_code == 401
            assert client.post(f"{gw.url}/v1/chat/completions", json=chat(3),
                               headers={"authorization": f"Bearer {file_key}"}
                               ).status_code == 200
    output = up.output() + gw.output()
    assert '"event": "stream"' in output  # the servers did log
    for key in (client_key, file_key, wrong_key, upstream_key):
        assert key not in output, key
    upstream_line = next(line for line in gw.access() if line["event"] == "stream"
                         and line["outcome"] == "completed")
    assert upstream_line["upstream"] == f"{up.url}/v1" and upstream_line["attempts"] == 1
