"""A real browser as the client: headless Chromium driven by Playwright for Python.

The pages are served by the streamcore App under test itself (same origin, no CORS), and
their scripts use the browser's own machinery: ``EventSource`` (which reconnects by itself
after a network error, sending ``Last-Event-ID``) and ``fetch`` with a ``ReadableStream``
reader.  The test reads what the page gathered with ``page.evaluate``.

Needs ``pip install playwright`` (the ``test`` extra) and Debian's ``chromium`` at
/usr/bin/chromium (``.ci/run`` installs it when run as root); ``playwright install`` is never
used.  Without either, every test here is skipped with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from chromium import Browser, Page, chromium, poll
from conftest import FAST_LIMITS, Served, wait_for

import streamcore
from streamcore.gateway import build_app
from streamcore.sources.synthetic import SyntheticModel


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        new_page = context.new_page()
        yield new_page
    finally:
        context.close()


def html(script: str) -> streamcore.Response:
    doc = ("<!doctype html><html><head><meta charset='utf-8'><title>streamcore</title>"
           f"</head><body><script>{script}</script></body></html>")
    return streamcore.Response(doc.encode(), content_type=b"text/html; charset=utf-8")


# ------------------------------------------------------------- EventSource reconnects

TICKS_PAGE = """
window.state = {received: [], opens: 0, errors: 0, closed: false};
const total = %(total)d;
const source = new EventSource("/ticks");
source.onopen = () => { window.state.opens += 1; };
source.onerror = () => { window.state.errors += 1; };
source.onmessage = (e) => {
  window.state.received.push([e.data, e.lastEventId]);
  if (e.data === "tick " + total) { source.close(); window.state.closed = true; }
};
"""


def test_eventsource_reconnects_and_gets_every_item_once(
        serve: Callable[..., Served], page: Page) -> None:
    """The server cuts the EventSource's connection after ``DROP`` items; the browser
    reconnects by itself (after the reconnection time streamcore's ``retry:`` field sets,
    1 s; tests/test_browser_resume.py cuts the network instead) with ``Last-Event-ID``,
    and the stream, kept alive by the grace, goes on from there: every item exactly
    once, in order."""
    total, drop = 200, 20  # 20 ms apart: ~4 s, so the reconnect lands mid-stream
    limits = FAST_LIMITS.replace(disconnect_policy="linger", resume_grace_s=8.0,
                                 keepalive_timeout_s=5.0)
    app = streamcore.App(limits=limits)
    holder: dict[str, Any] = {"started": 0, "cut": 0, "finished": False}

    def cut_stream_connections() -> None:
        """On the server's loop: close (FIN, mid-body) every connection carrying a
        stream, as a proxy or a network change would."""
        server: streamcore.Server = holder["served"].server
        for conn in list(server.connections):
            if getattr(conn, "reader", None) is not None and conn.transport is not None:
                conn.transport.close()
                holder["cut"] += 1

    @app.route("GET", "/")
    async def index(request: streamcore.Request) -> streamcore.Response:
        return html(TICKS_PAGE % {"total": total})

    @app.stream("GET", "/ticks")
    async def ticks(request: streamcore.Request) -> Any:
        holder["started"] += 1
        for i in range(1, total + 1):
            if i == drop + 1:
                cut_stream_connections()
            yield f"tick {i}"
            await asyncio.sleep(0.02)
        holder["finished"] = True

    served = serve(app, limits)
    holder["served"] = served
    page.goto(served.url + "/")
    poll(page, "window.state.opens >= 2", timeout=6.0)  # reconnected
    assert not served.call(lambda: holder["finished"]), (
        "the browser reconnected after the stream's end: the live tail is not tested")
    poll(page, "window.state.closed", timeout=5.0)
    state = page.evaluate("window.state")

    data = [d for d, _ in state["received"]]
    assert data == [f"tick {i}" for i in range(1, total + 1)], (
        f"{len(data)} items; duplicates or gaps: {data[:drop + 5]} ...")
    ids = [i for _, i in state["received"]]
    prefix = ids[0].rpartition("-")[0]  # <stream id>-<epoch>
    assert ids == [f"{prefix}-{i}" for i in range(1, total + 1)]
    assert holder["cut"] == 1, "the first connection was not cut"
    assert state["opens"] == 2 and state["errors"] >= 1, state
    assert holder["started"] == 1, "the reconnect started a new generation, not a resume"
    wait_for(lambda: holder["finished"])  # the generator ran to its end, once


# ---------------------------------------------------------------- fetch + ReadableStream

FETCH_PAGE = r"""
window.state = null;
function parseBlock(block, out) {
  let data = [], id = null;
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value);
    else if (name === "id") id = value;
  }
  if (!data.length) return;
  const text = data.join("\n");
  out.events += 1;
  if (text === "[DONE]") { out.done += 1; return; }
  out.ids.push(id);
  const chunk = JSON.parse(text);
  if (chunk.error) { out.errors.push(chunk.error); return; }
  for (const choice of chunk.choices) {
    const piece = choice.delta.content;
    if (piece) {
      out.content += piece;
      const now = performance.now();
      if (out.firstAt === null) out.firstAt = now;
      out.lastAt = now;
    }
  }
}
// Reads an SSE response body with a ReadableStream reader; stopAfter: cancel the body (the
// connection goes) after that many events.
async function readSSE(response, out, stopAfter) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    out.reads += 1;
    buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      parseBlock(buffer.slice(0, end), out);
      buffer = buffer.slice(end + 2);
      if (stopAfter && out.events >= stopAfter) { await reader.cancel(); return; }
    }
  }
}
function newOut(response) {
  return {status: response.status, streamId: response.headers.get("x-stream-id"),
          type: response.headers.get("content-type"), ids: [], errors: [], content: "",
          done: 0, events: 0, reads: 0, firstAt: null, lastAt: null};
}
window.chat = async (body, stopAfter) => {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: {"content-type": "application/json"},
    body: JSON.stringify(body)});
  const out = newOut(response);
  await readSSE(response, out, stopAfter);
  return out;
};
window.resume = async (streamId, lastEventId) => {
  const response = await fetch("/v1/streams/" + streamId, {
    headers: lastEventId ? {"Last-Event-ID": lastEventId} : {}});
  const out = newOut(response);
  await readSSE(response, out, 0);
  return out;
};
window.follow = (streamId) => new Promise((resolve) => {
  // What a browser app does with a POSTed completion: follow it by id with EventSource.
  const out = {ids: [], errors: [], content: "", done: 0, events: 0, reads: 0,
               firstAt: null, lastAt: null};
  const source = new EventSource("/v1/streams/" + streamId);
  source.onmessage = (e) => {
    parseBlock("id: " + e.lastEventId + "\ndata: " + e.data, out);
    if (e.data === "[DONE]") { source.close(); resolve(out); }
  };
});
"""

MESSAGES = [{"role": "user", "content": "please explain in plain words how a browser reads "
             "a stream of tokens from a server while the answer is still being written"}]


def served_gateway(serve: Callable[..., Served], **limits: Any) -> Served:
    app_limits = FAST_LIMITS.replace(keepalive_timeout_s=5.0, **limits)
    app = build_app([SyntheticModel(tokens_per_s=100.0)], app_limits)

    @app.route("GET", "/")
    async def index(request: streamcore.Request) -> streamcore.Response:
        return html(FETCH_PAGE)

    return serve(app, app_limits)


def non_streamed(url: str, body: dict[str, Any]) -> str:
    response = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False},
                          timeout=10)
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"]
    return content


def check_ids(out: dict[str, Any], stream_id: str, first: int = 1) -> int:
    """Ids ``<stream id>-<epoch>-<seq>`` from ``first`` on, one epoch throughout."""
    epoch = out["ids"][0].split("-")[1] if out["ids"] else ""
    assert out["ids"] == [f"{stream_id}-{epoch}-{i}"
                          for i in range(first, first + len(out["ids"]))]
    return first + len(out["ids"])


def test_fetch_readable_stream_reassembles_the_answer(
        serve: Callable[..., Served], page: Page) -> None:
    served = served_gateway(serve)
    body = {"model": "synthetic", "messages": MESSAGES, "stream": True, "max_tokens": 40}
    page.goto(served.url + "/")
    out = page.evaluate("body => window.chat(body, 0)", body)

    assert out["status"] == 200 and out["type"].startswith("text/event-stream"), out
    assert not out["errors"], out["errors"]
    assert out["done"] == 1 and out["events"] == 1 + 40 + 1 + 1  # role, tokens, finish, DONE
    check_ids(out, out["streamId"])
    assert out["content"] == non_streamed(served.url, body)
    # Streamed, not buffered: 40 tokens at 100/s arrive over ~0.4 s, in many reads.
    assert out["reads"] > 5, out["reads"]
    assert out["lastAt"] - out["firstAt"] > 200, (out["firstAt"], out["lastAt"])


def test_fetch_cut_then_resume_and_eventsource_follow(
        serve: Callable[..., Served], page: Page) -> None:
    """The page drops its fetch after 6 events (``reader.cancel()``), resumes the rest with
    ``fetch(GET /v1/streams/{id}, Last-Event-ID)``, and also follows the whole stream by id
    with ``EventSource``: both give the non-streamed answer."""
    served = served_gateway(serve, disconnect_policy="linger", resume_grace_s=3.0)
    body = {"model": "synthetic", "messages": MESSAGES, "stream": True, "max_tokens": 60}
    page.goto(served.url + "/")
    first = page.evaluate("body => window.chat(body, 6)", body)
    sid = first["streamId"]
    assert first["status"] == 200 and first["events"] == 6 and first["done"] == 0, first
    after = check_ids(first, sid)

    rest = page.evaluate("([sid, last]) => window.resume(sid, last)", [sid, first["ids"][-1]])
    assert rest["status"] == 200 and rest["streamId"] == sid, rest
    assert not rest["errors"] and rest["done"] == 1, rest
    check_ids(rest, sid, after)
    expected = non_streamed(served.url, body)
    assert first["content"] + rest["content"] == expected

    followed = page.evaluate("sid => window.follow(sid)", sid)
    assert not followed["errors"] and followed["done"] == 1
    check_ids(followed, sid)
    assert followed["content"] == expected
