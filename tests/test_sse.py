"""Tests for streamcore.proto.sse (WHATWG HTML, "Server-sent events", 9.2.5 and 9.2.6)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcore.proto.sse import (
    Decoder,
    Event,
    SSEDecodeError,
    SSEFramer,
    encode_comment,
    encode_event,
    end_events,
    field_lines,
    frame_data,
    lines_data,
)
from streamcore.proto.upstream import LITERAL

# ------------------------------------------------------------------------------- helpers


def reference(stream: bytes) -> tuple[list[Event], str, int | None]:
    """The spec algorithm transcribed literally, on the whole stream decoded at once:
    (events, last event ID string, reconnection time)."""
    text = stream.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # not terminated by a line break: discarded at EOF
    data = event = id_buffer = last_id = ""
    retry: int | None = None
    block_retry: int | None = None
    events: list[Event] = []
    for line in lines:
        if line == "":
            last_id = id_buffer
            r, block_retry = block_retry, None
            if data == "":
                event = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(Event(data, event or "message", last_id, r))
            data = event = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" not in value:
                id_buffer = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = block_retry = int(value)
    return events, last_id, retry


def decode_chunks(chunks: list[bytes]) -> tuple[list[Event], str, int | None]:
    d = Decoder()
    events: list[Event] = []
    for chunk in chunks:
        events += d.feed(chunk)
    assert d.close() == []
    return events, d.last_event_id, d.retry


def decode(stream: bytes) -> list[Event]:
    return decode_chunks([stream])[0]


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# ---------------------------------------------------------------------------- strategies

NO_BREAK = st.characters(codec="utf-8", exclude_characters="\r\n")
FIXED_LINES = [
    b"",
    b"",
    b"",
    b"data",
    b"data:",
    b"data: x",
    b"data:x",
    b"data:  two spaces",
    b"event: add",
    b"event:",
    b"event",
    b"id: 7",
    b"id:",
    b"id",
    b"id: a\x00b",
    b"retry: 1500",
    b"retry:15",
    b"retry: 1x",
    b"retry: -1",
    b"retry:",
    b"retry",
    b"retry: 0015",
    "retry: \u0663".encode(),
    b": comment",
    b":",
    b"::data: no",
    b"unknown: field",
    b"DATA: upper",
    b"data : space",
    b" data: lead",
    b"data:\xef\xbb\xbf",
    b"\xef\xbb\xbf",
    b"\xef\xbb\xbfdata: after bom",
    b"data: \xff\xfe bad",
    b"data: \xe2\x82",
    "data: h\u00e9llo \U0001f600 \u4e2d".encode(),
    "data: \u2028\x0b\x0c\x85 x".encode(),
]
LINE = st.one_of(
    st.sampled_from(FIXED_LINES),
    st.builds(
        lambda name, value: name + value.encode(),
        st.sampled_from([b"data:", b"data: ", b"id: ", b"event:", b"retry:", b":", b""]),
        st.text(NO_BREAK, max_size=6),
    ),
    st.binary(max_size=6).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)
EOL = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf"]))
    body = b"".join(line + eol for line, eol in draw(st.lists(st.tuples(LINE, EOL))))
    tail = draw(st.sampled_from([b"", b"", b"data: unterminated", b"data: x\n", b"\xf0\x9f"]))
    return bom + body + tail


FIELD_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"))

# ------------------------------------------------------------------- decoder: chunking


@given(streams(), st.data())
def test_decoder_independent_of_chunking(stream: bytes, data: st.DataObject) -> None:
    expected = reference(stream)
    assert decode_chunks([stream]) == expected
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected
    points = data.draw(st.lists(st.integers(0, len(stream))))
    assert decode_chunks(cut(stream, points)) == expected


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: a\r", b"\n\r\n"],  # CR | LF across feeds is one CRLF line break
        [b"data: a\r", b"\n", b"\r\n"],
        [b"data: a\r", b"", b"\n", b"", b"\n"],
        [b"data: a\r\n", b"\n"],
    ],
)
def test_crlf_across_feeds(chunks: list[bytes]) -> None:
    events, _, _ = decode_chunks(chunks)
    assert events == [Event("a")]


def test_cr_then_cr_is_blank_line() -> None:
    d = Decoder()
    assert d.feed(b"data: a\r") == []
    assert d.feed(b"\r") == [Event("a")]
    assert d.feed(b"\ndata: b\n\n") == [Event("b")]  # that LF follows a blank line: one more


def test_multibyte_character_cut_anywhere() -> None:
    stream = "data: h\u00e9 \U0001f600 \u4e2d\n\n".encode()
    for i in range(len(stream) + 1):
        assert decode_chunks([stream[:i], stream[i:]])[0] == [Event("h\u00e9 \U0001f600 \u4e2d")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: a\xffb\xe2\x82\n\n") == [Event("a\ufffdb\ufffd")]


def test_only_cr_lf_crlf_break_lines() -> None:
    # U+2028, VT, FF, NEL (what str.splitlines() would split on) are ordinary characters.
    text = "a\u2028b\x0bc\x0cd\x85e\x1cf"
    assert decode(f"data: {text}\n\n".encode()) == [Event(text)]


# ------------------------------------------------- decoder: the fast path for whole events

# Blocks of the shape the fast path takes (``data: ...`` alone or after ``id: ...``, LF
# only), and blocks it must hand to the line-by-line parser, in any mix.
FAST_BLOCK = st.one_of(
    st.builds(lambda v: b"data: " + v.encode() + b"\n\n", FIELD_TEXT),
    st.builds(lambda i, v: b"id: " + i.encode() + b"\ndata: " + v.encode() + b"\n\n",
              FIELD_TEXT, FIELD_TEXT),
    st.sampled_from([b"id: a\x00b\ndata: x\n\n", b"id: 1\nevent: e\ndata: x\n\n",
                     b"data: a\ndata: b\n\n", b": c\ndata: x\n\n", b"data:x\n\n",
                     b"id: 2\n\n", b"\n", b"retry: 5\ndata: r\n\n", b"data: a\r\n\r\n",
                     b"id: 3\nid: 4\ndata: y\n\n", b"event: e\n", b"data: open\n",
                     b"data: \xff\xe2\x82\n\n", b"\xef\xbb\xbfdata: z\n\n"]),
)


@given(st.sampled_from([b"", b"\xef\xbb\xbf"]), st.lists(FAST_BLOCK),
       st.sampled_from([b"", b"data: unterminated", b"id: 9\ndata: x\n", b"data: y\n"]),
       st.data())
def test_fast_path_same_events_as_line_by_line(bom: bytes, blocks: list[bytes], tail: bytes,
                                               data: st.DataObject) -> None:
    stream = bom + b"".join(blocks) + tail
    expected = reference(stream)
    assert decode_chunks([stream]) == expected  # whole: the fast path where it applies
    assert decode_chunks([stream[i : i + 1] for i in range(len(stream))]) == expected
    assert decode_chunks(cut(stream, data.draw(st.lists(st.integers(0, len(stream)))))) == expected
    # event by event, as an upstream's reads come
    assert decode_chunks(blocks and [bom + blocks[0], *blocks[1:], tail]) == expected


def test_fast_path_shapes() -> None:
    d = Decoder()
    assert d.feed(b"data: a\n\nid: 7\ndata: b\n\ndata: c\n\n") == [
        Event("a"), Event("b", id="7"), Event("c", id="7")]
    assert d.last_event_id == "7"
    # a block it does not take, between two it does, and a partial event after them
    assert d.feed(b"data: d\n\nevent: e\ndata: f\n\ndata: g\n\ndata: h") == [
        Event("d", id="7"), Event("f", "e", "7"), Event("g", id="7")]
    assert d.feed(b"\n\n") == [Event("h", id="7")]
    # an id from a block begun in an earlier read still applies
    assert d.feed(b"id: 8\n") == []
    assert d.feed(b"data: i\n\n") == [Event("i", id="8")]
    # a data line begun earlier: line by line
    assert d.feed(b"data: j\n") == []
    assert d.feed(b"data: k\n\ndata: l\n\n") == [Event("j\nk", id="8"), Event("l", id="8")]


def test_fast_path_bom_only_at_start() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n\xef\xbb\xbfdata: y\n\ndata: z\n\n") == [
        Event("x"), Event("z")]


def test_fast_path_id_with_nul_is_ignored() -> None:
    assert decode(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [Event("x", id="1")]


@pytest.mark.parametrize("stream", [
    b"data: 12345\n\n",             # a data line over the line limit
    b"id: 123456789\ndata: x\n\n",  # an id line over it
    b"data: 1\n\ndata: 12345",      # complete events, then a pending line over it
])
def test_fast_path_line_limit(stream: bytes) -> None:
    with pytest.raises(SSEDecodeError):
        Decoder(max_line_bytes=10).feed(stream)


def test_fast_path_event_limit() -> None:
    assert Decoder(max_event_bytes=5).feed(b"data: 1234\n\n") == [Event("1234")]
    with pytest.raises(SSEDecodeError):
        Decoder(max_event_bytes=5).feed(b"data: 12345\n\n")


# ------------------------------------------------------------------------------ BOM


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xef\xbb\xbfdata: x\n\n"],
        [b"\xef", b"\xbb", b"\xbfdata: x\n\n"],
        [b"\xef\xbb\xbf\ndata: x\n\n"],
    ],
)
def test_leading_bom_ignored(chunks: list[bytes]) -> None:
    assert decode_chunks(chunks)[0] == [Event("x")]


def test_only_one_bom_and_only_at_start() -> None:
    # A second BOM becomes part of the field name "\ufeffdata": an unknown field.
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []
    assert decode(b"\n\xef\xbb\xbfdata: x\n\n") == []
    assert decode(b"data: x\n\n\xef\xbb\xbfdata: y\n\n") == [Event("x")]
    assert decode_chunks([b"data: x\n\n", b"\xef\xbb\xbfdata: y\n\n"])[0] == [Event("x")]
    assert decode_chunks([b"\n", b"\xef\xbb\xbfdata: y\n\n"])[0] == []


# ---------------------------------------------------------------------- field semantics


def test_spec_example_simple_messages() -> None:
    stream = (
        b"data: This is the first message.\n\n"
        b"data: This is the second message, it\n"
        b"data: has two lines.\n\n"
        b"data: This is the third message.\n\n"
    )
    assert decode(stream) == [
        Event("This is the first message."),
        Event("This is the second message, it\nhas two lines."),
        Event("This is the third message."),
    ]


def test_spec_example_event_types() -> None:
    stream = (
        b"event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n"
    )
    assert decode(stream) == [
        Event("73857293", "add"),
        Event("2153", "remove"),
        Event("113411", "add"),
    ]


def test_spec_example_multiline_data() -> None:
    assert decode(b"data: YHOO\ndata: +2\ndata: 10\n\n") == [Event("YHOO\n+2\n10")]


def test_spec_example_four_blocks() -> None:
    stream = (
        b": test stream\n\n"
        b"data: first event\nid: 1\n\n"
        b"data:second event\nid\n\n"
        b"data:  third event\n\n"
    )
    assert decode(stream) == [
        Event("first event", id="1"),
        Event("second event", id=""),  # "id" with no value resets the last event ID
        Event(" third event", id=""),  # only one leading space is stripped
    ]


def test_spec_example_empty_data_and_eof() -> None:
    # The first block dispatches data "", the second "\n"; the last block is not followed
    # by a blank line and is discarded at EOF.
    d = Decoder()
    assert d.feed(b"data\n\ndata\ndata\n\ndata:") == [Event(""), Event("\n")]
    assert d.close() == []


def test_spec_example_space_after_colon_optional() -> None:
    assert decode(b"data:test\n\ndata: test\n\n") == [Event("test"), Event("test")]


def test_final_block_without_blank_line_discarded() -> None:
    # WPT eventsource/format-data-before-final-empty-line
    events, last_id, retry = decode_chunks([b"retry:1000\ndata:test1\n\nid:test\ndata:test2"])
    assert events == [Event("test1", retry=1000)]
    assert last_id == ""
    assert retry == 1000


def test_no_data_no_event_but_id_and_event_type_reset() -> None:
    d = Decoder()
    assert d.feed(b"event: x\nid: 5\n\n") == []
    assert d.last_event_id == "5"  # set at the blank line even without an event
    assert d.feed(b"data: y\n\n") == [Event("y", "message", "5")]


def test_last_event_id_set_at_dispatch_and_persists() -> None:
    d = Decoder()
    d.feed(b"id: 1\n")
    assert d.last_event_id == ""  # the id buffer only becomes the last event ID at dispatch
    assert d.feed(b"data: a\n\n") == [Event("a", id="1")]
    assert d.feed(b"data: b\n\n") == [Event("b", id="1")]
    assert d.feed(b"id: 2\ndata: c\n\nid:\ndata: d\n\n") == [Event("c", id="2"), Event("d")]
    assert d.last_event_id == ""


def test_id_with_nul_ignored() -> None:
    assert decode(b"id: 1\n\nid: a\x00b\ndata: x\n\n") == [Event("x", id="1")]


@pytest.mark.parametrize(
    ("line", "retry"),
    [
        (b"retry: 1500", 1500),
        (b"retry:0", 0),
        (b"retry: 0015", 15),
        (b"retry: 1x", None),
        (b"retry: -1", None),
        (b"retry: +1", None),
        (b"retry:  1", None),
        (b"retry: 1.5", None),
        (b"retry:", None),
        (b"retry", None),
        ("retry: \u0663".encode(), None),  # non-ASCII digit
        (b"retry: " + b"9" * 5000, None),  # past int()'s digit limit: ignored, no crash
    ],
)
def test_retry(line: bytes, retry: int | None) -> None:
    d = Decoder()
    assert d.feed(line + b"\ndata: x\n\n") == [Event("x", retry=retry)]
    assert d.retry == retry
    assert d.feed(b"data: y\n\n") == [Event("y")]  # Event.retry is per block
    assert d.retry == retry  # the reconnection time persists


def test_retry_without_data_sets_reconnection_time() -> None:
    d = Decoder()
    assert d.feed(b"retry: 300\n\ndata: x\n\n") == [Event("x")]
    assert d.retry == 300


def test_fields_without_colon_and_unknown_fields() -> None:
    assert decode(b"data\nevent\nfoo\nfoo: bar\ndata\n\n") == [Event("\n")]
    assert decode(b"Data: x\ndata : y\n data: z\n\n") == []


def test_comments_ignored() -> None:
    assert decode(b":\n: hi\n:data: x\ndata: y\n:\n\n") == [Event("y")]


def test_event_type_empty_defaults_to_message() -> None:
    assert decode(b"event:\ndata: x\n\n") == [Event("x", "message")]
    assert decode(b"event: a\ndata: x\n\ndata: y\n\n") == [Event("x", "a"), Event("y")]


def test_close_discards_pending() -> None:
    d = Decoder()
    assert d.feed(b"id: 3\ndata: a\n\ndata: partial\nid: 4\n") == [Event("a", id="3")]
    assert d.close() == []
    assert d.last_event_id == "3"


# ---------------------------------------------------------------------------- limits


def test_line_limit_pending() -> None:
    d = Decoder(max_line_bytes=10)
    d.feed(b"data: ")
    d.feed(b"1234")  # exactly 10 bytes: fine
    with pytest.raises(SSEDecodeError):
        d.feed(b"5")


def test_line_limit_complete_line() -> None:
    assert Decoder(max_line_bytes=10).feed(b"data: 1234\n\n") == [Event("1234")]
    with pytest.raises(SSEDecodeError):
        Decoder(max_line_bytes=10).feed(b"data: 12345\n\n")
    with pytest.raises(SSEDecodeError):
        Decoder(max_line_bytes=10).feed(b"data: 1\ndata: 12345")
    with pytest.raises(SSEDecodeError):
        Decoder(max_line_bytes=10).feed(b": a long comment\n")


def test_event_limit() -> None:
    d = Decoder(max_event_bytes=10)
    # counted as the spec's data buffer: each value plus its LF
    assert d.feed(b"data: 12345\ndata: 678\n\n") == [Event("12345\n678")]
    assert d.feed(b"data: 12345\n\n" * 100) == [Event("12345")] * 100  # reset per event
    d.feed(b"data: 12345\n")
    with pytest.raises(SSEDecodeError):
        d.feed(b"data: 6789\n")
    with pytest.raises(SSEDecodeError):
        Decoder(max_event_bytes=10).feed(b"data\n" * 11)


def test_limit_error_is_value_error() -> None:
    assert issubclass(SSEDecodeError, ValueError)


def test_comments_do_not_count_toward_event_limit() -> None:
    d = Decoder(max_event_bytes=10)
    assert d.feed(b": heartbeat\n" * 1000 + b"data: x\n\n") == [Event("x")]


# ------------------------------------------------------------------------------ encoder


def test_encode_event_layout() -> None:
    assert encode_event("a\r\nb\rc\nd", event="e", id="7", retry=100) == (
        b"id: 7\nevent: e\nretry: 100\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    )
    assert encode_event("") == b"data: \n\n"
    assert encode_event("x\n") == b"data: x\ndata: \n\n"
    assert encode_event("\u00e9") == "data: \u00e9\n\n".encode()


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\r\nb", "a\0b", "\n", "\r", "\0"])
def test_encode_event_rejects_breaks_and_nul(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_event("x", id=bad)
    with pytest.raises(ValueError):
        encode_event("x", event=bad)


@pytest.mark.parametrize("bad", [-1, True, 1.5, "5"])
def test_encode_event_rejects_bad_retry(bad: object) -> None:
    with pytest.raises(ValueError):
        encode_event("x", retry=bad)  # type: ignore[arg-type]


@given(
    st.text(),
    st.none() | FIELD_TEXT,
    st.none() | FIELD_TEXT,
    st.none() | st.integers(0, 10**15),
)
def test_round_trip(text: str, event: str | None, id: str | None, retry: int | None) -> None:
    d = Decoder()
    assert d.feed(encode_event(text, event=event, id=id, retry=retry)) == [
        Event(normalised(text), event or "message", id or "", retry)
    ]
    assert d.last_event_id == (id or "")


@given(st.lists(st.text()), st.text(), st.data())
def test_round_trip_many_with_comments_and_cuts(
    texts: list[str], comment: str, data: st.DataObject
) -> None:
    stream = encode_comment(comment) + b"".join(
        encode_event(t) + encode_comment(comment) for t in texts
    )
    points = data.draw(st.lists(st.integers(0, len(stream))))
    events, _, _ = decode_chunks(cut(stream, points))
    assert events == [Event(normalised(t)) for t in texts]


def test_encode_comment() -> None:
    assert encode_comment() == b":\n"
    assert encode_comment("") == b":\n"
    assert encode_comment("ping") == b":ping\n"
    assert encode_comment("a\r\nb\rc\nd") == b":a\n:b\n:c\n:d\n"
    assert encode_comment("x\n") == b":x\n:\n"


def test_frame_data_zero_copy() -> None:
    payload = b'{"choices":[{"delta":{"content":"hi"}}]}'
    framed = frame_data(payload)
    assert framed == [b"data: ", payload, b"\n"]
    assert framed[1] is payload
    empty = b""
    assert frame_data(empty) == [b"data: ", b"", b"\n"]


def test_frame_data_splits_lines() -> None:
    assert b"".join(frame_data(b"a\r\nb\rc\nd")) == b"data: a\ndata: b\ndata: c\ndata: d\n"


@given(st.text())
def test_frame_data_matches_encode_event(text: str) -> None:
    assert b"".join(frame_data(text.encode())) + b"\n" == encode_event(text)


# ------------------------------------------------------------------------ the server's framer


def unchunk(data: bytes) -> list[bytes]:
    """The chunks of a chunked body (RFC 9112 section 7.1), strictly: every byte accounted
    for.  The last chunk (size 0) is returned as b""."""
    chunks: list[bytes] = []
    pos = 0
    while pos < len(data):
        line_end = data.index(b"\r\n", pos)
        size = int(data[pos:line_end], 16)
        assert data[pos:line_end] == b"%x" % size, "chunk size not in lowercase hex"
        start = line_end + 2
        chunks.append(data[start:start + size])
        assert data[start + size:start + size + 2] == b"\r\n"
        pos = start + size + 2
    return chunks


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, tuple[bytes, ...]]:
    """A payload's text (with or without CR, LF, CRLF) and its UTF-8 bytes cut into
    1 to 4 buffers (a frame is a tuple of shared buffers)."""
    text = draw(st.one_of(
        st.text(alphabet=NO_BREAK, max_size=40),
        st.lists(st.text(alphabet=NO_BREAK, max_size=10),
                 min_size=1, max_size=4).flatmap(
            lambda parts: st.lists(st.sampled_from(["\r", "\n", "\r\n"]), min_size=len(parts),
                                   max_size=len(parts)).map(
                lambda breaks: "".join(p + b for p, b in zip(parts, breaks, strict=True)))),
    ))
    data = text.encode()
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    bounds = [0, *cuts, len(data)]
    return text, tuple(data[a:b] for a, b in itertools.pairwise(bounds))


def framed(stream_id: str, seq: int, texts: list[str], chunked: bool) -> bytes:
    """What the framer must produce: ``encode_event`` per frame, in one chunk if chunked."""
    body = b"".join(encode_event(text, id=f"{stream_id}-{seq + i}")
                    for i, text in enumerate(texts))
    return b"%x\r\n%b\r\n" % (len(body), body) if chunked else body


def is_multiline(text: str) -> bool:
    return "\r" in text or "\n" in text


@given(st.text(alphabet="abcdef0123456789", min_size=1, max_size=16),
       st.integers(min_value=1, max_value=10**12), st.lists(payloads(), min_size=1, max_size=6),
       st.booleans())
def test_framer_events_equal_encode_event(stream_id: str, seq: int,
                                          items: list[tuple[str, tuple[bytes, ...]]],
                                          chunked: bool) -> None:
    framer = SSEFramer(stream_id, chunked)
    texts = [text for text, _ in items]
    frames = [frame for _, frame in items]
    size = sum(len(buf) for frame in frames for buf in frame)
    multiline = {seq + i for i, text in enumerate(texts) if is_multiline(text)} or None
    bufs, total = framer.events(seq, frames, size, multiline)
    data = b"".join(bufs)
    assert data == framed(stream_id, seq, texts, chunked)
    assert total == len(data)
    # The payload's buffers are shared, not copied, for single-line frames.
    for text, frame in items:
        if not is_multiline(text):
            for buf in frame:
                assert not buf or any(b is buf for b in bufs)
    # A client's decoder gets the events back, ids and all (CR and CRLF arrive as LF).
    body = b"".join(unchunk(data)) if chunked else data
    events = Decoder().feed(body)
    assert [(e.data, e.id) for e in events] == [
        (normalised(text), f"{stream_id}-{seq + i}") for i, text in enumerate(texts)]


@given(st.integers(min_value=1, max_value=10**12), payloads(), st.booleans())
def test_framer_event_equals_events_of_one_frame(seq: int, item: tuple[str, tuple[bytes, ...]],
                                                 chunked: bool) -> None:
    text, frame = item
    if is_multiline(text):  # event() is the single-line fast path
        frame = (text.replace("\r", "").replace("\n", "").encode(),)
    framer = SSEFramer("0123456789abcdef", chunked)
    size = sum(map(len, frame))
    one = framer.event(seq, frame, size)
    bufs, total = framer.events(seq, [frame], size, None)
    assert one == b"".join(bufs) and total == len(one)


@pytest.mark.parametrize("chunked", [True, False])
def test_framer_events_with_a_tail_are_one_chunk(chunked: bool) -> None:
    """A short answer's last flush: its events, a retry line and the end marker in one
    chunk, then the last chunk; a client decodes the same events as from separate
    chunks."""
    framer = SSEFramer("s", chunked)
    tail = b"retry: 300\n" + end_events(b"[DONE]")
    bufs, total = framer.events(1, [(b'{"a":1}',), (b"x",)], 8, None, tail)
    data = b"".join(bufs)
    body = b'id: s-1\ndata: {"a":1}\n\nid: s-2\ndata: x\n\nretry: 300\ndata: [DONE]\n\n'
    assert total == len(data)
    assert data == (b"%x\r\n%b\r\n" % (len(body), body) if chunked else body)
    assert b"".join(framer.last()) == (b"0\r\n\r\n" if chunked else b"")
    events = Decoder().feed(body)
    assert [(e.data, e.id, e.retry) for e in events] == [
        ('{"a":1}', "s-1", None), ("x", "s-2", None), ("[DONE]", "s-2", 300)]
    assert end_events(b"a\nb") == b"data: a\ndata: b\n\n" == end_events(b"a\r\nb")
    assert end_events(b"e", b"[DONE]") == b"data: e\n\ndata: [DONE]\n\n"


def test_framer_event_layout() -> None:
    framer = SSEFramer("s1", chunked=True)
    payload = (b'{"a":', b"1}")
    assert framer.event(7, payload, 7) == b"18\r\nid: s1-7\ndata: {\"a\":1}\n\n\r\n"
    plain = SSEFramer("s1", chunked=False)
    assert plain.event(7, payload, 7) == b'id: s1-7\ndata: {"a":1}\n\n'


def test_framer_multiline_set_only_splits_its_own_frames() -> None:
    framer = SSEFramer("s", chunked=False)
    bufs, total = framer.events(1, [(b"a\nb",), (b"c",)], 4, {1})
    assert b"".join(bufs) == b"id: s-1\ndata: a\ndata: b\n\nid: s-2\ndata: c\n\n"
    assert total == len(b"".join(bufs))


@pytest.mark.parametrize("chunked", [True, False])
def test_framer_final(chunked: bool) -> None:
    framer = SSEFramer("s", chunked)
    error = b'{"error":{"message":"x"}}'
    data = b"".join(framer.final(error, b"[DONE]"))
    body = b"data: " + error + b"\n\ndata: [DONE]\n\n"
    if chunked:
        assert data == b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
        assert unchunk(data) == [body, b""]
    else:
        assert data == body
    events = Decoder().feed(body)
    assert [(e.data, e.id) for e in events] == [(error.decode(), ""), ("[DONE]", "")]
    # Nothing to add: only the last chunk (or nothing at all for HTTP/1.0).
    assert framer.final() == ([b"0\r\n\r\n"] if chunked else [])
    # A multi-line end marker is split like any data.
    assert b"".join(SSEFramer("s", False).final(b"a\r\nb")) == b"data: a\ndata: b\n\n"


@pytest.mark.parametrize("chunked", [True, False])
def test_framer_comment_is_a_heartbeat_never_a_blank_line(chunked: bool) -> None:
    framer = SSEFramer("s", chunked)
    data = b"".join(framer.comment())
    assert data == (b"2\r\n:\n\r\n" if chunked else b":\n")
    assert Decoder().feed(b"id: s-1\ndata: x\n\n" + b":\n") == [Event("x", id="s-1")]
    assert b"".join(framer.chunk(b"abc")) == (b"3\r\nabc\r\n" if chunked else b"abc")


@pytest.mark.parametrize("chunked", [True, False])
def test_framer_without_ids(chunked: bool) -> None:
    """EventStream(ids=False): the same events, without ``id:`` lines (9.2.6: an event
    without an id leaves the client's last event id as it was)."""
    framer = SSEFramer("s", chunked, ids=False)
    assert framer.prefix is None
    one = framer.event(7, (b'{"a":', b"1}"), 7)
    assert one == (b"f\r\ndata: {\"a\":1}\n\n\r\n" if chunked else b'data: {"a":1}\n\n')
    bufs, total = framer.events(1, [(b"a\nb",), (b"c",)], 4, {1})
    data = b"".join(bufs)
    assert total == len(data)
    body = b"".join(unchunk(data)) if chunked else data
    assert body == b"data: a\ndata: b\n\ndata: c\n\n"
    assert [(e.data, e.id) for e in Decoder().feed(body)] == [("a\nb", ""), ("c", "")]


# ----------------------------------- decoder: feed_raw and feed_around (the gateway's reads)

PREFIX, SUFFIX = b'{"c":', b',"n":null}'


def as_pairs(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.data, e.event) for e in events]


