"""Upstream LLM servers that misbehave on purpose, for the gateway's tests.

:class:`ScriptedUpstream` is a real asyncio socket server on 127.0.0.1 (its own loop in a
daemon thread).  Each connection reads a request, then runs the test's *script*, an
``async def script(ex: Exchange)``: send a head, SSE events with delays, stall, close,
reset; and for a complete response, the connection waits for the next request (keep-alive).

What it records, per connection (:class:`ConnRecord`): the requests it read, the bytes it
managed to hand to the kernel (``written``: a non-blocking ``send`` at a time, so a peer
that stops reading stops the count), and whether and when the peer closed it (FIN or RST,
``time.monotonic()``), which is how a test sees that the gateway aborted an upstream
request and how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

Script = Callable[["Exchange"], Awaitable[None]]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class ConnRecord:
    """One upstream connection, as the upstream saw it."""

    index: int
    opened_at: float
    requests: list[Request] = field(default_factory=list)
    #: Bytes the kernel took from us (sent, or queued in our socket's send buffer).
    written: int = 0
    #: When the peer closed (FIN read, or RST), monotonic; None while open.
    peer_closed_at: float | None = None
    #: "fin" or "rst".
    peer_close: str | None = None
    #: We closed it (the script's close or reset, or the end of the server).
    we_closed: bool = False


class PeerClosed(Exception):
    """The gateway closed the connection while the script wrote to it."""


class Exchange:
    """What a script sees: the request, and ways to answer it (or not)."""

    def __init__(self, upstream: ScriptedUpstream, sock: socket.socket, record: ConnRecord,
                 request: Request | None) -> None:
        self.upstream = upstream
        self.sock = sock
        self.record = record
        self.request = request
        self.loop = asyncio.get_running_loop()
        self.chunked = False
        #: The response is complete (the connection may carry another request).
        self.complete = False
        #: The script closed or reset the connection.
        self.gone = False
        self.was_reset = False
        self.peer_closed = asyncio.Event()
        self.watcher: asyncio.Task[None] | None = None

    # -- raw ------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """All of ``data``, counting what the kernel takes as it takes it; PeerClosed if
        the gateway closed the connection meanwhile."""
        view = memoryview(data)
        while view:
            if self.record.peer_close == "rst":
                raise PeerClosed
            try:
                n = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await self._writable()
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise PeerClosed from None
            self.record.written += n
            view = view[n:]

    async def _writable(self) -> None:
        future: asyncio.Future[None] = self.loop.create_future()
        fd = self.sock.fileno()
        self.loop.add_writer(fd, lambda: future.done() or future.set_result(None))
        try:
            await asyncio.wait_for(future, 0.05)  # re-checks the peer's state now and then
        except TimeoutError:
            pass
        finally:
            self.loop.remove_writer(fd)

    # -- an HTTP response -----------------------------------------------------------------

    async def head(self, status: int = 200, headers: Iterable[tuple[str, str]] = (), *,
                   content_type: str | None = "text/event-stream",
                   length: int | None = None, close_delimited: bool = False) -> None:
        """The status line and headers: chunked unless ``length`` or ``close_delimited``."""
        lines = [f"HTTP/1.1 {status} X"]
        if content_type:
            lines.append(f"content-type: {content_type}")
        if length is not None:
            lines.append(f"content-length: {length}")
        elif close_delimited:
            lines.append("connection: close")
        else:
            lines.append("transfer-encoding: chunked")
            self.chunked = True
        lines += [f"{k}: {v}" for k, v in headers]
        await self.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def body(self, data: bytes) -> None:
        """Body bytes (one chunk when chunked)."""
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self.write(data)

    async def end(self) -> None:
        """The end of a chunked body: the response is complete."""
        if self.chunked:
            await self.write(b"0\r\n\r\n")
        self.complete = True

    async def event(self, data: Any) -> None:
        """One SSE event: ``data`` as JSON (bytes and str as they are)."""
        if isinstance(data, str):
            data = data.encode()
        elif not isinstance(data, bytes):
            data = orjson.dumps(data)
        await self.body(b"data: " + data + b"\n\n")

    async def done(self) -> None:
        await self.event(b"[DONE]")
        await self.end()

    async def json(self, obj: Any, status: int = 200,
                   headers: Iterable[tuple[str, str]] = ()) -> None:
        """A whole JSON response with a Content-Length."""
        body = orjson.dumps(obj)
        await self.head(status, headers, content_type="application/json", length=len(body))
        await self.write(body)
        self.complete = True

    async def chat_stream(self, tokens: Iterable[str], *, model: str = "m",
                          finish: str | None = "stop", usage: dict[str, int] | None = None,
                          delay: float = 0.0, done: bool = True) -> None:
        """A whole OpenAI streamed chat completion: head, role, tokens, finish, usage (when
        the request asked for it, or ``usage`` given), ``[DONE]``."""
        await self.head()
        for chunk in chat_chunks(tokens, model=model, finish=finish, usage=usage,
                                 include_usage=self.include_usage):
            if delay:
                await asyncio.sleep(delay)
            await self.event(chunk)
        if done:
            await self.done()
        else:
            await self.end()

    async def chat_answer(self, tokens: Iterable[str], *, model: str = "m",
                          finish: str = "stop") -> None:
        """A whole non-streamed chat completion."""
        tokens = list(tokens)
        text = "".join(tokens)
        await self.json({
            "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1,
            "model": model, "choices": [{"index": 0, "finish_reason": finish,
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(tokens),
                      "total_tokens": 5 + len(tokens)}})

    @property
    def streamed(self) -> bool:
        return bool(self.request is not None and self.request.body
                    and self.request.json().get("stream"))

    @property
    def include_usage(self) -> bool:
        if self.request is None or not self.request.body:
            return False
        options = self.request.json().get("stream_options") or {}
        return bool(options.get("include_usage"))

    # -- misbehaviour -------------------------------------------------------------------

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def stall(self, timeout: float = 10.0) -> None:
        """Send nothing until the gateway closes the connection (or ``timeout``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.peer_closed.wait(), timeout)

    def close(self) -> None:
        """FIN, now."""
        self.gone = True
        self.record.we_closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    async def reset(self) -> None:
        """RST, now (SO_LINGER 0)."""
        self.gone = self.was_reset = True
        self.record.we_closed = True
        await self.stop_watching()
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    async def stop_watching(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                # The watcher's own cancellation is expected; ours (the server closing)
                # must go on, or the connection's task would outlive the close.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise


def chunk(model: str, delta: dict[str, Any] | None = None, finish: str | None = None,
          **extra: Any) -> dict[str, Any]:
    """An upstream's ``chat.completion.chunk`` (its own id: the gateway replaces it)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": finish}]
    return {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1,
            "model": model, "choices": choices, **extra}


def chat_chunks(tokens: Iterable[str], *, model: str = "m", finish: str | None = "stop",
                usage: dict[str, int] | None = None,
                include_usage: bool = False) -> Iterator[dict[str, Any]]:
    yield chunk(model, {"role": "assistant", "content": ""})
    n = 0
    for token in tokens:
        n += 1
        yield chunk(model, {"content": token})
    if finish is not None:
        yield chunk(model, {}, finish)
    if usage is None and include_usage:
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
    if usage is not None:
        yield chunk(model, None, usage=usage)


async def read_request(loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray,
                       *, read_body: bool = True) -> Request | None:
    """One request (Content-Length bodies only: what the gateway sends); None at EOF."""
    while b"\r\n\r\n" not in buffer:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n")
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[:end + 4]
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if not read_body:
        return Request(method, path, headers, b"")
    while len(buffer) < length:
        data = await loop.sock_recv(sock, 65536)
        if not data:
            return None
        buffer += data
    body = bytes(buffer[:length])
    del buffer[:length]
    return Request(method, path, headers, body)


class ScriptedUpstream:
    """The server.  ``script(ex)`` answers each request; ``scripts`` (a list) answers the
    n-th request with the n-th script (the last one for the rest).  ``read_body=False``:
    the script runs after the request head, the body is never read.  ``sndbuf``: the
    server socket's SO_SNDBUF (so that a peer that stops reading stops us soon)."""

    def __init__(self, script: Script | list[Script], *, read_body: bool = True,
                 sndbuf: int | None = None) -> None:
        self.scripts = script if isinstance(script, list) else [script]
        self.read_body = read_body
        self.sndbuf = sndbuf
        self.conns: list[ConnRecord] = []
        self.requests = 0
        self.errors: list[BaseException] = []
        self.loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._socks: set[socket.socket] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="scripted-upstream")
        self._thread.start()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        asyncio.run_coroutine_threadsafe(self._accept(), self.loop).result(5)

    def spec(self, options: str = "models=m") -> str:
        """An ``--upstream`` spec for it."""
        return f"{self.url} {options}"

    async def _accept(self) -> None:
        self._tasks.add(self.loop.create_task(self._accept_loop()))

    async def _accept_loop(self) -> None:
        while True:
            sock, _ = await self.loop.sock_accept(self.listener)
            sock.setblocking(False)
            if self.sndbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            record = ConnRecord(len(self.conns), time.monotonic())
            self.conns.append(record)
            self._socks.add(sock)
            task = self.loop.create_task(self._serve(sock, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch(self, sock: socket.socket, record: ConnRecord, ex: Exchange,
                     buffer: bytearray) -> None:
        """After the request: read until the peer closes (what comes is kept: the next
        request of a kept-alive connection)."""
        try:
            while True:
                data = await self.loop.sock_recv(sock, 65536)
                if not data:
                    record.peer_close = "fin"
                    break
                buffer += data
        except (ConnectionResetError, BrokenPipeError):
            record.peer_close = "rst"
        except OSError:  # we closed it ourselves
            return
        record.peer_closed_at = time.monotonic()
        ex.peer_closed.set()

    async def _serve(self, sock: socket.socket, record: ConnRecord) -> None:
        buffer = bytearray()
        ex: Exchange | None = None
        try:
            while True:
                try:
                    request = await read_request(self.loop, sock, buffer,
                                                 read_body=self.read_body)
                except (ConnectionResetError, BrokenPipeError):
                    record.peer_close, record.peer_closed_at = "rst", time.monotonic()
                    return
                if request is None:
                    record.peer_close, record.peer_closed_at = "fin", time.monotonic()
                    return
                record.requests.append(request)
                index = self.requests
                self.requests += 1
                ex = Exchange(self, sock, record, request)
                if self.read_body:
                    ex.watcher = self.loop.create_task(self._watch(sock, record, ex, buffer))
                with contextlib.suppress(PeerClosed):
                    await self.scripts[min(index, len(self.scripts) - 1)](ex)
                if ex.gone:
                    if not ex.was_reset:  # a FIN: wait for the peer's
                        await ex.stall(10.0)
                    return
                if not ex.complete or record.peer_close is not None:
                    # An incomplete answer: the connection cannot carry another.  Wait for
                    # the peer's close (its time is what tests measure), then close.
                    await ex.stall(10.0)
                    return
                # Stop watching (keeping what it read) and read the next request.
                await ex.stop_watching()
        except Exception as exc:  # reported to the test
            self.errors.append(exc)
        finally:
            record.we_closed = True
            self._socks.discard(sock)
            try:
                if ex is not None:  # re-raises the server's close (a cancel): still closed
                    await ex.stop_watching()
            finally:
                with contextlib.suppress(OSError):
                    sock.close()

    # -- the test's side ------------------------------------------------------------------

    def wait_closed(self, index: int = -1, timeout: float = 5.0) -> ConnRecord:
        """The connection ``index`` once its peer closed it."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.conns[index] if self.conns else None
            if record is not None and record.peer_closed_at is not None:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"the gateway did not close upstream connection "
                                     f"{index}: {self.conns}")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop: every task of the server's loop cancelled *and awaited* on that loop, the
        sockets closed, then the loop stopped and closed.  A task only cancelled (its
        ``finally`` never run) outlived the loop: the garbage collector finalized its
        coroutine later, in another test, and its ``finally`` (``stop_watching``) called
        ``call_soon`` on a closed loop (PytestUnraisableExceptionWarning)."""

        async def stop() -> None:
            self.listener.close()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=5)
                if pending:
                    self.errors.append(RuntimeError(f"tasks ignored their cancel: {pending}"))
            for sock in list(self._socks):
                with contextlib.suppress(OSError):
                    sock.close()

        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
