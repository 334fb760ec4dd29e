"""A replay store shared by processes and nodes: Redis Streams (``--store redis://...``).

Every process keeps its own streams in a :class:`~.memory.MemoryStore` as before, and
*mirrors* them to Redis: a stream is one Redis stream whose entry ids are the frames'
sequence numbers (``<seq>-0``; Centrifugo's design: the cursor is the entry id, so a
resume is one ``XRANGE``), bounded by ``MAXLEN ~`` and a TTL.  A process asked for a
stream it does not run reads it back (``fetch``) into a local copy, which one blocking
reader per process keeps live: a single ``XREAD BLOCK`` over every stream copied here,
fanned out to the local readers (one blocking read per client is the known way to make
this slow).

Keys (``prefix`` ``sc:``)::

    sc:s:<id>    the frames: id <seq>-0, fields d (payload), m (1: holds a line break);
                 the end: id <last seq>-1, field end (completed | error)
    sc:m:<id>    hash: owner (node id), epoch, state (running | completed | error), sse_end,
                 lines (1: the frames are SSE field lines, Entry.sse_lines)
    sc:l:<id>    the owner's lease: its fencing token, with PX = the lease
    sc:fence     the fencing tokens' counter (INCR)
    sc:w:<node>  a node's wake-up and command stream, part of its XREAD

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

from ..errors import OwnerLost, StoreLost, StoreUnavailable, StreamError
from ..limits import Limits
from ..proto.pipe import PAUSED, RUNNING, Cursor, Frame, TokenLog
from ..proto.state import State
from .base import Entry, Reader
from .memory import MemoryStore

log = logging.getLogger("streamcore")

#: Append the new frames (and ends) of every stream of a flush, in one call: KEYS the
#: fence counter, then per stream its frames, meta and lease keys; ARGV node, lease ms, TTL
#: ms, maxlen, then per stream: "<token> <first seq> <end state>" (token 0: take the lease;
#: end state empty while running), the lengths of its new frames (comma-separated;
#: negative: the frame holds a line break), their bytes end to end, and (when taking the
#: lease) "<epoch> <lines> <sse_end>" (lines: 0 or 1, Entry.sse_lines).  No frames: the
#: lease is renewed.  Returns per stream its token, or 0 when the lease is another's
#: (fenced).
_APPEND = """
local node, lease, ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local function one(ks, km, kl, head, lengths, blob, claim)
  local token, seq, state = string.match(head, '^(%d+) (%d+) ?(%a*)$')
  if token == '0' then
    token = tostring(redis.call('INCR', KEYS[1]))
    if not redis.call('SET', kl, token, 'NX', 'PX', lease) then return 0 end
    local epoch, lines, sse_end = string.match(claim, '^(%S*) (%d) ?(.*)$')
    redis.call('HSET', km, 'owner', node, 'epoch', epoch, 'state', 'running',
               'sse_end', sse_end, 'lines', lines)
  elseif redis.call('GET', kl) ~= token then
    return 0
  else
    redis.call('PEXPIRE', kl, lease)
  end
  seq = tonumber(seq)
  local pos = 1
  for len in string.gmatch(lengths, '[^,]+') do
    local n = tonumber(len)
    local m = '0'
    if n < 0 then n = -n; m = '1' end
    redis.call('XADD', ks, 'MAXLEN', '~', maxlen, seq .. '-0',
               'd', string.sub(blob, pos, pos + n - 1), 'm', m)
    pos = pos + n
    seq = seq + 1
  end
  if state ~= '' then
    redis.call('XADD', ks, (seq - 1) .. '-1', 'end', state)
    redis.call('HSET', km, 'state', state)
    redis.call('DEL', kl)
  end
  redis.call('PEXPIRE', ks, ttl)
  redis.call('PEXPIRE', km, ttl)
  return tonumber(token)
end
local out = {}
for i = 0, (#KEYS - 1) / 3 - 1 do
  out[i + 1] = one(KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i], ARGV[5 + 4 * i],
                   ARGV[6 + 4 * i], ARGV[7 + 4 * i], ARGV[8 + 4 * i])