def expand(items: list[object], prefix: bytes = PREFIX, suffix: bytes = SUFFIX,
           ) -> list[tuple[str, str]]:
    """What feed_raw/feed_around hand over, as (data, type) pairs, checking each middle."""
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, list):
            assert item, "an empty run"
            for middle in item:
                assert re.fullmatch(LITERAL, middle), middle
                middle.decode()  # valid UTF-8
                out.append(((prefix + middle + suffix).decode(), "message"))
        elif isinstance(item, bytes):
            assert b"\n" not in item and b"\r" not in item
            out.append((item.decode("utf-8", "replace"), "message"))
        else:
            assert isinstance(item, Event)
            out.append((item.data, item.event))
    return out


def decode_ways(chunks: list[bytes], way: str) -> tuple[list[tuple[str, str]], str, int | None]:
    d = Decoder()
    items: list[object] = []
    for chunk in chunks:
        if way == "raw":
            items += d.feed_raw(chunk)
        else:
            items += d.feed_around(chunk, PREFIX, SUFFIX, LITERAL)
    return expand(items), d.last_event_id, d.retry


MIDDLE = st.one_of(
    st.text(max_size=5).map(lambda t: json.dumps(t, ensure_ascii=False).encode("utf-8",
                                                                                "replace")),
    st.text(max_size=5).map(lambda t: json.dumps(t).encode()),
    st.sampled_from([b'""', b'"a\\u0041"', b'"\\/"', b'"\xff"', b'"\xe2\x82"', b'"\xc3\xa9"',
                     b'"a\x01"', b'"a"b"', b"1", b'"data: ', b'"x\\"y"']),
)
TEMPLATE_EVENT = st.builds(
    lambda id_line, middle, eol: (id_line + b"data: " + PREFIX + middle + SUFFIX + b"\n\n"
                                  ).replace(b"\n", eol),
    st.sampled_from([b"", b"", b"id: 7\n", "id: \u00e9\n".encode(), b"id: \xff\n",
                     b"id: a\x00b\n", b"id:8\n", b"id: 1\nid: 2\n"]),
    MIDDLE, st.sampled_from([b"\n", b"\n", b"\n", b"\r\n"]))
