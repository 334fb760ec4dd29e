"""Chaos mode over real sockets: every fault's bytes, read back raw, against what its
entry in the fault table says it does; the same seed, the same bytes; chaos mode on but
no fault asked for, the same bytes as chaos mode off."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from streamcore.gateway import UTF8Model, build_app
from streamcore.proto import chaos_http
from streamcore.proto.chaos import COMMENT_FLOOD, FAULTS, HUGE_EVENT_BYTES, STALL_S, Chaos
from streamcore.proto.chaos_ws import PING
from streamcore.sources.synthetic import SyntheticModel
from tests.chaos_helpers import Got, chat_body, normalized, request
from tests.ws_helpers import CLOSE, CONT, PONG, TEXT, RawWS, close_payload

MODELS = [SyntheticModel(), UTF8Model(), SyntheticModel("paced", tokens_per_s=500)]


@pytest.fixture(scope="module")
def chaos_server() -> Any:
    from tests.conftest import Served

    served = Served(build_app(MODELS, chaos=Chaos()), None)
    yield served
    served.close()


@pytest.fixture(scope="module")
def baseline(chaos_server: Any) -> Got:
    got = request(chaos_server.port, chat_body())
    assert got.data.startswith(b"HTTP/1.1 200")
    return got


def _ids(got: Got) -> list[int]:
    return [int(e.id.rsplit("-", 1)[1]) for e in got.events() if e.data != "[DONE]"]



def _same_stream(got: Got, baseline: Got) -> None:
    assert got.ended == "eof"
    assert normalized(got.body()) == normalized(baseline.body())
    assert got.chunks()[2]


def _cut(got: Got, baseline: Got) -> None:
    """A body cut short: a strict prefix of the whole one, in the middle of an event."""
    body = normalized(got.body())
    whole = normalized(baseline.body())
    assert body != whole and whole.startswith(body) and not body.endswith(b"\n\n")
    assert not got.chunks()[2]


def _eol_only(eol: bytes) -> Callable[[Got, Got], None]:
    def check(got: Got, baseline: Got) -> None:
        body = got.body()
        assert body.count(eol) == len(re.findall(rb"\r\n|\r|\n", body)) > 0
        assert got.texts() == baseline.texts()
    return check


def _error_event(got: Got, baseline: Got) -> None:
    texts = got.texts()
    assert orjson.loads(texts[-1])["error"]["code"] == "chaos_error_event"
    assert "[DONE]" not in texts and got.chunks()[2] and got.ended == "eof"
    assert 2 <= len(texts) <= 4  # role chunk, 1 to 3 tokens, the error


def _status(code: bytes) -> Callable[[Got, Got], None]:
    def check(got: Got, baseline: Got) -> None:
        assert got.data.startswith(b"HTTP/1.1 " + code)
        assert got.header(b"retry-after") == b"1"
        assert orjson.loads(got.rest)["error"]["type"]
    return check


def _not_decoded(got: Got, baseline: Got) -> None:
    """no-final-blank: all but the last event, which has no blank line."""
    assert got.body().endswith(b"\ndata: [DONE]\n")
    assert got.texts() == baseline.texts()[:-1]


CHECKS: dict[str, Callable[[Got, Got], None]] = {
    "split-bytes": _same_stream,
    "split-random": _same_stream,
    "delay": lambda got, base: (_same_stream(got, base),
                                 assert_(got.elapsed >= 0.01 * len(base.events()))),
    "stall-head": lambda got, base: (_same_stream(got, base), assert_(got.elapsed >= STALL_S)),
    "stall-first-token": lambda got, base: (_same_stream(got, base),
                                             assert_(got.elapsed >= STALL_S)),
    "stall-mid": lambda got, base: (_same_stream(got, base), assert_(got.elapsed >= STALL_S)),
    "reset-mid-event": lambda got, base: (_cut(got, base), assert_(got.ended == "reset")),
    "close-mid-event": lambda got, base: (_cut(got, base), assert_(got.ended == "eof")),
    "half-close": lambda got, base: (
        assert_(got.body().endswith(b"\n\n") and not got.chunks()[2]),
        assert_(normalized(base.body()).startswith(normalized(got.body()))),
        assert_(3 <= len(got.events()) <= 5)),
    "chunk-truncated": lambda got, base: (
        assert_(not got.chunks()[2] and got.ended == "eof"),
        assert_(int(got.chunks()[0][-1], 16) > len(got.chunks()[1][-1]))),
    "no-final-chunk": lambda got, base: (
        assert_(got.texts() == base.texts() and not got.chunks()[2]),
        assert_(got.ended == "eof")),
    "chunk-extensions": lambda got, base: (
        assert_(all(line.endswith(b';chaos=1;q="a b"') for line in got.chunks()[0][:-1])),
        _same_stream(got, base)),
    "no-charset": lambda got, base: (
        assert_(got.header(b"content-type") == b"text/event-stream"),
        _same_stream(got, base)),
    "content-length": lambda got, base: (
        assert_(got.header(b"transfer-encoding") is None),
        assert_(int(got.header(b"content-length") or b"-1") == len(got.rest)),
        assert_(normalized(got.rest) == normalized(base.body()))),
    "status-429": _status(b"429"),
    "status-503": _status(b"503"),
    "crlf": _eol_only(b"\r\n"),
    "crlf-split": _eol_only(b"\r\n"),
    "cr": _eol_only(b"\r"),
    "mixed-eol": lambda got, base: (
        assert_(got.texts() == base.texts()),
        assert_(len({m.group() for m in re.finditer(rb"\r\n|\r|\n", got.body())}) == 3)),
    "bom": lambda got, base: (assert_(got.body().startswith(b"\xef\xbb\xbfid: ")),
                              assert_(got.texts() == base.texts())),
    "no-space": lambda got, base: (
        assert_(b"data: " not in got.body() and b"id: " not in got.body()),
        assert_(got.texts() == base.texts())),
    "comments": lambda got, base: (
        assert_(sum(line.startswith(b":") for line in got.body().split(b"\n"))
                >= COMMENT_FLOOD * len(base.events())),
        assert_(got.texts() == base.texts())),
    "empty-data": lambda got, base: (
        assert_(got.body().count(b"data:\ndata: {") == len(base.events()) - 1),
        assert_([t.lstrip("\n") for t in got.texts()] == base.texts())),
    "multiline-data": lambda got, base: (
        assert_(got.body().count(b"data: ") > 3 * len(base.events())),
        assert_([orjson.loads(t) for t in got.texts()[:-1]]
                == [orjson.loads(t) for t in base.texts()[:-1]])),
    "event-retry": lambda got, base: (
        assert_(got.body().count(b"event: message\nretry: 3000\n") == len(base.events())),
        # The server's own retry: (docs/resume.md) follows the first flush's events, so
        # it joins the next event's block, after the fault's field: that one event keeps
        # the server's.
        assert_([e.retry for e in got.events()].count(3000) >= len(base.events()) - 1)),
    "odd-ids": lambda got, base: (
        assert_(all(e.id.endswith(" odd:id\té€ 🙂") for e in got.events())),
        assert_(got.texts() == base.texts())),
    "invalid-utf8": lambda got, base: (
        assert_(got.body().count(b'"content":"\xff') == 1),
        assert_(got.content().count("\ufffd") == 1),
        assert_(got.content().replace("\ufffd", "") == base.content())),
    "no-final-blank": _not_decoded,
    "nul-id": lambda got, base: (
        assert_(got.body().count(b"\0\n") == len(base.events()) - 1),
        assert_(all(e.id == "" for e in got.events()))),  # every id field ignored
    "huge-event": lambda got, base: (
        assert_(len(got.body()) > HUGE_EVENT_BYTES),
        assert_(len(orjson.loads(got.texts()[1])["chaos_padding"]) == HUGE_EVENT_BYTES),
        assert_(got.content() == base.content())),
    "error-event": _error_event,
    "cut-before-done": lambda got, base: (
        assert_(got.texts() == base.texts()[:-1] and got.chunks()[2])),
    "cut-before-finish": lambda got, base: (
        assert_(got.texts() == base.texts()[:-2] and got.chunks()[2])),
    "duplicate-chunk": lambda got, base: (
        assert_(len(_ids(got)) == len(_ids(base)) + 1),
        assert_(sorted(set(_ids(got))) == _ids(base))),
    "skip-chunk": lambda got, base: (
        assert_(len(_ids(got)) == len(_ids(base)) - 1 and _ids(got) == sorted(_ids(got)))),
    "reorder-chunks": lambda got, base: (
        assert_(sorted(_ids(got)) == _ids(base) and _ids(got) != _ids(base))),
    "long-ttft": lambda got, base: (_same_stream(got, base), assert_(got.elapsed >= 0.2)),
}


def assert_(condition: bool) -> None:
    assert condition


#: Faults checked elsewhere in this file (WebSocket, the UTF-8 model, usage).
ELSEWHERE = {"split-utf8", "no-usage"} | {n for n, f in FAULTS.items() if f.applies == "websocket"}


def test_every_fault_is_checked() -> None:
    assert set(FAULTS) == set(CHECKS) | ELSEWHERE


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_fault_on_the_wire(name: str, chaos_server: Any, baseline: Got,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaos_http, "LONG_TTFT_S", 0.2)  # its documented 2.5 s is long
    got = request(chaos_server.port, chat_body(), chaos=name)
    assert got.ended != "timeout"
    if not name.startswith("status-"):
        assert got.data.startswith(b"HTTP/1.1 200"), got.data[:200]
        assert got.header(b"x-chaos") == name.encode()
        assert got.header(b"x-chaos-seed") == b"7"
    CHECKS[name](got, baseline)


def test_split_utf8(chaos_server: Any) -> None:
    base = request(chaos_server.port, chat_body(model="synthetic-utf8"))
    got = request(chaos_server.port, chat_body(model="synthetic-utf8"), chaos="split-utf8")
    assert re.search("[\u0080-\U0010ffff]", base.content())
    assert normalized(got.body()) == normalized(base.body())


def test_no_usage(chaos_server: Any) -> None:
    base = request(chaos_server.port, chat_body(usage=True))
    got = request(chaos_server.port, chat_body(usage=True), chaos="no-usage")
    assert '"usage":{' in base.texts()[-2]
    assert got.texts() == base.texts()[:-2] + base.texts()[-1:]


def test_same_seed_same_bytes(chaos_server: Any) -> None:
    faults = "split-random,mixed-eol,reorder-chunks,comments"
    runs = [normalized(request(chaos_server.port, chat_body(), chaos=faults, seed=seed).data)
            for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_no_seed_one_is_chosen_and_sent(chaos_server: Any) -> None:
    first = request(chaos_server.port, chat_body(), chaos="mixed-eol", seed=None)
    seed = int(first.header(b"x-chaos-seed") or b"")
    again = request(chaos_server.port, chat_body(), chaos="mixed-eol", seed=seed)
    assert normalized(first.data) == normalized(again.data)


def test_chaos_on_without_fault_is_chaos_off(chaos_server: Any, serve: Any) -> None:
    plain = serve(build_app(MODELS))
    for body in (chat_body(), chat_body(model="synthetic-utf8", usage=True)):
        on = request(chaos_server.port, body)
        off = request(plain.port, body)
        assert normalized(on.data) == normalized(off.data)
        assert on.header(b"x-chaos") is None


def test_chaos_off_ignores_the_header(serve: Any) -> None:
    plain = serve(build_app(MODELS))
    got = request(plain.port, chat_body(), chaos="crlf", keep_alive=True)
    assert got.header(b"x-chaos") is None and b"\r\n" not in got.body()
    assert httpx.get(plain.url + "/v1/chaos/faults").status_code == 404


def test_unknown_fault_is_a_400_listing_the_faults(chaos_server: Any) -> None:
    got = request(chaos_server.port, chat_body(), chaos="crlf,nonsense", keep_alive=True)
    assert got.data.startswith(b"HTTP/1.1 400")
    error = orjson.loads(got.rest.split(b"\r\n")[0] if b"\r\n" in got.rest else got.rest)
    assert error["error"]["code"] == "unknown_fault" and error["error"]["param"] == "chaos"
    assert all(name in error["error"]["message"] for name in FAULTS)
    for bad, code in (("ws-drop", "inapplicable_fault"),):
        r = httpx.post(chaos_server.url + "/v1/chat/completions", content=chat_body(),
                       headers={"x-chaos": bad, "content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == code
    r = httpx.post(chaos_server.url + "/v1/chat/completions?chaos=crlf&chaos_seed=x",
                   content=chat_body(), headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "chaos_seed"


def test_query_parameters_select_faults(chaos_server: Any) -> None:
    r = httpx.post(chaos_server.url + "/v1/chat/completions?chaos=crlf,bom&chaos_seed=9",
                   content=chat_body(), headers={"content-type": "application/json"})
    assert r.headers["x-chaos"] == "bom,crlf" and r.headers["x-chaos-seed"] == "9"
    assert r.content.startswith(b"\xef\xbb\xbfid: ") and b"\r\n" in r.content


def test_fault_list(chaos_server: Any) -> None:
    r = httpx.get(chaos_server.url + "/v1/chaos/faults")
    data = r.json()["data"]
    assert [f["name"] for f in data] == list(FAULTS)
    assert all(f["does"] and f["client_must"] and f["category"] and f["expect"] for f in data)


def test_server_wide_faults(serve: Any) -> None:
    served = serve(build_app(MODELS, chaos=Chaos(faults=("crlf",), seed=5)))
    got = request(served.port, chat_body())
    assert got.header(b"x-chaos") == b"crlf" and got.header(b"x-chaos-seed") == b"5"
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok"}  # exempt
    with pytest.raises(Exception, match="unknown chaos fault"):
        Chaos(faults=("nope",))


# -- WebSocket -----------------------------------------------------------------------------


def _ws(port: int, chaos: str, seed: int = 7) -> tuple[RawWS, list[tuple[int, bool, bytes]]]:
    ws = RawWS(port, f"/v1/ws?chaos={chaos}&chaos_seed={seed}")
    ws.send_frame(TEXT, orjson.dumps({"type": "request", "id": "r", "body": {
        "model": "synthetic-utf8", "max_tokens": 8,
        "messages": [{"role": "user", "content": "chaos"}]}}))
    frames: list[tuple[int, bool, bytes]] = []
    while not ws.closed and not any(b'"type":"done"' in m for m in _messages(frames)):
        got = ws.recv_frames(timeout=3.0, count=1)
        if not got:
            break
        frames += got
        if any(op == CLOSE for op, _, _ in got):
            break
    return ws, frames


def _messages(frames: list[tuple[int, bool, bytes]]) -> list[bytes]:
    out, parts = [], b""
    for opcode, fin, payload in frames:
        if opcode in (TEXT, CONT):
            parts += payload
            if fin:
                out.append(normalized(parts))
                parts = b""
    return out


def test_ws_fragment_and_ping(chaos_server: Any) -> None:
    _, base = _ws(chaos_server.port, "delay")
    # (seed 8: the cuts of seed 7 miss every multi-byte character since each request
    # starts with its stream message)
    _, frames = _ws(chaos_server.port, "ws-fragment,ws-ping", seed=8)
    assert _messages(frames) == _messages(base) and len(_messages(base)) >= 8
    data = [(op, fin, p) for op, fin, p in frames if op in (TEXT, CONT)]
    assert all(1 <= len(p) <= 8 for _, _, p in data)
    assert sum(1 for op, _, _ in frames if op == 0x9) == len(data)
    assert all(p == PING[2:] for op, _, p in frames if op == 0x9)
    # a message's UTF-8 characters are cut across frames somewhere
    assert any(p and 0x80 <= p[0] < 0xC0 for _, _, p in data)


def test_ws_drop(chaos_server: Any) -> None:
    ws, frames = _ws(chaos_server.port, "ws-drop")
    assert ws.closed and not ws.reset
    assert 3 <= len(_messages(frames)) <= 5 and all(op != CLOSE for op, _, _ in frames)


@pytest.mark.parametrize("code", [1000, 1011, 4000])
def test_ws_close_codes(chaos_server: Any, code: int) -> None:
    ws, frames = _ws(chaos_server.port, f"ws-close-{code}")
    assert frames[-1] == (CLOSE, True, close_payload(code, "chaos"))
    assert 3 <= len(_messages(frames)) <= 5
    ws.send_frame(CLOSE, close_payload(code))
    assert ws.wait_closed(2.0)


def test_ws_no_pong(chaos_server: Any) -> None:
    ws = RawWS(chaos_server.port, "/v1/ws?chaos=ws-no-pong")
    ws.send_frame(0x9, b"hello")
    assert all(op != PONG for op, _, _ in ws.recv_frames(timeout=0.3, count=1))
    plain = RawWS(chaos_server.port, "/v1/ws")
    plain.send_frame(0x9, b"hello")
    assert (PONG, True, b"hello") in plain.recv_frames(timeout=2.0, count=1)


def test_ws_transport_faults_and_refusals(chaos_server: Any) -> None:
    _, base = _ws(chaos_server.port, "delay")
    ws, frames = _ws(chaos_server.port, "split-bytes,stall-mid")
    assert _messages(frames) == _messages(base)
    ws, frames = _ws(chaos_server.port, "reset-mid-event")
    assert ws.reset and 2 <= len(_messages(frames)) <= 4
    with pytest.raises(AssertionError, match="400"):
        RawWS(chaos_server.port, "/v1/ws?chaos=crlf")


def test_a_paced_stream_one_event_per_write(chaos_server: Any) -> None:
    """A paced model's events are written one buffer at a time (Output.send)."""
    base = request(chaos_server.port, chat_body(model="paced"))
    got = request(chaos_server.port, chat_body(model="paced"), chaos="crlf,split-random")
    assert got.texts() == base.texts() and got.body().count(b"\r\n") > 10


