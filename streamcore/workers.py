"""``streamcore serve --workers N``: N worker processes on one port, and their supervisor.

Why processes: one event loop is one core; a token stream costs CPU per token, so a
host's cores are used by several loops, in several processes (the GIL).

How they share a port: each worker opens its **own** listening socket with
``SO_REUSEPORT`` (Linux 3.9+), and the kernel spreads new connections over the listeners
by a hash of the connection's addresses.  Unlike one socket shared by every worker (the
pre-fork ``accept()`` model) no worker wakes for a connection another takes, and a busy
worker does not take more than its share.  The price: the connections that sit in a
worker's own accept queue when it dies are reset (a client retries).

The supervisor (the process you started) reserves the port with a socket bound with
``SO_REUSEPORT`` but never listening -- so that ``--port 0`` picks one port for all, and
so that no other program takes it while a worker restarts; a socket that does not listen
receives no connection -- then starts the workers: the same command line, ``--port``
the reserved port, and in the environment

* ``STREAMCORE_WORKER``: the worker's index, 0 .. N-1 (metrics and stream ids use it);
* ``STREAMCORE_WORKERS``: N;
* ``STREAMCORE_RUN_DIR``: a directory the supervisor made for this run (each worker's
  metrics file lives there; see :mod:`streamcore.metrics`), removed when it exits.

A worker that dies is started again, after a delay that doubles with each death that
comes soon after a start (``worker_restart_backoff_max_s`` at most), so that a worker
that crashes at once does not spin.  SIGTERM to the supervisor drains every worker (each
gets SIGTERM: it stops accepting and lets its streams finish, up to
``drain_timeout_s``), then the supervisor exits 0; SIGINT stops them at once.

Global budgets are shared: each worker gets ``1/N`` of ``max_connections``,
``max_connections_per_ip``, ``max_buffered_bytes_total`` and ``resume_budget_bytes``
(rounded up), so N workers together hold what one process would (:func:`share`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .limits import Limits

log = logging.getLogger("streamcore")

WORKER_ENV = "STREAMCORE_WORKER"
WORKERS_ENV = "STREAMCORE_WORKERS"
RUN_DIR_ENV = "STREAMCORE_RUN_DIR"
#: The file descriptor a worker writes one line to once it listens.
READY_FD_ENV = "STREAMCORE_READY_FD"

#: The budgets of the whole server that N workers share (each gets 1/N, rounded up).
SHARED_BUDGETS = ("max_connections", "max_connections_per_ip", "max_buffered_bytes_total",
                  "resume_budget_bytes")
#: A worker that lived at least this long before it died had no crash loop: its next
#: restart comes at once (seconds).
HEALTHY_UPTIME_S = 10.0
#: The first delay of a worker that died soon after its start (seconds); doubled for each
#: death in a row.
FIRST_BACKOFF_S = 0.1


def worker_index() -> int | None:
    """This process's worker index, None when it is not a supervised worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def share(limits: Limits, workers: int) -> Limits:
    """``limits`` for one of ``workers`` processes: the server-wide budgets divided."""
    if workers <= 1:
        return limits
    changes = {name: -(-getattr(limits, name) // workers) for name in SHARED_BUDGETS}
    return limits.replace(**changes)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening yet)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent (the supervisor) dies, so that a
    supervisor killed with SIGKILL leaves no worker behind (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def tell_ready(index: int) -> None:
    """A worker listens: tell the supervisor (one line on the inherited pipe)."""
    fd = os.environ.get(READY_FD_ENV)
    if fd is not None and fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), b"%d\n" % index)
            os.close(int(fd))


