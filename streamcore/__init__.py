"""streamcore: a protocol-level LLM token streaming server.

HTTP/1.1 chunked Server-Sent Events (on h11) and WebSocket (on wsproto), written directly
over asyncio + uvloop sockets, with a zero-copy token pipe so that backpressure, timeouts and
memory bounds are decided at the byte level.
"""

from .aio.server import Server, run, start, tune_gc
from .app import App, EventStream, Request, Response
from .errors import (
    BodyTooLarge,
    FellBehind,
    HeadTooLarge,
    MessageTooBig,
    ProtocolError,
    RequestError,
    StreamcoreError,
)
from .limits import Limits

__version__ = "0.1.0"

__all__ = [
    "App",
    "BodyTooLarge",
    "EventStream",
    "FellBehind",
    "HeadTooLarge",
    "Limits",
    "MessageTooBig",
    "ProtocolError",
    "Request",
    "RequestError",
    "Response",
    "Server",
    "StreamcoreError",
    "__version__",
    "run",
    "start",
    "tune_gc",
]
