"""Debian's Chromium, headless, driven by Playwright for Python (never ``playwright
install``), as tests/test_browser.py does it; skipped loudly when either is missing."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    sync_playwright = None
    PLAYWRIGHT_MISSING = f"playwright is not importable ({exc}); pip install playwright"
else:
    PLAYWRIGHT_MISSING = ""

__all__ = ["Browser", "Page", "chromium", "poll"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def skip_loudly(reason: str) -> None:
    message = f"BROWSER TESTS NOT RUN: {reason}"
    print(f"\n*** {message}", file=sys.stderr)
    pytest.skip(message)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    if sync_playwright is None:
        skip_loudly(PLAYWRIGHT_MISSING)
    executable = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if executable is None:
        skip_loudly(f"no Chromium at {CHROMIUM} nor on PATH; apt-get install -y chromium "
                    "(.ci/run does it as root)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def poll(page: Page, expression: str, timeout: float) -> Any:
    """Evaluate ``expression`` in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            state = page.evaluate("JSON.stringify(window.demo || window.state || null)")
            pytest.fail(f"{expression} not true within {timeout}s; page state: "
                        f"{str(state)[:3000]}")
        time.sleep(0.05)
