"""The chaos scorecard on a reduced set of faults (the full set: ``python -m
streamcore.scorecard``, docs/chaos.md): real clients against a real chaos server, and
outcomes that a broken fault, a broken client driver or a broken classifier would change."""

from __future__ import annotations

import pytest

from streamcore import scorecard
from streamcore.scorecard import Result, outcome

FAULTS = ["split-utf8", "crlf", "error-event", "cut-before-finish", "ws-fragment", "ws-drop"]


def test_outcome_labels() -> None:
    assert outcome("crlf", "abc", Result("abc")) == ("text", True)
    assert outcome("crlf", "abc", Result("ab")) == ("truncated", False)
    assert outcome("crlf", "abc", Result("abd")) == ("corrupted", False)
    assert outcome("crlf", "abc", Result(hung=True)) == ("hung", False)
    assert outcome("error-event", "abc", Result(error="APIError")) == ("error", True)
    assert outcome("invalid-utf8", "abc", Result("a\ufffdbc")) == ("text+FFFD", True)
    assert outcome("no-final-chunk", "abc", Result("abc")) == ("text", True)


@pytest.mark.slow  # ~30 s: a browser, node and the Python clients, a case each
def test_reduced_scorecard() -> None:
    results, skipped = scorecard.score(FAULTS, scorecard.CLIENTS)
    assert not {"openai", "httpx-sse", "websockets"} & set(skipped)
    ran = {client for client, _ in results}
    for client in ran:
        if client != "websockets":
            # every SSE client reads a CRLF-split UTF-8 stream and raises the error event
            assert results[client, "split-utf8"] == ("text", True), client
            assert results[client, "error-event"] == ("error", True), client
    assert results["websockets", "ws-fragment"] == ("text", True)
    assert results["websockets", "split-utf8"] == ("text", True)
    assert results["websockets", "ws-drop"] == ("error", True)
    # the SDK takes a stream cut before its finish chunk (no finish_reason, no [DONE]) for
    # a whole answer: the bug class the issue names
    assert results["openai", "cut-before-finish"] == ("text", False)
    if "browser-fetch" in ran:  # the hand-written reader splits on "\n\n" only
        assert results["browser-fetch", "crlf"][1] is False
    table = scorecard.table(results, FAULTS, sorted(ran))
    assert table.count("\n") == len(FAULTS) + 2
