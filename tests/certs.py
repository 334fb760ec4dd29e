"""A test certificate authority and a server certificate for 127.0.0.1 and localhost, made
with the ``openssl`` command line into a temporary directory (no network, ~0.1 s)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class TestCerts:
    """PEM files: the CA's certificate (what a client trusts), the server's chain and key."""

    __test__ = False  # not a test class, whatever its name

    ca: Path
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed: {done.stderr}")


def make_certs(directory: Path) -> TestCerts:
    """A CA and a server certificate signed by it (SAN: IP 127.0.0.1, DNS localhost)."""
    if shutil.which("openssl") is None:
        message = "TLS TESTS NOT RUN: no `openssl` command (apt-get install -y openssl)"
        print(f"\n*** {message}", file=sys.stderr)
        pytest.skip(message)
    d = directory
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", "/CN=streamcore test CA", cwd=d)
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    _run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
         cwd=d)
    return TestCerts(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
