"""The stream inspector: ``GET /v1/streams`` lists live and retained streams (id, model,
transport, age, tokens, readers, buffered bytes, state); ``DELETE /v1/streams/{id}``
stops one (its generation cancelled, every reader told); both behind the API key."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import websockets
from conftest import Served, wait_for

import streamcore
from streamcore.gateway import build_app
from streamcore.sources.synthetic import SyntheticModel

KEY = {"authorization": "Bearer sk-inspector"}


def chat(tokens: int) -> dict[str, Any]:
    return {"model": "synthetic", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "inspect me"}]}


def listing(url: str) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{url}/v1/streams", headers=KEY, timeout=5)
    assert response.status_code == 200
    return {row["id"]: row for row in response.json()["data"]}


def test_lists_live_and_retained_streams_and_delete_stops_one(
        serve: Callable[..., Served]) -> None:
    served = serve(build_app([SyntheticModel(tokens_per_s=40.0)], api_keys=["sk-inspector"]))
    url = served.url
    assert httpx.get(f"{url}/v1/streams", timeout=5).status_code == 401
    assert httpx.delete(f"{url}/v1/streams/x", timeout=5).status_code == 401
    done = httpx.post(f"{url}/v1/chat/completions", json=chat(2), headers=KEY, timeout=10)
    done_id = done.headers["x-stream-id"]

    lines: list[str] = []
    ready = threading.Event()
    stream_id: list[str] = []

    def origin() -> None:
        with httpx.Client(timeout=20, headers=KEY) as client, client.stream(
                "POST", f"{url}/v1/chat/completions", json=chat(2000)) as response:
            stream_id.append(response.headers["x-stream-id"])
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith("data: ") and len(lines) > 6:
                    ready.set()

    reader = threading.Thread(target=origin)
    reader.start()
    assert ready.wait(10)
    live_id = stream_id[0]

    async def ws_stream() -> list[dict[str, Any]]:
        got = []
        async with websockets.connect(url.replace("http", "ws") + "/v1/ws",
                                      additional_headers=KEY) as sock:
            await sock.send(json.dumps({"type": "request", "id": "w", "body": chat(3)}))
            while True:
                got.append(json.loads(await sock.recv()))
                if got[-1]["type"] == "done":
                    return got

    ws_got = asyncio.run(ws_stream())
    ws_id = next(m["stream"] for m in ws_got if m["type"] == "stream")
    rows = listing(url)
    live, ended = rows[live_id], rows[done_id]
    assert live["state"] == "running" and live["transport"] == "sse"
    assert live["model"] == "synthetic" and live["readers"] == 1
    assert live["tokens"] >= 3 and live["age_s"] > 0 and live["buffered_bytes"] >= 0
    assert ended["state"] == "completed" and ended["readers"] == 0
    assert ended["tokens"] == 4  # role, 2 tokens, finish
    # A WebSocket stream is kept for resume (on either transport) and listed as such.
    ws_row = rows[ws_id]
    assert ws_row["transport"] == "websocket" and ws_row["state"] == "completed", ws_row
    assert ws_row["tokens"] == 5 and ws_row["model"] == "synthetic"
    # A second reader of the live stream: both are told when it is stopped.
    second: list[str] = []

    def follower() -> None:
        with httpx.Client(timeout=20, headers=KEY) as client, client.stream(
                "GET", f"{url}/v1/streams/{live_id}") as response:
            second.extend(response.iter_lines())

    follow = threading.Thread(target=follower)
    follow.start()
    wait_for(lambda: listing(url)[live_id]["readers"] == 2, 5)
    stopped = httpx.delete(f"{url}/v1/streams/{live_id}", headers=KEY, timeout=5)
    assert stopped.json() == {"id": live_id, "object": "stream.cancel", "status": "cancelled"}
    reader.join(10)
    follow.join(10)
    for got in (lines, second):
        errors = [json.loads(line[6:]) for line in got
                  if line.startswith("data: {\"error\"")]
        assert [e["error"]["code"] for e in errors] == ["cancelled"], got[-3:]
    after = listing(url)[live_id]
    assert after["state"] == "cancelled" and after["readers"] == 0
    assert after["tokens"] < 2000
    time.sleep(0.1)
    assert listing(url)[live_id]["tokens"] == after["tokens"]  # the generation stopped
    again = httpx.delete(f"{url}/v1/streams/{live_id}", headers=KEY, timeout=5)
    assert again.json()["status"] == "already_ended"
    assert httpx.delete(f"{url}/v1/streams/nope", headers=KEY, timeout=5).status_code == 404


def test_an_embedders_app_lists_nothing_of_the_gateways(serve: Callable[..., Served]) -> None:
    """Rows of a stream started by a plain App handler have no model (no catalog)."""
    app = build_app([SyntheticModel(tokens_per_s=0.0)])

    @app.stream("POST", "/v1/words")
    async def words(request: streamcore.Request) -> Any:
        yield "one"

    served = serve(app)
    httpx.post(f"{served.url}/v1/words", timeout=5)
    rows = httpx.get(f"{served.url}/v1/streams", timeout=5).json()["data"]
    assert [(r["model"], r["transport"], r["state"], r["tokens"]) for r in rows] == [
        ("", "sse", "completed", 1)]
