"""The public surface: ``streamcore.__all__`` is the documented embedding API, exactly."""

from __future__ import annotations

import importlib

import streamcore

#: The embedding API (streamcore/__init__.py's docstring: "The names below are the
#: embedding API; everything else is internal and may move").  A name added to or removed
#: from the package's surface must be added or removed here too, on purpose.
DOCUMENTED = [
    "App",
    "BodyTooLarge",
    "Entry",
    "EventStream",
    "FellBehind",
    "HeadTooLarge",
    "Limits",
    "MemoryStore",
    "Paced",
    "ProtocolError",
    "PushSource",
    "ReplayStore",
    "Request",
    "RequestError",
    "Response",
    "Server",
    "Stream",
    "StreamError",
    "StreamcoreError",
    "WebSocket",
    "WebSocketClosed",
    "__version__",
    "run",
    "start",
    "tune_gc",
]


def test_all_is_exactly_the_documented_list() -> None:
    assert streamcore.__all__ == DOCUMENTED


def test_all_is_sorted_and_without_duplicates() -> None:
    assert streamcore.__all__ == sorted(streamcore.__all__)
    assert len(set(streamcore.__all__)) == len(streamcore.__all__)


def test_every_name_is_importable_and_not_none() -> None:
    module = importlib.import_module("streamcore")
    for name in streamcore.__all__:
        value = getattr(module, name)
        assert value is not None, name
    namespace: dict[str, object] = {}
    exec("from streamcore import *", namespace)
    assert {name for name in namespace if name != "__builtins__"} == set(DOCUMENTED)


def test_nothing_private_is_exported() -> None:
    for name in streamcore.__all__:
        assert not name.startswith("_") or (name.startswith("__") and name.endswith("__")), name


def test_exports_are_the_real_objects() -> None:
    from streamcore.aio.stream import PushSource, Stream
    from streamcore.aio.websocket import WebSocket, WebSocketClosed
    from streamcore.limits import Limits

    assert streamcore.PushSource is PushSource and streamcore.Stream is Stream
    assert streamcore.WebSocket is WebSocket and streamcore.WebSocketClosed is WebSocketClosed
    assert streamcore.Limits is Limits
    assert isinstance(streamcore.__version__, str) and streamcore.__version__


def test_what_an_embedder_needs_is_there() -> None:
    # Issue 8: PushSource, WebSocket, Limits ... exported from the package itself.
    for name in ("App", "EventStream", "PushSource", "WebSocket", "Limits", "RequestError",
                 "start", "run"):
        assert name in streamcore.__all__
