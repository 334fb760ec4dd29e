"""The chaos transducers without I/O: write boundaries (which a socket cannot show), input
cut anywhere, and the edges the socket tests do not reach."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from streamcore.errors import RequestError
from streamcore.proto.chaos import (
    CLOSE,
    EOF,
    FAULTS,
    RESET,
    Chaos,
    Selection,
    Wire,
    listing,
    select,
)
from streamcore.proto.chaos_http import HTTPChaos, _member_cuts
from streamcore.proto.chaos_ws import WSChaos, frame
from streamcore.proto.http import chunk_head

HEAD = (b"HTTP/1.1 200 \r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def _chunk(data: bytes) -> bytes:
    return chunk_head(len(data)) + data + b"\r\n"


def _event(seq: int, content: str) -> bytes:
    return (b'id: s-%d\ndata: {"choices":[{"delta":{"content":"%s"}}]}\n\n'
            % (seq, content.encode()))


RESPONSE = HEAD + b"".join(_chunk(_event(i, f"t{i}")) for i in range(6)) + _chunk(
    b":\n") + b"0\r\n\r\n"


def _run(faults: str, data: bytes = RESPONSE, seed: int = 1, *, step: int = 0) -> list[object]:
    chaos = HTTPChaos(Selection(frozenset(faults.split(",")), seed))
    if not step:
        return [*chaos.feed(data), *chaos.close()]
    out: list[object] = []
    for at in range(0, len(data), step):
        out += chaos.feed(data[at:at + step])
    return out + chaos.close()


def _bytes(actions: list[object]) -> bytes:
    return b"".join(a for a in actions if isinstance(a, bytes))


def test_split_bytes_writes_every_byte_alone() -> None:
    actions = _run("split-bytes")
    writes = [a for a in actions if isinstance(a, bytes)]
    assert all(len(w) == 1 for w in writes)
    assert _bytes(actions) == _bytes(_run("delay")).replace(b"delay", b"split-bytes")


def test_split_random_and_crlf_split_cut_where_they_say() -> None:
    writes = [a for a in _run("split-random") if isinstance(a, bytes)]
    assert all(1 <= len(w) <= 16 for w in writes) and len(writes) > 20
    writes = [a for a in _run("crlf-split") if isinstance(a, bytes)]
    assert all(not w.startswith(b"\n") or prev.endswith(b"\r")
               for prev, w in pairwise(writes))
    assert sum(w.endswith(b"\r") for w in writes) == _bytes(_run("crlf")).count(b"\r\n")


def test_split_utf8_cuts_inside_characters() -> None:
    data = HEAD + _chunk(_event(0, "é€🙂")) + b"0\r\n\r\n"
    writes = [a for a in _run("split-utf8", data) if isinstance(a, bytes)]
    assert sum(1 for w in writes if w and 0x80 <= w[0] < 0xC0) == 3


def test_input_cut_anywhere_gives_the_same_output() -> None:
    whole = _bytes(_run("multiline-data,comments,mixed-eol"))
    for step in (1, 2, 7, 50):
        assert _bytes(_run("multiline-data,comments,mixed-eol", step=step)) == whole
    assert _bytes(_run("content-length", step=3)) == _bytes(_run("content-length"))


def test_content_length_cut_short_by_the_server() -> None:
    chaos = HTTPChaos(Selection(frozenset({"content-length"}), 1))
    assert chaos.feed(RESPONSE[:len(HEAD) + 40]) == []
    out = _bytes(chaos.close())
    assert b"content-length: 0\r\n" in out


def test_the_heartbeat_after_the_last_event_is_kept() -> None:
    assert _bytes(_run("crlf")).endswith(b"\r\n3\r\n:\r\n\r\n0\r\n\r\n")


def test_after_the_end_nothing_more() -> None:
    chaos = HTTPChaos(Selection(frozenset({"status-503"}), 1))
    assert b"503" in _bytes(chaos.feed(RESPONSE))
    assert chaos.feed(RESPONSE) == []


def test_a_response_that_is_not_an_event_stream_passes() -> None:
    plain = b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n{}"
    out = _bytes(_run("crlf,content-length,comments", plain))
    assert out.endswith(b"x-chaos-seed: 1\r\n\r\n{}")


def test_member_cuts_skip_strings() -> None:
    assert _member_cuts(b'{"a":"x,\\",y","b":[1,2]}') == [14, 21]


def test_wire_endings() -> None:
    wire = Wire(frozenset({"half-close"}), random.Random(1))
    for _ in range(6):
        wire.unit(b"data", token=True)
    actions = wire.take()
    assert actions.count(EOF) == 1 and actions[-1] == EOF
    wire = Wire(frozenset({"reset-mid-event"}), random.Random(1))
    for _ in range(6):
        wire.unit(b"x", token=False)  # too short to cut: written whole
    assert RESET not in wire.take()
    wire.end(CLOSE)
    wire.end(RESET)
    assert wire.take() == [CLOSE]


def test_select() -> None:
    chaos = Chaos()
    assert select(chaos, None, "", None, websocket=False, fresh_seed=5) is None
    found = select(chaos, b"crlf, bom", "", None, websocket=False, fresh_seed=5)
    assert found == Selection(frozenset({"crlf", "bom"}), 5)
    server = Chaos(("crlf", "split-bytes"), 9)
    found = select(server, None, "a=1", None, websocket=False, fresh_seed=5)
    assert found == Selection(frozenset({"crlf", "split-bytes"}), 9)
    found = select(server, None, "", None, websocket=True, fresh_seed=5)
    assert found == Selection(frozenset({"split-bytes"}), 9)  # crlf: HTTP only
    assert select(Chaos(("crlf",)), None, "", None, websocket=True, fresh_seed=5) is None
    found = select(chaos, None, "chaos=ws-drop&chaos_seed=3", None, websocket=True,
                   fresh_seed=5)
    assert found == Selection(frozenset({"ws-drop"}), 3)
    with pytest.raises(RequestError, match="applies to websocket"):
        select(chaos, b"ws-drop", "", None, websocket=False, fresh_seed=5)
    with pytest.raises(RequestError, match="integer"):
        select(chaos, b"crlf", "", b"x", websocket=False, fresh_seed=5)
    assert len(listing()["data"]) == len(FAULTS)  # type: ignore[arg-type]


def test_ws_frames_of_every_length_and_cut_input() -> None:
    assert frame(0x81, b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert frame(0x81, b"x" * 70000)[:2] == b"\x81\x7f"
    stream = frame(0x81, b"x" * 200) + frame(0x81, b"y" * 70000) + frame(0x88, b"\x03\xe8")
    for step in (1, 3, 1000, len(stream)):
        chaos = WSChaos(Selection(frozenset({"delay"}), 1))
        out: list[object] = []
        for at in range(0, len(stream), step):
            out += chaos.feed(stream[at:at + step])
        assert _bytes(out + chaos.close()) == stream


def test_ws_fragment_keeps_rsv1_on_the_first_frame_only() -> None:
    chaos = WSChaos(Selection(frozenset({"ws-fragment"}), 1))
    out = _bytes(chaos.feed(frame(0xC1, b"abcdefghijklmnop") + frame(0x81, b"z")))
    firsts = []
    while out:
        firsts.append(out[0])
        out = out[2 + out[1]:]
    assert firsts[0] == 0x41 and all(b & 0x70 == 0 for b in firsts[1:-1])
    assert firsts[-1] == 0x81  # one byte: not fragmented


@pytest.mark.parametrize("fault", ["close-mid-event", "reset-mid-event"])
def test_a_cut_mid_event_is_inside_an_event_for_every_seed(fault: str) -> None:
    for seed in range(40):
        actions = _run(fault, seed=seed)
        assert actions[-1] == (RESET if fault == "reset-mid-event" else CLOSE)
        last = _bytes(actions).rsplit(b"\r\n", 1)[-1]  # what was sent of the cut chunk
        assert b"id: s-" in last or last.startswith(b"id"), (seed, last)
        assert not last.endswith(b"\n\n"), seed
