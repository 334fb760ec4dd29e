"""Prometheus metrics, seen from the client's edge, correct across worker processes.

Written here rather than with ``prometheus_client``, for three reasons:

* **No dependency in the core.**  The server's runtime dependencies are uvloop, h11,
  wsproto and orjson; a metrics library would be a fifth for a few hundred lines.
* **Counting must cost an integer add.**  A ``prometheus_client`` counter takes a lock
  per ``inc()`` (and in multiprocess mode writes a file through ``struct``).  Here a
  series is a slot of a ``memoryview`` of doubles: counting is ``view[i] += n``, done at
  lifecycle transitions and once per flush, never per token.
* **Several processes.**  With ``--workers N`` a scrape lands on any worker; each must
  answer for all, or counters seem to reset from one scrape to the next.
  ``prometheus_client``'s multiprocess mode does this with a file per process, but drops
  custom collectors and process metrics, and needs an environment variable set before
  import.  Here each worker's slots *are* a file, ``worker-<i>.metrics`` in the run
  directory the supervisor made (``STREAMCORE_RUN_DIR``), mapped into memory; a scrape on
  any worker reads every worker's file and sums them.  A worker that restarts maps its
  predecessor's file again and goes on counting from its values (gauges are zeroed: what
  they counted died with the process), so no counter ever goes backwards.

The file: an 8-byte header (the offset where the records end), then records of
``[u32 key length][u32 slot count][key, padded to 8][slot count doubles]``, appended when
a series is first used.  A key is ``family\\x1flabel values joined by \\x1e``.  Records are
written before the header moves past them, so a reader in another process never sees a
half-written one.  Label values are of bounded cardinality by construction (a model the
catalog knows, a transport, an outcome, a reason), never a stream id.

Histograms, not summaries: they add across workers and nodes.  Their buckets are
stored per bucket and made cumulative when exposed.
"""

from __future__ import annotations

import bisect
import logging
import math
import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("streamcore")

#: Bytes of slots per process: a series costs its key and 8 bytes a slot (a histogram
#: ~200 bytes), so this holds thousands; untouched pages cost nothing.
CAPACITY_BYTES = 1 << 20
_HEADER = 8
_SEP = "\x1f"
_LSEP = "\x1e"

TEXT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = b"application/openmetrics-text; version=1.0.0; charset=utf-8"

#: Seconds: vLLM's time-to-first-token buckets, down to a millisecond.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
#: Bytes: what one connection's transport held when its output paused (the write buffer,
#: which a large write can take well past write_high_water_bytes).
BYTES_BUCKETS = (16384.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 4194304.0,
                 16777216.0)
#: Seconds: from a token produced to its bytes handed to the kernel, and similar waits.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter, gauge, histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def width(self) -> int:
        """Slots per series: a histogram's buckets (+Inf included), sum and count."""
        return len(self.buckets) + 3 if self.kind == "histogram" else 1


FAMILIES = (
    Family("streamcore_connections_total", "counter", "TCP connections accepted"),
    Family("streamcore_connections_refused_total", "counter",
           "TCP connections answered 503 and closed", ("reason",)),
    Family("streamcore_connections_open", "gauge", "TCP connections open"),
    Family("streamcore_http_responses_total", "counter",
           "HTTP responses begun (a stream's head included), by status", ("status",)),
    Family("streamcore_requests_refused_total", "counter",
           "requests refused with 503 (the global budget of buffered output)", ("reason",)),
    Family("streamcore_streams_started_total", "counter", "streams started",
           ("model", "transport")),
    Family("streamcore_streams_active", "gauge", "streams generating now",
           ("model", "transport")),
    Family("streamcore_streams_finished_total", "counter",
           "streams ended, by outcome: completed, failed, cancelled, client_gone, "
           "slow_consumer, fell_behind, shutdown", ("model", "transport", "outcome")),
    Family("streamcore_stream_events_written_total", "counter",
           "stream events (a token each, plus the role, finish, usage and error chunks) "
           "handed to the kernel", ("transport",)),
    Family("streamcore_stream_bytes_written_total", "counter",
           "stream bytes handed to the kernel (framing included)", ("transport",)),
    Family("streamcore_buffered_bytes", "gauge",
           "output held for clients that do not read (a high-water mark per paused "
           "connection: what max_buffered_bytes_total bounds)"),
    Family("streamcore_connection_buffered_bytes", "histogram",
           "per connection, each time its output paused (client not reading): the bytes "
           "its transport held", (), BYTES_BUCKETS),
    Family("streamcore_backpressure_seconds_total", "counter",
           "time connections spent with their output paused (client not reading)"),
    Family("streamcore_resumes_total", "counter",
           "resume requests, by outcome: replayed, snapshot (the log no longer held the "
           "cursor), ended (204), not_found, invalid, history_lost (exact replay refused)",
           ("transport", "outcome")),
    Family("streamcore_resume_replayed_events_total", "counter",
           "events a resume found already in the log (sent again)", ("transport",)),
    Family("streamcore_upstream_requests_total", "counter",
           "streamed requests to upstream LLM servers, by outcome (ok, or the error code "
           "that ended them)", ("outcome",)),
    Family("streamcore_upstream_retries_total", "counter",
           "upstream attempts after the first (fallbacks and a stale keep-alive retried)"),
    Family("streamcore_upstream_aborts_total", "counter",
           "upstream requests aborted because their stream was cancelled"),
    Family("streamcore_time_to_first_token_seconds", "histogram",
           "from the request received to the first token's bytes handed to the kernel",
           ("model", "transport"), TTFT_BUCKETS),
    Family("streamcore_token_write_latency_seconds", "histogram",
           "from a token produced to its bytes handed to the kernel (the oldest token "
           "of each flush; 0 for a token written in the call that produced it)",
           ("transport",), LATENCY_BUCKETS),
    Family("streamcore_event_loop_lag_seconds", "histogram",
           "how late the event loop ran a timer due every loop_lag_probe_s (up to a "
           "millisecond on an idle loop: libuv's clock); more: callbacks wait, the loop "
           "is saturated", (), LATENCY_BUCKETS),
    Family("streamcore_cancel_propagation_seconds", "histogram",
           "from the last client gone (or a cancel asked) to the generation stopped "
           "(an upstream connection closed)", (), LATENCY_BUCKETS),
)
BY_NAME = {family.name: family for family in FAMILIES}


