"""The one write path (:class:`streamcore.aio.output.Output`): it counts bytes, and once the
transport is gone (lost, or handed to another protocol) every call on it is a no-op -- what a
metrics or fault-injection wrapper of the seam may rely on."""

from __future__ import annotations

import asyncio

from fake_transport import FakeTransport
from loops import run_in

import streamcore
from streamcore.aio.admission import Admission
from streamcore.aio.output import Output, abort


def test_send_and_sendv_count_bytes() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limits = streamcore.Limits()
        out = Output(loop, limits, Admission(limits))
        out.transport = FakeTransport(loop)
        out.send(b"abc")
        out.sendv([b"de", b"f"])
        out.sendv([b"gh"], 2)
        assert out.bytes_out == 8
        assert out.transport.calls == [("write", b"abc"), ("writelines", b"def"),
                                       ("writelines", b"gh")]

    run_in("asyncio", main)


def test_after_the_transport_is_gone_every_call_is_a_no_op() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limits = streamcore.Limits(write_stall_timeout_s=0.01)
        admission = Admission(limits)
        out = Output(loop, limits, admission)
        transport = FakeTransport(loop)
        out.transport = transport
        out.pause_writing()
        out._output_lost()
        assert out.transport is None and admission.paused_bytes == 0
        out.send(b"x")
        out.sendv([b"y"])
        out.close_transport()
        out.close_deadline(0.0)
        out.abort()
        abort(None)
        await asyncio.sleep(0.03)
        assert out.bytes_out == 0 and transport.calls == [] and not transport.closing

    run_in("asyncio", main)


def test_a_handover_keeps_the_pause_account() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limits = streamcore.Limits()
        admission = Admission(limits)
        out = Output(loop, limits, admission)
        out.transport = FakeTransport(loop)
        out.pause_writing()
        out._output_lost(keep_pause=True)  # the next protocol owns the paused bytes now
        assert admission.paused_bytes == limits.write_high_water_bytes

    run_in("asyncio", main)
