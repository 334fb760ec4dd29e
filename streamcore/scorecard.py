"""The chaos scorecard: real streaming clients against every fault of chaos mode, and a
table of what each did (docs/chaos.md).

::

    python -m streamcore.scorecard                      # every fault, every client found
    python -m streamcore.scorecard --faults crlf,bom --clients openai,httpx-sse
    streamcore chaos --scorecard                        # the same

Clients: the ``openai`` Python SDK, ``httpx-sse``, the ``websockets`` client, the npm
``eventsource-parser`` and ``eventsource`` packages under Node (installed with npm into
``~/.cache/streamcore-scorecard/node``, or ``$STREAMCORE_SCORECARD_NODE``), and a browser
``EventSource`` and ``fetch()`` reader in headless Chromium (Playwright).  A client that
is not installed is skipped and said so.  Each case has a deadline (``--case-timeout``):
a client still reading then is *hung*.

An outcome is one of: ``text`` (the exact answer), ``text+FFFD`` (the answer with the
invalid byte as U+FFFD), ``error`` (the client raised or reported one), ``hung``,
``truncated`` (a strict prefix of the answer, no error: silently cut) and ``corrupted``
(another text, no error).  Each is marked right or wrong against the fault's expected
outcome (:data:`streamcore.proto.chaos.FAULTS`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .proto.chaos import BOTH, EITHER, ERROR, FAULTS, HTTP, REPLACED, TEXT, WS, Chaos

#: The deadline of one case (seconds): longer than any fault's own pauses.
CASE_S = 8.0
SEED = 7
MODEL = "synthetic-utf8"
#: A paced model, for the fault only a long stream shows (ws-no-pong).
SLOW_MODEL = "slow-utf8"
MAX_TOKENS = 12
PROMPT = "chaos scorecard"
NODE_PACKAGES = ("eventsource-parser@3", "eventsource@4")


def request_body(model: str = MODEL) -> dict[str, Any]:
    return {"model": model, "max_tokens": MAX_TOKENS, "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}


def model_of(fault: str) -> str:
    return SLOW_MODEL if fault == "ws-no-pong" else MODEL


@dataclass
class Result:
    text: str | None = None
    error: str | None = None
    hung: bool = False


# -- the Python clients ------------------------------------------------------------------


def openai_sdk(base: str, fault: str) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base + "/v1", api_key="sk-chaos", timeout=CASE_S)
    body = request_body(model_of(fault))
    stream = client.chat.completions.create(
        model=body["model"], messages=body["messages"], max_tokens=MAX_TOKENS,
        stream=True, stream_options={"include_usage": True},
        extra_headers={"X-Chaos": fault, "X-Chaos-Seed": str(SEED)})
    text = []
    for chunk in stream:
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
    return "".join(text)


def httpx_sse(base: str, fault: str) -> str:
    import httpx
    from httpx_sse import connect_sse

    text = []
    with httpx.Client(timeout=CASE_S) as client, connect_sse(
            client, "POST", base + "/v1/chat/completions", json=request_body(model_of(fault)),
            headers={"X-Chaos": fault, "X-Chaos-Seed": str(SEED)}) as source:
        for event in source.iter_sse():
            if event.data == "[DONE]":
                break
            chunk = json.loads(event.data)
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def websockets_client(base: str, fault: str) -> str:
    from websockets.sync.client import connect

    url = "ws" + base[4:] + f"/v1/ws?chaos={fault}&chaos_seed={SEED}"
    text = []
    with connect(url, open_timeout=CASE_S, close_timeout=1.0, ping_interval=0.5,
                 ping_timeout=0.5, max_size=None) as socket:
        socket.send(json.dumps({"type": "request", "id": "r",
                                "body": request_body(model_of(fault))}))
        while True:
            message = json.loads(socket.recv(timeout=CASE_S))
            kind = message["type"]
            if kind == "chunk":
                for choice in message["chunk"]["choices"]:
                    text.append(choice["delta"].get("content") or "")
            elif kind == "done":
                return "".join(text)
            elif kind == "error":
                raise RuntimeError(message["error"]["message"])


def _threaded(call: Callable[[str, str], str]) -> Callable[[str, str], Result]:
    """Run a blocking client in a thread, with the case deadline."""
    def run(base: str, fault: str) -> Result:
        result = Result()

        def target() -> None:
            try:
                result.text = call(base, fault)
            except BaseException as exc:  # what the client raised is the outcome
                result.error = type(exc).__name__

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(CASE_S + 1.0)
        if thread.is_alive():
            return Result(hung=True)
        return result
    return run


# -- Node --------------------------------------------------------------------------------

NODE_CLIENT = r"""
import { EventSourceParserStream } from 'eventsource-parser/stream';
import { EventSource } from 'eventsource';
const [base, fault, client, seed, model, maxTokens] = process.argv.slice(2);
const body = JSON.stringify({model, max_tokens: Number(maxTokens), stream: true,
  stream_options: {include_usage: true}, messages: [{role: 'user', content: 'chaos scorecard'}]});
