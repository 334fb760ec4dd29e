"""Event-stream vectors, and Chromium's verdict on each: what its real ``EventSource``
dispatches (type, data, lastEventId) and how it reconnects (after how long, with which
``Last-Event-ID``), recorded into ``tests/data/eventsource_vectors.json``.

The vectors are the web-platform-tests ``eventsource/`` cases (``format-*`` and
``event-data``; their bodies rebuilt from ``resources/message.py``, ``message2.py``,
``last-event-id.py`` and ``last-event-id2.py`` as those serve them) and streamcore's own
(line breaks, field parsing, ``retry``, ``id``, UTF-8, what ``SSEFramer`` writes).

Recording: a tiny socket server on 127.0.0.1 serves a page and, per vector, the bytes as
a ``text/event-stream`` response that ends with the connection (so the browser reconnects
after its reconnection time, RFC-free but WHATWG HTML 9.2.3 "reestablish the
connection"); the reconnection gets 204, which makes ``EventSource`` stop (9.2.3: "fail
the connection").  The page listens for ``message`` and for every type a vector's
``event`` lines could name; the server times the reconnection and keeps its
``Last-Event-ID``.  Every vector runs at once in one page.

    python tests/eventsource_vectors.py     # re-record (Debian's chromium, Playwright)
"""

from __future__ import annotations

import base64
import datetime
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "eventsource_vectors.json"
#: How long the page waits for every reconnection; a vector whose reconnection time is
#: longer is recorded as not reconnected.
WINDOW_S = 7.0
#: Chromium's reconnection time when no valid ``retry`` came (WHATWG leaves it to the UA,
#: "probably in the region of a few seconds"; Chromium's kDefaultReconnectDelay).
DEFAULT_RETRY_MS = 3000


@dataclass(frozen=True)
class Vector:
    name: str
    source: str  # "wpt:<file>" or "streamcore"
    body: bytes
    content_type: str = "text/event-stream"
    #: Where Chromium departs from the WHATWG spec on this vector (our decoder follows
    #: the spec there; the test states what the spec gives instead).
    deviation: str = ""


def _message_py(message: bytes, newline: bool = True) -> bytes:
    # wpt eventsource/resources/message.py: message + ("\n\n" unless newline=none) + "\n"
    return message + (b"\n\n" if newline else b"") + b"\n"


_X = b"x" * 2048
WPT = [
    Vector("bom", "wpt:format-bom.js",
           _message_py("\ufeffdata:1\n\n\ufeffdata:2\n\ndata:3".encode())),
    Vector("bom-2", "wpt:format-bom-2.any.js",
           _message_py("\ufeff\ufeffdata:1\n\ndata:2\n\ndata:3".encode())),
    Vector("comments", "wpt:format-comments.js",
           _message_py(b"data:1\r:\0\n:\r\ndata:2\n:" + _X + b"\rdata:3\n:data:fail\r:" + _X
                       + b"\ndata:4\n", newline=False)),
    Vector("data-before-final-empty-line", "wpt:format-data-before-final-empty-line.js",
           _message_py(b"retry:1000\ndata:test1\n\nid:test\ndata:test2", newline=False)),
    Vector("field-data", "wpt:format-field-data.js",
           _message_py(b"data:\n\ndata\ndata\n\ndata:test")),
    Vector("field-event-empty", "wpt:format-field-event-empty.htm",
           _message_py(b"event: \ndata:data")),
    Vector("field-event", "wpt:format-field-event.htm",
           _message_py(b"event:test\ndata:x\n\ndata:x")),
    Vector("field-id", "wpt:format-field-id.htm (resources/last-event-id.py)",
           "id: \u2026\nretry: 200\ndata: hello\n\n".encode()),
    Vector("field-id-null", "wpt:format-field-id-null.htm (resources/last-event-id.py)",
           b"id: \0\0\nretry: 200\ndata: hello\n\n"),
    Vector("field-id-3-persists", "wpt:format-field-id-3.htm (resources/last-event-id2.py)",
           b"id: 1\ndata: 1\n\ndata:2\n\n"),
    Vector("field-id-3-changes", "wpt:format-field-id-3.htm (resources/last-event-id2.py)",
           b"id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n"),
    Vector("field-id-3-resets", "wpt:format-field-id-3.htm (resources/last-event-id2.py)",
           b"id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n"),
    Vector("field-retry", "wpt:format-field-retry.htm", _message_py(b"retry:02000\ndata:x")),
    Vector("field-retry-bogus", "wpt:format-field-retry-bogus.htm",
           _message_py(b"retry:2000\nretry:1000x\ndata:x")),
    Vector("null-character", "wpt:format-null-character.html", _message_py(b"data:\0\n\n")),
    Vector("utf-8", "wpt:format-utf-8.any.js", _message_py("data:ok\u2026".encode()),
           content_type="text/event-stream;charset=windows-1252",
           deviation="Chromium fails the connection when Content-Type has a charset other "
                     "than UTF-8 (no event, no reconnection); WHATWG HTML 9.2.3 checks only "
                     "that the MIME type is text/event-stream and 9.2.5 decodes the stream "
                     "as UTF-8 whatever the charset (what this wpt case tests)"),
    Vector("event-data", "wpt:event-data.js (resources/message2.py, one round)",
           b"data:msg\ndata: msg\n\n:\nfalsefield:msg\n\nfalsefield:msg\nData:data\n\n"
           b"data\n\ndata:end\n\n"),
]

