"""Replay stores: what is kept of each stream for its readers, live and after its end.

A store holds :class:`Entry` objects (a stream's frames, how it ended, who reads it), never
the generation itself: a live entry reaches its producer through the :class:`Owner`
interface only.  :class:`MemoryStore` is the default; a store shared by several processes
(Redis Streams) implements the same :class:`ReplayStore` interface.
"""

from .base import Entry, Owner, Reader, ReplayStore
from .memory import MemoryStore

__all__ = ["Entry", "MemoryStore", "Owner", "Reader", "ReplayStore"]