AROUND_BLOCK = st.one_of(TEMPLATE_EVENT, TEMPLATE_EVENT, TEMPLATE_EVENT, FAST_BLOCK,
                         st.sampled_from([b"data: " + PREFIX + b'"a"' + SUFFIX + b"\n",
                                          b"data: " + PREFIX + b'"a"\n\n',
                                          b"data: " + PREFIX + b'"a"' + SUFFIX + b"x\n\n",
                                          b"x" + SUFFIX + b"\n\n", SUFFIX + b"\n\n",
                                          b"data: " + PREFIX + PREFIX + b'"a"' + SUFFIX + b"\n\n",
                                          b"\r\n", b"data: z\r", b": c\r\n\r\n"]))


@given(st.lists(AROUND_BLOCK, max_size=12),
       st.sampled_from([b"", b"data: unterminated", b"data: " + PREFIX + b'"t"' + SUFFIX + b"\n"]),
       st.sampled_from([b"", b"\xef\xbb\xbf"]), st.data())
def test_raw_and_around_give_the_events_of_feed(blocks: list[bytes], tail: bytes, bom: bytes,
                                                data: st.DataObject) -> None:
    """Differential, against the spec's algorithm: feed_raw and feed_around give the same
    events (data and type, in order), last event ID and retry, whatever the input (the
    layout's events with and without ids, other events, CR, CRLF, comments, bad UTF-8) and
    however it is cut: whole, byte by byte, at random points, event by event."""
    stream = bom + b"".join(blocks) + tail
    events, last_id, retry = reference(stream)
    expected = (as_pairs(events), last_id, retry)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    for way in ("raw", "around"):
        assert decode_ways([stream], way) == expected, way
        assert decode_ways([stream[i:i + 1] for i in range(len(stream))], way) == expected
        assert decode_ways(cut(stream, points), way) == expected, way
        assert decode_ways([b"", bom, *blocks, tail], way) == expected, way