const url = base + '/v1/chat/completions';
const headers = {'content-type': 'application/json', 'x-chaos': fault, 'x-chaos-seed': seed};
const out = (o) => { process.stdout.write(JSON.stringify(o)); process.exit(0); };
function take(data, text) {
  const chunk = JSON.parse(data);
  if (chunk.error) throw new Error(chunk.error.message);
  for (const c of chunk.choices) text.push(c.delta.content || '');
}
async function parser() {
  const res = await fetch(url, {method: 'POST', headers, body});
  if (!res.ok) throw new Error('HTTP ' + res.status);
  const text = [];
  const events = res.body.pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream({onError: 'terminate'}));
  for await (const event of events) {
    if (event.data === '[DONE]') return text.join('');
    take(event.data, text);
  }
  return text.join('');
}
function eventsource() {
  return new Promise((resolve, reject) => {
    const text = [];
    const es = new EventSource(url, {fetch: (input, init) => fetch(input,
      {...init, method: 'POST', body, headers: {...init.headers, ...headers}})});
    es.onmessage = (e) => {
      if (e.data === '[DONE]') { es.close(); resolve(text.join('')); return; }
      try { take(e.data, text); } catch (err) { es.close(); reject(err); }
    };
    es.onerror = (e) => {
      es.close(); reject(new Error('error event: ' + (e.message || e.code || '')));
    };
  });
}
(client === 'parser' ? parser() : eventsource()).then(
  (text) => out({text}), (err) => out({error: String(err && err.name || err)}));
