"""Every byte and time bound of streamcore, in one place.

Each field carries its unit in its name (``_bytes``, ``_s``, ``_count``), a default, and a
line on why that default.  The CLI exposes every field as ``--kebab-case-name`` and as the
environment variable ``STREAMCORE_UPPER_CASE_NAME`` (see :func:`Limits.fields_help`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB

#: ``Limits.disconnect_policy`` values (what a stream does when its last client leaves).
DISCONNECT_POLICIES = ("cancel", "linger", "detach")


@dataclass(frozen=True, slots=True)
class Limits:
    # --- HTTP request (per connection) ---------------------------------------------------
    #: Request line plus headers.  Browsers send 1-4 KiB; nginx's default buffers take 8 KiB
    #: per line; 16 KiB leaves room for large cookies and still bounds a hostile head.
    max_head_bytes: int = 16 * KiB
    #: Header fields per request: a cheap bound on parsing work (Apache's default is 100).
    max_header_count: int = 100
    #: Request body.  A long chat history with a 128k-token context is a few MiB of JSON.
    max_body_bytes: int = 4 * MiB
    #: From the first byte of a request head to its end (slowloris): 10 s is far beyond any
    #: real client on any network, and short enough that idle sockets cannot pile up.
    head_timeout_s: float = 10.0
    #: From the end of the head to the end of the body: a 4 MiB body at 1 Mbit/s takes ~32 s.
    body_timeout_s: float = 60.0
    #: Idle keep-alive connection between requests (uvicorn uses 5 s; nginx 75 s).
    keepalive_timeout_s: float = 15.0
    #: Pipelined bytes buffered while a response is in progress, before we stop reading.
    max_pipelined_bytes: int = 64 * KiB
    #: The request line (method, target, version): 414 above it.  RFC 9112 section 3 asks
    #: for at least 8000 octets; nginx and Apache answer 414 above ~8 KiB.
    max_request_line_bytes: int = 8 * KiB
    #: Chunks of one chunked request body (400 above it): each costs a parse however small,
    #: so 1M two-byte chunks cost seconds of CPU.  A 4 MiB body still goes in 512-byte
    #: chunks; clients write chunks of kilobytes.
    max_body_chunks: int = 8192

    # --- Output and backpressure (per connection) --------------------------------------
    #: Transport write buffer high-water mark: above it the transport pauses us and the
    #: stream's producer stops being pulled.  64 KiB is the asyncio default.
    write_high_water_bytes: int = 64 * KiB
    #: ... and the low-water mark at which writing (and producing) resumes.
    write_low_water_bytes: int = 16 * KiB
    #: A client that has read nothing for this long while we have bytes to send is closed:
    #: bytes in our buffer (a timer) or in the kernel's (TCP_USER_TIMEOUT: the kernel resets
    #: a peer that acknowledges nothing, or keeps its window shut, this long).
    write_stall_timeout_s: float = 30.0

    # --- Streams -------------------------------------------------------------------------
    #: Replay log per stream (the token pipe ring), counted as held in memory: each
    #: frame's bytes plus the 96 of the objects that hold it (proto/pipe.py).  ~750 OpenAI
    #: chunks of ~250 bytes: a long answer can be resumed from its start.  It is also most
    #: of what a stalled client costs (measured: ~1 MB RSS per stalled long stream at
    #: 1 MiB), so it is kept modest; raise it for longer replays.
    stream_log_bytes: int = 256 * KiB
    #: SSE comment heartbeat while a stream is silent (waiting for its first token, or a
    #: slow model): proxies commonly cut idle responses after 30-60 s.
    heartbeat_interval_s: float = 15.0
    #: How often the event loop's lag is sampled (streamcore_event_loop_lag_seconds): a
    #: timer that observes how late it ran.  Four a second cost nothing measurable and see
    #: any stall of a quarter second or more; a saturated loop is late on every one.  0:
    #: not sampled.
    loop_lag_probe_s: float = 0.25
    #: A stream handler that yields no item for this long ends with an error event (the
    #: heartbeat would keep it open forever): five minutes is longer than any model's
    #: time to first token, and still frees a hung handler.
    stream_idle_timeout_s: float = 300.0

    #: The linger window (``disconnect_policy = "linger"``): after its last client left, a
    #: stream goes on this long (paused once half its log is unread) so that a client
    #: reconnecting with Last-Event-ID loses nothing; then it is cancelled, its upstream
    #: request too.  5 s: a reloaded tab, an EventSource (told ``retry:`` of a fifth of
    #: this) or a phone switching networks is back within 1-4 s, and an abandoned answer
    #: (whose upstream tokens are paid for) stops soon.  0: cancelled at once.
    resume_grace_s: float = 5.0
    #: How long a finished (or cancelled) stream's log stays readable for resume.
    resume_retention_s: float = 60.0
    #: Bytes of logs kept for resume after their streams ended, over the server: the
    #: oldest go first above it.
    resume_budget_bytes: int = 64 * MiB
    #: What a stream does when its last client leaves (docs/resume.md): ``linger`` (go on
    #: for resume_grace_s, then cancel), ``cancel`` (stop at once: nothing generated for
    #: nobody), ``detach`` (run to its end for a later reader; at most resume_budget_bytes
    #: over the detached streams' logs and snapshots).  Per request: the
    #: X-Disconnect-Policy header, or "disconnect" in a /v1/ws request message.
    disconnect_policy: str = "linger"
    #: Text kept per stream for a snapshot (the answer so far, for a reader whose cursor
    #: the log no longer holds): 256 KiB of text is ~64k tokens, more than any answer;
    #: above it the snapshot is given up (such a reader gets fell_behind).  Counted with
    #: the log in resume_budget_bytes.
    stream_snapshot_bytes: int = 256 * KiB

    # --- Server-wide ---------------------------------------------------------------------
    #: Connections the kernel may queue before we accept them (listen(2) backlog; the
    #: kernel caps it at net.core.somaxconn).  A burst of new streams beyond it is dropped
    #: and retried by the clients' TCP after 1, 3, 7 s: seconds of time to first byte.
    listen_backlog: int = 4096
    #: Open connections; above it, new connections get 503 with Retry-After.
    max_connections: int = 10_000
    #: Open connections from one IP address; above it, 503 with Retry-After.  A browser
    #: opens at most 6 per origin, a NAT of users a few dozen: 256 leaves room and keeps one
    #: host from taking the whole of max_connections.  0: no per-address cap.
    max_connections_per_ip: int = 256
    #: Sum of buffered output bytes over all connections; above it new requests get 503.
    max_buffered_bytes_total: int = 512 * MiB
    #: Retry-After seconds sent with 503.
    retry_after_s: int = 1
    #: On shutdown, how long in-flight streams may run to completion before they are cut.
    drain_timeout_s: float = 30.0

    # --- WebSocket -----------------------------------------------------------------------
    #: Largest message (after reassembly and decompression): 1009 above it (RFC 6455 7.4.1).
    ws_max_message_bytes: int = 4 * MiB
    #: Largest single frame payload, checked from the frame header before reading it.
    ws_max_frame_bytes: int = 4 * MiB
    #: Frames of one message (1009 above it): each costs a parse however small (1M
    #: two-byte fragments: 13 s of CPU).  Browsers send every message as one frame; 4096
    #: still lets a 4 MiB message go in 1 KiB fragments.
    ws_max_fragments: int = 4096
    #: Ping the peer after this much silence from it.
    ws_ping_interval_s: float = 20.0
    #: A peer silent (no byte at all, pong or otherwise) this long after our ping is dead.
    ws_ping_timeout_s: float = 20.0
    #: How long we wait for the peer's Close after sending ours (RFC 6455 7.1.1).
    ws_close_timeout_s: float = 5.0
    #: Concurrent requests multiplexed on one gateway WebSocket.
    ws_max_concurrent_requests: int = 16

    # --- Upstream LLM servers (the gateway) ----------------------------------------------
    #: TCP (and TLS) connect to an upstream: a healthy server on a LAN answers in
    #: milliseconds; 10 s covers a cold cloud endpoint and still fails over promptly.
    upstream_connect_timeout_s: float = 10.0
    #: From the request sent to the upstream's response head (an overloaded server queues
    #: before it answers; vLLM and OpenAI send the head before the first token).
    upstream_head_timeout_s: float = 60.0
    #: From the response head to the first token: a reasoning model may think for minutes.
    upstream_first_token_timeout_s: float = 300.0
    #: Between two tokens once the first came: a live model emits several per second.
    upstream_idle_timeout_s: float = 60.0
    #: A whole upstream answer: bounds what one request can hold.
    upstream_total_timeout_s: float = 1800.0
    #: Open connections per upstream (busy and idle); a request over it waits for one, up
    #: to the connect timeout, then gets 503.  vLLM's default limit is far above it.
    upstream_pool_size: int = 256
    #: An upstream's response head (its headers), as for a request head.
    upstream_max_head_bytes: int = 64 * KiB
    #: One upstream SSE event, and a non-streamed upstream body: a chunk is ~300 bytes, a
    #: whole long answer a few hundred KiB.
    upstream_max_event_bytes: int = 4 * MiB
    #: How long a streamed response's head is held for its first token, so that an
    #: upstream's refusal (429, 5xx) or an unreachable upstream is still a real HTTP
    #: status and a fallback can be tried; after it the 200 is committed and SSE comments
    #: keep the stream alive until the first token.  0: commit at once.
    upstream_head_hold_s: float = 3.0

    # --- Worker processes (--workers N) --------------------------------------------------
    #: The longest delay before a worker that keeps dying soon after its start is started
    #: again (the delay doubles from 0.1 s with each such death): a crash loop costs a
    #: start every 10 s, not a busy CPU.
    worker_restart_backoff_max_s: float = 10.0

    # --- Shared replay store (--store redis://...) ---------------------------------------
    #: The owner's lease on a stream's generation (renewed every third of it): a node that
    #: dies is declared lost this long after its last renewal, and its readers elsewhere get
    #: an ``owner_lost`` error event within a third of it more.  3 s rides out a GC pause or
    #: a Redis failover, and leaves no reader waiting long.
    redis_lease_s: float = 3.0
    #: Frames go to Redis at most this often, all streams' in one pipelined round trip: the
    #: store's cost is per flush, not per token.  5 ms is far below what a resuming client
    #: can notice, and batches ~5 tokens of a 1000 tokens/s stream.
    redis_flush_interval_s: float = 0.005
    #: Entries kept per stream in Redis (XADD MAXLEN ~): ~4 times the ~1000 chunks of
    #: ``stream_log_bytes``; Redis memory per stream is bounded by it, and by the TTL
    #: (``resume_retention_s`` after the end).
    redis_stream_maxlen: int = 4096
    #: A Redis command unanswered this long means Redis is unreachable: new streams get
    #: 503 ``store_unavailable`` until it answers again.
    redis_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.disconnect_policy not in DISCONNECT_POLICIES:
            raise ValueError(f"disconnect_policy must be one of {', '.join(DISCONNECT_POLICIES)}"
                             f", got {self.disconnect_policy!r}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, str) and value < 0:
                raise ValueError(f"{field.name} must be >= 0, got {value}")
        if self.write_low_water_bytes > self.write_high_water_bytes:
            raise ValueError("write_low_water_bytes must not exceed write_high_water_bytes")

    def replace(self, **changes: float | str) -> Limits:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def field_docs() -> dict[str, str]:
    """The comment above each field, for ``--help`` and the README table."""
    import inspect

    docs: dict[str, str] = {}
    pending: list[str] = []
    for raw in inspect.getsource(Limits).splitlines():
        line = raw.strip()
        if line.startswith("#:"):
            pending.append(line[2:].strip())
        elif pending and ":" in line and not line.startswith("#"):
            docs[line.split(":", 1)[0].strip()] = " ".join(pending)
            pending = []
        elif not line.startswith("#:"):
            pending = []
    return docs
