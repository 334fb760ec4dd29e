"""The embedded synthetic model: deterministic text derived from the prompt (its hash).

It behaves like a real model for demos, tests and benchmarks: a first-token delay, a token
rate (0 = as fast as the consumer takes them), ``max_tokens`` (or ``max_completion_tokens``)
as the answer's length with ``finish_reason: "length"`` (up to ``max_answer_tokens``), and
without it a natural stop after a prompt-derived length; ``stop`` sequences end the answer
before them (``finish_reason: "stop"``, the sequence not sent).  The same prompt always
gives the same text, so tests can compare streamed and non-streamed answers token for token.

Every other request field is accepted and has no effect: see :data:`IGNORED_FIELDS`.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import math
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from ..errors import RequestError
from ..proto.openai import ChatRequest

_VOCABULARY = (
    "the", "stream", "of", "tokens", "flows", "through", "a", "bounded", "pipe", "to",
    "every", "reader", "while", "server", "keeps", "memory", "flat", "and", "time", "honest",
    "so", "that", "slow", "clients", "never", "grow", "what", "we", "hold", "each", "event",
    "carries", "its", "id", "for", "resume", "across", "reconnects", "in", "order", "exactly",
    "once", "under", "load", "with", "backpressure", "on", "byte",
)
# Token-like pieces, shared by every generation, indexed by a byte of the prompt's hash: a
# generation holds its 32-byte digest, not strings.
_FIRST = tuple(_VOCABULARY[b % len(_VOCABULARY)].capitalize() for b in range(256))
_SPACED = tuple(" " + _VOCABULARY[b % len(_VOCABULARY)] for b in range(256))

#: The largest ``max_tokens`` a request may ask for, by default (``--max-answer-tokens``).
#: It bounds the work one request can cost: an unpaced answer of N tokens is N chunks of
#: server CPU and bandwidth.  16384 is the completion limit of common hosted models.
MAX_ANSWER_TOKENS = 16384

#: Request fields the synthetic model accepts and does not act on (the text depends only on
#: the messages).  ``temperature`` and ``top_p`` are still range-checked, as OpenAI does.
IGNORED_FIELDS = (
    "temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "logit_bias",
    "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls", "functions",
    "function_call", "response_format", "modalities", "audio", "prediction",
    "reasoning_effort", "web_search_options", "service_tier", "store", "metadata", "user",
)


@dataclass(frozen=True, slots=True)
class SyntheticModel:
    """Settings of one synthetic model (one name in ``/v1/models``)."""

    name: str = "synthetic"
    #: Seconds before the first token, like a real model's prefill.
    first_token_delay_s: float = 0.0
    #: Tokens per second after the first; 0 means unpaced.
    tokens_per_s: float = 0.0
    #: Length of an answer when the request sets no max_tokens (plus 0..16 by prompt).
    default_tokens: int = 64
    #: The largest max_tokens a request may ask for: see :data:`MAX_ANSWER_TOKENS`.
    max_answer_tokens: int = MAX_ANSWER_TOKENS

    def __post_init__(self) -> None:
        if self.max_answer_tokens < 1:
            raise ValueError(f"max_answer_tokens must be >= 1, got {self.max_answer_tokens}")
        if self.default_tokens < 0:  # the operator's choice: not bound by the request cap
            raise ValueError(f"default_tokens must be >= 0, got {self.default_tokens}")

    def start(self, request: ChatRequest) -> Generation:
        """A new answer; :class:`RequestError` (400) if it asks for more than the cap."""
        if request.max_tokens is not None and request.max_tokens > self.max_answer_tokens:
            param = request.max_tokens_param
            raise RequestError(f"'{param}' must be at most {self.max_answer_tokens} for the "
                               f"model `{self.name}`, got {request.max_tokens}",
                               param=param, code="invalid_value")
        return Generation(self, request)

    def describe(self) -> dict[str, object]:
        """What ``/v1/models`` says of this model besides its id: the length cap and the
        request fields it ignores."""
        return {"max_answer_tokens": self.max_answer_tokens,
                "ignored_fields": list(IGNORED_FIELDS)}


class Generation:
    """One answer: iterate it for tokens; then read ``finish_reason``."""

    __slots__ = ("_words", "count", "finish_reason", "model", "prompt_tokens", "tail",
                 "whole_now")

    def __init__(self, model: SyntheticModel, request: ChatRequest) -> None:
        prompt = request.prompt_text()
        # 32 words picked by the prompt's hash: the same prompt, the same text.
        digest = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
        self._words = digest
        self.model = model
        self.prompt_tokens = max(1, len(prompt.split()))
        if request.max_tokens is None:  # a natural stop after a prompt-derived length
            self.count = model.default_tokens + int.from_bytes(digest[:8], "big") % 17
            self.finish_reason = "stop"
        else:  # the length asked for (the cap is checked by SyntheticModel.start)
            self.count = request.max_tokens
            self.finish_reason = "length"
        #: The text of the last token when a stop sequence cuts into it (else None).
        self.tail: str | None = None
        if request.stop:
            self._cut(request.stop)
        #: A Run's first step would emit the whole answer at once (unpaced, undelayed, not
        #: cut by a stop sequence, at most BURST_TOKENS): :meth:`emit_tokens` does it
        #: without the Run.
        self.whole_now = (self.count <= BURST_TOKENS and self.tail is None
                          and model.tokens_per_s <= 0 and model.first_token_delay_s <= 0)

    def _cut(self, stops: tuple[str, ...]) -> None:
        """End the answer before the first occurrence of any stop sequence."""
        texts = [_token(self._words, i) for i in range(self.count)]
        text = "".join(texts)
        found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
        if not found:
            return
        cut = min(found)
        self.finish_reason = "stop"
        start = 0
        for i, token in enumerate(texts):
            if start + len(token) > cut:  # token i holds the cut
                self.count = i
                if cut > start:
                    self.tail = token[:cut - start]
                    self.count = i + 1
                return
            start += len(token)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._tokens()

    def planned_tokens(self) -> int:
        """How many tokens this answer has."""
        return self.count

    def run(self, target: Target, eager: bool = False, paused_at: int = 0) -> Run:
        """Push the tokens instead of being iterated: see :class:`Run` (``eager``: the
        caller takes the first step, :meth:`Run.begin`; ``paused_at``: the caller
        emitted that many tokens (:meth:`emit_tokens`) and was told to wait)."""
        if self.tail is not None:  # a stop sequence cut the last token: it says so itself
            target = _Tail(target, self.count, self.tail)
        return Run(self, target, eager, paused_at)

    def emit_tokens(self, emit: Callable[[str], bool]) -> int:
        """An answer that is :attr:`whole_now`: every token to ``emit`` now, as a Run's
        first step would (a short answer's Run object and three calls less per stream),
        up to the first that says wait (False).  How many were emitted."""
        words = self._words
        count = self.count
        for i in range(count):
            if not emit(_SPACED[words[i & 31]] if i else _FIRST[words[0]]):
                return i + 1
        return count

    async def _tokens(self) -> AsyncIterator[str]:
        model = self.model
        count = self.count
        words = self._words
        tail = self.tail
        if model.first_token_delay_s > 0:
            await asyncio.sleep(model.first_token_delay_s)
        if count <= 0:
            return
        if model.tokens_per_s <= 0:
            for i in range(count):
                yield tail if tail is not None and i == count - 1 else _token(words, i)
            return
        loop = asyncio.get_running_loop()
        interval = 1.0 / model.tokens_per_s
        start = loop.time()
        for i in range(count):
            # Against the ideal schedule, so that timer lateness does not accumulate.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield tail if tail is not None and i == count - 1 else _token(words, i)


def _token(words: bytes, i: int) -> str:
    """Token ``i`` of the answer whose prompt hashed to ``words``."""
    return _SPACED[words[i & 31]] if i else _FIRST[words[0]]


class _Tail:
    """A target whose last token is replaced by ``tail`` (a stop sequence began inside it):
    only such answers pay for this wrapper, not the hot path of every other one."""

    __slots__ = ("count", "emitted", "tail", "target")

    def __init__(self, target: Target, count: int, tail: str) -> None:
        self.target = target
        self.count = count
        self.tail = tail
        self.emitted = 0

    def emit(self, text: str) -> bool:
        self.emitted += 1
        return self.target.emit(self.tail if self.emitted == self.count else text)

    def emit_one(self, text: str) -> bool:
        self.emitted += 1
        return self.target.emit_one(self.tail if self.emitted == self.count else text)

    def done(self) -> None:
        self.target.done()


#: Unpaced tokens pushed per loop iteration before yielding to other streams.
BURST_TOKENS = 256


class Ticker(Protocol):
    """What the :class:`Pacer` steps: a paced generation (:class:`Run`), or an embedder's
    :class:`~streamcore.sources.paced.Paced` source.  It is stepped (``tick``) at its time
    only if its ``state`` is still :data:`WAITING` then (lazy deletion)."""

    state: int

    def tick(self) -> None: ...


class Pacer:
    """One timer for every paced generation of a loop: a wheel of millisecond buckets.

    A timer (and a task wake-up) per token is what a paced stream costs when each awaits
    ``asyncio.sleep``.  Here a token due joins the list of its millisecond (a dict lookup
    and a list append: no tuple, no comparison per token), and one ``call_at`` per
    millisecond that has tokens fires them all.  The loop's clock is libuv's, in whole
    milliseconds, so the bucket is the resolution the loop had anyway; a token is written
    at most half a millisecond before its time (rounded to the nearest millisecond).

    A cancelled generation's entry stays until its time comes (then it is skipped): lazy
    deletion, bounded by one entry per generation.
    """

    #: Tokens one firing may emit.  A loop behind schedule (CPU-bound) would otherwise
    #: catch up on every overdue token in one callback and starve the I/O poll: new
    #: requests waited seconds for their first byte at 5000 streams.  The rest goes on in
    #: the next iteration, after I/O has had its turn.
    MAX_STEPS = 512

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = (
        weakref.WeakKeyDictionary())

    __slots__ = ("__weakref__", "_armed", "_timer", "buckets", "keys", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Runs due in each millisecond (``round(loop time * 1000)``), in arrival order.
        self.buckets: dict[int, list[Ticker]] = {}
        #: A heap of the keys of ``buckets``: one push per millisecond, not per token.
        self.keys: list[int] = []
        self._timer: asyncio.TimerHandle | None = None
        self._armed: float = math.inf  # the key the timer is set for

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Pacer:
        pacer = cls._by_loop.get(loop)
        if pacer is None:
            pacer = cls._by_loop[loop] = cls(loop)
        return pacer

    def at(self, when: float, run: Ticker) -> None:
        """Step ``run`` at loop time ``when`` (seconds)."""
        key = round(when * 1000.0)
        bucket = self.buckets.get(key)
        if bucket is not None:
            bucket.append(run)
            return
        self.buckets[key] = [run]
        heapq.heappush(self.keys, key)
        if key < self._armed:
            self._arm(key)

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(key / 1000.0, self._fire)
        self._armed = key

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        keys = self.keys
        buckets = self.buckets
        now = round(self.loop.time() * 1000.0)
        budget = self.MAX_STEPS
        while keys and keys[0] <= now:
            key = keys[0]
            bucket = buckets[key]
            if len(bucket) > budget:  # the rest of this millisecond after the I/O poll
                buckets[key] = bucket[budget:]
                del bucket[budget:]
            else:
                heapq.heappop(keys)
                del buckets[key]
            budget -= len(bucket)
            for run in bucket:
                if run.state is _WAITING:
                    run.tick()
            if not budget:
                break
        if keys:
            key = keys[0] if budget else now  # over budget: again after the I/O poll
            if key < self._armed:
                self._arm(key)


_RUNNING, _WAITING, _PAUSED, _DONE = range(4)
#: The state in which a :class:`Ticker` is stepped at its time.
WAITING = _WAITING


class Target(Protocol):
    """Where a :class:`Run` delivers its tokens."""

    def emit(self, text: str) -> bool:
        """One token; ``False``: pause until :meth:`Run.resume`."""

    def emit_one(self, text: str) -> bool:
        """:meth:`emit`, for a paced token: the only one of its stream in this loop
        iteration (it may be written at once: :meth:`~streamcore.aio.stream.Stream.push_one`)."""

    def done(self) -> None:
        """The last token was emitted."""


class Run:
    """One generation pushed token by token into a :class:`Target`.  No task and no future
    per token."""

    __slots__ = ("count", "emit", "generation", "i", "interval", "loop", "pacer", "start",
                 "state", "target", "words")

    def __init__(self, generation: Generation, target: Target, eager: bool = False,
                 paused_at: int = 0) -> None:
        """``eager``: the caller takes the first step (:meth:`begin`); else it comes in
        the next loop iteration (``call_soon``).  ``paused_at`` (> 0): the caller emitted
        that many tokens of an unpaced answer and was told to wait: the run goes on at
        :meth:`resume`."""
        self.generation = generation
        self.target = target
        self.emit = target.emit
        self.words = generation._words
        model = generation.model
        self.count = generation.count
        self.interval = 1.0 / model.tokens_per_s if model.tokens_per_s > 0 else 0.0
        self.loop = asyncio.get_running_loop()
        delay = model.first_token_delay_s
        #: Only a paced or delayed run needs the wheel: an unpaced one (the benchmarks',
        #: a user's "as fast as you read") does not pay the per-loop lookup.
        self.pacer = Pacer.of(self.loop) if self.interval or delay > 0 else None
        self.i = 0
        self.start = 0.0
        self.state = _WAITING
        if delay > 0 and self.count > 0:
            self.pacer.at(self.loop.time() + delay, self)  # type: ignore[union-attr]
        elif paused_at:
            self.i = paused_at
            self.state = _PAUSED
        else:
            self.state = _RUNNING
            if not eager:
                self.loop.call_soon(self.step)

    def begin(self) -> None:
        """The first step of a run made ``eager``, now, in the caller's call (a delayed
        run waits for its time on the wheel as it would anyway)."""
        if self.state is _RUNNING:  # unpaced: the first burst (a short answer whole);
            self.step()             # paced: the first token, the rest from the wheel

    def step(self) -> None:
        if self.state is not _RUNNING:
            return
        if self.interval and self.i < self.count:
            self.tick()  # paced: one token now, the next from the Pacer
            return
        words = self.words
        emit = self.emit
        count = self.count
        burst = BURST_TOKENS
        while burst and self.i < count:
            i = self.i
            self.i = i + 1
            burst -= 1
            if not emit(_SPACED[words[i & 31]] if i else _FIRST[words[0]]):
                if self.state is _RUNNING:
                    self.state = _PAUSED
                return
        if self.i >= count:
            self.state = _DONE
            self.target.done()
        else:
            self.loop.call_soon(self.step)  # yield the loop between bursts

    def tick(self) -> None:
        """One paced token, now: the Pacer's call for a waiting run (the hot path of a
        paced stream, kept to one emit and one bucket append)."""
        i = self.i
        if i == 0:
            self.start = self.loop.time()
        self.i = i + 1
        self.state = _RUNNING
        if not self.target.emit_one(_SPACED[self.words[i & 31]] if i else _FIRST[self.words[0]]):
            if self.state is _RUNNING:
                self.state = _PAUSED
            return
        if self.i >= self.count:
            self.state = _DONE
            self.target.done()
        elif self.state is _RUNNING:
            self.state = _WAITING
            pacer = self.pacer
            due = self.start + self.i * self.interval
            # Pacer.at's common case inlined (its millisecond has a bucket already: 2000
            # streams at 20 tokens/s put 40 tokens in each): a call less per token.
            bucket = pacer.buckets.get(round(due * 1000.0))  # type: ignore[union-attr]
            if bucket is not None:
                bucket.append(self)
            else:
                pacer.at(due, self)  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.state is not _PAUSED:
            return
        due = self.start + self.i * self.interval
        if self.interval and due > self.loop.time():  # not before its time
            self.state = _WAITING
            self.pacer.at(due, self)  # type: ignore[union-attr]
        else:
            self.state = _RUNNING
            self.step()

    def cancel(self) -> None:
        self.state = _DONE
