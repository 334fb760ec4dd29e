"""The one write path of a connection: every byte a connection sends goes through
:meth:`Output.send` or :meth:`Output.sendv`.

This is the seam a byte counter, a metrics hook or a fault injector wraps; off, it costs
one method call and one integer add per flush (never per token: a flush carries every
token that arrived during one loop iteration).  It also owns the deadlines of the output
side: the write stall (a peer that reads nothing for ``write_stall_timeout_s`` while we
have bytes for it is reset: by a timer for our buffer, by the kernel for its own,
:func:`watch_peer`) and the close deadline (a connection told to close that has
not finished closing by then is reset), and the outbound half of flow control
(``pause_writing``/``resume_writing``, one record of "paused" per direction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any

from ..limits import Limits
from .admission import Admission

log = logging.getLogger("streamcore")


def abort(transport: asyncio.BaseTransport | None) -> None:
    """Close now, with a reset (SO_LINGER 0): what the kernel still holds for a client that
    stopped reading is freed at once, not kept until TCP gives up on it."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


def watch_peers(listener: Any, stall_s: float) -> None:
    """Let the kernel measure each peer's progress: with ``TCP_USER_TIMEOUT`` (Linux, RFC
    5482) a connection whose sent bytes stay unacknowledged, or wait behind a closed
    receive window, for ``stall_s`` is reset by the kernel (since Linux 5.11 for the
    window).  Our write-stall timer only sees our own buffer, which a peer that reads
    nothing of a response smaller than the kernel's buffers never fills (measured on
    loopback: ~475 KB of it); the error then reaches the transport as a lost connection.

    Set once on the listening socket: Linux copies it into every connection accepted
    from it (the child socket is cloned from the listener), so that a new connection
    costs no system call and no socket object for it."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or stall_s <= 0:
        return
    with contextlib.suppress(OSError):
        listener.setsockopt(socket.IPPROTO_TCP, option, max(1, int(stall_s * 1000)))


class Output(asyncio.Protocol):
    """A connection's output side.  Subclasses say what to do when the transport takes
    bytes again (:meth:`writable_again`) and call :meth:`_output_lost` when it is gone."""

    __slots__ = ("_close_timer", "_stall_timer", "admission", "bytes_out", "chaos", "limits",
                 "loop", "peer", "read_paused", "transport", "write_paused")

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: Limits,
                 admission: Admission) -> None:
        self.loop = loop
        self.limits = limits
        self.admission = admission
        #: The transport, or None once the connection is lost (or handed over).
        self.transport: Any = None
        self.peer: Any = None
        self.write_paused = False
        self.read_paused = False
        #: Bytes handed to the transport over the connection's life.
        self.bytes_out = 0
        self._stall_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        #: Chaos mode's state for a chaotic connection (streamcore.aio.chaos), else None.
        self.chaos: Any = None

    # -- the write path ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write one buffer (a sparse stream's event: one ``write(2)``)."""
        transport = self.transport
        if transport is not None:
            self.bytes_out += len(data)
            transport.write(data)

    def sendv(self, bufs: list[bytes], size: int = -1) -> None:
        """Write several buffers in one call; ``size``: their total length, if known."""
        transport = self.transport
        if transport is not None:
            self.bytes_out += size if size >= 0 else sum(map(len, bufs))
            transport.writelines(bufs)

    def close_transport(self, deadline_s: float | None = None) -> None:
        """Close once what is buffered is written; reset if that takes over ``deadline_s``
        (default: the write-stall limit, so a peer that reads nothing cannot hold it)."""
        transport = self.transport
        if transport is None:
            return
        transport.close()
        self.close_deadline(self.limits.write_stall_timeout_s if deadline_s is None
                            else deadline_s)

    def close_deadline(self, delay_s: float) -> None:
        """Reset the connection if it is not gone ``delay_s`` seconds from now (a closing
        handshake the peer does not finish, a close the peer does not let drain)."""
        if self._close_timer is None and self.transport is not None:
            self._close_timer = self.loop.call_later(delay_s, self._close_overdue)

    def abort(self) -> None:
        abort(self.transport)

    # -- the inbound half: one record of "paused" for reading ----------------------------

    def reading(self, pause: bool) -> None:
        """Stop or resume reading the peer (its TCP window closes while we do not read);
        ``read_paused`` is the one record of it."""
        transport = self.transport
        if transport is not None and pause is not self.read_paused:
            self.read_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # -- flow control (asyncio.Protocol) -----------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True
        # Called by the transport itself: it is there.
        self.admission.paused(self.limits.write_high_water_bytes,
                              self.transport.get_write_buffer_size())
        self._stall_timer = self.loop.call_later(self.limits.write_stall_timeout_s,
                                                 self._write_stalled)

    def resume_writing(self) -> None:
        self._end_pause()
        self.writable_again()

    def writable_again(self) -> None:
        """The transport's buffer fell below the low-water mark."""

    # -- internals -----------------------------------------------------------------------

    def _end_pause(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.write_paused:
            self.write_paused = False
            self.admission.paused(-self.limits.write_high_water_bytes)

    def _write_stalled(self) -> None:
        self._stall_timer = None
        log.info("closing %s: it read nothing for %.1f s", self.peer,
                 self.limits.write_stall_timeout_s)
        abort(self.transport)

    def _close_overdue(self) -> None:
        self._close_timer = None
        abort(self.transport)

    def _output_lost(self, *, keep_pause: bool = False) -> None:
        """The transport is gone (or handed to another protocol, which then owns the
        pause account: ``keep_pause``)."""
        self.transport = None
        for timer in (self._stall_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._close_timer = None
        if keep_pause:
            self._stall_timer = None
        else:
            self._end_pause()