OWN = [
    Vector("crlf", "streamcore", b"data: a\r\ndata: b\r\n\r\nevent: e\r\ndata: c\r\n\r\n"),
    Vector("cr-only", "streamcore", b"data: a\rdata: b\r\rid: 5\rdata: c\r\r"),
    Vector("mixed-breaks", "streamcore", b"data: a\r\n\ndata: b\n\r\ndata: c\r\r\n\n"),
    Vector("cr-then-lf-as-two", "streamcore", b"data: a\r\r\ndata: b\n\r\n"),
    Vector("spaces", "streamcore",
           b"data:  two\n\ndata:\ttab\n\ndata : x\n\n data:y\n\ndata: a:b: c\n\n"),
    Vector("event-types", "streamcore",
           b"event:  sp\ndata: 1\n\nevent:\ndata: 2\n\nevent: t\n\ndata: 3\n\n"
           b"event: u\xc3\xa9\ndata: 4\n\nEvent: v\ndata: 5\n\n"),
    Vector("id-rules", "streamcore",
           b"id: a\n\ndata: 1\n\nid\ndata: 2\n\nid: b\0c\ndata: 3\n\nid: \xe2\x80\xa6 \n"
           b"data: 4\n\nid: z\ndata: 5\nid: y\n\nid: last\n\n"),
    Vector("retry-valid", "streamcore", b"retry: 300\ndata: a\n\n"),
    Vector("retry-then-bad-values", "streamcore",
           b"retry: 300\n\nretry: +100\nretry: -1\nretry: 1e3\nretry: 10 \nretry:  5\n"
           b"retry: 0x10\ndata: a\n\n"),
    Vector("retry-zero", "streamcore", b"retry: 0\ndata: a\n\n"),
    Vector("retry-empty", "streamcore", b"retry: 300\n\nretry:\nretry\ndata: a\n\n",
           deviation="Chromium resets the reconnection time to its default (3 s) on a "
                     "retry field with an empty value; WHATWG HTML 9.2.6 ignores a retry "
                     "value that is not ASCII digits, and the empty string is none"),
    Vector("retry-two-spaces", "streamcore", b"retry:  400\ndata: a\n\n"),
    Vector("retry-leading-zeros", "streamcore", b"retry: 0000500\ndata: a\n\n"),
    Vector("retry-huge", "streamcore", b"retry: 99999999999999999999\ndata: a\n\n",
           deviation="Chromium ignores a retry value above 2^64 - 1 (it reconnects after its "
                     "default 3 s); WHATWG HTML 9.2.6 sets the reconnection time to the "
                     "integer whatever its size"),
    Vector("retry-2^64-1", "streamcore", b"retry: 18446744073709551615\ndata: a\n\n"),
    Vector("retry-2^64", "streamcore", b"retry: 18446744073709551616\ndata: a\n\n",
           deviation="as retry-huge: 2^64 is one above what Chromium keeps"),
    Vector("retry-fullwidth-digits", "streamcore",
           "retry: \uff11\uff10\uff10\ndata: a\n\n".encode()),
    Vector("utf8-invalid", "streamcore",
           b"data: \xff|\xc0\xaf|\xe2\x82|\xed\xa0\x80|\xf4\x90\x80\x80|\xf0\x9f\x98\n\n"
           b"data: \xe2\x82\n\ndata: ok\n\n"),
    Vector("not-line-breaks", "streamcore",
           "data: a\u2028b\u0085c\x0bd\x0ce\u2029f\n\n".encode()),
    Vector("bom-inside", "streamcore", "data: \ufeffx\n\n\ufeffdata: y\n\n".encode()),
    Vector("no-final-blank-line", "streamcore", b"data: a\n\ndata: b\n"),
    Vector("nul-in-names", "streamcore",
           b"event: a\0b\ndata: 1\n\nda\0ta: 2\n\ndata: \0x\n\n"),
    Vector("field-name-only", "streamcore", b"data\n\nevent\ndata\n\nretry\ndata: x\n\n"),
    Vector("comment-only", "streamcore", b":\n: hi\n\n:\n\n"),
    Vector("long-line", "streamcore", b"data: " + b"y" * 100_000 + b"\n\n"),
    Vector("many-data-lines", "streamcore", b"".join(b"data: %d\n" % i for i in range(200))
           + b"\n"),
    Vector("sse-framer", "streamcore (SSEFramer and encode_event output)",
           b"id: 0123456789abcdef-1\ndata: {\"a\":1}\n\n:\nid: 0123456789abcdef-2\n"
           b"data: line1\ndata: line2\ndata: \ndata: line4\n\nevent: error\n"
           b"data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n"),
]

