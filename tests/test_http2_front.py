"""docs/http2-front.md's nginx snippet, run for real: Debian's ``nginx`` (nginx-light) as a
foreground process on free loopback ports with a temporary prefix, the test's certificate,
and the snippet as the document has it (ports and paths substituted), in front of a real
``python -m streamcore serve``.  A headless Chromium page loaded through it holds 10
concurrent SSE streams over HTTP/2, all complete with the non-streamed text; the same page
straight from streamcore over HTTP/1.1 shows why the front is there (the browser's 6
connections per origin make the 7th stream wait); ``/v1/ws`` works through it too (the
``websockets`` client over wss, and the demo page's panes)."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from certs import TestCerts, make_certs
from chromium import Browser, chromium, poll
from conftest import ROOT, free_port, serve_cli
from websockets.sync.client import connect as ws_connect

DOC = ROOT / "docs" / "http2-front.md"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                  else None)
STREAMS = 10
MAX_TOKENS = 30  # ~1.2 s per stream at 25 tokens/s


def nginx_snippet() -> str:
    """The ```nginx block of docs/http2-front.md."""
    found = re.search(r"```nginx\n(.*?)```", DOC.read_text(), re.S)
    assert found, f"no nginx block in {DOC}"
    return found.group(1)


def nginx_version() -> tuple[int, ...]:
    assert NGINX is not None
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(part) for part in found.groups())


@contextlib.contextmanager
def nginx_front(upstream_port: int, certs: TestCerts, prefix: Path) -> Iterator[int]:
    """nginx with the document's snippet on a free port; yields that port once it answers."""
    if NGINX is None:
        message = ("HTTP/2 FRONT TEST NOT RUN: no nginx; apt-get install -y nginx-light "
                   "(.ci/run does it as root)")
        print(f"\n*** {message}", file=sys.stderr)
        pytest.skip(message)
    port = free_port()
    snippet = nginx_snippet()
    for old, new in [("127.0.0.1:8000", f"127.0.0.1:{upstream_port}"),
                     ("/etc/ssl/example.com.pem", str(certs.cert)),
                     ("/etc/ssl/example.com.key", str(certs.key)),
                     ("server_name example.com;", "server_name 127.0.0.1 localhost;")]:
        assert old in snippet, old
        snippet = snippet.replace(old, new)
    listen = "listen 443 ssl http2;"
    assert listen in snippet
    snippet = snippet.replace(listen, f"listen 127.0.0.1:{port} ssl http2;"
                              if nginx_version() < (1, 25, 1)
                              else f"listen 127.0.0.1:{port} ssl; http2 on;")
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log notice;
events {{ worker_connections 256; }}
http {{
    log_format proto '$server_protocol $request_method $request_uri $status';
    access_log {prefix}/access.log proto;
{temp}
{snippet}
}}
""")
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                             "-e", str(prefix / "error.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                _, err = proc.communicate()
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() \
                    else ""
                pytest.fail(f"nginx exited {proc.returncode}: {err.decode()} {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                        timeout=0.5):
                break
            if time.monotonic() > deadline:
                pytest.fail("nginx did not listen")
            time.sleep(0.05)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


#: Opens ``n`` streamed completions at once with fetch (each a different prompt); returns
#: what each stream gave and when (ms since the start) its first and last token came.
MANY_STREAMS = """
async ([n, maxTokens]) => {
  performance.clearResourceTimings();
  const t0 = performance.now();
  const one = async (i) => {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify({model: "synthetic", stream: true, max_tokens: maxTokens,
        messages: [{role: "user", content: `stream number ${i} through the front`}]})});
    const out = {status: response.status, text: "", done: false, firstAt: null, lastAt: null};
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let end;
      while ((end = buffer.indexOf("\\n\\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of block.split("\\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { out.done = true; continue; }
          for (const choice of JSON.parse(data).choices || []) {
            if (choice.delta && choice.delta.content) {
              const now = performance.now() - t0;
              if (out.firstAt === null) out.firstAt = now;
              out.lastAt = now;
              out.text += choice.delta.content;
            }
          }
        }
      }
    }
    return out;
  };
  const results = await Promise.all([...Array(n).keys()].map(one));
  // A fetch's resource timing entry need not exist yet when its reader sees the body's
  // end (browsers add it asynchronously; whatwg/fetch#1813 describes the race): on a
  // busy machine 9 of the 10 were there after Promise.all.  Wait for them, bounded.
  const entries = () => performance.getEntriesByType("resource")
    .filter((e) => e.name.endsWith("/v1/chat/completions"));
  for (let waited = 0; entries().length < n && waited < 10000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const protocols = entries().map((e) => e.nextHopProtocol);
  return {results, protocols};
}
"""


def expected_texts(url: str) -> list[str]:
    """Each prompt's answer, not streamed (paced too: asked all at once)."""
    def one(i: int) -> str:
        response = httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
            "model": "synthetic", "max_tokens": MAX_TOKENS, "messages": [
                {"role": "user", "content": f"stream number {i} through the front"}]})
        text: str = response.json()["choices"][0]["message"]["content"]
        return text

    with ThreadPoolExecutor(STREAMS) as pool:
        return list(pool.map(one, range(STREAMS)))


def many_streams(browser: Browser, url: str) -> dict[str, Any]:
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(url + "/")
        got: dict[str, Any] = page.evaluate(MANY_STREAMS, [STREAMS, MAX_TOKENS])
        got["navigation"] = page.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol")
        return got
    finally:
        context.close()


def test_nginx_http2_front_holds_ten_concurrent_sse_streams(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    certs = make_certs(tmp_path_factory.mktemp("certs"))
    with serve_cli("--token-rate", "25") as daemon, \
            nginx_front(daemon.port, certs, tmp_path) as port, chromium() as browser:
        front = f"https://127.0.0.1:{port}"
        expected = expected_texts(daemon.url)
        assert all(expected) and len(set(expected)) == STREAMS

        # Through the front: h2, all 10 at once, each with its own text.
        got = many_streams(browser, front)
        results = got["results"]
        assert got["navigation"] == "h2", got["navigation"]
        assert got["protocols"] == ["h2"] * STREAMS, got["protocols"]
        assert [r["status"] for r in results] == [200] * STREAMS
        assert all(r["done"] for r in results), results
        assert [r["text"] for r in results] == expected
        first_tokens = [r["firstAt"] for r in results]
        last_tokens = [r["lastAt"] for r in results]
        assert max(first_tokens) < min(last_tokens), (
            f"not all {STREAMS} streams were open at once: first tokens {first_tokens}, "
            f"last tokens {last_tokens}")
        # Streamed through, not buffered: 30 tokens at 25/s arrive over ~1.2 s each.
        spread = [r["lastAt"] - r["firstAt"] for r in results]
        assert min(spread) > 600, f"the front buffered the streams: {spread}"
        # nginx logs a request once it has finished it, which may be just after the
        # browser read the stream's last bytes: the log is awaited, not read once.
        def access_posts() -> tuple[list[str], list[str]]:
            access = (tmp_path / "access.log").read_text().splitlines()
            return access, [line for line in access if " POST /v1/chat/completions " in line]

        deadline = time.monotonic() + 5
        while len(access_posts()[1]) < STREAMS and time.monotonic() < deadline:
            time.sleep(0.02)
        access, posts = access_posts()
        assert len(posts) == STREAMS and all(line.startswith("HTTP/2.0 POST") and
                                             line.endswith(" 200") for line in posts), access

        # Straight from streamcore (HTTP/1.1): the browser opens 6 connections, and the
        # streams past the 6th wait for one of them to finish.  This is why the front.
        direct = many_streams(browser, daemon.url)
        assert set(direct["protocols"]) == {"http/1.1"}, direct["protocols"]
        assert [r["text"] for r in direct["results"]] == expected
        firsts = sorted(r["firstAt"] for r in direct["results"])
        lasts = sorted(r["lastAt"] for r in direct["results"])
        assert firsts[6] > lasts[0], ("the 7th HTTP/1.1 stream did not wait for a "
                                      f"connection: {firsts} {lasts}")

        # WebSocket through the front (Upgrade/Connection headers of the snippet).
        context = ssl.create_default_context(cafile=str(certs.ca))
        with ws_connect(f"wss://127.0.0.1:{port}/v1/ws", ssl=context, open_timeout=5) as ws:
            ws.send(orjson.dumps({"type": "request", "id": "w", "body": {
                "model": "synthetic", "max_tokens": MAX_TOKENS, "messages": [
                    {"role": "user", "content": "stream number 0 through the front"}]}}))
            text = []
            kinds = ("stream", "chunk")  # the stream message names it, for a resume
            while (message := orjson.loads(ws.recv(timeout=10)))["type"] in kinds:
                for choice in message.get("chunk", {}).get("choices", ()):
                    text.append(choice["delta"].get("content") or "")
            assert message["type"] == "done", message
            assert "".join(text) == expected[0]

        # The demo page through the front: both panes complete.
        browser_context = browser.new_context(ignore_https_errors=True)
        try:
            page = browser_context.new_page()
            page.goto(front + "/")
            page.fill("#max-tokens", "20")
            poll(page, "document.querySelector('#model').value === 'synthetic'", 5)
            page.click("#send")
            poll(page, "window.demo.sse.status === 'done' && "
                       "window.demo.ws.status === 'done'", 10)
            state = page.evaluate("({sse: window.demo.sse, ws: window.demo.ws})")
            assert state["sse"]["text"] == state["ws"]["text"] != ""
            assert state["sse"]["errors"] == state["ws"]["errors"] == []
        finally:
            browser_context.close()
