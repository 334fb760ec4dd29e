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
from collections.abc import AsyncIterator
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

    async def _tokens(self) -> AsyncIterator[str]:
        model = self.model
        count = self._natural
        if self.limit is not None and self.limit < count:
            count = self.limit
            self.finish_reason = "length"
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
