"""The Redis side of :class:`~.redis_streams.RedisStore`: the key layout, the two Lua
scripts that write it, and the small codecs between frames and Redis entries.

Keys (``prefix`` ``sc:``)::

    sc:s:<id>    the frames: id <seq>-0, fields d (payload), m (1: holds a line break);
                 the end: id <last seq>-1, field end (completed | error)
    sc:m:<id>    hash: owner (node id), epoch, state (running | completed | error), sse_end,
                 lines (1: the frames are SSE field lines, Entry.sse_lines)
    sc:l:<id>    the owner's lease: its fencing token, with PX = the lease
    sc:fence     the fencing tokens' counter (INCR)
    sc:w:<node>  a node's wake-up and command stream, part of its XREAD

Nothing here holds state or does I/O; the store's two halves (``redis_streams``: this
process's streams mirrored; ``redis_copies``: other nodes' streams read back) share it.
"""

from __future__ import annotations

from typing import Any

from ..proto.pipe import Frame

#: Append the new frames (and ends) of every stream of a flush, in one call: KEYS the
#: fence counter, then per stream its frames, meta and lease keys; ARGV node, lease ms, TTL
#: ms, maxlen, then per stream: "<token> <first seq> <end state>" (token 0: take the lease;
#: end state empty while running), the lengths of its new frames (comma-separated;
#: negative: the frame holds a line break), their bytes end to end, and (when taking the
#: lease) "<epoch> <lines> <sse_end>" (lines: 0 or 1, Entry.sse_lines).  No frames: the
#: lease is renewed.  Returns per stream its token, or 0 when the lease is another's
#: (fenced).
APPEND = """
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
TAKE_OVER = """
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


def pack_frames(frames: list[Frame], seq: int, multiline: set[int] | None) -> tuple[bytes, bytes]:
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


def split_id(entry_id: bytes) -> tuple[int, bool]:
    """A Redis entry id's ``(seq, is the end)``."""
    seq, _, sub = entry_id.partition(b"-")
    return int(seq), sub != b"0"


def seq_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def xread_items(result: Any) -> list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]:
    """XREAD's answer as ``[(key, entries)]`` (RESP2 answers a list, RESP3 a map)."""
    if not result:
        return []
    if isinstance(result, dict):
        return [(key, value[0] if value and isinstance(value[0], list) else value)
                for key, value in result.items()]
    return [(key, entries) for key, entries in result]
