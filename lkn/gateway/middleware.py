"""What every request passes through before its route: its id, lkn's error bodies, the keys
(client and admin), who counts as local (``lkn.gateway.trust``), and CORS for browser
clients."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web

from lkn.config import ServerConfig, match_key
from lkn.errors import (BadRequest, Forbidden, LknError, ModelNotFound, Overloaded,
                        PayloadTooLarge, RequestTimeout, Unauthorized, UnsupportedMediaType)
from lkn.gateway.keys import INTAKE, STATE
from lkn.gateway.ui_static import is_ui_path
from lkn.ops.inflight import REQUEST_ID, request_id
from lkn.request.caller import CLIENT, bearer_token, key_matches
from lkn.request.inbound.dialects import error_shape
from lkn.request.trust import box_names, client_of, host_allowed, host_name, is_json, same_site

log = logging.getLogger("lkn.gateway.middleware")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPEN_PATHS = ("/health", "/ready")


def is_admin_path(path: str) -> bool:
    """The operators' routes: the admin API, the traffic status and llama.cpp's router
    actions (``/models/load``, ``/models/unload``)."""
    return (path.startswith("/admin/") or path == "/status" or path.startswith("/status/")
            or path in ("/models/load", "/models/unload"))


def _error_response(exc: LknError, rid: str = "", path: str = "") -> web.Response:
    """lkn's error in the shape of the API ``path`` speaks (OpenAI's unless it is Anthropic's
    or Ollama's), with its source marker."""
    shape = error_shape(path)
    body = exc.body(rid) if shape is None else shape(exc.status, exc.body(rid))
    response = web.json_response(body, status=exc.status, headers=exc.headers())
    if exc.close_connection:
        response.force_close()
    return response


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
        return _error_response(exc, rid, request.path)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error_response(ModelNotFound(f"no route {request.method} {request.path}",
                                                 code="not_found"), rid, request.path)
        if exc.status == 405:
            err = BadRequest(f"method {request.method} is not allowed on {request.path}",
                             code="method_not_allowed")
            err.status = 405
            return _error_response(err, rid, request.path)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # a bug of ours: log it, answer in OpenAI shape, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error_response(LknError(f"internal error in lkn: {exc.__class__.__name__}: "
                                        f"{exc}"), rid, request.path)


def _key_of(request: web.Request, settings: ServerConfig, what: str, *, clients: bool,
            admins: bool) -> None:
    """The request carries one of the keys (client keys: ``server.keys``; admin keys)."""
    token = bearer_token(request)
    if not ((clients and match_key(token, settings.keys) is not None)
            or (admins and key_matches(token, settings.admin_keys))):
        raise Unauthorized(f"invalid or missing {what}: send 'Authorization: Bearer <key>' (or "
                           f"'x-api-key: <key>')")


def _browser_check(request: web.Request, settings: ServerConfig, *, admin: bool) -> None:
    """Without keys, a request must come from this box's own names (DNS rebinding) and not
    from another site's page (Origin, Sec-Fetch-Site); a body must be JSON (a cross-site
    ``text/plain`` POST needs no preflight)."""
    names = box_names(settings.listen, settings.cors_origins, settings.allowed_hosts)
    if not host_allowed(request.host, names, loopback_only=admin) or not same_site(
            request.host, request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
            () if admin else settings.cors_origins):
        raise Forbidden(f"refused: without keys lkn answers neither other sites' pages nor "
                        f"foreign host names (DNS rebinding); name this box's other names in "
                        f"server.allowed_hosts (Host here: {host_name(request.host)[:80]!r}), "
                        f"set server.api_keys, or server.cors_origins for browser clients")
    if request.body_exists and not is_json(request.headers.get("Content-Type", "")):
        raise UnsupportedMediaType("send the body as JSON (Content-Type: application/json)")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who may call what (README "Security"). Client keys (``api_keys``) guard the OpenAI
    routes; admin keys guard ``/admin/`` and ``/status``, which without them answer
    only a direct loopback client. ``/metrics`` and ``/health/{model}`` follow the keys when
    any are set (``metrics_public`` opens /metrics). Health, readiness, the dashboard's static
    files (no data in them) and CORS preflights are open. Without keys every route also
    passes the browser checks (``_browser_check``)."""
    settings = request.app[STATE].cfg.server
    path = request.path
    if path in OPEN_PATHS or is_ui_path(path) or (
            request.method == "OPTIONS" and settings.cors_origins):
        return await handler(request)
    client = client_of(request.remote, request.headers, settings.trusted_proxies)
    request[CLIENT] = client
    keys = settings.requires_key or bool(settings.admin_keys)
    if is_admin_path(path):
        if settings.admin_keys:
            _key_of(request, settings, "admin key (server.admin_keys)", clients=False,
                    admins=True)
            return await handler(request)
        if not client.local:
            raise Forbidden("the admin API and /status answer only a direct loopback client "
                            "(not through a proxy) when server.admin_keys is not set")
        _browser_check(request, settings, admin=True)
    elif path == "/metrics" or path.startswith("/health/"):
        if keys and not (path == "/metrics" and settings.metrics_public):
            _key_of(request, settings, "API key", clients=True, admins=True)
        elif not keys:
            _browser_check(request, settings, admin=False)
    elif settings.requires_key:  # an admin key is not a client key
        _key_of(request, settings, "API key", clients=True, admins=False)
    else:
        _browser_check(request, settings, admin=False)
    return await handler(request)


MiB = 1024 * 1024


def body_limit(settings: ServerConfig) -> int:
    return int(settings.max_body_mb * MiB)


@web.middleware
async def intake_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """At most ``max_in_flight`` requests are read or served at once (a 503 with Retry-After
    beyond, before any body is read); a body larger than ``max_body_mb`` is a 413, one that
    has not arrived within ``body_timeout_s`` a 408 (the connection is closed: the rest of
    a stalled body is never read). Health, readiness and the operator's routes (a long admin
    event stream must not cost a slot, nor a flood lock the operator out) are never turned
    away."""
    if request.path in OPEN_PATHS:
        return await handler(request)
    intake, settings = request.app[INTAKE], request.app[STATE].cfg.server
    counted = not is_admin_path(request.path)
    if counted:
        if intake.in_flight >= settings.max_in_flight:
            intake.refused += 1
            raise Overloaded(f"lkn is serving {intake.in_flight} requests, its limit "
                             f"(server.max_in_flight); try again shortly",
                             headers={"Retry-After": "1"})
        intake.in_flight += 1
    try:
        if request.body_exists:
            request = await _read_body(request, settings)
        return await handler(request)
    finally:
        if counted:
            intake.in_flight -= 1


async def _read_body(request: web.Request, settings: ServerConfig) -> web.Request:
    limit = body_limit(settings)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(settings)
    if request.client_max_size != limit:  # changed by a reload since the app was made
        request = request.clone(client_max_size=limit)
    try:
        if request.content.is_eof():  # the whole body came with the headers: no deadline
            await request.read()
        else:
            async with asyncio.timeout(settings.body_timeout_s):
                await request.read()  # kept by aiohttp: the route's json() reads it from memory
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within "
                             f"{settings.body_timeout_s:g} s (server.body_timeout_s)") from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(settings) from None
    return request


def _too_large(settings: ServerConfig) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {settings.max_body_mb:g} MiB "
                           f"(server.max_body_mb)")


MIDDLEWARES = (request_id_middleware, errors_middleware, auth_middleware, intake_middleware)


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
