"""The Redis Streams store (``--store redis://``), against a real redis-server.

Each test starts its own redis-server on a free loopback port (no persistence) and real
``streamcore serve`` processes sharing it: a client cut on one node resumes on the other;
the owner killed with SIGKILL mid-stream leaves its readers elsewhere an ``owner_lost``
error after the lease, never a hang; Redis gone refuses new streams with 503 and ends
other nodes' copies with an error event, and Redis back serves new streams again.  The
store's cost is checked where it is decided: Redis' own command counts (one script call
per stream per flush, one blocking reader per process).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import ROOT, assert_openai_error, free_port, serve_cli, wait_for
from test_resume import DONE, MESSAGES, check_whole, completion, content_of, error_of, read_stream

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
pytestmark = [
    pytest.mark.skipif(not os.path.exists(REDIS_SERVER), reason="redis-server not installed"),
]
redis = pytest.importorskip("redis", reason="the redis extra is not installed")


class RedisServer:
    """A redis-server of our own on a free loopback port, without persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.ping, timeout=10.0, interval=0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


def node(store: RedisServer, *extra: str) -> contextlib.AbstractContextManager[Any]:
    """A ``streamcore serve`` process on the shared store (a lease of 0.6 s keeps the
    owner-loss tests short)."""
    return serve_cli("--store", store.url, "--redis-lease-s", "0.6", *extra)


def body(max_tokens: int) -> dict[str, Any]:
    return {"model": "synthetic", "messages": MESSAGES, "stream": True,
            "max_tokens": max_tokens}


def test_a_client_cut_on_one_node_resumes_on_the_other(redis_server: RedisServer) -> None:
    with node(redis_server, "--token-rate", "200", "--resume-grace-s", "5") as a, \
            node(redis_server, "--token-rate", "200", "--resume-grace-s", "5") as b, \
            httpx.Client(timeout=20) as client:
        first = read_stream(client, "POST", f"{a.url}/v1/chat/completions", json=body(80),
                            stop_after=12)
        assert first.cut and first.stream_id
        last = first.events[-1].id
        rest = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                           last_event_id=last)
        assert rest.status == 200 and rest.stream_id == first.stream_id
        events = check_whole(first.events + rest.events, first.stream_id)
        assert content_of(events) == completion(client, b.url, body(80))
        # Resumed again on B once it ended (its copy, or Redis): positioned at the end,
        # 204 tells an EventSource to stop; from the start, the whole stream again.
        again = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}")
        check_whole(again.events, first.stream_id)
        end = client.get(f"{b.url}/v1/streams/{first.stream_id}",
                         headers={"Last-Event-ID": rest.events[-2].id})
        assert end.status_code == 204
        # The stream inspector of each node lists it: A's own, B's copy.
        for url in (a.url, b.url):
            listed = client.get(f"{url}/v1/streams").json()["data"]
            assert first.stream_id in [item["id"] for item in listed], listed
        # A stream neither node knows is a 404 on both.
        for url in (a.url, b.url):
            missing = client.get(f"{url}/v1/streams/0123456789abcdef")
            assert missing.status_code == 404
            assert assert_openai_error(missing.content)["code"] == "stream_not_found"