"""


def node_dir() -> Path:
    return Path(os.environ.get("STREAMCORE_SCORECARD_NODE")
                or Path.home() / ".cache" / "streamcore-scorecard" / "node")


def node_ready(install: bool = True) -> str | None:
    """None when node and the packages are there (installed now if need be), else why
    not."""
    if shutil.which("node") is None:
        return "node is not installed"
    where = node_dir()
    if not (where / "node_modules" / "eventsource" / "package.json").exists():
        if not install or shutil.which("npm") is None:
            return f"the npm packages are not installed in {where}"
        where.mkdir(parents=True, exist_ok=True)
        package = where / "package.json"
        if not package.exists():
            package.write_text('{"name": "streamcore-scorecard", "private": true}\n')
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", *NODE_PACKAGES],
                              cwd=where, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            return f"npm install failed: {done.stderr[-300:]}"
    (where / "client.mjs").write_text(NODE_CLIENT)
    return None


def _node(kind: str) -> Callable[[str, str], Result]:
    def run(base: str, fault: str) -> Result:
        try:
            done = subprocess.run(
                ["node", str(node_dir() / "client.mjs"), base, fault, kind, str(SEED),
                 model_of(fault), str(MAX_TOKENS)],
                capture_output=True, text=True, timeout=CASE_S + 1.0)
        except subprocess.TimeoutExpired:
            return Result(hung=True)
        try:
            found = json.loads(done.stdout)
        except ValueError:
            return Result(error="crashed: " + done.stderr.strip()[-80:])
        return Result(found.get("text"), found.get("error"))
    return run


# -- the browser -------------------------------------------------------------------------

BROWSER_EVENTSOURCE = r"""async ([fault, seed, body, deadline]) => {
  // EventSource can only GET: the stream is started by a POST, then read by its id.
  const started = await fetch('/v1/chat/completions', {method: 'POST',
    headers: {'content-type': 'application/json'}, body});
  const id = started.headers.get('x-stream-id');
  await started.text();
  const text = [];
  return await Promise.race([
    new Promise((resolve) => setTimeout(() => resolve({hung: true}), deadline)),
    new Promise((resolve) => {
      const es = new EventSource(`/v1/streams/${id}?chaos=${fault}&chaos_seed=${seed}`);
      es.onmessage = (e) => {
        if (e.data === '[DONE]') { es.close(); resolve({text: text.join('')}); return; }
        try {
          const chunk = JSON.parse(e.data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices) text.push(c.delta.content || '');
        } catch (err) { es.close(); resolve({error: err.name}); }
      };
      es.onerror = () => { es.close(); resolve({error: 'error event'}); };
    })]);
}"""

# The reader people write by hand: split on blank lines, take the "data: " lines.
BROWSER_FETCH = r"""async ([fault, seed, body, deadline]) => {
  const read = async () => {
    const res = await fetch(`/v1/chat/completions?chaos=${fault}&chaos_seed=${seed}`,
      {method: 'POST', headers: {'content-type': 'application/json'}, body});
    if (!res.ok) throw new Error('HTTP ' + res.status);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    const text = [];
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return text.join('');
      buffer += decoder.decode(value, {stream: true});
      const parts = buffer.split('\n\n');
      buffer = parts.pop();
      for (const part of parts) {
        for (const line of part.split('\n')) {
          if (!line.startsWith('data: ')) continue;
          const data = line.slice(6);
          if (data === '[DONE]') return text.join('');
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices) text.push(c.delta.content || '');
        }
      }
    }
  };
  return await Promise.race([
    new Promise((resolve) => setTimeout(() => resolve({hung: true}), deadline)),
    read().then((text) => ({text}), (err) => ({error: err.name}))]);
}"""


class Browser:
    """One headless Chromium (Debian's, by Playwright) for every browser case."""

    def __init__(self) -> None:
        self._pw: Any = None
        self.page: Any = None

    def start(self, base: str) -> str | None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return "playwright is not installed"
        executable = shutil.which("chromium") or "/usr/bin/chromium"
        if not os.access(executable, os.X_OK):
            return "no chromium"
        self._pw = sync_playwright().start()
        browser = self._pw.chromium.launch(
            executable_path=executable,
            args=["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic"])
        self.page = browser.new_page()
        self.page.goto(base + "/healthz")
        return None

    def run(self, script: str, fault: str) -> Result:
        body = json.dumps(request_body(model_of(fault)))
        try:
            found = self.page.evaluate(script, [fault, SEED, body, CASE_S * 1000])
        except Exception as exc:  # the page itself failed
            return Result(error=type(exc).__name__)
        return Result(found.get("text"), found.get("error"), bool(found.get("hung")))

    def stop(self) -> None:
        if self._pw is not None:
            self._pw.stop()


def _in_browser(browser: Browser, script: str, base: str, fault: str) -> Result:
    return browser.run(script, fault)


# -- the runner ----------------------------------------------------------------------------

#: client name -> (transport it speaks, version of what it is)
CLIENTS = ("openai", "httpx-sse", "eventsource-parser", "eventsource", "browser-EventSource",
           "browser-fetch", "websockets")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name, dist in (("openai", "openai"), ("httpx-sse", "httpx-sse"),
                       ("websockets", "websockets"), ("playwright", "playwright")):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(dist)
    for name in ("eventsource-parser", "eventsource"):
        package = node_dir() / "node_modules" / name / "package.json"
        if package.exists():
            found[name] = json.loads(package.read_text())["version"]
    if shutil.which("node"):
        found["node"] = subprocess.run(["node", "--version"], capture_output=True,
                                       text=True).stdout.strip()
    chromium = shutil.which("chromium")
    if chromium:
        found["chromium"] = subprocess.run([chromium, "--version"], capture_output=True,
                                           text=True).stdout.strip()
    return found


def outcome(fault: str, expected: str, result: Result) -> tuple[str, bool]:
    """The outcome's label, and whether it is what a correct client does."""
    want = FAULTS[fault].expect
    if result.hung:
        label = "hung"
    elif result.error is not None:
        label = "error"
    elif result.text == expected:
        label = "text"
    elif (result.text is not None and result.text.count("\ufffd") == 1
          and result.text.replace("\ufffd", "") == expected):
        label = "text+FFFD"
    elif result.text is not None and expected.startswith(result.text):
        label = "truncated"
    else:
        label = "corrupted"
    right = {TEXT: ("text",), ERROR: ("error",), EITHER: ("text", "error"),
             REPLACED: ("text+FFFD", "error")}[want]
    return label, label in right


class Served:
    """A chaos server on its own loop in a daemon thread."""

    def __init__(self) -> None:
        import uvloop

        from .aio.server import start
        from .gateway import UTF8Model, build_app

        app = build_app([UTF8Model(), UTF8Model(name=SLOW_MODEL, tokens_per_s=8.0)],
                        chaos=Chaos())
        self.loop = uvloop.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = asyncio.run_coroutine_threadsafe(
            start(app, "127.0.0.1", 0), self.loop).result(10)
        self.base = f"http://127.0.0.1:{self.server.port}"

    def expected(self, model: str) -> str:
        import httpx

        body = {**request_body(model), "stream": False}
        del body["stream_options"]
        answer = httpx.post(self.base + "/v1/chat/completions", json=body, timeout=30).json()
        return str(answer["choices"][0]["message"]["content"])

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(1.0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def applies(client: str, fault: str) -> bool:
    where = FAULTS[fault].applies
    if client == "websockets":
        return where in (WS, BOTH) and fault != "stall-head"
    return where in (HTTP, BOTH)


def score(faults: Sequence[str], clients: Sequence[str],
          progress: Callable[[str], None] = lambda line: None,
          ) -> tuple[dict[tuple[str, str], tuple[str, bool]], dict[str, str]]:
    """Run every (client, fault) case; returns the outcomes and the clients skipped (with
    why)."""
    served = Served()
    skipped: dict[str, str] = {}
    runners: dict[str, Callable[[str, str], Result]] = {}
    browser = Browser()
    try:
        for client in clients:
            if client == "openai":
                runners[client] = _threaded(openai_sdk)
            elif client == "httpx-sse":
                runners[client] = _threaded(httpx_sse)
            elif client == "websockets":
                runners[client] = _threaded(websockets_client)
            elif client in ("eventsource-parser", "eventsource"):
                why = node_ready()
                if why is None:
                    runners[client] = _node("parser" if client == "eventsource-parser"
                                            else "eventsource")
                else:
                    skipped[client] = why
            elif client.startswith("browser-"):
                why = browser.start(served.base) if browser.page is None else None
                if why is None:
                    script = BROWSER_FETCH if client == "browser-fetch" else BROWSER_EVENTSOURCE
                    runners[client] = functools.partial(_in_browser, browser, script)
                else:
                    skipped[client] = why
            else:
                raise ValueError(f"unknown client {client!r}; known: {', '.join(CLIENTS)}")
        expected = {model: served.expected(model) for model in (MODEL, SLOW_MODEL)}
        results: dict[tuple[str, str], tuple[str, bool]] = {}
        for fault in faults:
            for client, run in runners.items():
                if applies(client, fault):
                    result = run(served.base, fault)
                    results[client, fault] = outcome(fault, expected[model_of(fault)], result)
                    progress(f"{fault:<20} {client:<20} {results[client, fault][0]}"
                             f"{'' if results[client, fault][1] else '  (wrong)'}"
                             f"{'  ' + result.error if result.error else ''}")
        return results, skipped
    finally:
        browser.stop()
        served.close()


def table(results: dict[tuple[str, str], tuple[str, bool]], faults: Sequence[str],
          clients: Sequence[str]) -> str:
    """Markdown: a row per fault, a column per client; each cell the outcome, with ✓ for
    what a correct client does and ✗ for the rest."""
    lines = ["| fault | expected | " + " | ".join(clients) + " |",
             "|---|---|" + "---|" * len(clients)]
    totals = dict.fromkeys(clients, 0)
    for fault in faults:
        cells = []
        for client in clients:
            found = results.get((client, fault))
            if found is None:
                cells.append("")
            else:
                cells.append(("✓ " if found[1] else "✗ ") + found[0])
                totals[client] += found[1]
        lines.append(f"| `{fault}` | {FAULTS[fault].expect} | " + " | ".join(cells) + " |")
    counted = {client: sum(1 for c, _ in results if c == client) for client in clients}
    lines.append("| **right** | | " + " | ".join(
        f"**{totals[c]}/{counted[c]}**" for c in clients) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamcore.scorecard",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--faults", default="", help="comma-separated (default: all)")
    parser.add_argument("--clients", default="", help="comma-separated (default: all): "
                        + ", ".join(CLIENTS))
    parser.add_argument("--case-timeout", type=float, default=None,
                        help="seconds before a client still reading is 'hung'")
    parser.add_argument("--quiet", action="store_true", help="no line per case")
    args = parser.parse_args(argv)
    global CASE_S
    if args.case_timeout is not None:
        CASE_S = args.case_timeout
    faults = [f for f in args.faults.split(",") if f] or list(FAULTS)
    for fault in faults:
        if fault not in FAULTS:
            parser.error(f"unknown fault {fault!r}")
    clients = [c for c in args.clients.split(",") if c] or list(CLIENTS)
    started = time.time()
    results, skipped = score(faults, clients,
                             (lambda line: None) if args.quiet else
                             (lambda line: print(line, file=sys.stderr, flush=True)))
    shown = [c for c in clients if c not in skipped]
    print(f"Chaos scorecard, {time.strftime('%Y-%m-%d', time.gmtime(started))} "
          f"({time.time() - started:.0f} s, case deadline {CASE_S:g} s, seed {SEED})\n")
    print(", ".join(f"{name} {v}" for name, v in versions().items()) + "\n")
    print(table(results, faults, shown))
    for client, why in skipped.items():
        print(f"\nskipped {client}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