class Slots:
    """One process's series: a memory map of doubles (a file, or anonymous)."""

    def __init__(self, path: str | None = None, capacity: int = CAPACITY_BYTES) -> None:
        self.path = path
        if path is None:
            self._buffer: mmap.mmap | bytearray = bytearray(capacity)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < capacity:
                    os.ftruncate(fd, capacity)
                self._buffer = mmap.mmap(fd, capacity)
            finally:
                os.close(fd)
        self.raw = memoryview(self._buffer)
        self.view = self.raw.cast("d")
        self.index: dict[str, int] = {}
        self.full = False
        end = struct.unpack_from("<Q", self._buffer, 0)[0] or _HEADER
        for key, slot, width in _records(self._buffer, end):
            self.index[key] = slot
            family = BY_NAME.get(key.split(_SEP, 1)[0])
            if family is not None and family.kind == "gauge":
                for i in range(slot, slot + width):
                    self.view[i] = 0.0  # the process that set it is gone
        self.end = end
        struct.pack_into("<Q", self._buffer, 0, end)
        #: A slot for series that did not fit: counted, never shown.
        self.spare = [0.0] * 64

    def slot(self, key: str, width: int) -> int:
        """The first slot of ``key``'s series, made on first use; -1 when full."""
        found = self.index.get(key)
        if found is not None:
            return found
        data = key.encode()
        start = self.end + 8 + (len(data) + 7) // 8 * 8
        end = start + 8 * width
        if end > len(self._buffer):
            if not self.full:
                self.full = True
                log.warning("metrics: no room for more series (%d bytes); %s is not counted",
                            len(self._buffer), key.split(_SEP, 1)[0])
            return -1
        struct.pack_into("<II", self._buffer, self.end, len(data), width)
        self._buffer[self.end + 8:self.end + 8 + len(data)] = data
        self.end = end
        struct.pack_into("<Q", self._buffer, 0, end)  # after the record: readers see it whole
        self.index[key] = start // 8
        return start // 8


def _records(buffer: bytes | bytearray | mmap.mmap,
             end: int) -> Iterable[tuple[str, int, int]]:
    """``(key, first slot, slot count)`` of each record up to ``end``."""
    at = _HEADER
    while at + 8 <= end:
        length, width = struct.unpack_from("<II", buffer, at)
        key = bytes(buffer[at + 8:at + 8 + length]).decode("utf-8", "replace")
        start = at + 8 + (length + 7) // 8 * 8
        if start + 8 * width > end:
            break
        yield key, start // 8, width
        at = start + 8 * width


