"""Headless Chromium resumes by itself under the default disconnect policy (issue 10).

The page is served through a small real TCP proxy in the test, which the test cuts mid-
stream (every connection through it closed at once: what a network switch does to a
browser).  The page's ``EventSource`` reconnects by itself — told by the ``retry:`` field
to come back within the linger window — with ``Last-Event-ID``, and the stream, lingering
meanwhile, goes on from there: the page ends with the complete text, every event once.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from chromium import Browser, Page, chromium, poll
from conftest import FAST_LIMITS, Served, wait_for

import streamcore
from streamcore.gateway import build_app
from streamcore.limits import Limits
from streamcore.sources.synthetic import SyntheticModel


class CuttableProxy:
    """A TCP proxy on 127.0.0.1: every accepted connection is relayed to ``target``;
    :meth:`cut` closes all the current ones at once (new ones are relayed as before)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.pairs.append((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        """Close every connection through the proxy now; how many there were."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.cut()


PAGE = """
window.state = {text: "", ids: [], opens: 0, errors: 0, done: false, stream: null};
(async () => {
  // Start the completion with a POST and leave it at once: the stream lingers (the
  // default policy), and an EventSource reads it by id, from the start.
  const response = await fetch("/v1/chat/completions", {method: "POST",
    headers: {"content-type": "application/json"}, body: JSON.stringify(%(body)s)});
  const id = response.headers.get("x-stream-id");
  window.state.stream = id;
  await response.body.cancel();
  const source = new EventSource("/v1/streams/" + id);
  source.onopen = () => { window.state.opens += 1; };
  source.onerror = () => { window.state.errors += 1; };
  source.onmessage = (e) => {
    if (e.data === "[DONE]") { source.close(); window.state.done = true; return; }
    window.state.ids.push(e.lastEventId);
    for (const choice of JSON.parse(e.data).choices || [])
      window.state.text += (choice.delta && choice.delta.content) || "";
  };
})();
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_eventsource_cut_by_the_network_resumes_by_itself_with_the_default_policy(
        serve: Callable[..., Served], page: Page) -> None:
    import orjson

    defaults = Limits()
    assert defaults.disconnect_policy == "linger"
    limits = FAST_LIMITS.replace(disconnect_policy=defaults.disconnect_policy,
                                 resume_grace_s=defaults.resume_grace_s,
                                 keepalive_timeout_s=5.0)
    app = build_app([SyntheticModel(tokens_per_s=40.0)], limits)
    body = {"model": "synthetic", "stream": True, "max_tokens": 120,
            "messages": [{"role": "user", "content": "a browser on a train loses its "
                          "network for a moment in the middle of an answer"}]}

    @app.route("GET", "/")
    async def index(request: streamcore.Request) -> streamcore.Response:
        doc = ("<!doctype html><html><head><meta charset='utf-8'></head><body><script>"
               + PAGE % {"body": orjson.dumps(body).decode()} + "</script></body></html>")
        return streamcore.Response(doc.encode(), content_type=b"text/html; charset=utf-8")

    served = serve(app, limits)
    proxy = CuttableProxy(served.port)
    try:
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        poll(page, "window.state.ids.length >= 20", timeout=10.0)
        assert proxy.cut() >= 1
        cut_at = page.evaluate("window.state.ids.length")
        poll(page, "window.state.done", timeout=20.0)
        state = page.evaluate("window.state")
    finally:
        proxy.close()

    assert state["opens"] == 2 and state["errors"] >= 1, state
    assert cut_at < 1 + 120, "the stream ended before the cut: nothing was resumed"
    stream = state["stream"]
    epoch = state["ids"][0].split("-")[1]
    assert state["ids"] == [f"{stream}-{epoch}-{i}" for i in range(1, 1 + 120 + 2)], (
        "every event once, in order")
    expected = httpx.post(f"{served.url}/v1/chat/completions",
                          json={**body, "stream": False}, timeout=10)
    assert state["text"] == expected.json()["choices"][0]["message"]["content"]
    wait_for(lambda: served.call(lambda: served.server.store.live()) == [])
