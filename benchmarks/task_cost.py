"""What a real Task per plain request costs, against stepping the handler's coroutine
eagerly outside any task (session 3's shape, which broke asyncio.current_task(),
asyncio.timeout(), anyio and the HTTP clients built on them: issue 8).

    python benchmarks/task_cost.py [N=200000] [RUNS=5]

Prints the median over RUNS of the CPU time (process time) per handler run, for a handler
that answers without awaiting (the gateway's), on uvloop.  In-process and single-threaded,
so a shared machine's noise shows as spread between runs, not as a bias of one shape.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import uvloop


async def handler() -> int:
    return 1


def eager(loop: asyncio.AbstractEventLoop) -> None:
    coro = handler()
    try:
        coro.send(None)
    except StopIteration:
        return


def task(loop: asyncio.AbstractEventLoop) -> None:
    loop.create_task(handler())


async def measure(shape: str, n: int) -> float:
    loop = asyncio.get_running_loop()
    start = eager if shape == "eager" else task
    t0 = time.process_time()
    for i in range(n):
        start(loop)
        if i % 1000 == 999:
            await asyncio.sleep(0)  # let the tasks run, as between requests
    await asyncio.sleep(0)
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    results: dict[str, list[float]] = {"eager": [], "task": []}
    for _ in range(runs):
        for shape in results:  # alternating, so drift hits both
            results[shape].append(uvloop.run(measure(shape, n)))
    for shape, values in results.items():
        print(f"{shape:6} {statistics.median(values):6.2f} us per request "
              f"(min {min(values):.2f}, max {max(values):.2f}, {runs} runs of {n})")
    extra = statistics.median(results["task"]) - statistics.median(results["eager"])
    print(f"a Task costs {extra:.2f} us more per request")


if __name__ == "__main__":
    main()
