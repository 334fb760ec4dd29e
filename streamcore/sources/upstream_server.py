"""Upstream servers: where one is and what it serves (``--upstream``), the request a client's
chat becomes there, and what an upstream's refusal means to the client.

:class:`Upstream` is one server (its target, key, models, aliases; its connection pool, TLS
context and request heads, made once); a :class:`Route` is one upstream that serves a
model, and its name for it there.  :func:`refusal` turns an upstream's non-200 answer into
the error a client gets (its own 4xx with its message, a 502 for anything else), and
:func:`upstream_body` the client's chat request into the upstream's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from ..aio.upstream import UpstreamPool
from ..errors import RequestError, StreamError
from ..limits import Limits
from ..proto.openai import ChatRequest
from ..proto.upstream import (
    Target,
    parse_target,
    request_head,
)

#: Upstream statuses after which the next upstream serving the model is tried (before any
#: byte went to the client): overloaded, or failing.
RETRYABLE = frozenset({429, 500, 502, 503, 504})


@dataclass(eq=False)
class Upstream:
    """One upstream server: where it is, its key, the models it serves."""

    target: Target
    #: Sent upstream as ``Authorization: Bearer``; never logged, never echoed.
    key: str | None = None
    #: The models it serves (None: asked from its ``/v1/models``).
    models: tuple[str, ...] | None = None
    #: Names clients may use -> the upstream's model name.
    aliases: dict[str, str] = field(default_factory=dict)
    #: For an https upstream: a PEM file of the CA certificates to trust instead of the
    #: system's (a private CA, a self-signed server); None: the system's store.
    ca_file: str | None = None
    _pools: dict[int, UpstreamPool] = field(default_factory=dict, repr=False)
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)
    #: ``headers()`` made once, with the key it was made for.
    _headers: tuple[str | None, list[tuple[bytes, bytes]]] | None = field(default=None,
                                                                        repr=False)
    #: The chat request's head (``request_head``) made once, with the key it was made for.
    _chat_head: tuple[str | None, tuple[bytes, bytes]] | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, spec: str, key: str | None = None) -> Upstream:
        """``URL [key=K|key-env=VAR|key-file=PATH] [models=a,b] [alias=NAME:MODEL ...]
        [ca-file=PATH]``; ``ValueError`` naming what is wrong.

        ``ca-file=PATH`` (https only): trust the CA certificates of this PEM file for this
        upstream instead of the system's store; the upstream's certificate must still
        name its host."""
        import os

        words = spec.split()
        if not words:
            raise ValueError("an empty --upstream")
        target = parse_target(words[0])
        models: tuple[str, ...] | None = None
        aliases: dict[str, str] = {}
        ca_file: str | None = None
        for word in words[1:]:
            name, eq, value = word.partition("=")
            if not eq or not value:
                raise ValueError(f"--upstream {words[0]}: {word!r} is not name=value")
            if name == "key":
                key = value
            elif name == "key-env":
                key = os.environ.get(value)
                if key is None:
                    raise ValueError(f"--upstream {words[0]}: ${value} is not set")
            elif name == "key-file":
                with open(value) as f:
                    key = f.read().strip()
            elif name == "models":
                models = tuple(m for m in value.split(",") if m)
            elif name == "alias":
                alias, colon, model = value.partition(":")
                if not colon or not alias or not model:
                    raise ValueError(f"--upstream {words[0]}: alias={value!r} is not NAME:MODEL")
                aliases[alias] = model
            elif name == "ca-file":
                if not target.tls:
                    raise ValueError(f"--upstream {words[0]}: ca-file is for an https URL")
                ca_file = value
            else:
                raise ValueError(f"--upstream {words[0]}: unknown option {name!r} "
                                 "(key, key-env, key-file, models, alias, ca-file)")
        upstream = cls(target, key, models, aliases, ca_file)
        if ca_file is not None:
            try:
                upstream.ssl_context()
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--upstream {words[0]}: ca-file={ca_file!r}: cannot load "
                                 f"CA certificates from it ({exc})") from None
        return upstream

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS client context for an https upstream (made once), None for http."""
        if self._ssl is None and self.target.tls:
            self._ssl = ssl.create_default_context(cafile=self.ca_file)
        return self._ssl

    def pool(self, loop: asyncio.AbstractEventLoop, limits: Limits) -> UpstreamPool:
        pool = self._pools.get(id(loop))
        if pool is None or pool.loop is not loop:
            pool = self._pools[id(loop)] = UpstreamPool(loop, self.target, limits,
                                                        self.ssl_context())
        return pool

    def headers(self) -> list[tuple[bytes, bytes]]:
        made = self._headers
        if made is not None and made[0] == self.key:
            return made[1]
        headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream")]
        if self.key:
            headers.append((b"authorization", b"Bearer " + self.key.encode()))
        self._headers = (self.key, headers)
        return headers

    def path(self, endpoint: str) -> str:
        return self.target.base_path + endpoint

    def chat_head(self) -> tuple[bytes, bytes]:
        """The head of a streamed chat request (``POST .../chat/completions``), made once
        (it was ~3 us of bytes formatting and header checks per request)."""
        made = self._chat_head
        if made is not None and made[0] == self.key:
            return made[1]
        head = request_head(self.target, "POST", self.path("/chat/completions"),
                            self.headers())
        self._chat_head = (self.key, head)
        return head


@dataclass(frozen=True, slots=True)
class Route:
    """One upstream that serves a model, and its name for it there."""

    upstream: Upstream
    model: str


class UpstreamFailed(StreamError):
    """The upstream failed after the stream started: its readers get an error event."""

    type = "upstream_error"
    code = "upstream_error"


class UpstreamTimeout(UpstreamFailed):
    code = "upstream_timeout"


def refusal(status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]],
            where: str) -> RequestError:
    """An upstream's non-200 answer as the error a client gets: its own 4xx, with its
    error's message, type and code (an OpenAI-compatible server gives them); a 5xx is a
    502 that says so; anything else (a 200 that is not an event stream to a streamed
    request, a redirect) is not a status to pass on: a 502 that says what came."""
    if status < 400:
        content_type = next((v for k, v in headers if k == b"content-type"), b"none")
        return RequestError(f"{where} answered {status} with content-type "
                            f"{content_type.decode('latin-1')!r}, not what was asked",
                            status=502, type="upstream_error",
                            code="upstream_protocol_error")
    message = f"the upstream answered {status}"
    type_, code, param = "upstream_error", None, None
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        if isinstance(error.get("message"), str):
            message = error["message"]
        if isinstance(error.get("type"), str):
            type_ = error["type"]
        if isinstance(error.get("code"), str):
            code = error["code"]
        if isinstance(error.get("param"), str):
            param = error["param"]
    extra = [(k, v) for k, v in headers if k == b"retry-after"]
    if status in (401, 403):  # the gateway's key for the upstream, not the client's
        return RequestError(f"{where} refused the gateway's credentials ({status}): "
                            f"{message}", status=502, type="upstream_error",
                            code="upstream_auth")
    if status >= 500:
        return RequestError(f"{where}: {message}", status=502, type="upstream_error",
                            code=code or f"upstream_{status}", headers=extra)
    return RequestError(message, status=status, type=type_, code=code, param=param,
                        headers=extra)


def upstream_body(chat: ChatRequest, model: str, *, stream: bool) -> bytes:
    """The client's request as the upstream gets it: its model name there, and for a
    stream the usage asked for (streamcore reports usage on every exit)."""
    body = dict(chat.raw)
    body["model"] = model
    body["stream"] = stream
    if stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    else:
        body.pop("stream_options", None)
    return orjson.dumps(body)