def test_around_takes_runs_of_the_layout() -> None:
    d = Decoder()
    assert d.feed_raw(b"data: first\n\n") == [b"first"]
    event = b"data: " + PREFIX + b'"%s"' + SUFFIX + b"\n\n"
    data = (event % b"a" + b"id: 5\n" + event % b"b" + event % b"\\u00e9" + event % b"c"
            + b"data: [DONE]\n\n" + event % b"d")
    assert d.feed_around(data, PREFIX, SUFFIX, LITERAL) == [
        [b'"a"', b'"b"'], PREFIX + b'"\\u00e9"' + SUFFIX, [b'"c"'], b"[DONE]",
        PREFIX + b'"d"' + SUFFIX]
    assert d.last_event_id == "5"
    # a piece with the layout's start twice, and a non-ASCII middle that is not UTF-8
    bad = b"data: " + PREFIX + PREFIX + b'"x"' + SUFFIX + b"\n\n"
    assert d.feed_around(event % b"\xc3\xa9" + bad + event % b"\xc3" + b"id: \xc3\xa9\n"
                         + event % b"e", PREFIX, SUFFIX, LITERAL) == [
        ['"\u00e9"'.encode()], PREFIX + PREFIX + b'"x"' + SUFFIX,
        PREFIX + b'"\xc3"' + SUFFIX, [b'"e"']]
    assert d.last_event_id == "\u00e9"
    # an event begun in an earlier read: its end line by line, then the runs
    assert d.feed_around(b"data: op", PREFIX, SUFFIX, LITERAL) == []
    assert d.feed_around(b"en\n\n" + event % b"f", PREFIX, SUFFIX, LITERAL) == [
        Event("open", id="\u00e9"), [b'"f"']]
    assert d.feed_around(b"data: x\n", PREFIX, SUFFIX, LITERAL) == []
    assert d.feed_around(b"data: y\n", PREFIX, SUFFIX, LITERAL) == []
    # CRLF pairs are line breaks like LF; a lone CR sends the read line by line
    assert d.feed_around(b"\r\n" + (event % b"g").replace(b"\n", b"\r\n"), PREFIX, SUFFIX,
                         LITERAL) == [Event("x\ny", id="\u00e9"), [b'"g"']]
    assert d.feed_around((event % b"h").replace(b"\n", b"\r"), PREFIX, SUFFIX,
                         LITERAL) == [Event((PREFIX + b'"h"' + SUFFIX).decode(), id="\u00e9")]