VECTORS = WPT + OWN


def candidate_types(body: bytes) -> list[str]:
    """Every event type a vector could name: the value of any ``event`` line, with and
    without one leading space, for any of the three line breaks.  (Listening for more
    types than are dispatched is harmless; a type missed here would show as a
    disagreement, never as a false agreement.)"""
    types = set()
    for line in re.split(rb"\r\n|\r|\n", body):
        if line.startswith(b"event"):
            value = line[5:]
            value = value[1:] if value.startswith(b":") else value
            for v in (value, value[1:] if value.startswith(b" ") else value):
                types.add(v.decode("utf-8", "replace"))
    types.discard("")
    return sorted(types - {"message"})


PAGE = """<!doctype html><meta charset="utf-8"><script>
const vectors = %s;
window.results = vectors.map(() => ({events: [], errors: 0, done: false}));
vectors.forEach((v, i) => {
  const source = new EventSource("/v/" + i);
  // (An "error" or "open" event a vector names is a MessageEvent; the source's own are not.)
  const record = (e) => { if (e instanceof MessageEvent) window.results[i].events.push(
      {type: e.type, data: e.data, lastEventId: e.lastEventId}); };
  for (const type of ["message", ...v.types]) source.addEventListener(type, record);
  source.onerror = () => {
    window.results[i].errors += 1;
    if (source.readyState === EventSource.CLOSED) window.results[i].done = true;
  };
});
</script>"""


class VectorServer:
    """Serves the page and each vector once; a vector's second connection (the
    reconnection) is timed and answered 204."""

    def __init__(self, vectors: list[Vector]) -> None:
        self.vectors = vectors
        self.closed_at: dict[int, float] = {}
        self.reconnects: dict[int, tuple[float, bytes | None]] = {}
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            line, _, rest = head.partition(b"\r\n")
            path = line.split(b" ")[1].decode()
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(b":") for h in rest.split(b"\r\n") if h)}
            if path == "/":
                page = PAGE % json.dumps([{"types": candidate_types(v.body)}
                                          for v in self.vectors])
                body = page.encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                             + body)
                return
            match = re.fullmatch(r"/v/(\d+)", path)
            if match is None:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
                return
            i = int(match.group(1))
            if i in self.closed_at:  # the reconnection: timed, then refused
                self.reconnects[i] = (time.monotonic(), headers.get(b"last-event-id"))
                conn.sendall(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                return
            vector = self.vectors[i]
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: " + vector.content_type.encode()
                         + b"\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
                         + vector.body)
            conn.shutdown(socket.SHUT_WR)
            self.closed_at[i] = time.monotonic()


def record(browser: Any, vectors: list[Vector] = VECTORS) -> list[dict[str, Any]]:
    """Run every vector through ``browser`` (a Playwright Browser); the verdicts."""
    server = VectorServer(vectors)
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        deadline = time.monotonic() + WINDOW_S
        while time.monotonic() < deadline:
            if page.evaluate("window.results.every((r) => r.done)"):
                break
            time.sleep(0.1)
        results = page.evaluate("window.results")
    finally:
        context.close()
        server.close()
    out = []
    for i, (vector, result) in enumerate(zip(vectors, results, strict=True)):
        reconnect: dict[str, Any] | None = None
        if i in server.reconnects:
            at, last_id = server.reconnects[i]
            reconnect = {"delay_ms": round((at - server.closed_at[i]) * 1000),
                         "last_event_id": None if last_id is None
                         else last_id.decode("utf-8", "replace")}
        out.append({"name": vector.name, "source": vector.source,
                    "content_type": vector.content_type, "deviation": vector.deviation,
                    "body_b64": base64.b64encode(vector.body).decode(),
                    "events": result["events"], "reconnect": reconnect})
    return out


def load() -> dict[str, Any]:
    with DATA.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from chromium import chromium

    with chromium() as browser:
        verdicts = record(browser)
        version = browser.version
    DATA.parent.mkdir(exist_ok=True)
    with DATA.open("w") as f:
        json.dump({"chromium": version,
                   "recorded": datetime.date.today().isoformat(),
                   "window_s": WINDOW_S,
                   "how": "python tests/eventsource_vectors.py",
                   "vectors": verdicts}, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(verdicts)} vectors recorded with Chromium {version} into {DATA}")


if __name__ == "__main__":
    main()
