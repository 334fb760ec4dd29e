"""streamcore.aio.upstream.UpstreamPool against a real local upstream: at most
upstream_pool_size connections, a request waiting for a slot gets the one freed first
(a released connection, or one the upstream closed), 503 at the connect deadline when none
is freed, 504 when connecting takes too long, and a closed pool reuses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from loops import run_in

from streamcore.aio.upstream import Unavailable, UpstreamConnection, UpstreamPool
from streamcore.limits import Limits
from streamcore.proto.upstream import Body, End, Event, UpstreamError, parse_target

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Upstream:
    """A local upstream answering each request with a 2-byte 200, keeping the connection;
    its server-side writers, so that a test can close one."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(RESPONSE)

    async def start(self) -> int:
        self.server = await asyncio.start_server(
            lambda r, w: self._guarded(r, w), "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _guarded(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        try:
            await self.handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.failed: UpstreamError | None = None

    def upstream_events(self, events: list[Event]) -> None:
        self.events += events

    def upstream_read(self, data: bytes) -> bool:
        return False  # every read goes to the session

    def upstream_body(self, data: bytes) -> None:
        self.events.append(Body(data))

    def upstream_failed(self, exc: UpstreamError) -> None:
        self.failed = exc


def run(main: Callable[[Upstream, UpstreamPool], Coroutine[Any, Any, None]],
        **limits: float) -> None:
    async def scenario() -> None:
        upstream = Upstream()
        port = await upstream.start()
        pool = UpstreamPool(asyncio.get_running_loop(),
                            parse_target(f"http://127.0.0.1:{port}"), Limits(**limits))
        try:
            await asyncio.wait_for(main(upstream, pool), 10)
        finally:
            pool.close()
            assert upstream.server is not None
            upstream.server.close()
    run_in("uvloop", scenario)


async def exchange(conn: UpstreamConnection) -> Collect:
    """One complete request and response on ``conn``."""
    consumer = Collect()
    conn.consumer = consumer
    conn.send(conn.session.request("GET", "/v1/models", []))
    while not any(isinstance(e, End) for e in consumer.events):
        await asyncio.sleep(0.001)
    return consumer


def test_a_waiting_request_gets_the_connection_released_first() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        first = await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done() and pool.open_count == 1
        await exchange(first)
        first.release()  # complete: back to the pool, and to the waiter
        assert await waiting is first and first.uses == 2
        assert pool.open_count == 1 and len(upstream.writers) == 1
        await exchange(first)  # and it still works

    run(main, upstream_pool_size=1)


def test_a_waiting_request_gets_the_slot_of_a_connection_the_upstream_closed() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        first = await pool.acquire()
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        upstream.writers[0].close()
        second = await waiting
        assert second is not first and not first.open and second.open
        assert pool.open_count == 1
        await exchange(second)

    run(main, upstream_pool_size=1)


def test_a_full_pool_is_503_at_the_connect_deadline() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        await pool.acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable) as refused:
            await pool.acquire()
        assert 0.15 <= loop.time() - started < 2
        assert refused.value.status == 503 and refused.value.code == "upstream_busy"
        assert "upstream_pool_size 1" in refused.value.message
        assert not pool._waiters and pool.open_count == 1

    run(main, upstream_pool_size=1, upstream_connect_timeout_s=0.2)


def test_a_connect_over_the_deadline_is_504_and_gives_its_slot_back() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        with pytest.raises(Unavailable) as refused:
            await pool.acquire()
        assert refused.value.status == 504 and refused.value.code == "upstream_timeout"
        assert pool.open_count == 0

    run(main, upstream_connect_timeout_s=0)


def test_a_closed_pool_resets_its_connections_and_keeps_none() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        conn = await pool.acquire()
        await exchange(conn)
        consumer = Collect()
        conn.consumer = consumer
        pool.close()
        await asyncio.sleep(0.05)
        assert not conn.open and pool.open_count == 0
        assert consumer.failed is None  # an abort of ours is no failure to report
        conn.release()
        assert not pool._idle

    run(main)


def test_a_waiter_whose_client_left_does_not_take_the_freed_connection() -> None:
    """A waiting request cancelled (its client left) just as a connection frees up: its
    wait is already over, so the connection goes to the next waiter."""

    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        first = await pool.acquire()
        await exchange(first)
        leaving = asyncio.ensure_future(pool.acquire())
        staying = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        assert len(pool._waiters) == 2
        leaving.cancel()
        await asyncio.sleep(0)  # its wait ends: the waiter is cancelled, not yet removed
        assert pool._waiters[0].cancelled()
        first.release()
        assert await staying is first
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert not pool._waiters and pool.open_count == 1

    run(main, upstream_pool_size=1)


def test_idle_gives_a_kept_alive_connection_at_once_but_not_before_a_waiter() -> None:
    async def main(upstream: Upstream, pool: UpstreamPool) -> None:
        assert pool.idle() is None  # nothing opened yet: acquire() connects
        first = await pool.acquire()
        await exchange(first)
        first.release()
        assert pool.idle() is first and first.uses == 2  # no await, no new connection
        # A request waiting for a connection comes before one that asks idle() later.
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.05)
        await exchange(first)
        first.release()  # back to the pool, and the waiter is woken
        assert pool.idle() is None
        assert await waiting is first
        await exchange(first)
        first.release()
        # An idle connection the upstream closed is skipped (and forgotten).
        upstream.writers[0].close()
        while first.open:
            await asyncio.sleep(0.005)
        assert pool.idle() is None and pool.open_count == 0

    run(main, upstream_pool_size=1)
