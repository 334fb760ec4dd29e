"""Who may call: CORS for browsers, API keys for everyone, JSON bodies for JSON endpoints.

Sans-I/O: each check takes a parsed request and returns headers or raises the error to
answer with.  The connection applies them before a handler runs (the error boundary turns
the errors into responses), so no handler can forget one.

- CORS (WHATWG Fetch, "CORS protocol"): an ``Origin`` on the allow-list gets
  ``Access-Control-Allow-Origin`` (that origin, with ``Vary: Origin``) on every response,
  errors included, so that a page can read why it was refused, and
  ``Access-Control-Expose-Headers: X-Stream-Id`` so that it can resume; a preflight
  (``OPTIONS`` with ``Access-Control-Request-Method``) is answered 204 with the methods and
  headers allowed.  An origin not on the list gets no CORS header (the browser refuses).
- API keys (RFC 6750 section 2.1): ``Authorization: Bearer <key>``, compared in constant
  time with every configured key; 401 with ``WWW-Authenticate: Bearer`` otherwise.
- A JSON endpoint refuses a body that is not ``application/json`` with 415 (RFC 9110
  section 15.5.16): a cross-site "simple" form POST (``text/plain``,
  ``application/x-www-form-urlencoded``, ``multipart/form-data``) never reaches a handler.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import RequestError
from .http import Request

#: Methods a preflight may ask for.
ALLOWED_METHODS = b"GET, POST, DELETE, OPTIONS"
#: Request headers a preflight may ask for.
ALLOWED_HEADERS = b"authorization, content-type, last-event-id"
#: How long a browser may cache a preflight's answer (seconds).
PREFLIGHT_MAX_AGE = b"600"


class Unauthorized(RequestError):
    status = 401
    code = "invalid_api_key"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=[(b"www-authenticate", b'Bearer realm="streamcore"')])


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


@dataclass(frozen=True, slots=True)
class Access:
    """One app's access rules.  The default lets everyone in and sends no CORS header."""

    #: Origins allowed to call from a browser (``*``: any); empty: no CORS headers.
    cors_origins: frozenset[str] = frozenset()
    #: Keys a client must present; empty: no key needed.
    api_keys: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, cors_origins: Iterable[str] = (), api_keys: Iterable[str | bytes] = (),
           ) -> Access:
        """From configuration: origins as a browser sends them (``https://host[:port]``,
        no trailing slash), keys as text."""
        origins = frozenset(origin.rstrip("/") for origin in cors_origins)
        keys = tuple(key.encode() if isinstance(key, str) else key for key in api_keys if key)
        return cls(origins, keys)

    def cors_headers(self, request: Request) -> list[tuple[bytes, bytes]]:
        """The CORS headers of a response to ``request`` ([] if it has no allowed origin)."""
        if not self.cors_origins:
            return []
        origin = request.header(b"origin")
        if origin is None:
            return []
        text = origin.decode("latin-1")
        if "*" not in self.cors_origins and text not in self.cors_origins:
            return []
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                (b"access-control-expose-headers", b"X-Stream-Id")]

    def preflight(self, request: Request) -> list[tuple[bytes, bytes]] | None:
        """The headers of a 204 answering a CORS preflight, or None if ``request`` is not
        one (an ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``).  A
        preflight from an origin not allowed gets a 204 without CORS headers: the browser
        then refuses the real request."""
        if (request.method != "OPTIONS" or request.header(b"origin") is None
                or request.header(b"access-control-request-method") is None):
            return None
        headers = self.cors_headers(request)
        if headers:
            headers += [(b"access-control-allow-methods", ALLOWED_METHODS),
                        (b"access-control-allow-headers", ALLOWED_HEADERS),
                        (b"access-control-max-age", PREFLIGHT_MAX_AGE)]
        return headers

    def authorize(self, request: Request) -> None:
        """Raise :class:`Unauthorized` unless the request carries a configured key."""
        if not self.api_keys:
            return
        value = request.header(b"authorization")
        if value is None:
            raise Unauthorized("an API key is required: 'Authorization: Bearer <key>'")
        scheme, _, token = value.partition(b" ")
        token = token.strip()
        # Every key is compared, whatever matches: the time taken says nothing about which
        # key, or which prefix, came close (hmac.compare_digest is constant-time per pair).
        found = False
        for key in self.api_keys:
            found |= hmac.compare_digest(token, key)
        if scheme.lower() != b"bearer" or not found:
            raise Unauthorized("the API key is not valid")


def require_json(request: Request) -> None:
    """Raise :class:`UnsupportedMediaType` for a body that is not JSON."""
    if not request.body:
        return
    content_type = (request.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if content_type != b"application/json" and not (
            content_type.startswith(b"application/") and content_type.endswith(b"+json")):
        shown = content_type[:80].decode("latin-1") or "none"
        raise UnsupportedMediaType(f"the body must be application/json (got {shown})",
                                   param="Content-Type")
