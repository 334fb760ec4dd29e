"""The sans-I/O parts of resume everywhere (issue 10): the ``/v1/ws`` resume and stream
messages, the disconnect policy's parser, the log's folder and the chat snapshot."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streamcore.errors import RequestError
from streamcore.proto import wsapi
from streamcore.proto.cursor import disconnect_policy
from streamcore.proto.openai import ChatText, ChunkTemplate
from streamcore.proto.pipe import FOLD_BATCH, Frame, TokenLog
from streamcore.proto.sse import Decoder, SSEFramer
from streamcore.store.base import Entry


def test_parse_resume_and_request_policy() -> None:
    got = wsapi.parse_client_message(
        b'{"type":"resume","id":"r","stream":"abc","after":7,"epoch":"ff","replay":"exact"}')
    assert got == wsapi.Resume("r", "abc", 7, "ff", True)
    assert wsapi.parse_client_message(b'{"type":"resume","id":"r","stream":"abc"}') == \
        wsapi.Resume("r", "abc", 0, None, False)
    start = wsapi.parse_client_message(b'{"type":"request","id":"r","body":{},'
                                       b'"disconnect":"detach"}')
    assert start == wsapi.Start("r", {}, "detach")
    assert wsapi.parse_client_message(b'{"type":"request","id":"r"}') == \
        wsapi.Start("r", None, None)


@pytest.mark.parametrize(("message", "param"), [
    ({"type": "resume", "id": "r"}, "stream"),
    ({"type": "resume", "id": "r", "stream": 5}, "stream"),
    ({"type": "resume", "id": "r", "stream": "a-b"}, "stream"),
    ({"type": "resume", "id": "r", "stream": "a", "after": -1}, "after"),
    ({"type": "resume", "id": "r", "stream": "a", "after": 1.5}, "after"),
    ({"type": "resume", "id": "r", "stream": "a", "after": 10**18}, "after"),
    ({"type": "resume", "id": "r", "stream": "a", "epoch": 3}, "epoch"),
    ({"type": "resume", "id": "r", "stream": "a", "epoch": "G"}, "epoch"),
    ({"type": "resume", "id": "r", "stream": "a", "replay": None}, "replay"),
    ({"type": "request", "id": "r", "disconnect": "never"}, "disconnect"),
    ({"type": "request", "id": "r", "disconnect": 1}, "disconnect"),
    ({"type": "other", "id": "r"}, "type"),
])
def test_parse_refuses(message: dict[str, Any], param: str) -> None:
    with pytest.raises(wsapi.BadMessage) as caught:
        wsapi.parse_client_message(orjson.dumps(message))
    assert caught.value.param == param and caught.value.request_id == "r"
    assert caught.value.code == "invalid_value"


def test_stream_and_snapshot_messages() -> None:
    key = wsapi.key_of("r1")
    assert orjson.loads(wsapi.stream_message(key, "abc", "ff")) == \
        {"type": "stream", "id": "r1", "stream": "abc", "epoch": "ff"}
    assert orjson.loads(wsapi.snapshot_message(key, 9, b'{"a":1}')) == \
        {"type": "snapshot", "id": "r1", "seq": 9, "snapshot": {"a": 1}}


def test_disconnect_policy() -> None:
    assert disconnect_policy(None) is None and disconnect_policy("") is None
    for policy in ("cancel", "linger", "detach"):
        assert disconnect_policy(policy) == policy
    with pytest.raises(RequestError) as caught:
        disconnect_policy("Linger")
    assert caught.value.param == "X-Disconnect-Policy"


def test_sse_snapshot_event() -> None:
    for chunked in (True, False):
        framer = SSEFramer("s", chunked, "ab")
        raw = b"".join(framer.snapshot(4, b'{"x":1}'))
        if chunked:
            size, _, rest = raw.partition(b"\r\n")
            assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\r\n")
            raw = rest[:-2]
        events = Decoder().feed(raw)
        assert [(e.event, e.id, e.data) for e in events] == [("snapshot", "s-ab-4", '{"x":1}')]
    bare = b"".join(SSEFramer("s", False, "ab", ids=False).snapshot(4, b"{}"))
    assert bare == b"event: snapshot\ndata: {}\n\n"


class Folded:
    def __init__(self) -> None:
        self.kept_bytes = 0
        self.batches: list[list[Frame]] = []

    def fold(self, frames: list[Frame]) -> None:
        self.batches.append(list(frames))

    def snapshot(self, frames: list[Frame]) -> bytes | None:
        return b"".join(b"".join(f) for batch in self.batches for f in batch) + \
            b"".join(b"".join(f) for f in frames)


def test_the_log_folds_what_it_drops_in_batches_and_keeps_the_rest() -> None:
    log = TokenLog(40)
    folder = Folded()
    log.folder = folder
    frames = [(b"%09d" % i,) for i in range(1, 301)]  # 9 bytes each: 4 held
    for frame in frames:
        log.append(frame, 9)
    assert log.first_seq == 297
    # In batches of FOLD_BATCH, never one call per frame; the rest pending.
    assert [len(b) for b in folder.batches] == [FOLD_BATCH] * (296 // FOLD_BATCH)
    folded = [f for batch in folder.batches for f in batch]
    assert folded == frames[:len(folded)]
    # Folded, then every frame not folded yet: the whole stream, through any seq.
    for seq in (300, 298, 296):
        assert folder.snapshot(log.through(seq)) == b"".join(f[0] for f in frames[:seq])
    # Closed: what was pending is folded; the log keeps its frames.
    log.close()
    assert [f for batch in folder.batches for f in batch] == frames[:296]
    assert folder.snapshot(log.through(300)) == b"".join(f[0] for f in frames)
    # Without a folder, the dropped frames are let go.
    plain = TokenLog(40)
    for frame in frames:
        plain.append(frame, 9)
    plain.close()
    assert plain.first_seq == 297 and plain.through(300) == frames[296:]


def test_a_folder_made_on_first_need_is_made_once_and_only_then() -> None:
    """``make_folder``: a log that never drops a frame never makes its folder (an ended
    short stream keeps fewer objects); the first drop makes it, and it then folds all
    the log drops, as a folder given at the start would."""
    made: list[Folded] = []

    def make() -> Folded:
        made.append(Folded())
        return made[-1]

    short = TokenLog(1000)
    short.make_folder = make
    for i in range(3):
        short.append((b"%09d" % i,), 9)
    short.close()
    assert not made and short.folder is None and short.through(3) == [
        (b"%09d" % i,) for i in range(3)]
    log = TokenLog(40)
    log.make_folder = make
    frames = [(b"%09d" % i,) for i in range(1, 201)]
    for frame in frames:
        log.append(frame, 9)
    assert len(made) == 1 and log.folder is made[0] and log.make_folder is None
    log.close()
    assert made[0].snapshot(log.through(200)) == b"".join(f[0] for f in frames)
    # Entry: the snapshot of a stream whose log dropped nothing makes its folder then.
    entry = Entry("s", 1000)
    entry.keep_text(make=make)
    entry.log.append((b"abc",), 3)
    assert len(made) == 1 and entry.kept_bytes == entry.log.held_bytes == 3
    assert entry.snapshot() == (1, b"abc") and len(made) == 2
    given = Entry("t", 1000)
    given.keep_text(made[0])
    assert given.log.folder is made[0] and given.log.make_folder is None


def chunks(template: ChunkTemplate, tokens: list[str]) -> list[Frame]:
    frames: list[Frame] = [(template.role(),)]
    frames += [(template.prefix, orjson.dumps(t), template.suffix) for t in tokens]
    frames.append((template.finish("stop"),))
    return frames


def test_chat_text_folds_and_snapshots() -> None:
    template = ChunkTemplate("chatcmpl-x", "m", include_usage=True, created=5)
    tokens = [f"t{i} " for i in range(10)]
    frames = [*chunks(template, tokens), (template.usage(3, 10),)]
    text = ChatText(1000)
    assert orjson.loads(text.snapshot([]) or b"") == {
        "object": "chat.completion.snapshot", "choices": [], "usage": None}
    text.fold(frames[:4])
    text.fold(frames[4:6])
    assert text.kept_bytes == len("".join(tokens[:5]))
    snap = orjson.loads(text.snapshot(frames[6:]) or b"")
    assert snap == {"id": "chatcmpl-x", "created": 5, "model": "m",
                    "object": "chat.completion.snapshot",
                    "choices": [{"index": 0, "message": {"role": "assistant",
                                                          "content": "".join(tokens)},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}}
    # The snapshot did not fold what it was given.
    assert text.kept_bytes == len("".join(tokens[:5]))
    mid = orjson.loads(text.snapshot(frames[6:8]) or b"")
    assert mid["choices"][0]["finish_reason"] is None


def test_chat_text_skips_what_is_not_text_and_keeps_choices_apart() -> None:
    text = ChatText(1000)
    odd: list[Frame] = [
        (b"not json",), (b"[1, 2]",), (b'{"error": {"message": "x"}}',),
        (b'{"choices": [1, {"index": 1, "delta": {"content": "b"}}, '
         b'{"delta": {"content": "a"}}, {"index": 1, "delta": "no"}]}',),
        (b'{"choices": [{"index": 1, "delta": {"tool_calls": []}, "finish_reason": "tool"}]}',),
        (b'{"choices": [{"index": 0, "delta": {"content": ""}}]}',),
    ]
    text.fold(odd)
    snap = orjson.loads(text.snapshot([]) or b"")
    assert snap["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": None},
        {"index": 1, "message": {"role": "assistant", "content": "b"},
         "finish_reason": "tool"}]


def test_chat_text_gives_up_above_its_bound() -> None:
    template = ChunkTemplate("chatcmpl-x", "m")
    text = ChatText(20)
    text.fold(chunks(template, ["0123456789"])[:2])
    assert text.snapshot([]) is not None
    text.fold(chunks(template, ["0123456789", "0123456789"])[1:3])
    assert text.overflow and text.kept_bytes == 0 and text.texts == {}
    assert text.snapshot([]) is None
    text.fold(chunks(template, ["x"]))  # nothing more is kept
    assert text.kept_bytes == 0
