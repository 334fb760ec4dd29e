"""The cursor format (:mod:`streamcore.proto.cursor`): ``<stream id>-<epoch>-<seq>`` (and the
older ``<stream id>-<seq>``), and its strict,
bounded parser (a client controls the string, as ``Last-Event-ID``)."""

from __future__ import annotations

import os
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcore.errors import RequestError
from streamcore.proto import cursor
from streamcore.proto.cursor import (
    MAX_EPOCH_LENGTH,
    MAX_SEQ_DIGITS,
    MAX_STREAM_ID_LENGTH,
    Position,
    ResumeQuery,
    event_id,
    id_prefix,
    new_epoch,
    new_id_and_epoch,
    new_stream_id,
    parse_cursor,
    parse_event_id,
    resume_query,
    valid_epoch,
    valid_stream_id,
)

ID_CHARS = "ABCXYZabcxyz0189._~"

stream_ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=MAX_STREAM_ID_LENGTH)
seqs = st.integers(min_value=0, max_value=10**MAX_SEQ_DIGITS - 1)


def test_new_stream_ids_are_16_hex_digits_valid_and_distinct() -> None:
    ids = {new_stream_id() for _ in range(100)}
    assert len(ids) == 100
    for stream_id in ids:
        assert re.fullmatch(r"[0-9a-f]{16}", stream_id)
        assert valid_stream_id(stream_id)


def test_event_id_and_prefix() -> None:
    assert event_id("abc", 7) == "abc-7"
    assert id_prefix("abc") == b"abc-"
    assert id_prefix("abc") + b"7" == event_id("abc", 7).encode()


def test_round_trip_examples() -> None:
    assert parse_event_id(event_id("0123456789abcdef", 1)) == ("0123456789abcdef", 1)
    # '-' is not a stream-id character, so the split is never ambiguous.
    assert not valid_stream_id("a-b")
    assert parse_event_id("a-b-1") == ("a", 1)  # stream a, epoch b
    assert parse_event_id("a-x-1") is None  # an epoch is hex
    assert parse_event_id("a-b-c-1") is None
    uuid_like = "6fa459ea.ee8a.3ca4.894e.db77e160355e"
    assert parse_event_id(f"{uuid_like}-42") == (uuid_like, 42)


@given(stream_ids, seqs)
def test_round_trip(stream_id: str, seq: int) -> None:
    assert valid_stream_id(stream_id)
    assert parse_event_id(event_id(stream_id, seq)) == (stream_id, seq)
    assert (id_prefix(stream_id) + b"%d" % seq).decode() == event_id(stream_id, seq)


@pytest.mark.parametrize("value", [
    "abc-\u00b2",        # superscript two: str.isdigit() says yes, int() says no
    "abc-1\u00b2",
    "abc-\u0661",        # ARABIC-INDIC DIGIT ONE: int() would accept it
    "abc-\uff11",        # FULLWIDTH DIGIT ONE
    "abc-\u0967",        # DEVANAGARI DIGIT ONE
    "abc-1" + "0" * MAX_SEQ_DIGITS,   # 19 digits
    "abc-" + "9" * 40,
    "",
    "-",
    "abc-",              # empty seq
    "-1",                # empty stream id
    "abc",               # no dash
    "1",
    "abc--1",            # negative: the dash is not an id character
    "abc-+1",
    "abc- 1",
    "abc-1 ",
    " abc-1",
    "abc-1\n",
    "abc-0x1",
    "abc-1.0",
    "ab c-1",            # bad stream-id characters
    "ab/c-1",
    "ab%20c-1",
    "ab\u00e9c-1",
    "ab\0c-1",
    "x" * (MAX_STREAM_ID_LENGTH + 1) + "-1",  # over-long id
])
def test_strict_parser_refuses(value: str) -> None:
    assert parse_event_id(value) is None


def test_bounds_are_inclusive() -> None:
    longest = "x" * MAX_STREAM_ID_LENGTH
    assert parse_event_id(f"{longest}-1") == (longest, 1)
    most = "9" * MAX_SEQ_DIGITS
    assert parse_event_id(f"abc-{most}") == ("abc", int(most))
    assert int(most) < 2**63
    assert parse_event_id("abc-007") == ("abc", 7)
    assert parse_event_id("abc-0") == ("abc", 0)


@pytest.mark.parametrize("stream_id", ["", "a-b", "a b", "é", "x" * (MAX_STREAM_ID_LENGTH + 1),
                                       "abc\n"])
