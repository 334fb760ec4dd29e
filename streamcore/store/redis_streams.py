"""A replay store shared by processes and nodes: Redis Streams (``--store redis://...``).

Every process keeps its own streams in a :class:`~.memory.MemoryStore` as before, and
*mirrors* them to Redis: a stream is one Redis stream whose entry ids are the frames'
sequence numbers (``<seq>-0``; Centrifugo's design: the cursor is the entry id, so a
resume is one ``XRANGE``), bounded by ``MAXLEN ~`` and a TTL.  A process asked for a
stream it does not run reads it back (``fetch``) into a local copy, which one blocking
reader per process keeps live: a single ``XREAD BLOCK`` over every stream copied here,
fanned out to the local readers (one blocking read per client is the known way to make
this slow).

Keys, and the Lua scripts that write them: :mod:`.redis_wire`.  Other nodes' streams
read back (resume elsewhere, the blocking reader, owners declared lost):
:mod:`.redis_copies`, the base class of :class:`RedisStore`.

One owner per generation: the first write of a stream takes the lease (``SET NX PX``)
with a new fencing token (``INCR``); every later write carries the token and is refused
by Redis if the lease holds another (a node that was partitioned away, or paused past its
lease, learns it lost the stream and stops generating it).  Readers elsewhere check the
leases of the live streams they copy every third of a lease: a lease gone while the
stream is still ``running`` is taken by the reader's node, which appends an
``owner_lost`` error event and the end, and bumps the epoch; every node's readers get it
through the same XREAD.  Nothing waits on a dead owner longer than lease + a third.

The per-token cost is batched: one pipelined round trip per ``redis_flush_interval_s``
for all of a process's streams, one script call per stream holding all its new frames
(one buffer, their lengths), never a command per token.

Redis unreachable: new streams (and resumes that need Redis) are refused with 503
``store_unavailable``; streams already running go on for their readers in this process
(and can be resumed here, from memory) but are no longer mirrored; copies of other
nodes' streams end with a ``store_unavailable`` error event.  Once Redis answers again,
new streams are mirrored as before.

Layer: ``store/``, like :class:`~.memory.MemoryStore`.  It does I/O (asyncio, the
``redis`` client), which every layer above ``proto/`` may; it reaches a generation only
through the :class:`~.base.Owner` interface and readers only through
:class:`~.base.Reader`, so it needs nothing of ``aio/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import OwnerLost, StoreLost, StoreUnavailable
from ..limits import Limits
from ..proto.pipe import PAUSED, Cursor, TokenLog
from .base import Entry
from .memory import MemoryStore
from .redis_copies import RedisCopies
from .redis_wire import APPEND, RETRY_S, TAKE_OVER, pack_frames, redis_module

__all__ = ["RedisStore", "redis_module"]

log = logging.getLogger("streamcore")

#: The flush interval per live stream of the process, when that is longer than
#: ``redis_flush_interval_s`` (seconds): 1000 streams keep 5 ms, 5000 flush every 25 ms.
SCAN_S_PER_STREAM = 5e-6


class _RemoteReaders:
    """On the owner: the readers of one of its streams on other nodes, as one reader of
    the generation, so that its disconnect policy counts them (a client that moved to
    another node keeps its answer going).  Their nodes renew it (``hold``, every third
    of a lease); unrenewed for a lease, it leaves.  Its cursor is what Redis holds, so a
    generation read only elsewhere is paced by the mirror."""

    __slots__ = ("cursor", "expires")

    #: Never woken: the write loop takes the frames (see :meth:`wake`).
    scheduled = True

    def __init__(self, log_: TokenLog, sent: int, expires: float) -> None:
        self.cursor = Cursor(log_, sent)
        self.expires = expires

    def wake(self) -> None:
        pass  # the write loop takes the frames, every flush interval

    def flush(self) -> None:
        pass


class _Owned:
    """One of this process's streams, as mirrored to Redis."""

    __slots__ = ("ending", "entry", "keys", "remote", "sent", "token")

    def __init__(self, entry: Entry, keys: tuple[bytes, ...]) -> None:
        self.entry = entry
        #: Its frames, meta and lease keys.
        self.keys = keys
        #: The first seq not yet in Redis.
        self.sent = entry.log.first_seq
        #: The fencing token of our lease ('0': not taken yet).
        self.token = b"0"
        self.ending = False
        #: Its readers on other nodes, while they hold it.
        self.remote: _RemoteReaders | None = None