def test_around_falls_back_to_raw() -> None:
    event = b"data: " + PREFIX + b'"a"' + SUFFIX + b"\n\n"
    # at the start of the stream (a BOM may come), NUL in the read, a read over the limits,
    # a prefix or suffix with a line break or NUL
    assert Decoder().feed_around(event, PREFIX, SUFFIX, LITERAL) == [PREFIX + b'"a"' + SUFFIX]
    for data, prefix, suffix, d in (
            (event + b"data: \0\n\n", PREFIX, SUFFIX, Decoder()),
            (event, PREFIX, SUFFIX, Decoder(max_line_bytes=len(event) - 1)),
            (event, PREFIX + b"\n", SUFFIX, Decoder()),
            (event, PREFIX, b"\r", Decoder()),
            (event, b"\0", SUFFIX, Decoder())):
        d.feed(b"\n")
        assert all(not isinstance(item, list)
                   for item in d.feed_around(data, prefix, suffix, LITERAL))
    d = Decoder()
    d.feed(b"\n")
    assert d.feed_around(b"data: \r", PREFIX, SUFFIX, LITERAL) == []
    assert d.feed_around(b"\n", PREFIX, SUFFIX, LITERAL) == []  # the LF of that CRLF
    assert d.feed_around(b"\n", PREFIX, SUFFIX, LITERAL) == [Event("")]
    assert d.feed_around(event, PREFIX, SUFFIX, LITERAL) == [[b'"a"']]
    assert d.feed_around(b"data: x\n\n", PREFIX, SUFFIX, LITERAL) == [b"x"]


