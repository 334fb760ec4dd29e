"""The demo page at ``/``: static HTML, JavaScript and CSS shipped in this package (no build
step, no CDN: it works offline), read once with :mod:`importlib.resources`.

The page streams one answer over SSE and over WebSocket (``/v1/ws``) side by side, with
TTFT, tokens/s and reconnect counts, a button that cuts the SSE connection so that resume
(``GET /v1/streams/{id}`` with ``Last-Event-ID``) completes the text, and a cancel button.
How it keeps a cut stream alive whatever the disconnect policy (even ``cancel``) is told in
``app.js`` and on the page: the POST that starts the stream owns it and is read to the end
in the background, while the displayed text comes from a second reader of the same stream
(an ``EventSource`` on ``GET /v1/streams/{id}``), which is the one the button cuts.
"""

from __future__ import annotations

from importlib import resources

from ..app import App, Request, Response
from ..errors import RequestError

#: The files ``GET /demo/{name}`` serves, with their content types.  Nothing else is
#: served: the names are a fixed list, never a path into the file system.
ASSETS: dict[str, bytes] = {
    "app.js": b"text/javascript; charset=utf-8",
    "style.css": b"text/css; charset=utf-8",
}

#: Same-origin only: the page needs nothing from anywhere else (works offline).
_HEADERS = [
    (b"cache-control", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
     b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


def _read(name: str) -> bytes:
    return resources.files(__package__).joinpath(name).read_bytes()


def add_demo_routes(app: App) -> None:
    """``GET /`` (and HEAD): the demo page; ``GET /demo/{name}``: its script and style;
    an unknown name is a 404 with an OpenAI-style error body."""
    index = Response(_read("index.html"), headers=list(_HEADERS),
                     content_type=b"text/html; charset=utf-8")
    assets = {name: Response(_read(name), headers=list(_HEADERS), content_type=kind)
              for name, kind in ASSETS.items()}

    @app.route("GET", "/", public=True)
    async def demo_page(request: Request) -> Response:
        return index

    @app.route("GET", "/demo/{name}", public=True)
    async def demo_asset(request: Request) -> Response:
        name = request.path_params["name"]
        found = assets.get(name)
        if found is None:
            raise RequestError(f"no demo file {name!r} (there are: {', '.join(assets)})",
                               status=404, param="name", code="not_found")
        return found
