"""JSON bytes that are kept (:mod:`streamcore.proto.jsonbytes`): exact-size buffers."""

from __future__ import annotations

import sys

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streamcore.proto.jsonbytes import dumps, json_string


@given(st.text())
def test_json_string_is_orjsons_string(text: str) -> None:
    try:
        expected = orjson.dumps(text)
    except orjson.JSONEncodeError:  # lone surrogates: orjson refuses them
        expected = None
    got = json_string(text)
    if expected is not None:
        assert orjson.loads(got) == text
    assert type(got) is bytes and sys.getsizeof(got) == sys.getsizeof(b"") + len(got)


def test_lone_surrogates_are_replaced() -> None:
    assert json_string("a\ud800b") == b'"a?b"'
    assert orjson.loads(json_string("\udfff")) == "?"


def test_escapes() -> None:
    assert json_string('q"\\\n\x00') == b'"q\\"\\\\\\n\\u0000"'
    assert json_string("\u00e9") == '"\u00e9"'.encode()


def test_dumps_is_exact_size_orjson() -> None:
    obj = {"a": [1, "b"], "c": None}
    data = dumps(obj)
    assert data == orjson.dumps(obj) and type(data) is bytes
