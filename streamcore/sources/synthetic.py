"""The embedded synthetic model: deterministic text derived from the prompt.

It behaves like a real model for demos, tests and benchmarks: a first-token delay, a token
rate (0 = as fast as the consumer takes them), ``max_tokens`` honoured with
``finish_reason: "length"``, and otherwise a natural stop after a prompt-derived length.
The same prompt always gives the same text, so tests can compare streamed and non-streamed
answers token for token.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..proto.openai import ChatRequest

_VOCABULARY = (
    "the", "stream", "of", "tokens", "flows", "through", "a", "bounded", "pipe", "to",
    "every", "reader", "while", "the", "server", "keeps", "memory", "flat", "and", "time",
    "honest", "so", "that", "slow", "clients", "never", "grow", "what", "we", "hold", "and",
    "each", "event", "carries", "its", "id", "for", "resume", "across", "reconnects", "in",
    "order", "exactly", "once",
)


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

    __slots__ = ("_natural", "_words", "finish_reason", "limit", "model", "prompt_tokens")

    def __init__(self, model: SyntheticModel, request: ChatRequest) -> None:
        prompt = request.prompt_text()
        seed = int.from_bytes(hashlib.blake2b(prompt.encode(), digest_size=8).digest(), "big")
        rng = random.Random(seed)
        words = prompt.split()[:16]
        words += rng.choices(_VOCABULARY, k=32 - len(words))
        rng.shuffle(words)
        # 32 words, the first capitalised, the rest with a leading space: token-like pieces.
        self._words = [words[0].capitalize()] + [" " + w for w in words[1:32]]
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
        if model.tokens_per_s <= 0:
            for i in range(count):
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
            yield words[i & 31]

    async def text(self) -> str:
        return "".join([token async for token in self])