def test_a_cancel_on_another_node_stops_the_generation(redis_server: RedisServer) -> None:
    with node(redis_server, "--token-rate", "100") as a, node(redis_server) as b, \
            httpx.Client(timeout=20) as client:
        got: dict[str, Any] = {}

        def read_on_a() -> None:
            got["a"] = read_stream(client, "POST", f"{a.url}/v1/chat/completions",
                                   json=body(3000))

        reader = threading.Thread(target=read_on_a)
        reader.start()
        stream_id = wait_for(lambda: _first_stream(redis_server), timeout=5)
        answer = client.post(f"{b.url}/v1/streams/{stream_id}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        reader.join(10)
        assert not reader.is_alive()
        last = got["a"].events[-1]
        assert (error_of(last) or {}).get("code") == "cancelled"
        assert len(got["a"].events) < 1000  # stopped long before its 3000 tokens


def _first_stream(store: RedisServer) -> str | None:
    with store.client() as r:
        keys = r.keys("sc:m:*")
    return keys[0].decode()[5:] if keys else None


def test_the_owner_killed_mid_stream_readers_get_the_error_after_the_lease(
        redis_server: RedisServer) -> None:
    with node(redis_server, "--token-rate", "100", "--resume-grace-s", "5") as a, \
            node(redis_server) as b, httpx.Client(timeout=20) as client:
        first = read_stream(client, "POST", f"{a.url}/v1/chat/completions",
                            json=body(3000), stop_after=5)
        assert first.stream_id
        got: dict[str, Any] = {}

        def read_on_b() -> None:
            got["b"] = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                                   last_event_id=first.events[-1].id)

        reader = threading.Thread(target=read_on_b)
        reader.start()
        time.sleep(0.3)  # B is reading the live tail
        a.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        reader.join(10)
        assert not reader.is_alive(), "the reader on B hangs after its owner died"
        took = time.monotonic() - killed
        assert took < 0.6 + 2.0, f"the owner's loss took {took:.1f} s to tell"
        events = got["b"].events
        assert events, "B's reader got nothing"
        error = error_of(events[-1])
        assert error is not None and error["code"] == "owner_lost", events[-1].data
        assert all(e.data != DONE for e in events)  # an incomplete answer is never whole
        seqs = [int(e.id.rpartition("-")[2]) for e in events]
        assert seqs == list(range(6, 6 + len(seqs)))
        with redis_server.client() as r:
            meta = r.hgetall(f"sc:m:{first.stream_id}")
        assert meta[b"state"] == b"error" and int(meta[b"epoch"]) > 1
        # A later resume (here, or on a node that never saw it) gets the same end.
        later = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                            last_event_id=first.events[-1].id)
        assert (error_of(later.events[-1]) or {}).get("code") == "owner_lost"


def test_redis_gone_refuses_new_streams_and_ends_copies_then_serves_again(
        redis_server: RedisServer) -> None:
    with node(redis_server, "--token-rate", "100", "--redis-timeout-s", "0.5") as a, \
            node(redis_server, "--redis-timeout-s", "0.5") as b, \
            httpx.Client(timeout=20) as client:
        got: dict[str, Any] = {}

        def read_on_a() -> None:
            got["a"] = read_stream(client, "POST", f"{a.url}/v1/chat/completions",
                                   json=body(300))

        origin = threading.Thread(target=read_on_a)
        origin.start()
        stream_id = wait_for(lambda: _first_stream(redis_server), timeout=5)

        def read_on_b() -> None:
            got["b"] = read_stream(client, "GET", f"{b.url}/v1/streams/{stream_id}")

        copy = threading.Thread(target=read_on_b)
        copy.start()
        time.sleep(0.3)
        redis_server.kill()
        copy.join(10)
        assert not copy.is_alive(), "the copy's reader hangs with Redis gone"
        error = error_of(got["b"].events[-1])
        assert error is not None and error["code"] == "store_unavailable"
        # The owner's own client is served to the end: only resume elsewhere is lost.
        origin.join(15)
        assert not origin.is_alive()
        check_whole(got["a"].events, stream_id)
        refused = wait_for(lambda: _refused(client, a.url), timeout=5)
        assert refused.headers["retry-after"] == "1"
        assert assert_openai_error(refused.content)["code"] == "store_unavailable"
        assert refused.json()["error"]["type"] == "server_error"
        # Redis back (empty: no persistence): new streams are served and shared again.
        redis_server.start()
        fresh = wait_for(lambda: _served(client, a.url), timeout=10)
        assert fresh.stream_id
        again = wait_for(lambda: _served(client, f"{b.url}/v1/streams/{fresh.stream_id}",
                                         "GET"), timeout=10)
        check_whole(again.events, fresh.stream_id)
        # The stream from before the restart is gone from Redis, so from other nodes.
        assert client.get(f"{b.url}/v1/streams/{stream_id}").status_code == 404


def _refused(client: httpx.Client, url: str) -> httpx.Response | None:
    response = client.post(f"{url}/v1/chat/completions", json=body(5))
    return response if response.status_code == 503 else None


def _served(client: httpx.Client, url: str, method: str = "POST") -> Any:
    if method == "POST":
        got = read_stream(client, method, f"{url}/v1/chat/completions", json=body(20))
    else:
        got = read_stream(client, method, url)
    return got if got.status == 200 else None


