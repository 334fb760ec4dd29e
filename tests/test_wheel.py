"""The timer wheel (streamcore.aio.wheel): the read deadlines of every HTTP connection and
the WebSockets' ping checks wait in it, so one slot may hold thousands of them."""

from __future__ import annotations

import asyncio

import pytest

from streamcore.aio.wheel import RESOLUTION_S, Wheel


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, fail: bool = False) -> None:
        self.loop = loop
        self.fail = fail
        self.at: float | None = None

    def due(self) -> None:
        self.at = self.loop.time()
        if self.fail:
            raise RuntimeError("a bug of the owner's")


def test_deadlines_come_late_by_at_most_a_slot_never_early() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop)
        items = [Item(loop) for _ in range(3)]
        start = loop.time()
        whens = [start + 0.05, start + 0.12, start + 0.12]
        for item, when in zip(items, whens, strict=True):
            wheel.add(item, when)
        removed = Item(loop)
        wheel.remove(removed, wheel.add(removed, start + 0.05))
        wheel.remove(removed, 10**9)  # a slot that holds nothing: nothing to do
        await asyncio.sleep(0.12 + 2 * RESOLUTION_S)
        for item, when in zip(items, whens, strict=True):
            assert item.at is not None and when - 0.002 <= item.at  # (the loop's clock ms)
        assert removed.at is None and not wheel.slots

    asyncio.run(main())


def test_a_failing_call_does_not_cost_the_others_their_deadlines(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = Wheel(loop)
        when = loop.time() + 0.01
        bad, good = Item(loop, fail=True), Item(loop)
        assert wheel.add(bad, when) == wheel.add(good, when)  # one slot
        await asyncio.sleep(0.01 + 2 * RESOLUTION_S)
        assert bad.at is not None and good.at is not None

    asyncio.run(main())
    assert "a deadline's call failed" in caplog.text and "a bug of the owner's" in caplog.text
