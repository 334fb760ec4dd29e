"""The embedded synthetic model: deterministic text derived from the prompt (its hash).

It behaves like a real model for demos, tests and benchmarks: a first-token delay, a token
rate (0 = as fast as the consumer takes them), ``max_tokens`` honoured with
``finish_reason: "length"``, and otherwise a natural stop after a prompt-derived length.
The same prompt always gives the same text, so tests can compare streamed and non-streamed
answers token for token.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..proto.openai import ChatRequest

_VOCABULARY = (
    "the", "stream", "of", "tokens", "flows", "through", "a", "bounded", "pipe", "to",
    "every", "reader", "while", "server", "keeps", "memory", "flat", "and", "time", "honest",
    "so", "that", "slow", "clients", "never", "grow", "what", "we", "hold", "each", "event",
    "carries", "its", "id", "for", "resume", "across", "reconnects", "in", "order", "exactly",
    "once", "under", "load", "with", "backpressure", "on", "byte",
)
# Token-like pieces, shared by every generation: a stream holds 32 references, not strings.
_FIRST = tuple(word.capitalize() for word in _VOCABULARY)
_SPACED = tuple(" " + word for word in _VOCABULARY)


@dataclass(frozen=True, slots=True)
class SyntheticModel:
    """Settings of one synthetic model (one name in ``/v1/models``)."""

    name: str = "synthetic"
    #: Seconds before the first token, like a real model's prefill.
    first_token_delay_s: float = 0.0
    #: Tokens per second after the first; 0 means unpaced.
    tokens_per_s: float = 0.0
    #: Length of an answer when the request sets no max_tokens.
    default_tokens: int = 64

    def start(self, request: ChatRequest) -> Generation:
        return Generation(self, request)


class Generation:
    """One answer: iterate it for tokens; then read ``finish_reason``."""

    __slots__ = ("_first", "_natural", "_words", "finish_reason", "limit", "model",
                 "prompt_tokens")

    def __init__(self, model: SyntheticModel, request: ChatRequest) -> None:
        prompt = request.prompt_text()
        digest = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
        seed = int.from_bytes(digest[:8], "big")
        # 32 words picked by the prompt's hash: the same prompt, the same text.
        picks = [byte % len(_VOCABULARY) for byte in digest]
        self._first = _FIRST[picks[0]]
        self._words = tuple(_SPACED[i] for i in picks)
        self.model = model
        self.prompt_tokens = max(1, len(prompt.split()))
        self._natural = model.default_tokens + seed % 17
        self.limit = request.max_tokens
        self.finish_reason = "stop"

    def __aiter__(self) -> AsyncIterator[str]:
        return self._tokens()

    def planned_tokens(self) -> int:
        """How many tokens this answer has (and sets ``finish_reason`` accordingly)."""
        count = self._natural
        if self.limit is not None and self.limit < count:
            count = self.limit
            self.finish_reason = "length"
        return count

    def run(self, emit: Callable[[str], bool], done: Callable[[], None]) -> Run:
        """Push the tokens instead of being iterated: see :class:`Run`."""
        return Run(self, emit, done)

    async def _tokens(self) -> AsyncIterator[str]:
        model = self.model
        count = self.planned_tokens()
        words = self._words
        if model.first_token_delay_s > 0:
            await asyncio.sleep(model.first_token_delay_s)
        if count <= 0:
            return
        if model.tokens_per_s <= 0:
            yield self._first
            for i in range(1, count):
                yield words[i & 31]
            return
        loop = asyncio.get_running_loop()
        interval = 1.0 / model.tokens_per_s
        start = loop.time()
        for i in range(count):
            # Against the ideal schedule, so that timer lateness does not accumulate.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield words[i & 31] if i else self._first

    async def text(self) -> str:
        return "".join([token async for token in self])


#: Unpaced tokens pushed per loop iteration before yielding to other streams.
BURST_TOKENS = 256


class Pacer:
    """One timer per millisecond that has tokens due, for every paced generation of a loop.

    A timer (and a task wake-up) per token is what a paced stream costs when each awaits
    ``asyncio.sleep``; here a token due in a millisecond joins that millisecond's list, and
    one ``call_at`` fires for all of them.
    """

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = (
        weakref.WeakKeyDictionary())

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[int, list[Run]] = {}

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Pacer:
        pacer = cls._by_loop.get(loop)
        if pacer is None:
            pacer = cls._by_loop[loop] = cls(loop)
        return pacer

    def at(self, when: float, run: Run) -> None:
        tick = math.ceil(when * 1000.0)
        runs = self.due.get(tick)
        if runs is None:
            self.due[tick] = [run]
            self.loop.call_at(tick / 1000.0, self._fire, tick)
        else:
            runs.append(run)

    def _fire(self, tick: int) -> None:
        for run in self.due.pop(tick, ()):
            if run.state is _WAITING:
                run.state = _RUNNING
                run.step()


_RUNNING, _WAITING, _PAUSED, _DONE = range(4)


class Run:
    """One generation pushed token by token: ``emit(text)`` per token (``False`` back: pause
    until :meth:`resume`), then ``done()``.  No task and no future per token."""

    __slots__ = ("count", "done", "emit", "generation", "i", "interval", "loop", "start",
                 "state")

    def __init__(self, generation: Generation, emit: Callable[[str], bool],
                 done: Callable[[], None]) -> None:
        self.generation = generation
        self.emit = emit
        self.done = done
        model = generation.model
        self.count = generation.planned_tokens()
        self.interval = 1.0 / model.tokens_per_s if model.tokens_per_s > 0 else 0.0
        self.loop = asyncio.get_running_loop()
        self.i = 0
        self.start = 0.0
        self.state = _WAITING
        delay = model.first_token_delay_s
        if delay > 0:
            Pacer.of(self.loop).at(self.loop.time() + delay, self)
        else:
            self.state = _RUNNING
            self.loop.call_soon(self.step)

    def step(self) -> None:
        if self.state is not _RUNNING:
            return
        if self.i == 0:
            self.start = self.loop.time()
        words = self.generation._words
        emit = self.emit
        count = self.count
        burst = BURST_TOKENS if self.interval == 0.0 else 1
        while burst and self.i < count:
            i = self.i
            self.i = i + 1
            burst -= 1
            if not emit(words[i & 31] if i else self.generation._first):
                if self.state is _RUNNING:
                    self.state = _PAUSED
                return
        if self.i >= count:
            self.state = _DONE
            self.done()
        elif self.interval == 0.0:
            self.loop.call_soon(self.step)  # yield the loop between bursts
        else:
            self.state = _WAITING
            Pacer.of(self.loop).at(self.start + self.i * self.interval, self)

    def resume(self) -> None:
        if self.state is not _PAUSED:
            return
        due = self.start + self.i * self.interval
        if self.interval and due > self.loop.time():  # not before its time
            self.state = _WAITING
            Pacer.of(self.loop).at(due, self)
        else:
            self.state = _RUNNING
            self.step()

    def cancel(self) -> None:
        self.state = _DONE