end
return out
"""

#: Declare a stream's owner lost if its lease is gone while it still runs: KEYS frames,
#: meta, lease, fence counter; ARGV the error event's payload, TTL ms.  The new token
#: holds the lease from now on, so the old owner's writes are refused.  Returns it, or 0.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return 0 end
local token = redis.call('INCR', KEYS[4])
redis.call('SET', KEYS[3], token, 'PX', ARGV[2])
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local seq = 1
if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
redis.call('XADD', KEYS[1], seq .. '-0', 'd', ARGV[1], 'm', '0')
redis.call('XADD', KEYS[1], seq .. '-1', 'end', 'error')
redis.call('HSET', KEYS[2], 'state', 'error', 'epoch', string.format('%x', token))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return token
"""

#: The flush interval per live stream of the process, when that is longer than
#: ``redis_flush_interval_s`` (seconds): 1000 streams keep 5 ms, 5000 flush every 25 ms.
SCAN_S_PER_STREAM = 5e-6

#: How soon an unreachable Redis is asked again (seconds).
RETRY_S = 0.5


def redis_module() -> Any:
    """``redis.asyncio``, or a clear error naming the extra that installs it."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise RuntimeError("--store redis:// needs the redis client: "
                           "pip install 'streamcore-server[redis]'") from None
    return aioredis


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


class _RemoteOwner:
    """The :class:`~.base.Owner` of a copy: the generation runs on another node."""

    __slots__ = ("entry", "node", "origin", "state", "store")

    def __init__(self, store: RedisStore, entry: Entry, node: bytes) -> None:
        self.store = store
        self.entry = entry
        self.node = node
        self.state: State = RUNNING
        self.origin: Reader | None = None

    def reader_joined(self, reader: Reader, origin: bool) -> None:
        pass  # the owner's own readers drive its flow; a copy's readers ride the log

    def reader_left(self, reader: Reader) -> None:
        pass

    def writable_changed(self) -> None:
        pass

    def cancel(self, reason: StreamError | None = None) -> None:
        """With a reason (this server shuts down): end this node's copy only.  Without
        one (a client's cancel): ask the owner's node to stop the generation."""
        if reason is not None:
            self.store._end_copy(self.entry, reason)
        else:
            self.store._send(self.node, b"cancel", self.entry.id)


class _Copy:
    """A live copy of another node's stream, kept up to date by the blocking reader."""

    __slots__ = ("entry", "idle_since", "key", "last_id")

    def __init__(self, entry: Entry, key: bytes, last_id: bytes, now: float) -> None:
        self.entry = entry
        self.key = key
        self.last_id = last_id
        #: When it was last seen without a reader here.
        self.idle_since = now


class RedisStore:
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
        self._copies: dict[bytes, _Copy] = {}
        #: Redis answered the last command (new streams are refused while it does not).
        self.available = False
        self.node = b""
        self._client: Any = None
        self._blocking: Any = None
        #: Script name -> SHA1, loaded once per Redis life (EVALSHA keeps each call small).
        self._sha: dict[str, bytes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._work: asyncio.Event | None = None
        self._wake_last = b"0-0"
        self._closed = False
        self._lease_ms = max(1, int(limits.redis_lease_s * 1000))
        self._ttl_ms = max(1, int((limits.resume_retention_s + limits.redis_lease_s) * 1000))
        self._error_frame = OwnerLost().envelope()

    # -- keys --------------------------------------------------------------------------

    def _keys(self, stream_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        sid = stream_id.encode()
        p = self.prefix
        return p + b"s:" + sid, p + b"m:" + sid, p + b"l:" + sid, p + b"fence"

    def _wake_key(self, node: bytes) -> bytes:
        return self.prefix + b"w:" + node

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

    # -- the ReplayStore interface -----------------------------------------------------

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

    async def fetch(self, stream_id: str, next_seq: int = 1) -> Entry | None:
        """A stream of this process, or a copy of another's read back from Redis (one
        round trip: its metadata and its frames), kept live by the blocking reader.

        A client may have seen frames that are not in Redis yet (the owner writes every
        ``redis_flush_interval_s``): a live copy is awaited, for at most a lease, until it
        holds ``next_seq - 1``, so that the resume neither repeats nor skips."""
        entry = self._local.find(stream_id)
        if entry is None:
            entry = await self._copy(stream_id)
        if entry is not None and entry.owner is not None and entry.log.next_seq < next_seq:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.limits.redis_lease_s
            while (not entry.log.closed and entry.log.next_seq < next_seq
                   and loop.time() < deadline):
                await asyncio.sleep(self.limits.redis_flush_interval_s)
        return entry

    async def _copy(self, stream_id: str) -> Entry | None:
        if not self.available:
            raise StoreUnavailable("the shared replay store (Redis) does not answer: "
                                   "streams of other nodes cannot be resumed until it does",
                                   self.limits.retry_after_s)
        key, meta_key, _, _ = self._keys(stream_id)
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(meta_key)
        pipe.xrange(key, count=self.limits.redis_stream_maxlen + 8)
        try:
            meta, entries = await pipe.execute()
        except Exception as exc:
            self._unreachable(exc)
            raise StoreUnavailable("the shared replay store (Redis) does not answer",
                                   self.limits.retry_after_s) from None
        entry = self._local.find(stream_id)  # another fetch made it meanwhile
        if entry is not None:
            return entry
        if not meta or meta.get(b"state") is None:
            return None
        epoch = meta.get(b"epoch")  # the owner's: a cursor is the same on every node
        entry = Entry(stream_id, self.limits.stream_log_bytes, meta.get(b"sse_end") or None,
                      epoch.decode() if epoch else None)
        entry.sse_lines = meta.get(b"lines") == b"1"
        if entries:
            entry.log = TokenLog(self.limits.stream_log_bytes, _seq_of(entries[0][0]))
        self._local.add(entry)
        last_id = b"0-0"
        if entries:
            last_id = entries[-1][0]
            self._deliver(entry, entries)
        if not entry.log.closed:
            owner = _RemoteOwner(self, entry, meta.get(b"owner", b""))
            entry.owner = owner
            self._copies[key] = _Copy(entry, key, last_id, asyncio.get_running_loop().time())
            self._send(self.node, b"wake", stream_id)  # the blocking read adds this key
            self._send(owner.node, b"hold", stream_id)  # the owner counts our readers
        return entry

    # -- copies of other nodes' streams ------------------------------------------------

    def _deliver(self, entry: Entry, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Frames read from Redis into a copy's log; its readers woken once."""
        log_ = entry.log
        for entry_id, fields in entries:
            if log_.closed:
                break
            seq, end = _split(entry_id)
            if end:
                if fields.get(b"end") != b"completed" and len(log_):
                    entry.error = b"".join(log_.newest)
                self._finish_copy(entry)
                return
            if seq != log_.next_seq:  # trimmed (MAXLEN) before this reader saw it
                self._end_copy(entry, StoreLost(f"events {log_.next_seq} to {seq - 1} of "
                                                "this stream are no longer in the store"))
                return
            if fields.get(b"m") == b"1":
                entry.mark_multiline()
            data = fields.get(b"d", b"")
            log_.append((data,), len(data))
        for reader in entry.readers:
            reader.wake()

    def _finish_copy(self, entry: Entry) -> None:
        entry.log.close()
        entry.owner = None
        self._copies.pop(self._keys(entry.id)[0], None)
        for reader in list(entry.readers):
            reader.wake()
        self._local.ended(entry)

    def _end_copy(self, entry: Entry, error: StreamError) -> None:
        """A copy that cannot go on: its readers here get ``error``; the copy is dropped,
        so a later resume reads the stream from Redis again."""
        if not entry.log.closed:
            entry.add_error(error.envelope())
            self._finish_copy(entry)
        self._local.forget(entry.id)

    def _send(self, node: bytes, command: bytes, stream_id: str) -> None:
        """A command to a node's blocking reader (``wake``: read the keys again;
        ``cancel``: stop a generation), fire and forget."""
        if self.available and node:
            asyncio.get_running_loop().create_task(self._xadd_command(node, command,
                                                                      stream_id))

    async def _xadd_command(self, node: bytes, command: bytes, stream_id: str) -> None:
        key = self._wake_key(node)
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.xadd(key, {command: stream_id.encode()}, maxlen=256, approximate=True)
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()
        except Exception as exc:
            self._unreachable(exc)

    async def _read_loop(self) -> None:
        """The one blocking reader of this process: XREAD over its wake-up stream and
        every live copy; a timeout (a third of a lease) checks the copies' owners."""
        block_ms = max(1, self._lease_ms // 3)
        check_at = 0.0
        loop = asyncio.get_running_loop()
        while not self._closed:
            if not self.available:
                await asyncio.sleep(RETRY_S)
                continue
            streams = {self._wake_key(self.node): self._wake_last}
            for key, copy in self._copies.items():
                streams[key] = copy.last_id
            try:
                result = await self._blocking.xread(streams, block=block_ms)
            except Exception as exc:
                self._unreachable(exc)
                continue
            for key, entries in _items(result):
                if key == self._wake_key(self.node):
                    self._wake_last = entries[-1][0]
                    self._commands(entries)
                    continue
                found = self._copies.get(key)
                if found is not None:
                    found.last_id = entries[-1][0]
                    self._deliver(found.entry, entries)
            if loop.time() >= check_at and self._copies:
                check_at = loop.time() + block_ms / 1000
                self._drop_unread(loop.time())
                await self._check_owners()

    def _drop_unread(self, now: float) -> None:
        """A live copy nobody here has read for a lease is dropped (a later resume reads
        Redis again): copies cost memory only while they have readers."""
        for key, copy in list(self._copies.items()):
            if copy.entry.readers:
                copy.idle_since = now
            elif now - copy.idle_since >= self.limits.redis_lease_s:
                del self._copies[key]
                copy.entry.owner = None
                self._local.forget(copy.entry.id)

    def _commands(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        for _, fields in entries:
            stream_id = fields.get(b"cancel")
            if stream_id is not None:
                entry = self._local.find(stream_id.decode())
                if entry is not None and entry.owner is not None:
                    entry.owner.cancel()
            stream_id = fields.get(b"hold")
            if stream_id is not None:
                self._hold(stream_id.decode())

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

    async def _check_owners(self) -> None:
        """Declare the owner of each live copy lost whose lease is gone (the error event
        comes back through the blocking read, to every node's readers alike)."""
        pipe = self._client.pipeline(transaction=False)
        sha = self._sha["take_over"]
        for key in self._copies:
            sid = key[len(self.prefix) + 2:].decode()
            pipe.evalsha(sha, 4, *self._keys(sid), self._error_frame, self._ttl_ms)
        holds = 0
        for copy in self._copies.values():
            owner = copy.entry.owner
            if copy.entry.readers and isinstance(owner, _RemoteOwner) and owner.node:
                key = self._wake_key(owner.node)
                pipe.xadd(key, {b"hold": copy.entry.id.encode()}, maxlen=256,
                          approximate=True)
                holds += 1
        try:
            taken = await pipe.execute()
        except Exception as exc:
            self._unreachable(exc)
            return
        taken = taken[:len(taken) - holds]
        for key, token in zip(list(self._copies), taken, strict=False):
            if token:
                log.warning("stream %s: its owner's lease expired; its readers are told "
                            "(epoch %s)", key[len(self.prefix) + 2:].decode(), token)

    # -- this process's streams, mirrored ----------------------------------------------

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
            blob, lengths = _pack(frames, start, entry.multiline)
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
        for name, text in (("append", _APPEND), ("take_over", _TAKE_OVER)):
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


def _pack(frames: list[Frame], seq: int, multiline: set[int] | None) -> tuple[bytes, bytes]:
    """Frames as one buffer and their lengths (negative: the frame holds a line break):
    one join per flush, not per token."""
    parts: list[bytes] = []
    lengths: list[str] = []
    for frame in frames:
        n = 0
        for part in frame:
            n += len(part)
        parts += frame
        lengths.append(str(-n) if multiline is not None and seq in multiline else str(n))
        seq += 1
    return b"".join(parts), ",".join(lengths).encode()


def _split(entry_id: bytes) -> tuple[int, bool]:
    """A Redis entry id's ``(seq, is the end)``."""
    seq, _, sub = entry_id.partition(b"-")
    return int(seq), sub != b"0"


def _seq_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _items(result: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREAD's answer as ``[(key, entries)]`` (RESP2 answers a list, RESP3 a map)."""
    if not result:
        return []
    if isinstance(result, dict):
        return [(key, value[0] if value and isinstance(value[0], list) else value)
                for key, value in result.items()]
    return [(key, entries) for key, entries in result]
