"""The demo page at ``/`` (streamcore/demo/): its routes over HTTP, and the page itself in
headless Chromium against a real gateway with the daemon's default limits (linger):
both panes give the non-streamed answer, a cut resumes exactly once, cancel stops the
generation.  The page's state is read from ``window.demo``; the run writes a screenshot to
the test's tmp dir and, with ``STREAMCORE_SCREENSHOT_DIR`` set, there too (docs/demo.png is
made with ``STREAMCORE_SCREENSHOT_DIR=docs``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import Browser, Page, chromium, poll
from conftest import Served, assert_openai_error

import streamcore
from streamcore.gateway import build_app
from streamcore.sources.synthetic import SyntheticModel

PROMPT = "Explain how a token stream survives a dropped connection."


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        yield context.new_page()
    finally:
        context.close()


def gateway(serve: Callable[..., Served], tokens_per_s: float = 60.0) -> Served:
    """The daemon's app and default limits (disconnect policy linger), a paced synthetic
    model."""
    limits = streamcore.Limits()
    return serve(build_app([SyntheticModel(tokens_per_s=tokens_per_s)], limits), limits)


def non_streamed(url: str, max_tokens: int) -> tuple[str, int, str]:
    """The same request not streamed: its text, token count and finish reason (the
    synthetic model is deterministic; its answer may be shorter than ``max_tokens``)."""
    response = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
        "model": "synthetic", "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": PROMPT}]})
    assert response.status_code == 200, response.text
    doc = response.json()
    choice = doc["choices"][0]
    return choice["message"]["content"], doc["usage"]["completion_tokens"], \
        choice["finish_reason"]


def demo(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("({sse: window.demo.sse, ws: window.demo.ws})")
    return state


def ask(page: Page, url: str, max_tokens: int) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.fill("#prompt", PROMPT)
    page.fill("#max-tokens", str(max_tokens))
    poll(page, "document.querySelector('#model').value === 'synthetic'", 5)
    page.click("#send")
    assert not errors, errors


# ------------------------------------------------------------------------------- routes


def test_demo_routes_content_types_head_and_404(serve: Callable[..., Served]) -> None:
    served = gateway(serve)
    with httpx.Client(base_url=served.url, timeout=5) as client:
        index = client.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in index.headers["content-security-policy"]
        assert b'src="/demo/app.js"' in index.content
        assert b"http://" not in index.content and b"https://" not in index.content  # offline

        head = client.head("/")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(index.content))
        assert head.headers["content-type"] == index.headers["content-type"]

        for name, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
            asset = client.get(f"/demo/{name}")
            assert asset.status_code == 200 and asset.content, name
            assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
            assert asset.headers["x-content-type-options"] == "nosniff"
            assert b"http://" not in asset.content and b"https://" not in asset.content

        for path in ["/demo/nope.js", "/demo/__init__.py", "/demo/..%2f..%2fgateway.py",
                     "/index.html"]:
            missing = client.get(path)
            assert missing.status_code == 404, path
            assert missing.headers["content-type"] == "application/json"
            assert assert_openai_error(missing.content)["code"] == "not_found"

        refused = client.post("/", content=b"{}")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        assert_openai_error(refused.content)


# ------------------------------------------------------------------------------ browser


def test_demo_both_panes_complete_and_a_cut_resumes_exactly_once(
        serve: Callable[..., Served], page: Page, tmp_path: Path) -> None:
    """Send; cut the SSE pane's connection after 15 tokens; both panes end ``done`` with the
    non-streamed answer; the SSE pane reconnected once, saw every event id once and in order,
    and got part of the text through the resume."""
    served = gateway(serve)
    max_tokens = 90  # ~1.3 s at 60 tokens/s: the cut and the 0.4 s reconnect land mid-way
    expected, tokens, finish = non_streamed(served.url, max_tokens)
    assert tokens > 40
    ask(page, served.url, max_tokens)

    poll(page, "window.demo.sse.tokens >= 15 && window.demo.sse.status === 'streaming'", 10)
    page.click("#cut")
    at_cut = demo(page)["sse"]["tokens"]
    assert at_cut < tokens - 20
    poll(page, "window.demo.sse.status === 'cut'", 2)
    poll(page, "['done', 'error', 'cancelled'].includes(window.demo.sse.status) && "
               "['done', 'error', 'cancelled'].includes(window.demo.ws.status)", 15)

    state = demo(page)
    sse, ws = state["sse"], state["ws"]
    assert sse["errors"] == [] and ws["errors"] == [], state
    assert sse["status"] == "done" and ws["status"] == "done", state
    assert sse["text"] == expected
    assert ws["text"] == expected
    assert sse["tokens"] == ws["tokens"] == tokens
    assert sse["finish"] == ws["finish"] == finish
    assert sse["reconnects"] == 1 and ws["reconnects"] == 0
    assert sse["ttftMs"] is not None and ws["ttftMs"] is not None
    assert 20 < sse["rate"] < 200 and 20 < ws["rate"] < 200, (sse["rate"], ws["rate"])
    # What came after the reconnect is shown apart; the cut was really mid-answer.
    resumed = page.evaluate(
        "[...document.querySelectorAll('#pane-sse .resumed')].map(e => e.textContent)")
    assert len(resumed) == 1 and resumed[0], resumed
    assert expected.endswith(resumed[0]) and len(resumed[0]) < len(expected)
    assert page.inner_text("#pane-sse [data-stat=reconnects]") == "1"
    assert page.inner_text("#pane-sse [data-stat=status]") == "done"

    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG") and len(shot) > 20_000
    (tmp_path / "demo.png").write_bytes(shot)
    target = os.environ.get("STREAMCORE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        (Path(target) / "demo.png").write_bytes(shot)


def test_demo_cancel_stops_the_generation(serve: Callable[..., Served], page: Page) -> None:
    """Cancel mid-answer: the WebSocket pane gets ``cancelled`` and no chunk after it; the
    SSE pane's readers all leave and the server cancels the stream at once (grace 0): the
    stream is finished with the ``cancelled`` error, long before the whole answer, and the
    pane shows what the server says."""
    served = gateway(serve, tokens_per_s=30.0)
    # 150 tokens: 5 s at 30 tokens/s if nothing stopped it (max_tokens is the answer's
    # length: the non-streamed answer is paced too).
    _, tokens, _ = non_streamed(served.url, 150)
    assert tokens == 150
    ask(page, served.url, 150)
    poll(page, "window.demo.sse.tokens >= 10 && window.demo.ws.tokens >= 10", 10)
    sid = demo(page)["sse"]["streamId"]
    page.click("#cancel")
    poll(page, "window.demo.sse.status === 'cancelled' && "
               "window.demo.ws.status === 'cancelled'", 5)

    def server_side() -> dict[str, Any]:
        entry = served.server.store.find(sid)
        assert entry is not None
        return {"finished": entry.log.closed, "error": entry.error,
                "next_seq": entry.log.next_seq, "readers": len(entry.readers)}

    seen = wait_stream_finished(served, server_side)
    assert b"cancelled" in seen["error"], seen
    assert seen["next_seq"] < tokens - 10, seen  # role + tokens: it stopped at once
    poll(page, "window.demo.sse.log.some(m => m.startsWith('server: the stream was "
               "cancelled'))", 3)

    before = demo(page)
    time.sleep(0.4)  # nothing more arrives on either pane
    after = demo(page)
    for pane in ("sse", "ws"):
        assert after[pane]["tokens"] == before[pane]["tokens"] < tokens - 10, after[pane]
        assert after[pane]["errors"] == [], after[pane]
    assert page.inner_text("#pane-ws [data-stat=status]") == "cancelled"
    assert page.inner_text("#pane-sse [data-stat=status]") == "cancelled"
    assert server_side() == seen


def wait_stream_finished(served: Served, look: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    deadline = time.monotonic() + 3
    while True:
        seen: dict[str, Any] = served.call(look)
        if seen["finished"]:
            return seen
        if time.monotonic() > deadline:
            pytest.fail(f"the SSE stream was not cancelled: {seen}")
        time.sleep(0.05)


def test_demo_bad_input_shows_the_servers_error(serve: Callable[..., Served],
                                                page: Page) -> None:
    """A refused request (max_tokens -1) ends both panes in ``error`` with the server's
    OpenAI-style message, on SSE (the POST's 400 body) and on WebSocket (its error
    message); nothing streams."""
    served = gateway(serve)
    ask(page, served.url, -1)
    poll(page, "window.demo.sse.status === 'error' && window.demo.ws.status === 'error'", 5)
    state = demo(page)
    for pane in ("sse", "ws"):
        assert state[pane]["tokens"] == 0, state[pane]
        assert len(state[pane]["errors"]) == 1, state[pane]
        assert "(param: max_tokens)" in state[pane]["errors"][0], state[pane]
    assert page.is_enabled("#send") and not page.is_enabled("#cancel")


def test_demo_inspector_lists_the_streams_and_stops_one(serve: Callable[..., Served],
                                                       page: Page) -> None:
    """The inspector's table shows the page's SSE stream while it runs; its Stop button
    cancels that generation (DELETE): the SSE pane is told, the WebSocket pane's stream (a
    generation of its own) goes on."""
    served = gateway(serve, tokens_per_s=30.0)
    ask(page, served.url, 150)
    poll(page, "window.demo.sse.tokens >= 5 && window.demo.sse.streamId !== null", 10)
    sid = demo(page)["sse"]["streamId"]
    poll(page, f"window.demo.streams.some(r => r.id === '{sid}' && r.state === 'running')",
         5)
    row = next(r for r in page.evaluate("window.demo.streams") if r["id"] == sid)
    assert row["model"] == "synthetic" and row["transport"] == "sse" and row["readers"] >= 1
    assert page.inner_text(f"#inspector tr[data-id='{sid}'] td:nth-child(4)") == "running"
    page.click(f"#inspector tr[data-id='{sid}'] button")
    poll(page, "window.demo.sse.status === 'cancelled'", 5)
    poll(page, f"window.demo.streams.some(r => r.id === '{sid}' && r.state === 'cancelled')",
         5)
    assert demo(page)["ws"]["status"] == "streaming"
