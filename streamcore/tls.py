"""TLS for ``streamcore serve --tls-cert PATH --tls-key PATH``: the standard :mod:`ssl`
module, handed to the event loop's ``create_server`` (nothing above the transport changes).

TLS 1.2 is the minimum (1.0 and 1.1 are deprecated by RFC 8996); ALPN offers only
``http/1.1``, which is what streamcore speaks, so a client that would like ``h2`` falls back
to HTTP/1.1 instead of failing (an HTTP/2 front for browsers is in docs/http2-front.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TLSConfigError(ValueError):
    """The TLS flags or files cannot make a server context (the message says why)."""


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` from a PEM certificate chain and its private key."""
    for what, path in (("certificate", cert), ("private key", key)):
        if not Path(path).is_file():
            raise TLSConfigError(f"TLS {what} file {str(path)!r} does not exist or is not a file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"cannot load the TLS certificate {str(cert)!r} with the key {str(key)!r}: "
            f"{exc.reason or exc} (both must be PEM, and the key must match the "
            "certificate)") from None
    except OSError as exc:
        raise TLSConfigError(f"cannot read the TLS files: {exc}") from None
    return context


def context_from_flags(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """``--tls-cert`` and ``--tls-key``: both (a context) or neither (None)."""
    if not cert and not key:
        return None
    if not cert or not key:
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise TLSConfigError(f"{given} needs {missing}: give both (PEM files) or neither")
    return server_context(cert, key)
