"""The dashboard's files (``/ui/``): HTML, CSS and JavaScript modules shipped inside the package
(``lkn/gateway/ui/``), served as they are: no build step, nothing fetched from elsewhere.

They hold no data: every panel reads ``/status`` and the admin API with the operator's key, so
the files themselves are served without any key (middleware.py's ``auth_middleware`` lets
``/ui/`` through). A strict Content-Security-Policy keeps the page to its own scripts and its
own origin, so nothing injected into it (a model name, an engine's log line) can read the admin
key the page keeps in sessionStorage.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).with_name("ui")
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml"}
HEADERS = {
    # The files change when lkn is upgraded: revalidate rather than run yesterday's script.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
}


def ui_file(name: str) -> Path | None:
    """The dashboard file called ``name`` (no directories), or None."""
    path = UI_DIR / name
    if "/" in name or name.startswith(".") or path.suffix not in CONTENT_TYPES:
        return None
    return path if path.is_file() else None


async def _serve(name: str) -> web.StreamResponse:
    path = ui_file(name)
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={**HEADERS,
                                           "Content-Type": CONTENT_TYPES[path.suffix]})


async def index(request: web.Request) -> web.StreamResponse:
    return await _serve("index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    return await _serve(request.match_info["name"])


async def bare(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui", bare)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/{name}", asset)


def is_ui_path(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


__all__ = ["UI_DIR", "add_routes", "is_ui_path", "ui_file"]