def test_around_after_many_bad_pieces() -> None:
    good = b"data: " + PREFIX + b'"a"' + SUFFIX + b"\n\n"
    bad = b"data: " + PREFIX + b'"\\u0041"' + SUFFIX + b"\n\n"
    d = Decoder()
    d.feed(b"\n")
    items = d.feed_around(good * 3 + bad + good + bad * 3 + good * 9, PREFIX, SUFFIX, LITERAL)
    assert [len(i) if isinstance(i, list) else 0 for i in items] == [3, 0, 1, 0, 0, 0, 1, 2, 4, 2]


def test_raw_ids_are_taken_when_read() -> None:
    d = Decoder()
    assert d.feed_raw(b"id: 1\ndata: a\n\ndata: b\n\nevent: e\ndata: c\n\nid: 2\ndata: d\n\n") == [
        b"a", b"b", Event("c", "e", "1"), b"d"]
    assert d.last_event_id == "2"
    assert d.feed_raw(b"data: e\n\n: c\n\n") == [b"e"]
    assert d.last_event_id == "2"
    assert d.feed(b"data: f\n\n") == [Event("f", id="2")]


# ----------------------------------------------------------- frames that are field lines


def _decoded(wire: bytes) -> list[Event]:
    decoder = Decoder()
    return [*decoder.feed(wire), *decoder.feed(b"")]


