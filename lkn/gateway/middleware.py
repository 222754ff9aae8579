"""What every request passes through before its route: its id, lkn's error bodies, the keys
(client and admin), the loopback rule of the admin API, and CORS for browser clients."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Awaitable, Callable

from aiohttp import web

from lkn.errors import BadRequest, Forbidden, LknError, ModelNotFound, Unauthorized
from lkn.gateway.keys import STATE
from lkn.gateway.ui_static import is_ui_path
from lkn.ops.inflight import REQUEST_ID, request_id
from lkn.request.caller import bearer_token, key_matches

log = logging.getLogger("lkn.gateway.middleware")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = ("/health", "/ready", "/metrics")


def is_admin_path(path: str) -> bool:
    """The operators' routes: the admin API and the traffic status."""
    return path.startswith("/admin/") or path == "/status" or path.startswith("/status/")


def _error_response(exc: LknError, rid: str = "") -> web.Response:
    return web.json_response(exc.body(rid), status=exc.status, headers=exc.headers())


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request has an id (the client's ``x-request-id`` or a new one): echoed in the
    response, in lkn's error bodies and in every log line written while it is served."""
    rid = request_id(request.headers.get("x-request-id"))
    token = REQUEST_ID.set(rid)
    try:
        response = await handler(request)
    finally:
        REQUEST_ID.reset(token)
    if not response.prepared:
        response.headers["x-request-id"] = rid
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """lkn's errors, and aiohttp's 404 and 405, answer in OpenAI's shape."""
    rid = REQUEST_ID.get()
    try:
        return await handler(request)
    except LknError as exc:
        return _error_response(exc, rid)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error_response(ModelNotFound(f"no route {request.method} {request.path}",
                                                 code="not_found"), rid)
        if exc.status == 405:
            err = BadRequest(f"method {request.method} is not allowed on {request.path}",
                             code="method_not_allowed")
            err.status = 405
            return _error_response(err, rid)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # a bug of ours: log it, answer in OpenAI shape, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error_response(LknError(f"internal error in lkn: {exc.__class__.__name__}: "
                                        f"{exc}"), rid)


def is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def local_browser_safe(request: web.Request) -> bool:
    """Trusting loopback must not trust a browser on the box: a page of another site can send
    a simple POST (no preflight) to 127.0.0.1, and DNS rebinding can make it read answers. So
    the request's Host must be a loopback name and any Origin must be that same host."""
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    host = host.strip("[]").lower()
    if host != "localhost" and not is_loopback(host):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return request.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    return origin.split("://", 1)[-1].lower() == request.host.lower()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Client keys (``api_keys``) guard the OpenAI routes; admin keys (``admin_keys``) guard
    ``/admin/`` and ``/status``. Without admin keys ``/admin/`` answers loopback only, and
    ``/status`` answers loopback, else is guarded like the OpenAI routes. Health, readiness,
    metrics, the dashboard's static files (``/ui/``: no data in them) and CORS preflights are
    open."""
    settings = request.app[STATE].cfg.server
    path = request.path
    if path in OPEN_PATHS or path.startswith("/health/") or is_ui_path(path) or (
            request.method == "OPTIONS" and settings.cors_origins):
        return await handler(request)
    admin = is_admin_path(path)
    if admin and settings.admin_keys:
        if not key_matches(bearer_token(request), settings.admin_keys):
            raise Unauthorized("invalid or missing admin key: send 'Authorization: Bearer "
                               "<admin key>' (server.admin_keys)")
        return await handler(request)
    local = admin and is_loopback(request.remote) and local_browser_safe(request)
    if path.startswith("/admin/") and not local:
        raise Forbidden("the admin API answers only on loopback (and not to other sites' "
                        "pages in a browser) when server.admin_keys is not set")
    if (settings.api_keys and not local
            and not key_matches(bearer_token(request), settings.api_keys)):
        raise Unauthorized("invalid or missing API key: send 'Authorization: Bearer <key>'")
    return await handler(request)


MIDDLEWARES = (request_id_middleware, errors_middleware, auth_middleware)


def add_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Browser clients from these origins may call the OpenAI routes (preflights answered by
    aiohttp-cors; lkn's own headers exposed); never the admin API or /status. Called after
    every route is added; changing the origins takes a restart."""
    import aiohttp_cors  # only servers that set cors_origins pay for it

    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers="*",
                                           allow_headers="*", allow_methods="*")
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("path") or info.get("formatter") or "")
        if not is_admin_path(path):
            cors.add(route)
