"""Pacing for embedders: items pushed at a rate on the loop's one timer wheel.

A handler that paces its tokens with ``await asyncio.sleep`` pays, per token, a timer, a
future and a step of its task; at a thousand paced streams that is what makes tokens late
(benchmarks/RESULTS.md, issue 14).  :class:`Paced` is a push source instead: it takes the
items from a plain iterator and pushes one per tick of the synthetic model's
:class:`~streamcore.sources.synthetic.Pacer` (one ``call_at`` per millisecond that has
tokens, for every paced stream of the loop): no task, timer or future per token.

::

    @app.route("POST", "/v1/generate")
    async def generate(request):
        words = request.json()["prompt"].split()
        return streamcore.EventStream(streamcore.Paced(words, rate=20.0))
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any

from ..aio.stream import Stream, to_frame
from .synthetic import WAITING, Pacer

_RUNNING, _PAUSED, _DONE = -1, -2, -3  # besides WAITING: not stepped by the Pacer


class Paced:
    """Push ``items`` (anything a stream handler may yield) at ``rate`` per second, the
    first after ``first_delay_s``; against the ideal schedule ``start + i / rate``, so
    that timer lateness does not accumulate.  A :class:`~streamcore.PushSource`: return it
    in an :class:`~streamcore.EventStream`, or pass it to ``ws.stream``.

    ``items`` is iterated on the event loop, one item per tick: it must not block (a list,
    a generator over text already there).  An exception from it fails the stream."""

    __slots__ = ("_items", "i", "interval", "loop", "pacer", "start", "state", "stream")

    def __init__(self, items: Iterable[Any], rate: float, first_delay_s: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 items per second, got {rate}")
        self._items: Iterator[Any] | None = iter(items)
        self.interval = 1.0 / rate
        self.start = first_delay_s  # made absolute when the stream starts
        self.i = 0
        self.state = _RUNNING
        self.stream: Stream | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pacer: Pacer | None = None

    def start_push(self, stream: Stream) -> None:
        self.stream = stream
        self.loop = loop = asyncio.get_running_loop()
        self.pacer = Pacer.of(loop)
        self.start += loop.time()
        self._wait()

    def _wait(self) -> None:
        assert self.pacer is not None
        self.state = WAITING
        self.pacer.at(self.start + self.i * self.interval, self)

    def tick(self) -> None:
        """One item, now (the Pacer's call)."""
        stream = self.stream
        items = self._items
        assert stream is not None and items is not None
        self.state = _RUNNING
        try:
            item = next(items, self)
            if item is self:
                self._stop()
                stream.end()
                return
            frame, size, single = to_frame(item)
        except Exception as exc:
            self._stop()
            stream.fail(exc)
            return
        if not single:
            stream.entry.mark_multiline()
        self.i += 1
        if stream.push_one(frame, size):  # (one item of this stream a tick)
            self._wait()
        elif self.state is _RUNNING:  # (push may have cancelled us: then we stay stopped)
            self.state = _PAUSED

    def resume_push(self) -> None:
        if self.state is _PAUSED:
            self._wait()  # at its time, or at once if that is past

    def cancel_push(self) -> None:
        self._stop()

    def _stop(self) -> None:
        self.state = _DONE
        self._items = None
        self.stream = None
