"""streamcore: a protocol-level LLM token streaming server.

HTTP/1.1 chunked Server-Sent Events (on h11) and WebSocket (on wsproto), written directly
over asyncio + uvloop sockets, with a zero-copy token pipe so that backpressure, timeouts and
memory bounds are decided at the byte level.

The names below are the embedding API; everything else is internal and may move.
"""

from .aio.handler import EventStream, Request, Response
from .aio.server import Server, run, start, tune_gc
from .aio.stream import PushSource, Stream
from .aio.websocket import WebSocket, WebSocketClosed
from .app import App
from .errors import (
    BodyTooLarge,
    FellBehind,
    HeadTooLarge,
    ProtocolError,
    RequestError,
    StreamcoreError,
    StreamError,
)
from .limits import Limits
from .sources.paced import Paced
from .store import Entry, MemoryStore, ReplayStore

__version__ = "0.1.0"

__all__ = [
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