@dataclass
class Slot:
    """One worker position: its process, when it started, its deaths in a row."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


def backoff_s(failures: int, most_s: float) -> float:
    """The delay before a restart after ``failures`` quick deaths in a row."""
    if failures <= 0:
        return 0.0
    return float(min(most_s, FIRST_BACKOFF_S * 2 ** (failures - 1)))


class Supervisor:
    """Starts N workers, restarts the ones that die, and stops them all on a signal."""

    def __init__(self, argv: Sequence[str], host: str, port: int, workers: int,
                 limits: Limits, run_dir: str | None = None) -> None:
        self.argv = list(argv)
        self.host = host
        self.workers = workers
        self.limits = limits
        self.reserve = reuse_port_socket(host, port)
        self.port: int = self.reserve.getsockname()[1]
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="streamcore-run-")
        self.slots = [Slot(i) for i in range(workers)]
        self.ready_r, self.ready_w = os.pipe()
        os.set_blocking(self.ready_r, False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.stop_signal: int | None = None
        self.restarts = 0

    def _spawn(self, slot: Slot) -> None:
        env = dict(os.environ)
        env[WORKER_ENV] = str(slot.index)
        env[WORKERS_ENV] = str(self.workers)
        env[RUN_DIR_ENV] = self.run_dir
        env[READY_FD_ENV] = str(self.ready_w)
        argv = [sys.executable, "-m", "streamcore", *self.argv, "--port", str(self.port)]
        slot.proc = subprocess.Popen(argv, env=env, pass_fds=(self.ready_w,))
        slot.started = time.monotonic()

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum

    def run(self, on_ready: Callable[[int], None] | None = None) -> int:
        """Serve until SIGTERM (drain: exit 0 once every worker is gone) or SIGINT."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        try:
            for slot in self.slots:
                self._spawn(slot)
            self._supervise(on_ready)
            return self._stop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old.items():
                signal.signal(signum, handler)
            self.reserve.close()
            for fd in (self.ready_r, self.ready_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r.close()
            self._wake_w.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _supervise(self, on_ready: Callable[[int], None] | None) -> None:
        ready: set[int] = set()
        announced = False
        most = self.limits.worker_restart_backoff_max_s
        while self.stop_signal is None:
            with contextlib.suppress(InterruptedError):
                select.select([self.ready_r, self._wake_r.fileno()], [], [], 0.1)
            with contextlib.suppress(BlockingIOError, OSError):
                for line in os.read(self.ready_r, 4096).split():
                    ready.add(int(line))
            with contextlib.suppress(BlockingIOError, OSError):
                self._wake_r.recv(4096)
            if not announced and len(ready) == self.workers:
                announced = True
                log.info("%d workers listening on port %d (run directory %s)",
                         self.workers, self.port, self.run_dir)
                if on_ready is not None:
                    on_ready(self.port)
            now = time.monotonic()
            for slot in self.slots:
                proc = slot.proc
                if proc is not None and proc.poll() is not None:
                    lived = now - slot.started
                    slot.failures = 0 if lived >= HEALTHY_UPTIME_S else slot.failures + 1
                    delay = backoff_s(slot.failures, most)
                    log.warning("worker %d (pid %d) exited with %s after %.1f s; restarting "
                                "in %.1f s", slot.index, proc.pid, proc.returncode, lived,
                                delay)
                    slot.proc = None
                    slot.restart_at = now + delay
                if slot.proc is None and now >= slot.restart_at:
                    self.restarts += 1
                    self._spawn(slot)

    def _stop(self) -> int:
        """Forward the signal; wait for every worker (SIGKILL after the drain and a
        margin); 0 if every worker ended cleanly."""
        signum = self.stop_signal or signal.SIGTERM
        draining = signum == signal.SIGTERM
        log.info("%s: stopping %d workers%s", signal.Signals(signum).name, self.workers,
                 f" (drain {self.limits.drain_timeout_s:.1f}s)" if draining else "")
        procs = [slot.proc for slot in self.slots if slot.proc is not None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
        deadline = time.monotonic() + (self.limits.drain_timeout_s if draining else 0.0) + 5.0
        clean = True
        for proc in procs:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d did not stop: killed", proc.pid)
                proc.kill()
                code = proc.wait()
            clean = clean and code == 0
        return 0 if clean else 1


__all__ = ["Supervisor", "backoff_s", "reuse_port_socket", "share", "worker_index"]