def test_a_client_gone_mid_fault(chaos_server: Any) -> None:
    """The client leaves during a stall: what the fault still holds is dropped."""
    import socket
    import time

    sock = socket.create_connection(("127.0.0.1", chaos_server.port))
    body = chat_body()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                 b"application/json\r\nx-chaos: stall-head\r\ncontent-length: %d\r\n\r\n%s"
                 % (len(body), body))
    time.sleep(0.1)
    sock.close()
    time.sleep(STALL_S + 0.1)
    assert request(chaos_server.port, chat_body(), chaos="crlf").chunks()[2]  # still serving


# -- the command line ----------------------------------------------------------------------


def test_cli_chaos_command_and_serve_flag() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, serve_cli

    with serve_cli("--seed", "3", command="chaos") as cli:
        got = request(cli.port, chat_body(model="synthetic-utf8"), chaos="crlf", seed=None)
        assert got.header(b"x-chaos-seed") == b"3" and "é" in got.content()
        assert httpx.get(cli.url + "/v1/chaos/faults").json()["data"][0]["name"]
    with serve_cli("--chaos", "--chaos-faults", "bom") as cli:
        assert request(cli.port, chat_body()).body().startswith(b"\xef\xbb\xbf")
    with serve_cli() as cli:  # off by default: X-Chaos is not honoured
        got = request(cli.port, chat_body(), chaos="crlf", keep_alive=True)
        assert got.header(b"x-chaos") is None and b"\r" not in got.body()
    for argv, error in ((["--chaos-faults", "bom"], "needs --chaos"),
                        (["--chaos", "--chaos-faults", "nope"], "unknown chaos fault")):
        done = subprocess.run([sys.executable, "-m", "streamcore", "serve", *argv],
                              cwd=ROOT, capture_output=True, timeout=30)
        assert done.returncode == 2 and error in done.stderr.decode()


