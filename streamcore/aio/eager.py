"""Run a handler's coroutine at once, and make a task of it only if it has to wait.

Most requests are answered without awaiting anything (the gateway validates the body and
returns an EventStream); a task for each cost a Task, a registration in asyncio's WeakSet
of all tasks and a loop iteration before the handler even started.  This is what Python
3.12's eager task factory does, for 3.11 and for one call site: the first step runs in
the caller's iteration (in a copy of the context, as a task's would), and a coroutine that
suspends goes on in a task that first waits for what it was waiting for.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Coroutine, Generator
from typing import Any


def start_eagerly(loop: asyncio.AbstractEventLoop,
                  coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Step ``coro`` now; ``None`` if that finished it, else the task that goes on."""
    context = contextvars.copy_context()
    try:
        waiting_for = context.run(coro.send, None)
    except StopIteration:
        return None
    except BaseException:
        coro.close()
        raise
    return loop.create_task(_go_on(coro, waiting_for), context=context)


@types.coroutine
def _go_on(coro: Coroutine[Any, Any, None], waiting_for: Any) -> Generator[Any, Any, None]:
    """Yield to the task what ``coro`` yielded (the future it awaits, or None for a bare
    yield), then go on with ``coro`` as if the task had run it from the start."""
    while True:
        try:
            yield waiting_for
        except BaseException as exc:  # the task was cancelled: into coro, where it waits
            try:
                waiting_for = coro.throw(exc)
            except StopIteration:
                return
            continue
        yield from coro  # resumes coro where it was suspended
        return
