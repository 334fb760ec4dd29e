"""What every connection of one server shares: built once by the server, handed to each
connection, so that connections import nothing of the server (the arrows point down).

It is also where a stream's life is counted (:mod:`streamcore.metrics`): started, active
and finished by outcome, at the two transitions, never per token."""

from __future__ import annotations

import asyncio
import logging
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
from .wheel import Wheel

#: One line per request and per stream (docs/operations.md): ``--log-format json`` makes
#: each a JSON object.
access = logging.getLogger("streamcore.access")


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
    #: The connections' read deadlines (HTTP keep-alive, head, body) and the WebSockets'
    #: ping checks (streamcore.aio.wheel): a loop timer each was ~650 bytes and a
    #: ``call_at`` and a ``cancel`` per connection.
    wheel: Wheel = field(init=False)
    #: The SSE ``retry:`` an EventSource is told (WHATWG HTML 9.2.6): a fifth of the
    #: linger window (at most 1 s, at least 100 ms), so that it is back in time; 0 (none
    #: sent: the browser's own 3-5 s) when nothing lingers by default.  Made once.
    retry_ms: int = field(init=False, default=0)
    #: A stream's series by (model, transport), and responses' by status: looked up
    #: once, not per stream (``Metrics.child`` builds a key and a tuple each call).
    _streams: dict[tuple[str, str], StreamCounters] = field(init=False, default_factory=dict)
    _responses: dict[int, Child] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        limits = self.limits
        self.wheel = Wheel(self.loop)
        if self.detached is None:
            self.detached = DetachBudget(limits.resume_budget_bytes // max(
                1, limits.stream_log_bytes + limits.stream_snapshot_bytes))
        grace = limits.resume_grace_s
        if grace > 0 and limits.disconnect_policy != "cancel":
            self.retry_ms = max(100, min(1000, int(grace * 200)))

    def responses(self, status: int) -> Child:
        """The counter of responses with ``status`` (a stream's head is a 200)."""
        child = self._responses.get(status)
        if child is None:
            child = self._responses[status] = self.metrics.child(
                "streamcore_http_responses_total", str(status))
        return child

    def stream_counters(self, model: str, transport: str) -> StreamCounters:
        counters = self._streams.get((model, transport))
        if counters is None:
            counters = self._streams[(model, transport)] = StreamCounters(
                self.metrics, model, transport)
        return counters

    def new_stream(self, items: object, *, sse_end: bytes | None = None,
                   resumable: bool = False, transport: str | None = None,
                   policy: str | None = None) -> Stream:
        """A stream with this server's limits; ``resumable``: findable in the store by id
        while it runs and after it ended, and following ``policy`` (default: the
        server's) when its last reader leaves (one that is not is cancelled then);
        ``transport``: counted in the metrics and logged under this label (None: a stream
        that will not run, e.g. for a HEAD)."""
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
        if transport is not None or resumable:
            meter = stream.meter = StreamMeter(self, stream, resumable, transport or "sse")
            stream.on_end = meter.ended
        return stream

    def time_first_token(self, reader: BaseReader, stream: Stream, received: float) -> None:
        """Measure the origin reader's time to first token, from ``received``
        (time.monotonic) to the first token's bytes written."""
        meter = stream.meter
        meter.received = received
        reader.ttft = meter
        reader.ttft_from = received
        reader.ttft_seq = getattr(stream.source, "first_token_seq", 1)


class StreamCounters:
    """The series of the streams of one (model, transport)."""

    __slots__ = ("active", "finished", "metrics", "model", "started", "transport", "ttft")

    def __init__(self, metrics: Metrics, model: str, transport: str) -> None:
        self.metrics = metrics
        self.model = model
        self.transport = transport
        self.started = metrics.child("streamcore_streams_started_total", model, transport)
        self.active = metrics.child("streamcore_streams_active", model, transport)
        self.ttft = metrics.child("streamcore_time_to_first_token_seconds", model, transport)
        #: By outcome, made on first use.
        self.finished: dict[str, Child] = {}

    def ended(self, outcome: str) -> None:
        self.active.inc(-1)
        child = self.finished.get(outcome)
        if child is None:
            child = self.finished[outcome] = self.metrics.child(
                "streamcore_streams_finished_total", self.model, self.transport, outcome)
        child.inc()