def test_docs_fault_table_is_the_registry() -> None:
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "chaos.md").read_text()
    for fault in FAULTS.values():
        assert (f"| `{fault.name}` | {fault.category} | {fault.applies} | {fault.does} | "
                f"{fault.client_must} | {fault.expect} |") in doc, fault.name


def test_a_connection_without_faults_keeps_the_plain_write_path(chaos_server: Any) -> None:
    """Chaos mode on: a request that names no fault leaves its connection's class, so its
    send/sendv, as they are (no chaos branch per write); one that names faults switches."""
    from streamcore.aio.chaos import ChaoticHTTPConnection
    from streamcore.aio.connection import HTTPConnection

    with httpx.Client(base_url=chaos_server.url) as client:
        assert client.post("/v1/chat/completions", content=chat_body(),
                           headers={"content-type": "application/json"}).status_code == 200
        kinds = chaos_server.call(lambda: {type(c) for c in chaos_server.server.connections})
        assert kinds == {HTTPConnection}
        assert HTTPConnection.send is not ChaoticHTTPConnection.send
        with client.stream("POST", "/v1/chat/completions", content=chat_body(model="paced"),
                           headers={"content-type": "application/json",
                                    "x-chaos": "stall-mid"}) as response:
            assert response.headers["x-chaos"] == "stall-mid"
            kinds = chaos_server.call(
                lambda: {type(c) for c in chaos_server.server.connections})
            assert ChaoticHTTPConnection in kinds
            response.read()
