"""streamcore.aio.admission.Admission: the registry's caps (server-wide and per peer
address) and the drain's wait, on stand-in connections (only ``peer`` is read)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from streamcore.aio.admission import Admission
from streamcore.limits import Limits


@dataclass(eq=False)
class Conn:
    peer: Any


def test_the_per_ip_cap_counts_each_address_and_frees_its_slots() -> None:
    admission = Admission(Limits(max_connections=10, max_connections_per_ip=2))
    a1, a2, a3 = (Conn(("10.0.0.1", port)) for port in (1, 2, 3))
    b = Conn(("::1", 5, 0, 0))  # IPv6's 4-tuple
    assert admission.admit(a1) and admission.admit(a2)
    assert not admission.admit(a3)  # the third from one address
    assert admission.admit(b)
    admission.release(a3)  # refused: nothing to give back
    assert admission.per_ip == {"10.0.0.1": 2, "::1": 1}
    admission.release(a1)
    assert admission.admit(a3)
    for conn in (a2, a3, b):
        admission.release(conn)
    admission.release(b)  # twice: no count below zero
    assert admission.per_ip == {} and admission.connections == set()


def test_unix_socket_peers_have_no_address_to_cap() -> None:
    """A Unix socket's peer name is ``""`` (or None): no per-address cap applies, only the
    server-wide one."""
    admission = Admission(Limits(max_connections=3, max_connections_per_ip=1))
    conns = [Conn(""), Conn(""), Conn(None), Conn("")]
    assert [admission.admit(c) for c in conns] == [True, True, True, False]
    assert admission.per_ip == {}
    for conn in conns:
        admission.release(conn)
    assert admission.connections == set()


def test_drained_waits_for_the_last_connection() -> None:
    async def main() -> None:
        admission = Admission(Limits())
        unix, tcp = Conn(""), Conn(("127.0.0.1", 1))
        assert admission.admit(unix) and admission.admit(tcp)
        assert not await admission.drained(0.01)  # both still open
        assert not admission.admit(Conn(("127.0.0.1", 2)))  # draining: refused
        waiter = asyncio.ensure_future(admission.drained(5))
        await asyncio.sleep(0)
        admission.release(tcp)
        await asyncio.sleep(0)
        assert not waiter.done()
        admission.release(unix)
        assert await waiter

    asyncio.run(main())
