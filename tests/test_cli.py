"""The first hour with the ``streamcore`` command: what ``serve`` prints when it listens
(and that it is the README's sample), ``--version``, and what the package ships."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import httpx_sse
import orjson
import pytest
from conftest import ROOT
from websockets.asyncio.client import connect

import streamcore
from streamcore.cli import DISTRIBUTION, version

MARKER = "<!-- startup-output:"


def readme_startup_output() -> list[str]:
    """The fenced block after the README's startup-output marker."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER):]
    block = after.split("```\n", 2)[1]
    return block.rstrip("\n").split("\n")


def read_lines(proc: subprocess.Popen[bytes], count: int, timeout: float = 15.0) -> list[str]:
    """The first ``count`` lines of the process's stdout (fails on exit or timeout)."""
    assert proc.stdout is not None
    lines: list[str] = []
    buffer = b""
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr and proc.poll() is not None else ""
            pytest.fail(f"got {lines!r} then nothing (exit {proc.poll()}): {err[-2000:]}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines += [line.decode() for line in done]
    return lines


def test_serve_prints_the_readme_startup_output_and_every_endpoint_answers() -> None:
    expected = readme_startup_output()
    proc = subprocess.Popen([sys.executable, "-m", "streamcore", "serve", "--port", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        printed = read_lines(proc, len(expected))
        match = re.search(r"http://127\.0\.0\.1:(\d+)$", printed[0])
        assert match, printed[0]
        port = int(match.group(1))
        assert port != 0
        # Exactly the README's sample, but for the port and the version.
        as_readme = [line.replace(f"127.0.0.1:{port}/", "127.0.0.1:8000/")
                     .replace(f"127.0.0.1:{port}", "127.0.0.1:8000")
                     .replace(f"streamcore {version()} ", "streamcore 0.1.0 ")
                     for line in printed]
        assert as_readme == expected
        # Every endpoint it lists is served there.
        urls = [line.split()[1] for line in printed[1:]]
        base = f"http://127.0.0.1:{port}"
        assert urls[0] == f"{base}/"
        page = httpx.get(urls[0], timeout=5)
        assert page.status_code == 200 and b"<html" in page.content.lower()
        urls = urls[1:]
        assert urls == [f"{base}/v1/chat/completions", f"{base}/v1/streams/{{id}}",
                        f"ws://127.0.0.1:{port}/v1/ws", f"{base}/v1/models",
                        f"{base}/healthz", f"{base}/v1/streams", f"{base}/metrics"]
        assert httpx.get(urls[4], timeout=5).json() == {"status": "ok"}
        assert httpx.get(urls[5], timeout=5).json()["object"] == "list"
        assert "# TYPE streamcore_streams_finished_total counter" in httpx.get(
            urls[6], timeout=5).text
        models = httpx.get(urls[3], timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["synthetic"]  # the model it names
        body = {"model": "synthetic", "messages": [{"role": "user", "content": "hi"}],
                "stream": True, "max_tokens": 3}
        with httpx.Client(timeout=10) as client:
            with httpx_sse.connect_sse(client, "POST", urls[0], json=body) as source:
                stream_id = source.response.headers["x-stream-id"]
                posted = [e.data for e in source.iter_sse()]
            with httpx_sse.connect_sse(client, "GET",
                                       urls[1].replace("{id}", stream_id)) as source:
                assert [e.data for e in source.iter_sse()] == posted

        async def over_ws() -> str:
            async with connect(urls[2], open_timeout=5) as ws:
                await ws.send(orjson.dumps({"type": "request", "id": "a",
                                            "body": body}).decode())
                while True:
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                    if message["type"] not in ("stream", "chunk"):  # stream: names it
                        return str(message["type"])

        assert asyncio.run(over_ws()) == "done"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_banner_names_the_model_and_rate_it_serves() -> None:
    from streamcore.cli import startup_banner
    from streamcore.sources.synthetic import SyntheticModel

    unpaced = startup_banner("::1", 9, SyntheticModel(name="m", tokens_per_s=0))
    assert unpaced.split("\n")[0].endswith("serving model 'm' (unpaced) on http://[::1]:9")
    assert "ws://[::1]:9/v1/ws" in unpaced
    secure = startup_banner("h", 9, SyntheticModel(), tls=True)
    assert secure.split("\n")[0].endswith(" on https://h:9")
    assert "wss://h:9/v1/ws" in secure and "http://" not in secure


def fake_distribution(where: Path, name: str, version: str) -> None:
    """An installed distribution as importlib.metadata finds one: a dist-info directory."""
    info = where / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def run_version(path: Path | None = None) -> str:
    """``streamcore --version`` with ``path`` first on sys.path (before the checkout, whose
    ``*.egg-info`` an editable install leaves there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(p) for p in (path, ROOT) if p is not None])}
    result = subprocess.run([sys.executable, "-m", "streamcore", "--version"],
                            cwd=path or ROOT, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_version_is_the_distributions_and_never_the_strangers(tmp_path: Path) -> None:
    assert run_version() == f"streamcore {version()}"
    # The PyPI project called "streamcore" (another one) installed beside us: not ours.
    fake_distribution(tmp_path / "other", "streamcore", "0.1.5")
    assert run_version(tmp_path / "other") == f"streamcore {version()}"
    # Installed under our name: that version, not the package's own.
    fake_distribution(tmp_path / "ours", DISTRIBUTION, "7.7.7")
    assert run_version(tmp_path / "ours") == "streamcore 7.7.7"
    assert streamcore.__version__ != "7.7.7"


@pytest.mark.slow  # an isolated build fetches setuptools from the index
def test_the_wheel_is_streamcore_server_with_license_types_and_command(
        tmp_path: Path) -> None:
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "streamcore"), str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "out"), str(tmp_path)], check=True, timeout=300)
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert wheel.name.startswith("streamcore_server-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "streamcore/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names)
    info = next(n for n in names if n.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(info).decode()
    assert "\nName: streamcore-server\n" in metadata
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "streamcore = streamcore.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_no_install_line_fetches_the_unrelated_streamcore() -> None:
    """PyPI's "streamcore" is another project: nothing tells a user to install it."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "streamcore"
    assert all(not re.match(r"streamcore\[", dep) for dep in
               project["optional-dependencies"]["dev"])
    for doc in ("README.md", "CHANGELOG.md", ".ci/run"):
        text = (ROOT / doc).read_text()
        assert not re.search(r"pip install\s+(-U\s+)?['\"]?streamcore(?![-\w])", text), doc