class RedisStore(RedisCopies):
    """Streams of this process in memory and mirrored to Redis; other nodes' streams read
    back from it.  :meth:`open` connects (a server calls it), :meth:`close` writes what is
    pending and disconnects."""

    def __init__(self, url: str, limits: Limits, *, prefix: str = "sc:",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.limits = limits
        self.prefix = prefix.encode()
        self._local = MemoryStore(clock, limits.resume_retention_s, limits.resume_budget_bytes)
        self._owned: dict[str, _Owned] = {}
        # What RedisCopies declares (the state both halves share):
        self._copies = {}
        self.available = False
        self.node = b""
        self._client = None
        self._blocking = None
        self._sha = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._work: asyncio.Event | None = None
        self._wake_last = b"0-0"
        self._closed = False
        self._lease_ms = max(1, int(limits.redis_lease_s * 1000))
        self._ttl_ms = max(1, int((limits.resume_retention_s + limits.redis_lease_s) * 1000))
        self._error_frame = OwnerLost().envelope()

    # -- life --------------------------------------------------------------------------

    async def open(self) -> None:
        aioredis = redis_module()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One retry, at once: a connection Redis closed (a restart) is made again; a Redis
        # that is down fails the retry as fast (refused), one that hangs in 2 timeouts.
        timeout = self.limits.redis_timeout_s
        self.node = os.urandom(6).hex().encode()  # per process: forked workers differ
        self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1))
        self._blocking = aioredis.Redis.from_url(
            self.url, socket_timeout=timeout + self.limits.redis_lease_s,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1),
            single_connection_client=True)
        self._work = asyncio.Event()
        await self._ping()
        if not self.available:
            log.warning("redis at %s does not answer: new streams are refused (503) until "
                        "it does", self.url)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._write_loop()), loop.create_task(self._read_loop())]

    async def close(self) -> None:
        """The last frames (and ends) of this process's streams go out, then the
        connections close."""
        if self._closed:
            return
        self._closed = True
        if self.available and self._owned:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), self.limits.redis_timeout_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for client in (self._client, self._blocking):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    # -- the ReplayStore interface (fetch: RedisCopies) --------------------------------

    def add(self, entry: Entry) -> None:
        if not self.available:
            raise StoreUnavailable("the shared replay store (Redis) does not answer: "
                                   "no new stream until it does",
                                   self.limits.retry_after_s)
        self._local.add(entry)
        self._owned[entry.id] = _Owned(entry, self._keys(entry.id)[:3])
        assert self._work is not None
        self._work.set()

    def ended(self, entry: Entry) -> None:
        self._local.ended(entry)
        owned = self._owned.get(entry.id)
        if owned is not None:
            owned.ending = True

    def find(self, stream_id: str) -> Entry | None:
        return self._local.find(stream_id)

    def live(self) -> list[Entry]:
        return self._local.live()

    def entries(self) -> list[Entry]:
        """What this process holds: its streams and its copies of others', live and kept
        (the stream inspector's list)."""
        return self._local.entries()

    # -- this process's streams, mirrored ----------------------------------------------

    def _hold(self, stream_id: str) -> None:
        """Another node has readers of this stream of ours: they count as one reader."""
        owned = self._owned.get(stream_id)
        if owned is None or owned.entry.owner is None:
            return
        expires = asyncio.get_running_loop().time() + self.limits.redis_lease_s
        if owned.remote is None:
            owned.remote = _RemoteReaders(owned.entry.log, owned.sent, expires)
            owned.entry.attach(owned.remote)
        owned.remote.expires = expires

    def _release(self, owned: _Owned, now: float) -> None:
        """Remote readers not renewed for a lease (or a stream that ended) leave."""
        remote = owned.remote
        if remote is not None and (now >= remote.expires or owned.entry.owner is None):
            owned.remote = None
            owned.entry.detach(remote)

    async def _write_loop(self) -> None:
        assert self._work is not None
        loop = asyncio.get_running_loop()
        renew_at = 0.0
        while not self._closed:
            if not self.available:
                await asyncio.sleep(RETRY_S)
                await self._ping()
                continue
            if not self._owned:
                self._work.clear()
                await self._work.wait()
            # A flush looks at every live stream of this process (~0.15 us each): with
            # thousands the interval grows so that the scan stays a few % of a core.
            await asyncio.sleep(max(self.limits.redis_flush_interval_s,
                                    len(self._owned) * SCAN_S_PER_STREAM))
            renew = loop.time() >= renew_at
            if renew:
                renew_at = loop.time() + self.limits.redis_lease_s / 3
            try:
                await self._flush(renew)
            except Exception as exc:
                self._unreachable(exc)

    async def _flush(self, renew: bool = False) -> None:
        """Every stream's new frames (and ends) in one script call, one round trip (the
        per-token cost is a share of it); leases renewed every third of a lease."""
        keys: list[bytes] = [self.prefix + b"fence"]
        args: list[Any] = [self.node, self._lease_ms, self._ttl_ms,
                           self.limits.redis_stream_maxlen]
        batch: list[tuple[_Owned, int, int, bool]] = []
        now = asyncio.get_running_loop().time()
        for owned in list(self._owned.values()):
            entry = owned.entry
            log_ = entry.log
            head = log_.next_seq
            if renew:
                self._release(owned, now)
            ending = owned.ending
            token = owned.token
            if owned.sent >= head and not ending and token != b"0" and not renew:
                continue  # nothing new, the lease not due
            start = max(owned.sent, log_.first_seq)
            frames = log_.since(start) if start < head else []
            blob, lengths = pack_frames(frames, start, entry.multiline)
            state = (b" error" if entry.error is not None else b" completed") if ending else b""
            keys += owned.keys
            args += (b"%s %d%s" % (token, start, state), lengths, blob,
                     b"%s %d %s" % (entry.epoch.encode(), entry.sse_lines,
                                    entry.sse_end or b"")
                     if token == b"0" else b"")
            batch.append((owned, head, log_.appended_bytes, ending))
        if not batch:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(self._sha["append"], len(keys), *keys, *args)
        if renew:
            pipe.pexpire(self._wake_key(self.node), self._ttl_ms)
        results = (await pipe.execute(raise_on_error=False))[0]
        if isinstance(results, Exception):
            if "NOSCRIPT" in str(results):  # Redis restarted between two flushes
                await self._load_scripts()
            else:  # a bug of ours: no mirroring rather than an error per flush
                log.error("redis refused the frames of %d streams: %s", len(batch), results)
                self._owned.clear()
            return
        for (owned, head, appended, ending), result in zip(batch, results, strict=False):
            entry = owned.entry
            if not result:
                self._owned.pop(entry.id, None)
                log.warning("stream %s: this node lost its lease; generation stopped",
                            entry.id)
                if entry.owner is not None:
                    entry.owner.cancel(OwnerLost("this stream's lease was taken over: its "
                                                 "generation stopped here"))
                continue
            if owned.token == b"0":
                owned.token = b"%d" % result
            owned.sent = max(owned.sent, head)
            remote = owned.remote
            if remote is not None and remote.cursor.next_seq < head:
                remote.cursor.next_seq = head  # Redis has them: the readers there may
                remote.cursor.taken_bytes = appended  # take them
                owner = entry.owner
                if owner is not None and owner.state is PAUSED and owner.origin is remote:
                    owner.writable_changed()
            if ending:
                self._owned.pop(entry.id, None)
                self._release(owned, now)

    # -- reachability ------------------------------------------------------------------

    async def _load_scripts(self) -> None:
        for name, text in (("append", APPEND), ("take_over", TAKE_OVER)):
            self._sha[name] = await self._client.script_load(text)

    async def _ping(self) -> None:
        try:
            await self._client.ping()
            await self._load_scripts()
        except Exception as exc:
            self._unreachable(exc)
            return
        if not self.available:
            if self.node and not self._closed:
                log.info("redis at %s answers: new streams are mirrored to it", self.url)
            self.available = True

    def _unreachable(self, exc: BaseException) -> None:
        """Redis stopped answering: stop mirroring (running streams go on here), end
        the copies of other nodes' streams, refuse new streams until it answers."""
        if self._closed:
            return
        if self.available:
            log.warning("redis at %s does not answer (%s): new streams are refused (503); "
                        "%d running streams go on without resume elsewhere", self.url,
                        type(exc).__name__, len(self._owned))
        self.available = False
        if self._work is not None:
            self._work.set()  # the write loop asks again (it may be waiting for streams)
        for owned in self._owned.values():  # readers elsewhere no longer hold our streams
            if owned.remote is not None:
                owned.remote.expires = 0.0
                self._release(owned, 0.0)
        self._owned.clear()
        for copy in list(self._copies.values()):
            self._end_copy(copy.entry, StoreLost("the shared replay store (Redis) stopped "
                                                 "answering: resume this stream later"))
        self._copies.clear()
