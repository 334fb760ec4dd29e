"""``GET /metrics`` (:mod:`streamcore.metrics`): known traffic, then exact counts from a
scrape parsed with Prometheus's own parsers (``prometheus_client``'s text and OpenMetrics
parsers), with one process and with ``--workers 2`` (one consistent view whichever worker
is scraped, and no counter going backwards when a worker is killed and restarted)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from conftest import ROOT, serve_cli
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from test_workers import banner_port
from upstreams import ScriptedUpstream

import streamcore
from streamcore.aio.admission import Admission
from streamcore.gateway import build_app
from streamcore.metrics import FAMILIES, Metrics, Slots, read_file
from streamcore.sources.synthetic import SyntheticModel
from streamcore.sources.upstream_server import Upstream

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """One scrape (a new connection), parsed by prometheus_client's text parser."""
    with httpx.Client(timeout=10) as client:
        response = client.get(f"{url}/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def chat_body(tokens: int) -> dict[str, Any]:
    return {"model": "synthetic", "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": "count me"}]}


def sse(url: str, tokens: int, headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(timeout=20) as client:
        return client.post(f"{url}/v1/chat/completions", json=chat_body(tokens),
                           headers=headers or {})


def sse_cut(url: str) -> None:
    """A client that reads the first token's event, then goes (client_gone)."""
    with httpx.Client(timeout=20) as client, client.stream(
            "POST", f"{url}/v1/chat/completions", json=chat_body(2000)) as response:
        datas = 0
        for line in response.iter_lines():
            datas += line.startswith("data: ")
            if datas == 2:  # the role chunk, then the first token
                break


async def ws_traffic(url: str) -> None:
    """One completed request, and one cancelled after its first chunk, on one socket."""
    async with websockets.connect(url.replace("http", "ws") + "/v1/ws") as ws:
        await ws.send(json.dumps({"type": "request", "id": "a", "body": chat_body(3)}))
        while json.loads(await ws.recv())["type"] != "done":
            pass
        await ws.send(json.dumps({"type": "request", "id": "b", "body": chat_body(2000)}))
        chunks = 0
        while chunks < 2:
            chunks += json.loads(await ws.recv())["type"] == "chunk"
        await ws.send(json.dumps({"type": "cancel", "id": "b"}))
        while json.loads(await ws.recv())["type"] != "cancelled":
            pass


def settled(url: str, finished: int) -> Samples:
    """Scrape until every stream has ended and ``finished`` streams are counted."""
    deadline = time.monotonic() + 15
    while True:
        samples = scrape(url)
        ended = sum(v for (name, _), v in samples.items()
                    if name == "streamcore_streams_finished_total")
        active = sum(v for (name, _), v in samples.items()
                     if name == "streamcore_streams_active")
        if ended >= finished and active == 0:
            return samples
        assert time.monotonic() < deadline, (ended, active)
        time.sleep(0.05)


def known_traffic(url: str, *, resumes: bool) -> None:
    for _ in range(3):
        body = sse(url, 3).text
        assert body.endswith("data: [DONE]\n\n")
    sse_cut(url)
    asyncio.run(ws_traffic(url))
    with httpx.Client(timeout=5) as client:
        assert client.get(f"{url}/no/such/path").status_code == 404
        assert client.get(f"{url}/also/not/here").status_code == 404
    if resumes:
        response = sse(url, 3)
        stream_id = response.headers["x-stream-id"]
        last = [line for line in response.text.split("\n") if line.startswith("id: ")][-1]
        with httpx.Client(timeout=5) as client:
            replay = client.get(f"{url}/v1/streams/{stream_id}")
            assert replay.text.endswith("data: [DONE]\n\n")
            ended = client.get(f"{url}/v1/streams/{stream_id}",
                               headers={"last-event-id": last[4:]})
            assert ended.status_code == 204
            assert client.get(f"{url}/v1/streams/nope").status_code == 404
            bad = client.get(f"{url}/v1/streams/{stream_id}",
                             headers={"last-event-id": "garbage"})
            assert bad.status_code == 400


def check_known_traffic(samples: Samples, *, resumes: bool, extra: int = 0) -> None:
    """``extra``: more completed SSE streams of 3 tokens."""
    completed_sse = (4 if resumes else 3) + extra
    started = "streamcore_streams_started_total"
    finished = "streamcore_streams_finished_total"
    assert value(samples, started, model="synthetic", transport="sse") == completed_sse + 1
    assert value(samples, started, model="synthetic", transport="websocket") == 2
    assert value(samples, finished, model="synthetic", transport="sse",
                 outcome="completed") == completed_sse
    assert value(samples, finished, model="synthetic", transport="sse",
                 outcome="client_gone") == 1
    assert value(samples, finished, model="synthetic", transport="websocket",
                 outcome="completed") == 1
    assert value(samples, finished, model="synthetic", transport="websocket",
                 outcome="cancelled") == 1
    assert sum(v for (name, _), v in samples.items() if name == finished) == completed_sse + 3
    # Every stream that wrote its first token has a time to first token: all of them.
    ttft = "streamcore_time_to_first_token_seconds_count"
    assert value(samples, ttft, model="synthetic", transport="sse") == completed_sse + 1
    assert value(samples, ttft, model="synthetic", transport="websocket") == 2
    assert value(samples, "streamcore_time_to_first_token_seconds_bucket",
                 model="synthetic", transport="sse", le="+Inf") == completed_sse + 1
    # The client gone and the WebSocket cancel: two cancels propagated.
    assert value(samples, "streamcore_cancel_propagation_seconds_count") == 2
    # Events written: at least role + 3 tokens + finish per completed stream (the cut
    # streams wrote some more); a latency sample per flush, at most one per event.
    events = value(samples, "streamcore_stream_events_written_total", transport="sse")
    assert events >= 5 * completed_sse + 2 + (5 if resumes else 0)
    flushes = value(samples, "streamcore_token_write_latency_seconds_count", transport="sse")
    assert 0 < flushes <= events
    assert value(samples, "streamcore_stream_bytes_written_total", transport="sse") > events
    assert value(samples, "streamcore_http_responses_total", status="404") == (
        3 if resumes else 2)
    assert value(samples, "streamcore_connections_open") == 1  # the scrape's own
    assert value(samples, "streamcore_buffered_bytes") == 0
    if resumes:
        for outcome in ("replayed", "ended", "not_found", "invalid"):
            assert value(samples, "streamcore_resumes_total", transport="sse",
                         outcome=outcome) == 1, outcome
        assert value(samples, "streamcore_resume_replayed_events_total", transport="sse") == 5


def test_one_process_counts_known_traffic_exactly() -> None:
    with serve_cli("--token-rate", "200") as server:
        known_traffic(server.url, resumes=True)
        samples = settled(server.url, 7)
        check_known_traffic(samples, resumes=True)
        # OpenMetrics on request, parsed by its own (stricter) parser.
        with httpx.Client(timeout=5) as client:
            om = client.get(f"{server.url}/metrics",
                            headers={"accept": "application/openmetrics-text; version=1.0.0"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert om.text.endswith("# EOF\n")
        families = {f.name: f for f in openmetrics_families(om.text)}
        finished = families["streamcore_streams_finished"]
        assert finished.type == "counter"
        assert {s.labels["outcome"]: s.value for s in finished.samples
                if s.labels["transport"] == "sse"} == {"completed": 4, "client_gone": 1}
        assert families["streamcore_time_to_first_token_seconds"].type == "histogram"


@contextlib.contextmanager
def two_workers(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcore", "serve", "--port", "0", "--workers", "2", *args],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc, f"http://127.0.0.1:{banner_port(proc)}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def workers_seen(url: str) -> dict[int, int]:
    seen: dict[int, int] = {}
    for _ in range(400):
        with httpx.Client(timeout=5) as client:
            body = client.get(f"{url}/healthz").json()
        seen[body["worker"]] = body["pid"]
        if len(seen) == 2:
            return seen
    pytest.fail(f"only workers {seen} answered")


def stream_counts(samples: Samples) -> Samples:
    """The series that only streams change (not the scrapes' own connections)."""
    return {key: v for key, v in samples.items()
            if key[0].startswith(("streamcore_streams_", "streamcore_time_to_first"))}


def test_two_workers_count_known_traffic_exactly_whichever_is_scraped() -> None:
    with two_workers("--token-rate", "200") as (_proc, url):
        pids = workers_seen(url)
        # Enough streams that both workers serve some (the kernel spreads connections).
        known_traffic(url, resumes=False)
        for _ in range(7):
            sse(url, 3)
        check_known_traffic(settled(url, 6 + 7), resumes=False, extra=7)
        first = stream_counts(scrape(url))
        # Every scrape, whichever worker answers it, shows the same streams.
        for _ in range(10):
            assert stream_counts(scrape(url)) == first
        # A worker killed and restarted: nothing goes backwards.
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "worker 0 did not come back"
            with contextlib.suppress(httpx.HTTPError):
                if workers_seen(url)[0] != pids[0]:
                    break
            time.sleep(0.05)
        after = stream_counts(scrape(url))
        assert after == first
        assert value(scrape(url), "streamcore_connections_open") == 1


# --------------------------------------------------------- what needs an in-process server


@pytest.fixture
def upstream() -> Iterator[Any]:
    started: list[ScriptedUpstream] = []

    def start(script: Any) -> ScriptedUpstream:
        started.append(ScriptedUpstream(script))
        return started[-1]

    yield start
    for up in started:
        up.close()


def test_slow_consumer_failed_upstream_and_backpressure(
        serve: Any, upstream: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A client that reads nothing is closed by the write-stall deadline (slow_consumer,
    time under backpressure counted); an upstream that cuts its stream fails it (failed,
    counted by its code); a stream route of an embedder has no model label."""

    async def cut(ex: Any) -> None:
        await ex.head()
        await ex.event({"id": "x", "object": "chat.completion.chunk", "created": 1,
                        "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant",
                                                   "content": "one"}, "finish_reason": None}]})
        await ex.reset()

    caplog.set_level(logging.INFO, logger="streamcore.access")
    up = upstream(cut)
    limits = streamcore.Limits(write_stall_timeout_s=0.5, upstream_head_hold_s=0.0)
    app = build_app([SyntheticModel(tokens_per_s=0.0)], limits,
                    upstreams=[Upstream.parse(up.spec("models=m"))])
    served = serve(app, limits)
    # The slow consumer: a small receive buffer, and nothing read.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    sock.connect(("127.0.0.1", served.port))
    body = json.dumps(chat_body(16384)).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: "
                 b"application/json\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
    # The failed one.
    failed = httpx.post(f"{served.url}/v1/chat/completions", timeout=10,
                        json={**chat_body(5), "model": "m"})
    assert '"code":"upstream_' in failed.text or failed.status_code == 502
    samples = settled(served.url, 2)
    sock.close()
    finished = "streamcore_streams_finished_total"
    assert value(samples, finished, model="synthetic", transport="sse",
                 outcome="slow_consumer") == 1, {k: v for k, v in samples.items()
                                                 if k[0] == finished}
    assert value(samples, finished, model="m", transport="sse", outcome="failed") == 1
    # Paused (if it was: the kernel's TCP_USER_TIMEOUT may cut it first) until cut.
    assert value(samples, "streamcore_backpressure_seconds_total") <= 5
    assert value(samples, "streamcore_buffered_bytes") == 0
    assert sum(v for (name, labels), v in samples.items()
               if name == "streamcore_upstream_requests_total") == 1
    assert value(samples, "streamcore_upstream_aborts_total") == 0
    # Their access log lines (in-process: the same code the JSON lines come from).
    completed = httpx.post(f"{served.url}/v1/chat/completions", json=chat_body(3), timeout=10)
    assert completed.text.endswith("data: [DONE]\n\n")
    settled(served.url, 3)
    lines = [r.fields for r in caplog.records  # type: ignore[attr-defined]
             if r.name == "streamcore.access" and getattr(r, "fields", {}).get("event")
             == "stream"]
    by_outcome = {line["outcome"]: line for line in lines}
    assert set(by_outcome) == {"slow_consumer", "failed", "completed"}, lines
    failed_line = by_outcome["failed"]
    assert failed_line["model"] == "m" and failed_line["upstream"] == up.url
    assert failed_line["attempts"] == 1 and failed_line["error"].startswith("upstream_")
    assert by_outcome["completed"]["ttft_s"] is not None  # the line waited for the write
    assert by_outcome["slow_consumer"]["error"] == "cancelled"
    assert "event=stream" in caplog.text and "outcome=completed" in caplog.text


def test_time_under_backpressure_is_connection_seconds() -> None:
    """Two connections paused for ~50 ms, then one of them for ~50 ms more: ~150 ms."""
    admission = Admission(streamcore.Limits())
    admission.paused(1000, 20000)
    admission.paused(1000, 70000)
    held = samples_of(admission.metrics)
    assert value(held, "streamcore_buffered_bytes") == 2000
    # The per-connection histogram: one observation per pause, of what the transport held.
    assert value(held, "streamcore_connection_buffered_bytes_count") == 2
    assert value(held, "streamcore_connection_buffered_bytes_sum") == 90000
    assert value(held, "streamcore_connection_buffered_bytes_bucket", le="65536.0") == 1
    assert value(held, "streamcore_connection_buffered_bytes_bucket", le="131072.0") == 2
    time.sleep(0.05)
    admission.paused(-1000)
    time.sleep(0.05)
    admission.paused(-1000)
    samples = samples_of(admission.metrics)
    assert 0.14 <= value(samples, "streamcore_backpressure_seconds_total") < 0.5
    assert value(samples, "streamcore_buffered_bytes") == 0


def samples_of(metrics: Metrics) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(metrics.render().decode())
            for s in f.samples}


def test_connections_refused_by_reason(serve: Any) -> None:
    limits = streamcore.Limits(max_connections_per_ip=1)
    served = serve(build_app(None, limits), limits)
    with socket.create_connection(("127.0.0.1", served.port)) as held:
        held.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        held.recv(4096)
        refused = httpx.get(f"{served.url}/healthz", timeout=5)
        assert refused.status_code == 503
    samples = settled(served.url, 0)
    assert value(samples, "streamcore_connections_refused_total",
                 reason="max_connections_per_ip") == 1
    assert value(samples, "streamcore_http_responses_total", status="503") == 1


def test_metrics_need_the_api_key_unless_public(serve: Any) -> None:
    served = serve(build_app(None, api_keys=["sk-metrics-test"]))
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    scrape(served.url, {"authorization": "Bearer sk-metrics-test"})
    public = serve(build_app(None, api_keys=["sk-metrics-test"], metrics_public=True))
    scrape(public.url)


# ------------------------------------------------------------------ the files themselves


def test_a_restarted_worker_keeps_counters_and_zeroes_gauges(tmp_path: Any) -> None:
    first = Metrics(str(tmp_path), 0)
    first.child("streamcore_connections_total").inc(5)
    first.child("streamcore_connections_open").inc(3)
    first.child("streamcore_token_write_latency_seconds", "sse").observe(0.003)
    other = Metrics(str(tmp_path), 1)
    other.child("streamcore_connections_total").inc(2)
    again = Metrics(str(tmp_path), 0)  # worker 0 restarted: the same file
    again.child("streamcore_connections_total").inc()
    view = again.collect()
    assert view["streamcore_connections_total\x1f"] == [8.0]
    assert view["streamcore_connections_open\x1f"] == [0.0]
    histogram = view["streamcore_token_write_latency_seconds\x1fsse"]
    assert histogram[-1] == 1 and histogram[-2] == pytest.approx(0.003)
    assert other.render() == again.render()  # one view from either worker


def test_a_full_file_drops_new_series_and_says_so(tmp_path: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    slots = Slots(str(tmp_path / "small.metrics"), capacity=64)
    assert slots.slot("a" * 8, 1) > 0
    assert slots.slot("b" * 40, 1) == -1
    assert "no room for more series" in caplog.text
    metrics = Metrics()
    metrics.slots = slots
    metrics.child("streamcore_connections_total").inc()  # counted nowhere, no error
    assert read_file(str(tmp_path / "small.metrics")) == {"a" * 8: [0.0]}
    assert read_file(str(tmp_path / "missing")) == {}


def test_every_family_renders_and_parses_when_empty() -> None:
    text = Metrics().render().decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert len(names) == len(FAMILIES)
    om = Metrics().render(openmetrics=True).decode()
    assert len(list(openmetrics_families(om))) == len(FAMILIES)


def test_the_event_loop_lag_shows_a_blocked_loop(serve: Any) -> None:
    """streamcore_event_loop_lag_seconds: a timer due every loop_lag_probe_s observes how
    late it ran; a handler that blocks the loop for half a second makes it that late."""
    limits = streamcore.Limits(loop_lag_probe_s=0.05)
    app = build_app(None, limits)

    @app.route("GET", "/block")
    async def block(request: streamcore.Request) -> dict[str, Any]:
        time.sleep(0.5)  # a CPU-bound handler: every other callback waits
        return {"blocked_s": 0.5}

    served = serve(app, limits)
    time.sleep(0.2)

    def late(samples: Samples) -> tuple[float, float]:
        count = value(samples, "streamcore_event_loop_lag_seconds_count")
        within = value(samples, "streamcore_event_loop_lag_seconds_bucket", le="0.25")
        return count, count - within  # probes in all, probes over 250 ms late

    count, over = late(scrape(served.url))
    assert count >= 2  # sampled while idle
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{served.url}/block").json() == {"blocked_s": 0.5}
    time.sleep(0.1)
    count_after, over_after = late(scrape(served.url))
    assert count_after > count and over_after >= over + 1
    assert value(scrape(served.url), "streamcore_event_loop_lag_seconds_sum") >= 0.4


def test_the_event_loop_lag_probe_can_be_off(serve: Any) -> None:
    limits = streamcore.Limits(loop_lag_probe_s=0)
    served = serve(build_app(None, limits), limits)
    time.sleep(0.1)
    assert value(scrape(served.url), "streamcore_event_loop_lag_seconds_count") == 0
