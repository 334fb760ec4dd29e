"""The event loops the loop-level tests run on: uvloop, as the server runs, and the
standard library's, as an embedding service might."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import uvloop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}


def run_in(loop_name: str, main: Callable[[], Any]) -> Any:
    """``main()`` to completion on a new loop of that kind, then the loop closed."""
    loop = LOOPS[loop_name]()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()
