"""The listener and the runner (:mod:`streamcore.aio.server`): listening on a given socket,
closing a server that never listened or whose store holds other processes' streams,
``tune_gc``, and ``run`` serving until SIGTERM (drain) or SIGINT."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from loops import run_in

import streamcore
from streamcore.store import Entry, MemoryStore


def hello_app() -> streamcore.App:
    app = streamcore.App()

    @app.route("GET", "/hi")
    async def hi(request: streamcore.Request) -> dict[str, str]:
        return {"hi": "there"}

    return app


async def fetch(port: int, path: str = "/hi") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
    data = await reader.read()
    writer.close()
    return data


def test_listen_on_a_given_socket_with_the_default_backlog() -> None:
    async def main() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await streamcore.start(hello_app(), sock=sock)
        try:
            assert server.port == sock.getsockname()[1]
            assert (await fetch(server.port)).endswith(b'{"hi":"there"}')
        finally:
            await server.close(0.5)
        assert server.connections == set()

    run_in("uvloop", main)


def test_close_a_server_that_never_listened() -> None:
    async def main() -> None:
        server = streamcore.Server(hello_app())
        assert server.sockets == []
        await server.close(0.1)

    run_in("asyncio", main)


class SharedStore(MemoryStore):
    """A store shared with other processes: some live entries have no local owner."""

    def live(self) -> list[Entry]:
        return [*super().live(), Entry("elsewhere", 1024)]


def test_close_leaves_other_processes_streams_alone() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        store = SharedStore(loop.time, 60, 1 << 20)
        server = streamcore.Server(hello_app(), store=store)
        await server.close(0.1)  # the foreign entry (owner None) is not touched

    run_in("asyncio", main)


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """tune_gc() and run() change the process: GC thresholds, frozen objects, signals."""
    threshold = gc.get_threshold()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def test_tune_gc(restore_process_state: None) -> None:
    gen0, gen1, _ = gc.get_threshold()
    streamcore.tune_gc()
    assert gc.get_threshold() == (gen0, gen1, 1000)
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_serves_until_a_signal(restore_process_state: None, signum: int) -> None:
    results: dict[str, Any] = {}

    def on_ready(server: streamcore.Server) -> None:
        async def client() -> None:
            results["response"] = await fetch(server.port)
            signal.raise_signal(signum)

        results["task"] = asyncio.get_running_loop().create_task(client())

    streamcore.run(hello_app(), "127.0.0.1", 0, on_ready=on_ready,
                   limits=streamcore.Limits(drain_timeout_s=0.5))
    assert results["response"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert results["response"].endswith(b'{"hi":"there"}')


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux only")
@pytest.mark.parametrize("given_socket", [False, True])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_every_accepted_connection_has_the_write_stall_limit_as_tcp_user_timeout(
        given_socket: bool, loop: str) -> None:
    """TCP_USER_TIMEOUT is set once, on the listener; each connection accepted from it has
    it (Linux clones the listener's options into the child), with no call per connection."""
    limits = streamcore.Limits(write_stall_timeout_s=7.5)

    async def main() -> None:
        app = hello_app()
        sock = None
        if given_socket:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
        server = await streamcore.start(app, port=0, sock=sock, limits=limits)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b'{"hi":"there"}')
            (conn,) = server.connections
            accepted = conn.transport.get_extra_info("socket")
            value = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            assert value == 7500
            writer.close()
        finally:
            await server.close(0.5)

    run_in(loop, main)


def test_no_tcp_user_timeout_when_the_write_stall_limit_is_off() -> None:
    async def main() -> None:
        server = await streamcore.start(hello_app(), port=0,
                                        limits=streamcore.Limits(write_stall_timeout_s=0))
        try:
            (listener,) = server.sockets
            assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
        finally:
            await server.close(0.5)

    run_in("uvloop", main)