class StreamMeter:
    """What a server counts and logs of one stream: started and active now, then at its
    end the outcome, its time to first token, and one log line."""

    __slots__ = ("counters", "ctx", "model", "received", "resumable", "source", "transport",
                 "ttft_s")

    def __init__(self, ctx: Context, stream: Stream, resumable: bool, transport: str) -> None:
        self.ctx = ctx
        self.source = source = stream.source
        # The model the source serves: a label of bounded cardinality (a model the catalog
        # knows), or "" for an embedder's stream.
        model = getattr(source, "chat_model", "")
        if not isinstance(model, str):
            model = ""
        self.model = model
        self.transport = transport
        self.resumable = resumable
        self.received = time.monotonic()
        stream.entry.meta = (model, transport, time.time())
        self.ttft_s: float | None = None
        counters = self.counters = ctx.stream_counters(model, transport)
        counters.started.inc()
        counters.active.inc()

    def observe(self, value: float) -> None:
        """The origin reader wrote the first token ``value`` seconds after the request."""
        self.ttft_s = value
        self.counters.ttft.observe(value)

    def ended(self, stream: Stream) -> None:
        # This callback holds the source, which holds the stream: no cycle left behind.
        stream.on_end = None
        stream.meter = None
        left, stream.left = stream.left, None
        ctx = self.ctx
        if self.resumable:
            ctx.store.ended(stream.entry)
        metrics = ctx.metrics
        state = stream.state
        if state is COMPLETED:
            outcome = "completed"
        elif state is not CANCELLED:
            outcome = "failed"
        elif ctx.admission.draining:  # cancelled with ServerShutdown by Server.close
            outcome = "shutdown"
        elif stream.readers or left is None:
            outcome = "cancelled"  # asked for while someone still read
        else:
            reader, left_at = left
            outcome = getattr(reader, "why", "client_gone")
            metrics.child("streamcore_cancel_propagation_seconds").observe(
                time.monotonic() - left_at)
        self.counters.ended(outcome)
        logged = access.isEnabledFor(logging.INFO)
        source = self.source
        report: dict[str, Any] = {}
        # The source's report is made for the log line, and for an upstream's metrics
        # (its attempts): a synthetic stream with the access log off makes none.
        if logged or getattr(source, "counts_attempts", False):
            report_of = getattr(source, "report", None)
            if callable(report_of):
                report = report_of()
        attempts = report.get("attempts")
        if isinstance(attempts, int) and attempts > 0:
            self._upstream_ended(stream, attempts)
        if logged:
            fields = self._fields(stream, outcome, report)
            if self.ttft_s is None and stream.readers:
                # The readers write the last frames at the end of this loop iteration:
                # the line waits for them, so that it has the time to first token.
                ctx.loop.call_soon(self._log, fields)
            else:
                self._log(fields)
        self.source = None

    def _upstream_ended(self, stream: Stream, attempts: int) -> None:
        """An upstream's stream: its request's outcome, retries, an abort."""
        metrics = self.ctx.metrics
        state = stream.state
        if state is COMPLETED:
            outcome = "completed"
        elif state is CANCELLED:
            outcome = "aborted"
            metrics.child("streamcore_upstream_aborts_total").inc()
        else:
            outcome = _error_code(stream.entry.error or b"{}")
        metrics.child("streamcore_upstream_requests_total", outcome).inc()
        if attempts > 1:
            metrics.child("streamcore_upstream_retries_total").inc(attempts - 1)

    def _log(self, fields: dict[str, Any]) -> None:
        """One line per stream (``streamcore.access``): never a key, never a prompt."""
        if self.ttft_s is not None:
            fields["ttft_s"] = round(self.ttft_s, 6)
        access.info("%s", Fields(fields), extra={"fields": fields})

    def _fields(self, stream: Stream, outcome: str, report: dict[str, Any]) -> dict[str, Any]:
        log_ = stream.log
        usage = report.get("usage")
        fields: dict[str, Any] = {
            "event": "stream", "stream": stream.id, "completion_id": getattr(
                getattr(self.source, "template", None), "completion_id", None),
            "model": self.model,
            "transport": self.transport, "outcome": outcome,
            "error": _error_code(stream.entry.error, known=None) if stream.entry.error
            else None,
            "events": log_.next_seq - 1, "bytes": log_.appended_bytes,
            "ttft_s": None,
            "duration_s": round(time.monotonic() - self.received, 6),
        }
        if isinstance(usage, dict):
            fields["usage"] = {k: v for k, v in usage.items() if k != "source"}
            fields["usage_source"] = usage.get("source")
        if "upstream" in report:
            fields["upstream"] = report["upstream"]
            fields["attempts"] = report.get("attempts")
        return fields


class Fields:
    """A log line's fields, written ``key=value`` by a text formatter (the JSON formatter
    takes ``record.fields`` as they are)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, Any]) -> None:
        self.fields = fields

    def __str__(self) -> str:
        return " ".join(f"{k}={orjson.dumps(v).decode() if not isinstance(v, str) else v}"
                        for k, v in self.fields.items() if v is not None)


#: Error codes a failed upstream stream is counted under; any other (an upstream's own
#: code, relayed: unbounded) is counted as ``upstream_error``.
UPSTREAM_CODES = frozenset({
    "upstream_timeout", "upstream_protocol_error", "upstream_auth", "upstream_unavailable",
    "upstream_busy", "upstream_error", "upstream_500", "upstream_502", "upstream_503",
    "upstream_504", "stream_idle", "internal_error", "handler_failed"})


def _error_code(envelope: bytes, known: frozenset[str] | None = UPSTREAM_CODES) -> str:
    """The ``code`` of one of our OpenAI error envelopes (``errors.envelope``); a label of
    bounded cardinality when ``known`` is given (any other code is ``upstream_error``)."""
    code = orjson.loads(envelope).get("error", {}).get("code")
    if known is None:
        return code if isinstance(code, str) else "error"
    return code if code in known else "upstream_error"

