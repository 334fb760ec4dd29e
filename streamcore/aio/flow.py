"""The outbound half of flow control, shared by HTTP and WebSocket connections.

One record of "paused" per direction (here: writing), the server's account of bytes held
by paused transports, and the write-stall deadline: a peer that reads nothing for
``write_stall_timeout_s`` while we have bytes for it is reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..limits import Limits
    from .server import Server

log = logging.getLogger("streamcore")


def abort(transport: asyncio.Transport | None) -> None:
    """Close now, with a reset (SO_LINGER 0): what the kernel still holds for a client that
    stopped reading is freed at once, not kept until TCP gives up on it."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class WriteFlow(asyncio.Protocol):
    """``pause_writing``/``resume_writing`` with the stall deadline; subclasses say what
    to do when writable again (:meth:`writable_again`)."""

    __slots__ = ("_stall_timer", "write_paused")

    server: Server
    limits: Limits
    loop: asyncio.AbstractEventLoop
    transport: Any
    peer: Any

    def __init__(self) -> None:
        self.write_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self.server.paused_bytes += self.limits.write_high_water_bytes
        self._stall_timer = self.loop.call_later(self.limits.write_stall_timeout_s,
                                                 self._write_stalled)

    def resume_writing(self) -> None:
        self._end_pause()
        self.writable_again()

    def writable_again(self) -> None:
        """The transport's buffer fell below the low-water mark."""

    def _end_pause(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.write_paused:
            self.write_paused = False
            self.server.paused_bytes -= self.limits.write_high_water_bytes

    def _write_stalled(self) -> None:
        self._stall_timer = None
        log.info("closing %s: it read nothing for %.1f s", self.peer,
                 self.limits.write_stall_timeout_s)
        abort(self.transport)
