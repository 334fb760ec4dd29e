"""Each fuzz target runs for a couple of seconds, so that the harnesses keep working (and
occasionally find something: a failure prints the seed to replay with --seed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("target", ["fuzz_http", "fuzz_sse", "fuzz_ws", "fuzz_cursor",
                                    "fuzz_chat", "fuzz_wsapi", "fuzz_upstream"])
def test_fuzz_target_runs_clean(target: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / f"{target}.py"), "--seconds", "2"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no invariant broken" in proc.stdout
