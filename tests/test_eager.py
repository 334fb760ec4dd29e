"""start_eagerly: a handler's coroutine runs at once; a task only if it must wait."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest
from loops import LOOPS, run_in

from streamcore.aio.eager import start_eagerly

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outside")


@pytest.fixture(params=sorted(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_coroutine_that_never_waits_runs_now_without_a_task(loop_name: str) -> None:
    async def main() -> None:
        done: list[str] = []

        async def handler() -> None:
            VAR.set("inside")
            done.append(VAR.get())

        tasks = len(asyncio.all_tasks())
        assert start_eagerly(asyncio.get_running_loop(), handler()) is None
        assert done == ["inside"]  # before this function went on
        assert len(asyncio.all_tasks()) == tasks
        assert VAR.get() == "outside"  # its context was a copy

    run_in(loop_name, main)


def test_a_coroutine_that_waits_goes_on_in_a_task(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        seen: list[Any] = []

        async def handler() -> None:
            VAR.set("inside")
            seen.append(await fut)
            await asyncio.sleep(0)  # a bare yield, as the task sees it
            seen.append(VAR.get())  # the same context after the hand-over
            seen.append(await asyncio.sleep(0.001, "slept"))

        task = start_eagerly(loop, handler())
        assert task is not None and seen == []
        loop.call_later(0.001, fut.set_result, 42)
        await asyncio.wait_for(task, 5)
        assert seen == [42, "inside", "slept"]
        assert VAR.get() == "outside"

    run_in(loop_name, main)


def test_cancelling_the_task_reaches_the_coroutine_where_it_waits(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        async def handler() -> None:
            try:
                await loop.create_future()  # forever
            except asyncio.CancelledError:
                log.append("cancelled")
                raise
            finally:
                log.append("finally")

        task = start_eagerly(loop, handler())
        assert task is not None
        await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == ["cancelled", "finally"]

    run_in(loop_name, main)


def test_a_coroutine_that_catches_the_cancellation_may_go_on(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[str] = []

        async def handler() -> None:
            try:
                await loop.create_future()
            except asyncio.CancelledError:
                log.append("caught")
            await asyncio.sleep(0.001)
            log.append("went on")

        task = start_eagerly(loop, handler())
        assert task is not None
        await asyncio.sleep(0.001)
        task.cancel()
        await asyncio.wait_for(task, 5)
        assert log == ["caught", "went on"]

    run_in(loop_name, main)


def test_an_error_in_the_first_step_is_raised_to_the_caller(loop_name: str) -> None:
    async def main() -> None:
        async def handler() -> None:
            raise KeyError("boom")

        with pytest.raises(KeyError):
            start_eagerly(asyncio.get_running_loop(), handler())

    run_in(loop_name, main)