def test_one_round_trip_per_flush_and_one_blocking_reader_per_process(
        redis_server: RedisServer) -> None:
    """An unpaced answer of 2000 tokens costs a few script calls, not one per token; 20
    clients reading copies on one node share one blocking XREAD."""
    with node(redis_server, "--token-rate", "0", "--resume-grace-s", "5") as a, \
            node(redis_server) as b, httpx.Client(timeout=20) as client, \
            redis_server.client() as r:
        r.config_resetstat()
        got = read_stream(client, "POST", f"{a.url}/v1/chat/completions", json=body(2000))
        events = check_whole(got.events, str(got.stream_id))
        assert len(events) > 2000
        calls = r.info("commandstats")
        assert calls["cmdstat_evalsha"]["calls"] <= len(events) // 20, calls["cmdstat_evalsha"]
        # Readers of live copies: a slow stream of C's read by 20 clients on B.
        with node(redis_server, "--token-rate", "20") as c:
            stream = httpx.Client(timeout=20)
            held = stream.stream("POST", f"{c.url}/v1/chat/completions", json=body(200))
            response = held.__enter__()
            stream_id = response.headers["x-stream-id"]
            clients = [httpx.Client(timeout=20) for _ in range(20)]
            try:
                opened = [cl.stream("GET", f"{b.url}/v1/streams/{stream_id}")
                          for cl in clients]
                responses = [o.__enter__() for o in opened]
                assert all(resp.status_code == 200 for resp in responses)

                def blocked() -> int:
                    return sum(1 for c_ in r.client_list() if c_.get("cmd") == "xread")

                # One per process at most (A, B and C): never one per client.
                assert wait_for(lambda: blocked() >= 1, timeout=3)
                assert blocked() <= 3
            finally:
                for o in opened:
                    o.__exit__(None, None, None)
                for cl in clients:
                    cl.close()
                held.__exit__(None, None, None)
                stream.close()


def test_store_flag_is_checked_and_the_missing_extra_is_a_clear_error(tmp_path: Any) -> None:
    bad = subprocess.run([sys.executable, "-m", "streamcore", "serve", "--store", "mysql://x"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--store must be memory or redis://" in bad.stderr
    # Without the redis client installed (hidden here), the error names the extra.
    hide = tmp_path / "sitecustomize.py"
    hide.write_text("import sys\nsys.modules['redis'] = None\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    missing = subprocess.run([sys.executable, "-m", "streamcore", "serve", "--store",
                              "redis://127.0.0.1:1/0"], cwd=ROOT, capture_output=True,
                             text=True, timeout=30, env=env)
    assert missing.returncode == 2
    assert "pip install 'streamcore-server[redis]'" in missing.stderr


def _resume_on_a_new_connection(url: str, stream_id: str, last_id: str) -> tuple[int, Any]:
    """A resume on a fresh connection (so the kernel's SO_REUSEPORT hash picks a worker),
    then /healthz on the same connection: which worker served it."""
    with httpx.Client(timeout=20) as client:
        got = read_stream(client, "GET", f"{url}/v1/streams/{stream_id}",
                          last_event_id=last_id)
        return client.get(f"{url}/healthz").json()["worker"], got


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_workers_resume_on_whichever_worker_the_reconnect_lands(
        redis_server: RedisServer, store: str) -> None:
    """With the Redis store, every worker resumes a stream started on any; with the memory
    store, only the stream's own worker does and the others say 404 (no routing)."""
    flags = ["--store", redis_server.url] if store == "redis" else []
    with serve_cli("--workers", "2", *flags, "--token-rate", "400",
                   "--resume-grace-s", "5") as server, httpx.Client(timeout=20) as client:
        owner = client.get(f"{server.url}/healthz").json()["worker"]
        first = read_stream(client, "POST", f"{server.url}/v1/chat/completions",
                            json=body(400), stop_after=10)
        assert first.stream_id
        served: dict[int, list[Any]] = {0: [], 1: []}
        for _ in range(16):
            worker, got = _resume_on_a_new_connection(server.url, first.stream_id,
                                                      first.events[-1].id)
            served[worker].append(got)
        assert served[0] and served[1], "16 connections all hashed to one worker"
        for worker, answers in served.items():
            for got in answers:
                if store == "redis" or worker == owner:
                    check_whole(first.events + got.events, first.stream_id)
                else:
                    assert got.status == 404, (worker, owner, got.status)
                    assert assert_openai_error(got.body)["code"] == "stream_not_found"


def test_readers_on_another_node_keep_the_generation_going_past_the_grace(
        redis_server: RedisServer) -> None:
    """The owner counts the readers of its stream elsewhere: a client that moved to B gets
    the whole answer, though A's own client left and A's grace (0.5 s) is far shorter
    than the answer (~2.5 s)."""
    with node(redis_server, "--token-rate", "120", "--resume-grace-s", "0.5") as a, \
            node(redis_server) as b, httpx.Client(timeout=20) as client:
        first = read_stream(client, "POST", f"{a.url}/v1/chat/completions", json=body(300),
                            stop_after=5)
        assert first.stream_id
        rest = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                           last_event_id=first.events[-1].id)
        events = check_whole(first.events + rest.events, first.stream_id)
        assert len(events) > 300


