"""CI smoke of the benchmark harness (benchmarks/run.py --quick): it runs, validates the
streams of streamcore and of the raw-asyncio reference, and writes a results JSON with
tokens in it.  No assertion on timing: CI machines are noisy and this only keeps the harness
from rotting.  Marked slow (about 40 s on two cores): ``python -m pytest -m slow``."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")


@pytest.mark.slow
def test_bench_quick_smoke(tmp_path):
    if not os.path.exists(RUN):
        pytest.skip("benchmarks/run.py is missing")
    for module in ("uvloop", "orjson"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the benchmark smoke needs {module}, which is not installed")
    if not os.path.isdir("/proc/self"):
        pytest.skip("the benchmark harness reads /proc (Linux only)")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, RUN, "--quick", "--servers", "streamcore,raw_asyncio", "--out",
         str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    results = doc["results"]
    by = {(r["workload"], r["server"], r["proto"]): r for r in results}
    for server in ("streamcore", "raw_asyncio"):
        a = by.get(("A", server, "sse"))
        assert a is not None, f"no workload A result for {server}: {proc.stdout[-2000:]}"
        assert "error" not in a, a
        assert a["tokens"] > 0
        assert a["server_cpu_s"] >= 0
    # Every workload produced something measured for the reference server.
    assert {r["workload"] for r in results if "error" not in r} >= {"A", "B", "C", "D"}