@given(st.text(max_size=40), st.one_of(st.none(), st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
    min_size=1, max_size=12)))
def test_field_lines_carry_the_name_and_data_through_both_framers(
        data: str, name: str | None) -> None:
    """A relayed event (Entry.sse_lines): its name and its data, however many lines, reach
    an SSE reader whichever framer path takes it, with or without ids; its data alone
    (lines_data) is what a WebSocket message carries."""
    payload = data.encode()
    frame = (field_lines(payload, None if name is None else name.encode()),)
    expected_name = "message" if name in (None, "message") else name
    expected_data = re.sub("\r\n|\r", "\n", data)
    assert lines_data(frame) == expected_data.encode()
    for ids in (True, False):
        framer = SSEFramer("s1", chunked=False, epoch="abc123", ids=ids, lines=True)
        one = framer.event(3, frame, len(frame[0]))
        many, n = framer.events(3, [frame, frame], 2 * len(frame[0]), None)
        assert n == len(b"".join(many))
        for wire, count in ((one, 1), (b"".join(many), 2)):
            events = _decoded(wire)
            assert [(e.event, e.data) for e in events] == [
                (expected_name, expected_data)] * count
            assert [e.id for e in events] == (
                ["s1-abc123-3", "s1-abc123-4"][:count] if ids else [""] * count)


def test_a_payload_among_field_lines_is_framed_as_data() -> None:
    """The error event that ends a relayed stream is a payload (marked like a multi-line
    frame): data lines, not field lines."""
    framer = SSEFramer("s1", chunked=True, epoch="abc123", lines=True)
    frames = [(field_lines(b"x", b"delta"),), (b'{"error":{}}',)]
    bufs, n = framer.events(1, frames, sum(len(f[0]) for f in frames), {2})
    wire = b"".join(bufs)
    assert n == len(wire)
    body = wire.partition(b"\r\n")[2][:-2]
    assert [(e.event, e.data) for e in _decoded(body)] == [
        ("delta", "x"), ("message", '{"error":{}}')]


def test_lines_data_reads_data_fields_with_or_without_the_space() -> None:
    assert lines_data((b"event: e\ndata:a\n", b"data: b\nid: 1")) == b"a\nb"