def test_invalid_stream_ids(stream_id: str) -> None:
    assert not valid_stream_id(stream_id)


@given(st.text(max_size=120))
def test_parser_never_raises_and_only_accepts_what_round_trips(value: str) -> None:
    parsed = parse_event_id(value)
    if parsed is not None:
        stream_id, seq = parsed
        assert valid_stream_id(stream_id)
        assert value.isascii()
        # The same number, maybe with leading zeros.
        assert value.startswith(stream_id + "-") and int(value[len(stream_id) + 1:]) == seq


# -- the epoch (issue 10): <stream id>-<epoch>-<seq> ---------------------------------------

epochs = st.text(alphabet="0123456789abcdef", min_size=1, max_size=MAX_EPOCH_LENGTH)


def test_new_epochs_are_6_hex_digits_and_valid() -> None:
    made = {new_epoch() for _ in range(50)}
    assert len(made) > 40  # 24 random bits: a repeat in 50 is rare
    for epoch in made:
        assert re.fullmatch(r"[0-9a-f]{6}", epoch) and valid_epoch(epoch)
    for bad in ("", "A1", "g", "1" * (MAX_EPOCH_LENGTH + 1), "-1", "1 "):
        assert not valid_epoch(bad)


@given(stream_ids, epochs, seqs)
def test_round_trip_with_epoch(stream_id: str, epoch: str, seq: int) -> None:
    value = event_id(stream_id, seq, epoch)
    assert value == f"{stream_id}-{epoch}-{seq}"
    assert parse_cursor(value) == Position(stream_id, epoch, seq)
    assert (id_prefix(stream_id, epoch) + b"%d" % seq).decode() == value
    # The older form is read as a position in whatever history the stream has now.
    assert parse_cursor(event_id(stream_id, seq)) == Position(stream_id, None, seq)


@pytest.mark.parametrize("value", [
    "abc-ABC-1",          # an epoch is lowercase hex
    "abc-g1-1",
    "abc--1",
    "abc-1-",
    "abc-" + "1" * (MAX_EPOCH_LENGTH + 1) + "-1",
    "abc-1-2-3",
])
def test_strict_parser_refuses_bad_epochs(value: str) -> None:
    assert parse_cursor(value) is None


def test_resume_query() -> None:
    assert resume_query("") == ResumeQuery(None, None, False)
    assert resume_query("starting_after=0") == ResumeQuery(0, None, False)
    assert resume_query("starting_after=12&epoch=ab12&replay=exact&model=x") == \
        ResumeQuery(12, "ab12", True)
    assert resume_query("replay=snapshot").exact is False


@pytest.mark.parametrize(("query", "param"), [
    ("starting_after=-1", "starting_after"),
    ("starting_after=", "starting_after"),
    ("starting_after=1" + "0" * MAX_SEQ_DIGITS, "starting_after"),
    ("starting_after=%C2%B2", "starting_after"),  # '²'
    ("epoch=XY", "epoch"),
    ("epoch=", "epoch"),
    ("replay=maybe", "replay"),
    ("&".join(["a=1"] * 40), None),
])
def test_resume_query_refuses(query: str, param: str | None) -> None:
    with pytest.raises(RequestError) as caught:
        resume_query(query)
    assert caught.value.param == param and caught.value.code == "invalid_value"


def test_new_id_and_epoch_from_one_read() -> None:
    made = [new_id_and_epoch() for _ in range(50)]
    assert all(valid_stream_id(i) and valid_epoch(e) for i, e in made)
    assert len({i for i, _ in made}) == 50 and len({e for _, e in made}) > 40


def test_ids_come_from_a_pool_of_random_bytes_each_used_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One ``os.urandom`` read per IDS_PER_READ streams; every id and epoch is those
    bytes in order, none used twice; a forked child reads its own."""
    reads: list[bytes] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        reads.append(real(n))
        return reads[-1]

    monkeypatch.setattr(cursor.os, "urandom", urandom)
    cursor._forget_pool()
    made = [new_id_and_epoch() for _ in range(cursor.IDS_PER_READ + 1)]
    assert [len(r) for r in reads] == [11 * cursor.IDS_PER_READ] * 2
    assert "".join(i + e for i, e in made) == (reads[0] + reads[1][:11]).hex()
    child = os.fork()
    if child == 0:  # the child: a new read, not its parent's pool
        os._exit(0 if new_id_and_epoch() and len(reads) == 3 else 1)
    assert os.waitpid(child, 0)[1] == 0 and len(reads) == 2