def read_file(path: str) -> dict[str, list[float]]:
    """Another process's series, copied: ``{key: values}``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    if len(data) < _HEADER:
        return {}
    end = min(struct.unpack_from("<Q", data, 0)[0], len(data))
    doubles = memoryview(data).cast("d") if len(data) % 8 == 0 else None
    if doubles is None:
        return {}
    return {key: list(doubles[slot:slot + width]) for key, slot, width in _records(data, end)}


class Child:
    """One series: ``inc``/``set``/``observe`` on its slots."""

    __slots__ = ("buckets", "slot", "sum_slot", "view")

    def __init__(self, view: memoryview[float] | list[float], slot: int,
                 buckets: Sequence[float] = ()) -> None:
        self.view = view
        self.slot = slot
        self.buckets = buckets
        #: A histogram's sum (its count follows): after a slot per bucket and +Inf.
        self.sum_slot = slot + len(buckets) + 1

    def inc(self, amount: float = 1) -> None:
        self.view[self.slot] += amount

    def set(self, value: float) -> None:
        self.view[self.slot] = value

    def observe(self, value: float) -> None:
        """One histogram observation (per stream or per flush, never per token)."""
        view = self.view
        view[self.slot + bisect.bisect_left(self.buckets, value)] += 1
        at = self.sum_slot
        view[at] += value
        view[at + 1] += 1


class Metrics:
    """A process's metrics: its :class:`Slots`, and the exposition of every process's
    files in ``run_dir`` (or of its own slots only, when there is none)."""

    def __init__(self, run_dir: str | None = None, worker: int = 0) -> None:
        self.run_dir = run_dir
        self.worker = worker
        path = None if run_dir is None else os.path.join(run_dir, f"worker-{worker}.metrics")
        self.slots = Slots(path)
        self._children: dict[tuple[str, tuple[str, ...]], Child] = {}

    def child(self, name: str, *labels: str) -> Child:
        """The series of family ``name`` with these label values (made on first use)."""
        found = self._children.get((name, labels))
        if found is not None:
            return found
        family = BY_NAME[name]
        assert len(labels) == len(family.labels), (name, labels)
        slot = self.slots.slot(name + _SEP + _LSEP.join(labels), family.width)
        child = (Child(self.slots.spare, 0, family.buckets) if slot < 0
                 else Child(self.slots.view, slot, family.buckets))
        self._children[(name, labels)] = child
        return child

    def collect(self) -> dict[str, list[float]]:
        """Every series summed over every worker's file (or this process's own)."""
        if self.run_dir is None:
            slots = self.slots
            return {key: list(slots.view[slot:slot + BY_NAME[key.split(_SEP, 1)[0]].width])
                    for key, slot in slots.index.items() if key.split(_SEP, 1)[0] in BY_NAME}
        total: dict[str, list[float]] = {}
        for name in sorted(os.listdir(self.run_dir)):
            if not name.endswith(".metrics"):
                continue
            for key, values in read_file(os.path.join(self.run_dir, name)).items():
                have = total.get(key)
                if have is None:
                    total[key] = values
                elif len(have) == len(values):
                    total[key] = [a + b for a, b in zip(have, values, strict=True)]
        return total

    def render(self, openmetrics: bool = False) -> bytes:
        """The exposition: Prometheus text format 0.0.4, or OpenMetrics 1.0."""
        series: dict[str, list[tuple[tuple[str, ...], list[float]]]] = {}
        for key, values in self.collect().items():
            name, _, labels = key.partition(_SEP)
            family = BY_NAME.get(name)
            if family is None or len(values) != family.width:
                continue
            label_values = tuple(labels.split(_LSEP)) if family.labels else ()
            series.setdefault(name, []).append((label_values, values))
        out: list[str] = []
        for family in FAMILIES:
            name = family.name
            shown = name[:-len("_total")] if openmetrics and family.kind == "counter" else name
            out.append(f"# HELP {shown} {_escape_help(family.help)}")
            out.append(f"# TYPE {shown} {family.kind}")
            for label_values, values in sorted(series.get(name, [])):
                pairs = list(zip(family.labels, label_values, strict=True))
                if family.kind != "histogram":
                    out.append(f"{name}{_labels(pairs)} {_number(values[0])}")
                    continue
                running = 0.0
                for bound, count in zip((*family.buckets, math.inf), values, strict=False):
                    running += count
                    le = "+Inf" if bound == math.inf else repr(float(bound))
                    out.append(f"{name}_bucket{_labels([*pairs, ('le', le)])} "
                               f"{_number(running)}")
                n = len(family.buckets) + 1
                out.append(f"{name}_sum{_labels(pairs)} {_number(values[n])}")
                out.append(f"{name}_count{_labels(pairs)} {_number(values[n + 1])}")
        if openmetrics:
            out.append("# EOF")
        return ("\n".join(out) + "\n").encode()


def wants_openmetrics(accept: str | None) -> bool:
    """Content negotiation as Prometheus does it: OpenMetrics only when asked for."""
    return accept is not None and "application/openmetrics-text" in accept


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        .replace("\n", "\\n") for k, v in pairs)
    return "{" + inner + "}"


__all__ = ["FAMILIES", "OPENMETRICS_TYPE", "TEXT_TYPE", "Child", "Family", "Metrics", "Slots",
           "wants_openmetrics"]