def test_a_copy_nobody_reads_is_dropped_and_read_back_when_wanted(
        redis_server: RedisServer) -> None:
    """A node keeps a live copy of another's stream only while it has readers: one lease
    after its last reader left, the copy is gone from the node's inspector; a resume then
    reads the stream back from Redis."""
    with node(redis_server, "--token-rate", "50", "--resume-grace-s", "5") as a, \
            node(redis_server) as b, httpx.Client(timeout=20) as client:
        first = read_stream(client, "POST", f"{a.url}/v1/chat/completions",
                            json=body(2000), stop_after=3)
        assert first.stream_id
        on_b = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                           stop_after=5)
        assert on_b.cut

        def listed() -> list[str]:
            return [item["id"] for item in client.get(f"{b.url}/v1/streams").json()["data"]]

        assert first.stream_id in listed()
        wait_for(lambda: first.stream_id not in listed(), timeout=5)
        again = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}",
                            last_event_id=on_b.events[-1].id, stop_after=3)
        assert [int(e.id.rpartition("-")[2]) for e in again.events] == [6, 7, 8]
        client.post(f"{a.url}/v1/streams/{first.stream_id}/cancel")


def test_a_relayed_stream_keeps_its_event_names_on_another_node(
        redis_server: RedisServer) -> None:
    """A relayed stream's frames are SSE field lines (Entry.sse_lines): the flag travels
    with the stream's metadata, so a node that reads it from Redis frames the same events,
    names and multi-line data as the node that relayed it."""
    from upstreams import Exchange, ScriptedUpstream

    async def script(ex: Exchange) -> None:
        await ex.head()
        await ex.body(b'event: response.created\ndata: {"type":"response.created"}\n\n')
        await ex.body(b"event: note\ndata: one\ndata: two\n\n")
        await ex.body(b"data: plain\n\n")
        await ex.body(b'event: response.completed\ndata: {"type":"response.completed"}\n\n')
        await ex.end()

    up = ScriptedUpstream(script)
    try:
        with node(redis_server, "--upstream", up.spec("models=up-model")) as a, \
                node(redis_server) as b, httpx.Client(timeout=20) as client:
            first = read_stream(client, "POST", f"{a.url}/v1/responses",
                                json={"model": "up-model", "input": "hi", "stream": True})
            assert first.stream_id
            live = [(e.event, e.data, e.id) for e in first.events]
            assert [(name, data) for name, data, _ in live] == [
                ("response.created", '{"type":"response.created"}'), ("note", "one\ntwo"),
                ("message", "plain"), ("response.completed", '{"type":"response.completed"}')]
            with redis_server.client() as r:  # A's flushes (batched) have written it all
                wait_for(lambda: r.hget(f"sc:m:{first.stream_id}", "state") == b"completed",
                         timeout=10)
                assert r.hget(f"sc:m:{first.stream_id}", "lines") == b"1"
            again = read_stream(client, "GET", f"{b.url}/v1/streams/{first.stream_id}")
            assert [(e.event, e.data, e.id) for e in again.events] == live
    finally:
        up.close()
