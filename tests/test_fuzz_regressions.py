"""Every input a fuzz harness of fuzz/ found breaking its invariant, as a test (and as a
seed in fuzz/corpus/)."""

from __future__ import annotations

import pytest

from streamcore.errors import RequestError
from streamcore.proto.openai import parse_chat_request


@pytest.mark.parametrize("body", [
    # fuzz_chat (atheris, 4 min): a role that is a list was a TypeError (unhashable) and a
    # 500 instead of a 400 naming the parameter.
    b'{"model":"m","messages":[{"role":[{"typt":"a"}]}],"max_tokens":4,"tempstop":["x"]}',
    b'{"model":"m","messages":[{"role":{"a":1},"content":"x"}]}',
])
def test_chat_role_of_the_wrong_type_is_a_400(body: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    assert info.value.status == 400 and info.value.param == "messages[0].role"
