"""Other nodes' streams read back from Redis: the half of
:class:`~.redis_streams.RedisStore` that resumes here a stream generated elsewhere.

``fetch`` copies a stream (its metadata and frames, one round trip) into this process's
:class:`~.memory.MemoryStore`; one blocking reader per process (``_read_loop``: a single
``XREAD BLOCK`` over every live copy and this node's command stream) keeps the copies
live and fans their frames out to the local readers.  Every third of a lease it checks
the copies' owners (a lease gone while the stream runs: ``TAKE_OVER`` ends it with
``owner_lost`` for every node's readers) and tells those owners that readers here still
hold their streams (``hold``).  The key layout and the scripts: ``redis_wire``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..errors import StoreLost, StoreUnavailable, StreamError
from ..limits import Limits
from ..proto.pipe import RUNNING, TokenLog
from ..proto.state import State
from .base import Entry, Reader
from .memory import MemoryStore
from .redis_wire import RETRY_S, seq_of, split_id, xread_items

log = logging.getLogger("streamcore")


class _RemoteOwner:
    """The :class:`~.base.Owner` of a copy: the generation runs on another node."""

    __slots__ = ("entry", "node", "origin", "state", "store")

    def __init__(self, store: RedisCopies, entry: Entry, node: bytes) -> None:
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


class RedisCopies:
    """The read-back half of :class:`~.redis_streams.RedisStore` (its base class): the
    state both halves share is declared here and set by ``RedisStore.__init__``."""

    limits: Limits
    prefix: bytes
    node: bytes
    #: Redis answered the last command (new streams are refused while it does not).
    available: bool
    _local: MemoryStore
    _copies: dict[bytes, _Copy]
    _client: Any
    _blocking: Any
    #: Script name -> SHA1, loaded once per Redis life (EVALSHA keeps each call small).
    _sha: dict[str, bytes]
    _wake_last: bytes
    _closed: bool
    _lease_ms: int
    _ttl_ms: int
    _error_frame: bytes
    #: The mirroring half's (RedisStore): Redis stopped answering; a ``hold`` command.
    _unreachable: Callable[[BaseException], None]
    _hold: Callable[[str], None]

    # -- keys --------------------------------------------------------------------------

    def _keys(self, stream_id: str) -> tuple[bytes, bytes, bytes, bytes]:
        sid = stream_id.encode()
        p = self.prefix
        return p + b"s:" + sid, p + b"m:" + sid, p + b"l:" + sid, p + b"fence"

    def _wake_key(self, node: bytes) -> bytes:
        return self.prefix + b"w:" + node

    # -- resume: a stream read back ----------------------------------------------------

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
            entry.log = TokenLog(self.limits.stream_log_bytes, seq_of(entries[0][0]))
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
            seq, end = split_id(entry_id)
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
            for key, entries in xread_items(result):
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
