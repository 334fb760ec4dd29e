"""``streamcore serve --tls-cert --tls-key``: HTTPS and WSS through the standard ssl module,
judged by real clients that verify the server against a CA the test made itself (httpx with
``verify=``, the ``websockets`` client over wss, Python's ssl for the protocol floor and
ALPN), and the flags' errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from certs import TestCerts, make_certs
from conftest import ROOT, free_port
from websockets.sync.client import connect as ws_connect

MESSAGES = [{"role": "user", "content": "say something about transport layer security"}]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


def trusting(certs: TestCerts) -> ssl.SSLContext:
    """A client context that trusts the test CA (and verifies the host name)."""
    return ssl.create_default_context(cafile=str(certs.ca))


def _cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "streamcore", "serve", *args],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextlib.contextmanager
def serve_tls(certs: TestCerts, *extra: str) -> Iterator[str]:
    """The daemon with TLS on a free port; yields its https:// URL once /healthz answers
    over a verified TLS connection."""
    port = free_port()
    proc = _cli("--port", str(port), "--tls-cert", str(certs.cert), "--tls-key",
                str(certs.key), *extra)
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited {proc.returncode}: "
                            f"{proc.communicate()[1].decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", verify=trusting(certs), timeout=1).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url}/healthz did not answer over TLS")
            time.sleep(0.05)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


def test_https_sse_and_wss_against_the_test_ca(certs: TestCerts) -> None:
    """One TLS daemon: a streamed completion over HTTPS (httpx, verifying the CA) is the
    non-streamed answer; the same request over wss:// (websockets, verifying the CA) too;
    the handshake is TLS 1.2 or later with ALPN http/1.1; plain HTTP on the TLS port gets no
    HTTP response; a client that does not trust the CA refuses the server."""
    body = {"model": "synthetic", "messages": MESSAGES, "max_tokens": 12}
    with serve_tls(certs, "--token-rate", "0") as url, \
            httpx.Client(verify=trusting(certs), timeout=10) as client:
        expected = client.post(f"{url}/v1/chat/completions",
                               json={**body, "stream": False}).json()
        text = expected["choices"][0]["message"]["content"]
        assert text

        streamed: list[str] = []
        with client.stream("POST", f"{url}/v1/chat/completions",
                           json={**body, "stream": True}) as response:
            assert response.status_code == 200
            assert response.http_version == "HTTP/1.1"
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        for line in lines[:-1]:
            for choice in orjson.loads(line[6:])["choices"]:
                streamed.append(choice["delta"].get("content") or "")
        assert "".join(streamed) == text

        ctx = trusting(certs)
        ws_text: list[str] = []
        with ws_connect(url.replace("https://", "wss://") + "/v1/ws", ssl=ctx,
                        open_timeout=5) as ws:
            ws.send(orjson.dumps({"type": "request", "id": "r1", "body": body}).decode())
            while True:
                message: dict[str, Any] = orjson.loads(ws.recv(timeout=5))
                if message["type"] == "stream":  # names the stream, for a resume
                    continue
                if message["type"] == "chunk":
                    for choice in message["chunk"]["choices"]:
                        ws_text.append(choice["delta"].get("content") or "")
                    continue
                assert message["type"] == "done", message
                assert message["finish_reason"] == "length"
                break
        assert "".join(ws_text) == text

        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        alpn_ctx = trusting(certs)
        alpn_ctx.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection((host, port), timeout=5) as raw, \
                alpn_ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.selected_alpn_protocol() == "http/1.1"  # never h2: we speak 1.1
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

        # A TLS 1.1 client that would accept anything (security level 0, no verification;
        # checked to connect to a server that allows 1.1) is refused: uvloop closes at once.
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection((host, port), timeout=5) as raw, \
                pytest.raises(ssl.SSLError, match=r"PROTOCOL_VERSION|UNEXPECTED_EOF"):
            old.wrap_socket(raw)

        with socket.create_connection((host, port), timeout=5) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw.settimeout(5)
            with contextlib.suppress(OSError):
                assert not raw.recv(100).startswith(b"HTTP/1.1 200")

        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{url}/healthz", timeout=5)  # the system store does not know our CA


@pytest.mark.parametrize(("args", "message"), [
    (["--tls-cert", "{cert}"], "--tls-cert needs --tls-key"),
    (["--tls-key", "{key}"], "--tls-key needs --tls-cert"),
    (["--tls-cert", "{missing}", "--tls-key", "{key}"], "does not exist"),
    (["--tls-cert", "{ca}", "--tls-key", "{key}"], "the key must match the certificate"),
])
def test_tls_flags_errors_are_clear(certs: TestCerts, tmp_path: Path, args: list[str],
                                    message: str) -> None:
    """Half the flags, a missing file, a key of another certificate: exit 2 with a message
    that says what to do, before listening, and no traceback."""
    paths = {"cert": certs.cert, "key": certs.key, "ca": certs.ca,
             "missing": tmp_path / "nope.pem"}
    argv = [a.format(**paths) for a in args]
    proc = _cli("--port", str(free_port()), *argv)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err.decode()
    assert message in err.decode(), err.decode()
    assert "Traceback" not in err.decode()
