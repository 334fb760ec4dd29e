"""The synthetic model's push path: the Pacer's millisecond wheel and a Run's schedule.

Real event loops (uvloop, as the server runs; the stdlib loop, as an embedding service
might), no sockets: a Target that records when each token came.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from loops import LOOPS, run_in

from streamcore.proto.openai import parse_chat_request
from streamcore.sources.synthetic import Pacer, Run, SyntheticModel


def chat(max_tokens: int | None = None, prompt: str = "tell me about streams") -> Any:
    body: dict[str, Any] = {"model": "synthetic",
                            "messages": [{"role": "user", "content": prompt}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return parse_chat_request(orjson.dumps(body))


class Recorder:
    """A Target: the time of every token; pauses when told to."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pause_at: int = -1) -> None:
        self.loop = loop
        self.times: list[float] = []
        self.texts: list[str] = []
        self.pause_at = pause_at
        self.finished = loop.create_future()

    def emit(self, text: str) -> bool:
        self.times.append(self.loop.time())
        self.texts.append(text)
        return len(self.texts) != self.pause_at

    emit_one = emit  # (a paced token: the same here)

    def done(self) -> None:
        self.finished.set_result(len(self.texts))


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_paced_tokens_keep_their_schedule(loop_name: str) -> None:
    """Token i is emitted no earlier than half a millisecond (the wheel's rounding, plus
    the loop clock's millisecond) before start + i / rate, in order, all of them."""
    rate = 200.0

    async def main() -> tuple[Recorder, Run, str]:
        loop = asyncio.get_running_loop()
        model = SyntheticModel(tokens_per_s=rate, first_token_delay_s=0.01)
        generation = model.start(chat(max_tokens=30))
        target = Recorder(loop)
        run = generation.run(target)
        assert await asyncio.wait_for(target.finished, 5) == 30
        return target, run, "".join([t async for t in model.start(chat(max_tokens=30))])

    target, run, text = run_in(loop_name, main)
    assert "".join(target.texts) == text  # the same words as the pulled generator
    for i, at in enumerate(target.times):
        assert at >= run.start + i / rate - 0.0015, (i, at - run.start)
    assert target.times == sorted(target.times)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_many_runs_share_one_wheel_and_a_cancelled_run_is_skipped(loop_name: str) -> None:
    async def main() -> tuple[list[Recorder], Recorder]:
        loop = asyncio.get_running_loop()
        model = SyntheticModel(tokens_per_s=500.0, first_token_delay_s=0.002)
        targets = [Recorder(loop) for _ in range(300)]
        for i, target in enumerate(targets):
            model.start(chat(max_tokens=20, prompt=f"prompt {i}")).run(target)
        cancelled = Recorder(loop)
        run = model.start(chat(max_tokens=20)).run(cancelled)
        await asyncio.sleep(0.012)
        run.cancel()
        emitted = len(cancelled.texts)
        await asyncio.wait_for(asyncio.gather(*(t.finished for t in targets)), 10)
        await asyncio.sleep(0.05)
        assert len(cancelled.texts) == emitted and 0 < emitted < 20
        assert not cancelled.finished.done()
        pacer = Pacer.of(loop)
        assert not pacer.keys and not pacer.buckets  # the cancelled entry was dropped
        return targets, cancelled

    targets, _ = run_in(loop_name, main)
    assert all(len(t.texts) == 20 for t in targets)


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_runs_due_in_one_millisecond_share_its_bucket(loop_name: str) -> None:
    """A Run's next token joins its millisecond's bucket when one is open (Run.tick's own
    append, the common case at scale) and opens it through Pacer.at otherwise: one bucket
    per millisecond, each with its key on the heap once, the runs in the order they
    ticked; then every token comes."""
    rate = 50.0

    async def main() -> list[Recorder]:
        loop = asyncio.get_running_loop()
        model = SyntheticModel(tokens_per_s=rate)
        targets = [Recorder(loop) for _ in range(5)]
        runs = [model.start(chat(max_tokens=3, prompt=f"prompt {i}")).run(target)
                for i, target in enumerate(targets)]
        await asyncio.sleep(0)  # their first steps (call_soon): a token each, now
        assert [len(t.texts) for t in targets] == [1] * 5
        pacer = Pacer.of(loop)
        due = {round((run.start + 1 / rate) * 1000.0) for run in runs}
        assert sorted(pacer.keys) == sorted(due) == sorted(pacer.buckets)
        assert [run for key in sorted(due) for run in pacer.buckets[key]] == runs
        await asyncio.wait_for(asyncio.gather(*(t.finished for t in targets)), 5)
        return targets

    targets = run_in(loop_name, main)
    assert [len(t.texts) for t in targets] == [3] * 5


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_one_firing_emits_at_most_max_steps_then_io_gets_a_turn(loop_name: str) -> None:
    """A loop behind schedule: everything overdue is not emitted in one callback; a
    callback queued during the first firing runs before the rest is emitted."""
    n = Pacer.MAX_STEPS * 2 + 100

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        model = SyntheticModel(tokens_per_s=10.0, first_token_delay_s=0.005)
        targets = [Recorder(loop) for _ in range(n)]
        seen: list[int] = []
        emitted = 0

        def count() -> int:
            return sum(len(t.texts) for t in targets)

        def first_emit(text: str, target: Recorder = targets[0]) -> bool:
            nonlocal emitted
            emitted += 1
            loop.call_soon(lambda: seen.append(count()))
            return Recorder.emit(target, text)

        targets[0].emit_one = first_emit  # type: ignore[method-assign]
        generation = model.start(chat(max_tokens=1))
        for target in targets:
            generation.run(target)
        time.sleep(0.03)  # the loop is blocked: by the time it polls, all are overdue
        await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*(t.finished for t in targets)), 5)
        return seen

    seen = run_in(loop_name, main)
    assert seen == [Pacer.MAX_STEPS]


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
def test_a_paused_run_resumes_not_before_its_time(loop_name: str) -> None:
    rate = 100.0

    async def main() -> tuple[Recorder, Run, float]:
        loop = asyncio.get_running_loop()
        target = Recorder(loop, pause_at=3)
        run = SyntheticModel(tokens_per_s=rate).start(chat(max_tokens=8)).run(target)
        await asyncio.sleep(0.1)
        assert len(target.texts) == 3 and not target.finished.done()  # paused
        resumed_at = loop.time()
        run.resume()
        await asyncio.wait_for(target.finished, 5)
        return target, run, resumed_at

    target, run, resumed_at = run_in(loop_name, main)
    assert len(target.texts) == 8
    # Token 3 was due long ago: at once on resume; the next ones on the original schedule.
    assert target.times[3] <= resumed_at + 0.002
    for i in range(4, 8):
        assert target.times[i] >= run.start + i / rate - 0.0015


