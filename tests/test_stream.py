"""The push-source contract (:class:`streamcore.aio.stream.PushSource`'s docstring), the
stream's lifecycle through ``STREAM_STATES``, its grace timer, ``to_frame`` and the
generator adapter, on a real event loop with readers of our own."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import orjson
import pytest
from loops import LOOPS, run_in

from streamcore.aio.stream import (
    FLUSH_BYTES,
    BaseReader,
    Flusher,
    GeneratorSource,
    Stream,
    source_of,
    to_frame,
)
from streamcore.errors import RequestError, StreamError
from streamcore.proto import pipe
from streamcore.proto.pipe import Cursor, Frame
from streamcore.proto.state import InvalidTransition
from streamcore.store.base import Entry

loop_names = pytest.mark.parametrize("loop_name", sorted(LOOPS))


def run(main: Callable[[], Coroutine[Any, Any, Any]], loop_name: str = "uvloop") -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 10)
    return run_in(loop_name, bounded)


class Conn:
    """What a reader needs of a connection: a transport, whether it is paused, and the
    bytes it wrote (counted per flush)."""

    def __init__(self) -> None:
        self.write_paused = False
        self.transport: Any = Transport()
        self.bytes_out = 0


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def abort(self) -> None:
        self.aborted = True


class Reader(BaseReader):
    """Takes everything at each flush (unless its connection is paused)."""

    __slots__ = ("frames", "seqs")

    def __init__(self, flusher: Flusher, entry: Entry, start_seq: int | None = None) -> None:
        super().__init__(flusher, entry)
        self.conn = Conn()
        self.cursor = Cursor(entry.log, start_seq)
        self.frames: list[Frame] = []

    def _flush(self, conn: Any) -> None:
        if self.cursor.next_seq < self.cursor.log.next_seq:
            _, frames, _ = self.cursor.take()
            self.frames += frames
        self.progressed()


class Source:
    """A push source that records what the stream tells it."""

    def __init__(self, on_start: Callable[[Stream], None] | None = None) -> None:
        self.stream: Stream | None = None
        self.calls: list[str] = []
        self.on_start = on_start

    def start_push(self, stream: Stream) -> None:
        self.calls.append("start")
        self.stream = stream
        if self.on_start is not None:
            self.on_start(stream)

    def resume_push(self) -> None:
        self.calls.append("resume")

    def cancel_push(self) -> None:
        self.calls.append("cancel")


def new_stream(source: Any, *, log_bytes: int = 4096, high: int = 2048, low: int = 512,
               grace_s: float = 0.0, frame_overhead: int = 0, **kw: Any) -> Stream:
    """A stream whose log counts payload bytes only (``frame_overhead=0``), so that these
    tests reckon in the bytes they push; the overhead is counted in
    :func:`test_the_log_counts_each_frame_overhead` and ``test_held_memory.py``."""
    return Stream(source, log_bytes=log_bytes, high_water=high, low_water=low,
                  grace_s=grace_s, frame_overhead=frame_overhead, **kw)


def attach(stream: Stream, *, origin: bool = True) -> Reader:
    reader = Reader(Flusher(asyncio.get_running_loop()), stream.entry)
    stream.entry.attach(reader, origin=origin)
    return reader


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class NowReader(Reader):
    """A reader that writes a frame at once when it has written everything
    (what :class:`~streamcore.aio.sse.SSEReader` does for ``push_one``)."""

    __slots__ = ("now",)

    def __init__(self, flusher: Flusher, entry: Entry) -> None:
        super().__init__(flusher, entry)
        self.now: list[Frame] = []

    def takes_now(self) -> bool:
        return (not self.scheduled and not self.conn.write_paused
                and self.cursor.next_seq == self.cursor.log.next_seq)

    def write_newest(self) -> None:
        frame, _ = self.cursor.take_newest()
        self.now.append(frame)


def test_push_one_writes_at_once_only_for_a_caught_up_lone_origin() -> None:
    """push_one: the frame is written in the call (no wake-up, no Flusher turn) when the
    origin reader is the only one and has written everything; else it is push."""
    async def main() -> None:
        stream = new_stream(Source())
        reader = NowReader(Flusher(asyncio.get_running_loop()), stream.entry)
        stream.entry.attach(reader, origin=True)
        stream.start()
        assert stream.push_one((b"a",), 1)
        assert reader.now == [(b"a",)] and not reader.scheduled
        assert not reader.flusher.pending and not reader.flusher.scheduled
        reader.conn.write_paused = True  # the transport takes nothing: push's way
        assert stream.push_one((b"b",), 1)
        assert reader.scheduled and reader.now == [(b"a",)]
        assert stream.push_one((b"c",), 1)  # queued already: behind, push's way too
        reader.conn.write_paused = False
        await spin()
        assert reader.frames == [(b"b",), (b"c",)] and not reader.scheduled
        other = attach(stream, origin=False)  # two readers: push's way, both woken
        assert stream.push_one((b"d",), 1)
        assert reader.scheduled and other.scheduled and reader.now == [(b"a",)]
        await spin()
        assert reader.frames[-1] == (b"d",) and other.frames[-1] == (b"d",)
        stream.end()
        assert not stream.push_one((b"e",), 1)  # ended: ignored, as push
        assert stream.log.next_seq == 5
    run(main)


def test_push_one_on_a_reader_that_cannot_is_push() -> None:
    """A reader that does not write at once (a WebSocket's, the base class's)."""
    async def main() -> None:
        stream = new_stream(Source())
        reader = attach(stream)
        stream.start()
        assert stream.push_one((b"a",), 1) and reader.scheduled
        with pytest.raises(NotImplementedError):
            reader.write_newest()
        await spin()
        assert reader.frames == [(b"a",)]
    run(main)


# -- the contract ----------------------------------------------------------------------


def test_start_push_once_and_pushing_from_inside_it() -> None:
    async def main() -> None:
        source = Source(lambda stream: stream.push((b"first",)))
        stream = new_stream(source)
        assert stream.state is pipe.CREATED
        reader = attach(stream)
        stream.start()
        assert source.calls == ["start"] and stream.state is pipe.RUNNING
        await spin()
        assert reader.frames == [(b"first",)]
        with pytest.raises(InvalidTransition):
            stream.start()  # a second start is a bug: the table refuses it
        assert source.calls == ["start"]

    run(main)


def test_push_counts_the_size_when_omitted_and_trusts_it_when_given() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        assert stream.push((b"ab", b"cde"))
        assert stream.log.appended_bytes == 5
        assert stream.push((b"xyz",), 3)
        assert stream.log.appended_bytes == 8

    run(main)


def test_push_after_end_is_ignored() -> None:
    async def main() -> None:
        ended: list[Stream] = []
        source = Source()
        stream = new_stream(source, on_end=ended.append)
        reader = attach(stream)
        stream.start()
        assert stream.push((b"a",)) is True
        stream.end()
        assert stream.state is pipe.COMPLETED and stream.finished and stream.log.closed
        assert stream.push((b"b",)) is False
        assert stream.log.next_seq == 2
        # end and fail once: later calls are ignored.
        stream.end()
        stream.fail(RuntimeError("late"))
        stream.cancel()
        assert stream.state is pipe.COMPLETED and stream.entry.error is None
        assert ended == [stream]
        assert source.calls == ["start"]  # cancel_push is never called after end
        assert stream.entry.owner is None and stream.source is None
        await spin()
        assert reader.frames == [(b"a",)]

    run(main)


def test_fail_with_a_request_error_before_the_first_frame_is_a_refusal() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        exc = RequestError("bad input", param="x")
        stream.fail(exc)
        assert stream.state is pipe.FAILED
        assert stream.entry.refused is exc
        assert stream.entry.error == exc.envelope()
        assert stream.log.since(1) == [(exc.envelope(),)]  # the error is the log's last frame
        stream.fail(RequestError("again"))
        assert stream.entry.refused is exc

    run(main)


def test_fail_with_a_request_error_after_a_frame_is_an_error_event() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        stream.push((b"a",))
        exc = RequestError("too late to refuse")
        stream.fail(exc)
        assert stream.entry.refused is None
        assert stream.log.since(1) == [(b"a",), (exc.envelope(),)]

    run(main)


def test_fail_with_another_exception_names_only_its_type(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        with caplog.at_level(logging.ERROR, logger="streamcore"):
            stream.fail(KeyError("secret"))
        error = orjson.loads(stream.entry.error or b"")["error"]
        assert error == {"message": "the stream failed: KeyError", "type": "stream_error",
                         "param": None, "code": "stream_error"}
        assert stream.entry.refused is None and stream.state is pipe.FAILED
        assert "handler failed" in caplog.text

    run(main)


def test_fail_with_a_stream_error_keeps_it() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        stream.fail(StreamError("upstream went away", code="upstream"))
        assert orjson.loads(stream.entry.error or b"")["error"]["code"] == "upstream"

    run(main)


def test_cancel_push_on_cancel_when_the_last_reader_leaves() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source)
        reader = attach(stream)
        stream.start()
        stream.push((b"a",))
        stream.entry.detach(reader)
        assert source.calls == ["start", "cancel"]
        assert stream.state is pipe.CANCELLED
        assert orjson.loads(stream.entry.error or b"")["error"]["code"] == "cancelled"
        assert stream.push((b"b",)) is False
        stream.cancel()
        assert source.calls == ["start", "cancel"]

    run(main)


def test_mark_multiline_marks_the_next_frame() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        stream.start()
        stream.push((b"one",))
        stream.entry.mark_multiline()
        stream.push((b"two\nlines",))
        assert stream.entry.multiline == {2}

    run(main)


# -- states and flow ----------------------------------------------------------------------


def test_states_through_pause_and_resume() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source)  # log 4096: flush at 1024, high 2048, low 512
        reader = attach(stream)
        stream.start()
        reader.conn.write_paused = True
        results = [stream.push((b"x" * 100,), 100) for _ in range(25)]
        # Past the high-water mark (2048) the push says wait; later pushes too.
        assert results == [True] * 20 + [False] * 5
        assert stream.state is pipe.PAUSED
        assert source.calls == ["start"]
        reader.conn.write_paused = False
        reader.flush()  # the reader takes everything: its backlog is at the low mark
        assert stream.state is pipe.RUNNING and source.calls == ["start", "resume"]
        assert len(reader.frames) == 25
        stream.end()
        assert stream.state is pipe.COMPLETED

    run(main)


def test_a_backlog_between_the_marks_keeps_the_pause() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source)
        reader = attach(stream)
        stream.start()
        reader.conn.write_paused = True
        for _ in range(21):
            stream.push((b"x" * 100,), 100)
        assert stream.state is pipe.PAUSED
        # A non-origin reader's progress does not resume it; nor does an origin reader
        # still above the low mark.
        stream.writable_changed()
        assert stream.state is pipe.PAUSED
        reader.cursor.taken_bytes += 1000  # (as if it took part of it: backlog 1100 > 512)
        stream.writable_changed()
        assert stream.state is pipe.PAUSED and source.calls == ["start"]

    run(main)


def test_the_origin_passes_to_the_next_reader() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        first = attach(stream)
        second = attach(stream, origin=False)
        assert stream.origin is first
        stream.start()
        stream.entry.detach(first)
        assert stream.origin is second and stream.state is pipe.RUNNING
        late = attach(stream, origin=True)
        assert stream.origin is late
        stream.entry.detach(second)
        assert stream.origin is late

    run(main)


def test_log_sizes_bound_the_marks() -> None:
    stream = new_stream(Source(), log_bytes=1000, high=64 * 1024, low=16 * 1024)
    assert (stream.flow.high, stream.flow.low, stream.flush_bytes) == (500, 250, 250)
    big = new_stream(Source(), log_bytes=1 << 20, high=64 * 1024, low=16 * 1024)
    assert (big.flow.high, big.flow.low, big.flush_bytes) == (64 * 1024, 16 * 1024,
                                                              FLUSH_BYTES)


# -- the grace timer -------------------------------------------------------------------------


def test_grace_produces_into_at_most_half_the_log_then_pauses() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source, log_bytes=4000, grace_s=5.0)
        reader = attach(stream)
        stream.start()
        stream.push((b"x" * 100,), 100)
        await spin()
        stream.entry.detach(reader)
        assert stream.state is pipe.RUNNING and stream.origin is None
        assert source.calls == ["start"]
        results = [stream.push((b"y" * 100,), 100) for _ in range(22)]
        assert results == [True] * 20 + [False] * 2  # 2000 bytes: half the log
        assert stream.state is pipe.PAUSED
        assert stream.log.first_seq == 1  # nothing evicted
        # A reader joining in time cancels the grace and, once it has read, resumes it.
        back = Reader(Flusher(asyncio.get_running_loop()), stream.entry, 2)
        stream.entry.attach(back)
        back.wake()
        assert stream._grace is None
        await spin()
        assert stream.state is pipe.RUNNING and source.calls == ["start", "resume"]
        assert len(back.frames) == 22
        await asyncio.sleep(0.01)
        assert stream.state is pipe.RUNNING

    run(main)


def test_grace_expiry_cancels() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source, grace_s=0.02)
        reader = attach(stream)
        stream.start()
        stream.entry.detach(reader)
        assert stream.state is pipe.RUNNING
        await asyncio.sleep(0.05)
        assert stream.state is pipe.CANCELLED and source.calls == ["start", "cancel"]

    run(main)


def test_ending_in_grace_stops_the_timer() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source, grace_s=0.02)
        reader = attach(stream)
        stream.start()
        stream.entry.detach(reader)
        stream.end()
        assert stream._grace is None
        await asyncio.sleep(0.05)
        assert stream.state is pipe.COMPLETED and source.calls == ["start"]

    run(main)


def test_a_reader_that_leaves_a_paused_stream_in_grace_lets_it_go_on() -> None:
    async def main() -> None:
        source = Source()
        stream = new_stream(source, grace_s=5.0)
        reader = attach(stream)
        stream.start()
        reader.conn.write_paused = True
        while stream.push((b"x" * 100,), 100):
            pass
        assert stream.state is pipe.PAUSED
        # The reader writes everything, then leaves: with nothing unread the stream may
        # produce into half the log again while it waits for a reader.
        reader.cursor.take()
        stream.entry.detach(reader)
        assert stream.state is pipe.RUNNING and source.calls == ["start", "resume"]
        stream.cancel()

    run(main)


# -- to_frame ----------------------------------------------------------------------------


class Thing:
    def __str__(self) -> str:
        return "thing\u00e9"


@pytest.mark.parametrize(("item", "frame", "size", "single"), [
    ("h\u00e9", (b"h\xc3\xa9",), 3, True),
    ("a\nb", (b"a\nb",), 3, False),
    ("a\rb", (b"a\rb",), 3, False),
    (b"raw", (b"raw",), 3, True),
    (b"r\r\n", (b"r\r\n",), 3, False),
    (bytearray(b"ba"), (b"ba",), 2, True),
    (memoryview(b"mv\n"), (b"mv\n",), 3, False),
    ({"a": [1, "x"]}, (b'{"a":[1,"x"]}',), 13, True),
    ({"a": "l\nb"}, (b'{"a":"l\\nb"}',), 12, True),  # JSON escapes its line breaks
    ([1, 2], (b"[1,2]",), 5, True),
    ((b"pre", b"tok", b"suf"), (b"pretoksuf",), 9, True),  # joined: one exact buffer
    ((b"pre", b"t\nk"), (b"pret\nk",), 6, False),
    ((b"p\r", b"k"), (b"p\rk",), 3, False),
    ((), (b"",), 0, True),
    (12, (b"12",), 2, True),
    (Thing(), ("thing\u00e9".encode(),), 7, True),
])
def test_to_frame(item: Any, frame: Frame, size: int, single: bool) -> None:
    got_frame, got_size, got_single = to_frame(item)
    assert got_frame == frame
    assert all(type(buf) is bytes for buf in got_frame)
    assert got_size == size == sum(map(len, got_frame))
    assert got_single is single


class Bytes(bytes):
    pass


def test_to_frame_copies_bytes_to_their_exact_size() -> None:
    """``orjson.dumps`` returns bytes holding its whole write buffer (1-4 KiB): kept as
    they are, a log of small chunks holds many times its bound (test_held_memory.py)."""
    data = orjson.dumps({"a": 1})
    frame, size, single = to_frame(data)
    assert frame == (b'{"a":1}',) and frame[0] is not data and size == 7 and single
    sub = to_frame(Bytes(b"x\n"))
    assert sub == ((b"x\n",), 2, False) and type(sub[0][0]) is bytes


def test_the_log_counts_each_frame_overhead() -> None:
    """A stream's log counts each frame's payload plus FRAME_OVERHEAD_BYTES (what holds it
    in memory), in its bound and in backlogs; readers still get the payload size."""
    async def main() -> None:
        over = pipe.FRAME_OVERHEAD_BYTES
        stream = Stream(Source(), log_bytes=10 * (over + 10), high_water=1 << 20,
                        low_water=1 << 19)
        stream.start()
        reader = attach(stream)
        for i in range(12):
            stream.push((b"%010d" % i,))
        assert stream.log.appended_bytes == 12 * (over + 10)
        assert len(stream.log) == 10 and stream.log.held_bytes == 10 * (over + 10)
        reader.cursor.next_seq = stream.log.first_seq
        reader.cursor.taken_bytes = stream.log.appended_bytes - stream.log.held_bytes
        first, frames, size = reader.cursor.take()
        assert (first, len(frames), size) == (3, 10, 100)
        stream.push((b"x",))
        assert reader.cursor.take_newest() == ((b"x",), 1)
        stream.end()
        assert stream.entry.log._frames[0] == (b"%010d" % 3,)  # closed: no dead slots kept

    run(main)


def test_to_frame_json_is_exact_size() -> None:
    import sys

    (data,), size, _ = to_frame({"k": "v" * 10})
    assert sys.getsizeof(data) - sys.getsizeof(b"") == size


def test_source_of() -> None:
    source = Source()
    assert source_of(source) is source

    async def agen() -> AsyncIterator[int]:
        yield 1

    assert isinstance(source_of(agen()), GeneratorSource)


# -- the generator adapter -------------------------------------------------------------------


@loop_names
def test_a_generator_that_never_awaits_yields_the_loop(loop_name: str) -> None:
    """After flush_bytes produced in one go the adapter yields the loop: other tasks run
    while a generator that never awaits produces 64 flush_bytes' worth."""

    async def main() -> None:
        ticks = 0
        item = "x" * 100

        async def gen() -> AsyncIterator[str]:
            for _ in range(64 * 1024 * 4 // 100):
                yield item

        stream = new_stream(GeneratorSource(gen()), log_bytes=1 << 20)
        reader = attach(stream)  # keeps up: never paused
        done = asyncio.Event()
        stream.on_end = lambda s: done.set()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.get_running_loop().create_task(ticker())
        stream.start()
        await done.wait()
        await tick_task
        produced = stream.log.appended_bytes
        assert produced == 64 * 1024 * 4 // 100 * 100
        assert ticks >= produced // stream.flush_bytes - 2, (ticks, produced)
        await spin()
        assert sum(len(f[0]) for f in reader.frames) == produced

    run(main, loop_name)


def test_generator_pauses_and_resumes_with_its_reader() -> None:
    async def main() -> None:
        pulled: list[int] = []

        async def gen() -> AsyncIterator[bytes]:
            for i in range(100):
                pulled.append(i)
                yield b"x" * 100

        stream = new_stream(GeneratorSource(gen()))
        reader = attach(stream)
        reader.conn.write_paused = True
        stream.start()
        await spin(10)
        assert stream.state is pipe.PAUSED and len(pulled) == 21
        reader.conn.write_paused = False
        reader.flush()
        await spin(30)
        assert stream.state is pipe.COMPLETED and len(pulled) == 100

    run(main)


def test_idle_generators_share_one_watch_and_only_the_silent_one_fails() -> None:
    """One timer checks every generator source of a loop (IdleWatch): a silent one fails
    with stream_idle between 1 and 1.25 times idle_s (never before), a busy one beside it
    goes on, and each leaves the watch when it ends."""
    idle_s = 0.2

    async def main() -> None:
        loop = asyncio.get_running_loop()
        go_on = asyncio.Event()

        async def silent() -> AsyncIterator[bytes]:
            yield b"first"
            await go_on.wait()
            yield b"never"

        async def busy() -> AsyncIterator[bytes]:
            for _ in range(12):
                await asyncio.sleep(idle_s / 3)
                yield b"tick"

        quiet, steady = GeneratorSource(silent(), idle_s), GeneratorSource(busy(), idle_s)
        a, b = new_stream(quiet), new_stream(steady)
        attach(a), attach(b)
        started = loop.time()
        a.start()
        b.start()
        watch = quiet.watch
        assert watch is not None and watch is steady.watch
        assert watch.sources == {quiet, steady} and watch.timer is not None
        while a.state is not pipe.FAILED:
            await asyncio.sleep(0.01)
        took = loop.time() - started
        assert idle_s <= took <= 1.25 * idle_s + 0.15, took
        assert a.entry.error is not None and b"stream_idle" in a.entry.error
        assert quiet.watch is None and watch.sources == {steady}
        assert b.state is pipe.RUNNING
        while b.state is not pipe.COMPLETED:
            await asyncio.sleep(0.02)
        assert steady.watch is None and not watch.sources
        go_on.set()

    run(main)


def test_a_handler_finally_runs_on_cancel() -> None:
    async def main() -> None:
        events: list[str] = []
        proceed = asyncio.Event()

        async def gen() -> AsyncIterator[str]:
            try:
                yield "one"
                await proceed.wait()
                yield "never"
            finally:
                events.append("finally")

        source = GeneratorSource(gen())
        stream = new_stream(source)
        reader = attach(stream)
        stream.start()
        await spin()
        assert reader.frames == [(b"one",)]
        stream.entry.detach(reader)  # the last reader leaves: cancelled now
        assert stream.state is pipe.CANCELLED
        await spin()
        assert events == ["finally"]
        assert source.task is not None and source.task.cancelled()

    run(main)


def test_generator_items_mark_multiline_frames() -> None:
    async def main() -> None:
        async def gen() -> AsyncIterator[Any]:
            yield "a"
            yield "b\nc"
            yield {"d": 1}

        stream = new_stream(GeneratorSource(gen()))
        attach(stream)
        stream.start()
        await spin(10)
        assert stream.state is pipe.COMPLETED and stream.entry.multiline == {2}

    run(main)


def test_generator_failure_and_refusal() -> None:
    async def main() -> None:
        async def refuse() -> AsyncIterator[str]:
            raise RequestError("no", status=422)
            yield "unreachable"

        stream = new_stream(GeneratorSource(refuse()))
        attach(stream)
        stream.start()
        await spin(5)
        assert stream.state is pipe.FAILED and stream.entry.refused is not None
        assert stream.entry.refused.status == 422

    run(main)


def test_an_aclose_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        class Broken:
            """An async iterator whose aclose fails."""

            def __init__(self) -> None:
                self.n = 0

            def __aiter__(self) -> Broken:
                return self

            async def __anext__(self) -> str:
                self.n += 1
                if self.n > 2:
                    raise StopAsyncIteration
                return "x"

            async def aclose(self) -> None:
                raise RuntimeError("cannot close")

        stream = new_stream(GeneratorSource(Broken()))
        attach(stream)
        with caplog.at_level(logging.ERROR, logger="streamcore"):
            stream.start()
            await spin(10)
        assert stream.state is pipe.COMPLETED
        assert "closing a stream handler failed" in caplog.text

    run(main)


def test_an_iterator_without_aclose() -> None:
    async def main() -> None:
        class Plain:
            def __init__(self) -> None:
                self.items = ["a", "b"]

            def __aiter__(self) -> Plain:
                return self

            async def __anext__(self) -> str:
                if not self.items:
                    raise StopAsyncIteration
                return self.items.pop(0)

        stream = new_stream(GeneratorSource(Plain()))
        reader = attach(stream)
        stream.start()
        await spin(10)
        assert stream.state is pipe.COMPLETED
        assert reader.frames[:2] == [(b"a",), (b"b",)]

    run(main)


def test_resume_and_cancel_are_safe_when_idle() -> None:
    source = GeneratorSource(None)  # type: ignore[arg-type]
    source.resume_push()  # no waiter
    source.cancel_push()  # no task

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fut.cancel()
        source.waiter = fut
        source.resume_push()  # a waiter already done (cancelled) is left alone
        assert source.waiter is None

    run(main)


# -- the reader base ------------------------------------------------------------------------


def test_a_reader_bug_ends_its_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        class Buggy(Reader):
            def _flush(self, conn: Any) -> None:
                raise ZeroDivisionError

        stream = new_stream(Source())
        buggy = Buggy(Flusher(asyncio.get_running_loop()), stream.entry)
        stream.entry.attach(buggy, origin=True)
        good = attach(stream, origin=False)
        stream.start()
        with caplog.at_level(logging.ERROR, logger="streamcore"):
            stream.push((b"a",))
            await spin()
        assert buggy.done and buggy.conn.transport.aborted
        assert good.frames == [(b"a",)] and not good.conn.transport.aborted
        assert "writing a stream failed" in caplog.text
        stream.push((b"b",))
        await spin()
        assert good.frames == [(b"a",), (b"b",)]

    run(main)


def test_base_reader_requires_a_flush() -> None:
    async def main() -> None:
        stream = new_stream(Source())
        reader = BaseReader(Flusher(asyncio.get_running_loop()), stream.entry)
        with pytest.raises(NotImplementedError):
            reader._flush(None)

    run(main)


def test_flusher_flushes_each_woken_reader_once_per_iteration() -> None:
    async def main() -> None:
        flushes: list[int] = []

        class Counting(Reader):
            def _flush(self, conn: Any) -> None:
                flushes.append(1)
                super()._flush(conn)

        stream = new_stream(Source())
        flusher = Flusher(asyncio.get_running_loop())
        reader = Counting(flusher, stream.entry)
        stream.entry.attach(reader, origin=True)
        stream.start()
        for _ in range(10):
            stream.push((b"t",))
        assert flusher.scheduled and flusher.pending == [reader]
        await spin()
        assert flushes == [1] and len(reader.frames) == 10

    run(main)


def test_the_generator_adapter_keeps_every_item_exact_and_marks_line_breaks() -> None:
    """Bytes (the common item: inlined in the adapter) and the other types, through a
    running stream: copies of exact size, line breaks marked for SSE."""
    async def main() -> None:
        dumped = orjson.dumps({"t": "x"})

        async def gen() -> AsyncIterator[Any]:
            yield dumped
            yield b"a\nb"
            yield b"a\rb"
            yield "s"
            yield {"k": 1}

        stream = new_stream(GeneratorSource(gen()), log_bytes=1 << 20)
        attach(stream)
        done = asyncio.Event()
        stream.on_end = lambda s: done.set()
        stream.start()
        await done.wait()
        frames = stream.log.since(1)
        assert frames == [(b'{"t":"x"}',), (b"a\nb",), (b"a\rb",), (b"s",), (b'{"k":1}',)]
        assert frames[0][0] is not dumped
        assert stream.entry.multiline == {2, 3}

    run(main)
