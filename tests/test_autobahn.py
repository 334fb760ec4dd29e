"""The Autobahn WebSocket conformance suite (via ``kosoku``, a reimplementation of its
fuzzing client) against an echo App with permessage-deflate: every case, 1.* to 13.*.

Slow (5-10 minutes on two cores): marked ``slow``, so the default run leaves it out; run it
with ``python -m pytest -m slow`` (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Served

import streamcore
from streamcore.limits import Limits, MiB

#: Outcomes that pass (Autobahn's own report colours these green or neutral).
GOOD_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
GOOD_CLOSE = {"OK", "INFORMATIONAL"}
MIN_CASES = 500

LIMITS = Limits(ws_max_message_bytes=20 * MiB, ws_max_frame_bytes=20 * MiB,
                ws_max_fragments=1 << 20,  # case 9.3.1: 4 MiB in 64-byte frames
                ws_close_timeout_s=2.0, drain_timeout_s=2.0)


def echo_app() -> streamcore.App:
    app = streamcore.App(limits=LIMITS)
    app.ws_deflate = True

    @app.websocket("/")
    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    return app


#: The whole suite took ~12.5 min in CI on this 2-core VM (the permessage-deflate cases
#: 12.* and 13.* are most of it, and took as long on the tree before session 6's
#: WebSocket changes: case 12.2.15 34-37 s on both); 25 min leaves room for a slow day.
def run_cases(port: int, outdir: Path, *selection: str,
              timeout: float = 1500) -> dict[str, dict[str, Any]]:
    exe = shutil.which("kosoku")
    if exe is None:
        pytest.skip("SKIPPED LOUDLY: the `kosoku` executable (Autobahn fuzzing client) is "
                    "not on PATH; install it to run the WebSocket conformance suite")
    argv = [exe, "-o", str(outdir), "-p", str(os.environ.get("AUTOBAHN_PARALLEL", "2"))]
    for case in selection:
        argv += ["-i", case]
    argv.append(f"127.0.0.1:{port}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    index = outdir / "index.json"
    assert index.exists(), (f"kosoku wrote no index.json (exit {proc.returncode}):\n"
                            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    report = json.loads(index.read_text())
    assert report, "empty Autobahn report"
    cases: dict[str, dict[str, Any]] = {}
    for agent_cases in report.values():
        cases.update(agent_cases)
    return cases


def case_key(case: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case.split("."))


def failures(cases: dict[str, dict[str, Any]]) -> list[str]:
    bad = []
    for case in sorted(cases, key=case_key):
        result = cases[case]
        behavior = result.get("behavior")
        close = result.get("behaviorClose")
        if behavior not in GOOD_BEHAVIOR or close not in GOOD_CLOSE:
            bad.append(f"{case}: behavior={behavior} behaviorClose={close}")
    return bad


@pytest.mark.slow
@pytest.mark.timeout(1560)
def test_autobahn_full_suite(serve: Callable[..., Served], tmp_path: Path) -> None:
    served = serve(echo_app(), LIMITS)
    cases = run_cases(served.port, tmp_path)
    bad = failures(cases)
    assert not bad, (f"{len(bad)} of {len(cases)} Autobahn cases failed "
                     f"(reports in {tmp_path}):\n" + "\n".join(bad))
    assert len(cases) >= MIN_CASES, f"only {len(cases)} Autobahn cases ran"
    sections = {case.split(".")[0] for case in cases}
    assert {"1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13"} <= sections, sections