@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_an_answer_of_no_tokens_is_done_without_a_token(delay: float) -> None:
    """``--default-tokens 0``: some prompts plan no token at all."""
    model = SyntheticModel(tokens_per_s=50.0, first_token_delay_s=delay, default_tokens=0)
    request = next(r for r in (chat(prompt=f"p{i}") for i in range(1000))
                   if model.start(r).planned_tokens() == 0)

    async def main() -> Recorder:
        target = Recorder(asyncio.get_running_loop())
        model.start(request).run(target)
        assert await asyncio.wait_for(target.finished, 5) == 0
        return target

    assert run_in("uvloop", main).texts == []


def test_an_answer_emitted_whole_now_is_the_runs_and_goes_on_from_a_pause() -> None:
    """``Generation.emit_tokens`` (the gateway's short unpaced answer, without a Run) emits
    what a Run emits; told to wait, a Run made ``paused_at`` goes on from there."""
    model = SyntheticModel()
    request = chat(max_tokens=20)
    assert model.start(request).whole_now
    assert not SyntheticModel(tokens_per_s=50.0).start(request).whole_now
    assert not model.start(chat(max_tokens=257)).whole_now  # over BURST_TOKENS

    async def main() -> tuple[list[str], list[str], int]:
        loop = asyncio.get_running_loop()
        reference = Recorder(loop)
        Run(model.start(request), reference, eager=True).begin()
        assert await reference.finished == 20
        whole = Recorder(loop)
        assert model.start(request).emit_tokens(whole.emit) == 20
        paused = Recorder(loop, pause_at=7)
        generation = model.start(request)
        emitted = generation.emit_tokens(paused.emit)
        run = generation.run(paused, eager=True, paused_at=emitted)
        run.resume()
        assert await asyncio.wait_for(paused.finished, 5) == 20
        assert whole.texts == reference.texts
        return reference.texts, paused.texts, emitted

    reference, resumed, emitted = run_in("uvloop", main)
    assert emitted == 7
    assert resumed == reference
