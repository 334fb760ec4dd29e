"""What every connection of one server shares: built once by the server, handed to each
connection, so that connections import nothing of the server (the arrows point down).

It is also where a stream's life is counted (:mod:`streamcore.metrics`): started, active
and finished by outcome, at the two transitions, never per token."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..limits import Limits
from ..metrics import Child, Metrics
from ..proto.pipe import CANCELLED, COMPLETED
from ..store.base import ReplayStore
from .admission import Admission
from .handler import Router
from .sse import Heartbeat
from .stream import BaseReader, DetachBudget, Flusher, Stream, source_of


@dataclass(slots=True, eq=False)
class Context:
    loop: asyncio.AbstractEventLoop
    limits: Limits
    router: Router
    admission: Admission
    #: Flushes every stream woken during a loop iteration, once, at its end.
    flusher: Flusher
    #: Streams by id for resume: live ones, and ended ones kept for a while.
    store: ReplayStore
    heartbeat: Heartbeat
    #: Chaos mode's per-request hook (``streamcore.aio.chaos.ChaosHook``), None when off.
    chaos: Any = None
    metrics: Metrics = field(default_factory=Metrics)
    #: Room for streams running detached (Limits.disconnect_policy "detach").
    detached: DetachBudget | None = None

    def __post_init__(self) -> None:
        limits = self.limits
        if self.detached is None:
            self.detached = DetachBudget(limits.resume_budget_bytes // max(
                1, limits.stream_log_bytes + limits.stream_snapshot_bytes))

    @property
    def retry_ms(self) -> int:
        """The SSE ``retry:`` an EventSource is told (WHATWG HTML 9.2.6): a fifth of the
        linger window (at most 1 s, at least 100 ms), so that it is back in time; 0 (none
        sent: the browser's own 3-5 s) when nothing lingers by default."""
        limits = self.limits
        grace = limits.resume_grace_s
        if grace <= 0 or limits.disconnect_policy == "cancel":
            return 0
        return max(100, min(1000, int(grace * 200)))

    def new_stream(self, items: object, *, sse_end: bytes | None = None,
                   resumable: bool = False, transport: str | None = None,
                   policy: str | None = None) -> Stream:
        """A stream with this server's limits; ``resumable``: findable in the store by id
        while it runs and after it ended, and following ``policy`` (default: the
        server's) when its last reader leaves (one that is not is cancelled then);
        ``transport``: counted in the metrics under this label (None: a stream that will
        not run, e.g. for a HEAD)."""
        limits = self.limits
        stream = Stream(source_of(items, limits.stream_idle_timeout_s),
                        log_bytes=limits.stream_log_bytes,
                        high_water=limits.write_high_water_bytes,
                        low_water=limits.write_low_water_bytes,
                        grace_s=limits.resume_grace_s if resumable else 0.0,
                        sse_end=sse_end,
                        policy=(policy or limits.disconnect_policy) if resumable else "cancel",
                        detach_budget=self.detached)
        if resumable:
            self.store.add(stream.entry)
        if transport is not None:
            model = model_of(items)
            metrics = self.metrics
            metrics.child("streamcore_streams_started_total", model, transport).inc()
            active = metrics.child("streamcore_streams_active", model, transport)
            active.inc()
            source = stream.source
            stream.on_end = lambda s: self._ended(s, resumable, model, transport, active,
                                                  source)
        elif resumable:
            stream.on_end = lambda s: self.store.ended(s.entry)
        return stream

    def time_first_token(self, reader: BaseReader, stream: Stream, received: float) -> None:
        """Measure the origin reader's time to first token, from ``received``
        (time.monotonic) to the first token's bytes written."""
        reader.ttft = self.metrics.child("streamcore_time_to_first_token_seconds",
                                         model_of(stream.source), reader.transport)
        reader.ttft_from = received
        reader.ttft_seq = getattr(stream.source, "first_token_seq", 1)

    def _ended(self, stream: Stream, resumable: bool, model: str, transport: str,
               active: Child, source: object) -> None:
        # This callback holds the source, which holds the stream: no cycle left behind.
        stream.on_end = None
        left, stream.left = stream.left, None
        if resumable:
            self.store.ended(stream.entry)
        active.inc(-1)
        state = stream.state
        if state is COMPLETED:
            outcome = "completed"
        elif state is not CANCELLED:
            outcome = "failed"
        elif self.admission.draining:  # cancelled with ServerShutdown by Server.close
            outcome = "shutdown"
        elif stream.readers or left is None:
            outcome = "cancelled"  # asked for while someone still read
        else:
            reader, left_at = left
            outcome = getattr(reader, "why", "client_gone")
            self.metrics.child("streamcore_cancel_propagation_seconds").observe(
                time.monotonic() - left_at)
        self.metrics.child("streamcore_streams_finished_total", model, transport,
                           outcome).inc()
        attempts = getattr(source, "upstream_attempts", None)
        if isinstance(attempts, int) and attempts > 0:
            self._upstream_ended(stream, attempts)

    def _upstream_ended(self, stream: Stream, attempts: int) -> None:
        """An upstream's stream: its request's outcome, retries, an abort."""
        metrics = self.metrics
        state = stream.state
        if state is COMPLETED:
            outcome = "completed"
        elif state is CANCELLED:
            outcome = "aborted"
            metrics.child("streamcore_upstream_aborts_total").inc()
        else:
            outcome = _error_code(stream.entry.error)
        metrics.child("streamcore_upstream_requests_total", outcome).inc()
        if attempts > 1:
            metrics.child("streamcore_upstream_retries_total").inc(attempts - 1)


#: Error codes a failed upstream stream is counted under; any other (an upstream's own
#: code, relayed: unbounded) is counted as ``upstream_error``.
UPSTREAM_CODES = frozenset({
    "upstream_timeout", "upstream_protocol_error", "upstream_auth", "upstream_unavailable",
    "upstream_busy", "upstream_error", "upstream_500", "upstream_502", "upstream_503",
    "upstream_504", "stream_idle", "internal_error", "handler_failed"})


def _error_code(envelope: bytes | None) -> str:
    """The ``code`` of an OpenAI error envelope, as a label of bounded cardinality."""
    try:
        code = orjson.loads(envelope or b"{}")["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        code = None
    return code if code in UPSTREAM_CODES else "upstream_error"


def model_of(source: object) -> str:
    """The model a stream's source serves (a label of bounded cardinality: a model the
    catalog knows), or "" for an embedder's stream."""
    model = getattr(source, "chat_model", "")
    return model if isinstance(model, str) else ""
