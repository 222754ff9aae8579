"""GatewayServer: the aiohttp application, its long-lived resources, signals and reload.

``create_app(cfg)`` is a pure factory. The HTTP client session and the engine manager live in a
``cleanup_ctx`` generator, so on shutdown the engines stop (after in-flight requests drained)
before the session closes. ``serve()`` binds every configured address, handles SIGTERM/SIGINT
(drain, stop engines, exit) and SIGHUP (reload the Lua file without dropping requests).
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from lkn.gateway import admin
from lkn.cache.store import ResponseCache
from lkn.config import Config, load_config, parse_listen, runtime_backend, with_backends
from lkn.errors import ConfigError
from lkn.fleet import operations
from lkn.fleet.manager import EngineManager
from lkn.engines.registry import EngineRegistry, default_state_dir, sweep_stale
from lkn.errors import BadRequest, Forbidden, LknError, ModelNotFound, Unauthorized
from lkn.ops.events import EventBus
from lkn.request.handler import RequestHandler, models_payload
from lkn.request.state import STATE, GatewayState
from lkn.ops.inflight import REQUEST_ID, request_id
from lkn.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from lkn.ops.metrics import Metrics
from lkn.gateway.ui_static import add_routes as add_ui_routes, is_ui_path
from lkn.ops.notify import Notifier
from lkn.engines.bound import warm_shapes

log = logging.getLogger("lkn.gateway.server")

OPEN_PATHS = ("/health", "/ready", "/metrics")
KEEPALIVE_S = 4.0


@dataclass
class Lifecycle:
    listening: bool = False  # every configured listener is bound (serve())
    stopping: bool = False


def _error_response(exc: LknError, rid: str = "") -> web.Response:
    return web.json_response(exc.body(rid), status=exc.status, headers=exc.headers())


@web.middleware
async def request_id_middleware(request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
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
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
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


def _token(request: web.Request) -> str:
    given = request.headers.get("Authorization", "")
    if given.lower().startswith("bearer "):
        return given[7:].strip()
    return request.headers.get("x-api-key", "")


def _matches(token: str, keys: tuple[str, ...]) -> bool:
    return any(hmac.compare_digest(token.encode(), k.encode()) for k in keys)


def is_loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address((remote or "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@web.middleware
async def auth_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    """Client keys (``api_keys``) guard the OpenAI routes; admin keys (``admin_keys``) guard
    ``/admin/`` and ``/status``. Without admin keys ``/admin/`` answers loopback only, and
    ``/status`` answers loopback, else is guarded like the OpenAI routes. Health, readiness,
    metrics, the dashboard's static files (``/ui/``: no data in them) and CORS preflights are
    open."""
    s = request.app[STATE].cfg.server
    path = request.path
    if path in OPEN_PATHS or path.startswith("/health/") or is_ui_path(path) or (
            request.method == "OPTIONS" and s.cors_origins):
        return await handler(request)
    if admin.is_admin_path(path) and s.admin_keys:
        if not _matches(_token(request), s.admin_keys):
            raise Unauthorized("invalid or missing admin key: send 'Authorization: Bearer "
                               "<admin key>' (server.admin_keys)")
        return await handler(request)
    local = admin.is_admin_path(path) and is_loopback(request.remote) and local_browser_safe(
        request)
    if path.startswith("/admin/") and not local:
        raise Forbidden("the admin API answers only on loopback (and not to other sites' "
                        "pages in a browser) when server.admin_keys is not set")
    if s.api_keys and not local and not _matches(_token(request), s.api_keys):
        raise Unauthorized("invalid or missing API key: send 'Authorization: Bearer <key>'")
    return await handler(request)


def create_app(cfg: Config, *, manager_factory: Callable[..., EngineManager] = EngineManager
               ) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, errors_middleware,
                                       auth_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[NOTIFIER] = Notifier()
    app[LIFECYCLE] = Lifecycle()

    async def resources(app: web.Application) -> AsyncIterator[None]:
        state_dir = cfg.server.state_dir or default_state_dir()
        # Engines a killed lkn left behind hold VRAM: sweep them before anything starts.
        swept = await asyncio.to_thread(sweep_stale, state_dir)
        if swept:
            log.warning("swept %d engine processes left by an lkn that died: %s", len(swept),
                        swept)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            # llama-server closes idle keep-alive connections after 5 s: drop ours sooner.
            connector=aiohttp.TCPConnector(limit=0, force_close=False,
                                           keepalive_timeout=KEEPALIVE_S))
        bus = EventBus()
        manager = manager_factory(cfg, session, registry=EngineRegistry(state_dir), events=bus)
        state = GatewayState(cfg=cfg, manager=manager, session=session, metrics=Metrics(),
                             started=time.monotonic(),
                             cache=ResponseCache(cfg, clock=time.monotonic), bus=bus)
        state.metrics.watch(lambda: _live(state))
        manager.on_backend = lambda model, backend, ok: state.metrics.backend_requests.inc(
            model, backend, "ok" if ok else "failed")
        app[STATE] = state
        app[RELOADER] = Reloader(app)
        housekeeping = asyncio.create_task(_housekeeping(state))
        app[RELOADER].preloads = operations.preload(manager)
        def warm_up() -> None:
            # Only the templates (from the files' headers): a local tokenizer (llama-cpp-python,
            # ~40 MB) is loaded by the first request that must be counted locally.
            warm_shapes(list(cfg.models))

        warm = asyncio.create_task(asyncio.to_thread(warm_up))
        try:
            yield
        finally:
            for task in app[RELOADER].preloads:
                task.cancel()
            housekeeping.cancel()
            app[LIFECYCLE].stopping = True
            await asyncio.gather(warm, return_exceptions=True)  # a thread: it ends by itself
            await app[RELOADER].close()
            await manager.shutdown(state.cfg.server.shutdown_drain_s)
            await session.close()

    app.cleanup_ctx.append(resources)

    def handler(request: web.Request) -> RequestHandler:
        return RequestHandler(app[STATE], REQUEST_ID.get())

    async def chat(request: web.Request) -> web.StreamResponse:
        return await handler(request).chat(request)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handler(request).completions(request)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await handler(request).embeddings(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response(models_payload(app[STATE]))

    async def model_one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        app[STATE].cfg.require(name)  # every name it serves, aliases too, is listed
        return web.json_response(next(item for item in models_payload(app[STATE])["data"]
                                      if item["id"] == name))

    async def health(request: web.Request) -> web.Response:
        """Liveness, cheap: no pids, ports or log tails (those are in /status)."""
        st = app[STATE]
        return web.json_response({"status": "ok",
                                  "uptime_s": round(time.monotonic() - st.started, 1),
                                  "queued": st.manager.queued(),
                                  "in_flight": st.manager.in_flight(),
                                  "config": {"generation": st.manager.generation,
                                             "reloads": st.reloads,
                                             "last_reload_failed": bool(st.last_reload_error)}})

    async def health_model(request: web.Request) -> web.Response:
        st = app[STATE]
        model = st.cfg.require(request.match_info["name"])
        payload = health_of_model(st, model.name)
        return web.json_response(payload, status=503 if payload["status"] == "failed" else 200)

    async def ready(request: web.Request) -> web.Response:
        life = app[LIFECYCLE]
        reason = ("shutting down" if life.stopping else
                  None if life.listening else "listeners not bound yet")
        return web.json_response({"ready": reason is None, "reason": reason,
                                  "config_generation": app[STATE].manager.generation},
                                 status=200 if reason is None else 503)

    async def metrics(request: web.Request) -> web.Response:
        st = app[STATE]
        return web.Response(body=st.metrics.expose(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE,
                                     "X-Content-Type-Options": "nosniff"})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name:.+}", model_one)
    app.router.add_get("/health", health)
    app.router.add_get("/health/{name:.+}", health_model)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    admin.add_routes(app, lambda: app[RELOADER])
    add_ui_routes(app)
    if cfg.server.cors_origins:
        _cors(app, cfg.server.cors_origins)
    return app


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


def _cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Browser clients from these origins may call the OpenAI routes (preflights answered by
    aiohttp-cors; lkn's own headers exposed); never the admin API or /status. Changing the
    origins takes a restart."""
    import aiohttp_cors

    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers="*",
                                           allow_headers="*", allow_methods="*")
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        info = route.resource.get_info() if route.resource is not None else {}
        path = str(info.get("path") or info.get("formatter") or "")
        if not admin.is_admin_path(path):
            cors.add(route)


def health_of_model(state: GatewayState, name: str) -> dict[str, Any]:
    """One model: ``ready`` (an engine answers now), ``asleep``, ``starting``, ``idle`` (no
    engine running; the next request starts one) or ``failed`` (every variant is FAILED and
    waits out its cooldown: requests get a fast 503)."""
    engines = [e for e in state.manager.describe() if e["model"] == name]
    states = {e["state"] for e in engines if not e["retired"]}
    failed = all(r.refusing(state.manager.policy, time.monotonic())
                 for r in state.manager.records() if r.model.public == name and not r.retired)
    status = next((s for s in ("ready", "asleep", "starting") if s in states),
                  "failed" if failed else "idle")
    return {"model": name, "status": status,
            "engines": [{"engine": e["engine"], "ctx": e["ctx_size"], "state": e["state"],
                         "in_flight": e["in_flight"]} for e in engines]}


def _live(state: GatewayState) -> dict[str, Any]:
    m = state.manager
    return {"engines": m.describe(), "in_flight": m.in_flight(), "queued": m.queued(),
            "starts": m.starts, "start_failures": m.start_failures,
            "generation": m.generation,
            "cache": state.cache.describe() if state.cache else [],
            "cache_dropped": dict(state.cache.dropped) if state.cache else {}}


BACKEND_CHECK_S = 5.0  # a backend's health path is asked this often (circuit breakers)


async def _housekeeping(state: GatewayState) -> None:
    checked = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        try:
            await state.manager.sleep_idle()
            if time.monotonic() - checked >= BACKEND_CHECK_S:
                checked = time.monotonic()
                await state.manager.check_backends()
        except Exception:  # never let housekeeping die silently
            log.exception("housekeeping failed")


class Reloader:
    """Reloads run one at a time, in order. A SIGHUP during a reload runs one more reload after
    it (several such signals: still one), so the file's last state always wins."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._lock = asyncio.Lock()
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self.preloads: list[asyncio.Task[None]] = []

    def request(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            await self.reload()
            if not self._again:
                return

    async def reload(self) -> bool:
        """Re-read the config file; on any error keep the running config. Returns success.
        systemd hears RELOADING=1 before and READY=1 after, whatever the outcome."""
        async with self._lock:
            notifier = self._app[NOTIFIER]
            notifier.reloading()
            ok = False
            try:
                ok = await self._reload()
            finally:  # even when cancelled: systemd must not stay in "reloading"
                state = self._app[STATE]
                notifier.ready(f"config generation {state.manager.generation}" if ok else
                               f"reload failed, running config kept: {state.last_reload_error}")
            return ok

    async def _reload(self) -> bool:
        state = self._app[STATE]
        path = state.cfg.path
        try:
            new = await asyncio.to_thread(load_config, path)
        except Exception as exc:  # a bad file (or an unreadable one) keeps the running config
            state.last_reload_error = str(exc)
            log.error("reload of %s failed, keeping the running config: %s", path, exc)
            state.bus.publish("reload", ok=False, generation=state.manager.generation,
                              error=str(exc))
            return False
        if new.server.listen != state.cfg.server.listen:
            log.warning("reload: listen addresses changed; that takes a restart")
        new = self._with_runtime(new)
        try:
            state.manager.reload(new)
        except Exception as exc:  # a bug of ours: keep serving, and say so
            state.last_reload_error = f"internal error applying the config: {exc!r}"
            log.exception("reload of %s failed while applying it", path)
            return False
        state.cfg = new
        if state.cache is not None:
            for model, n in state.cache.configure(new).items():
                log.info("reload: dropped %d cached answers of model %s (its config "
                         "changed, it was removed or its cache turned off)", n, model)
        state.reloads += 1
        state.last_reload_error = None
        state.traffic.forget({m.name for m in new.models})
        log.info("reloaded %s: %d models (config generation %d)", path, len(new.models),
                 state.manager.generation)
        state.bus.publish("reload", ok=True, generation=state.manager.generation)
        self.preloads = [t for t in self.preloads if not t.done()]
        self.preloads += operations.preload(state.manager)
        return True

    def _with_runtime(self, cfg: Config) -> Config:
        """The backends registered at runtime, on top of the file's models (dropped, with a
        log line, where the model is gone or no longer takes them)."""
        state = self._app[STATE]
        for name, entries in list(state.runtime.items()):
            model = next((m for m in cfg.models if m.name == name and m.backends), None)
            for backend, entry in list(entries.items()):
                try:
                    if model is None:
                        raise ConfigError(f"model '{name}' is gone or has no backends")
                    added = runtime_backend(cfg, model, entry)
                except ConfigError as exc:
                    log.warning("reload: dropped the runtime backend %s: %s", backend, exc)
                    del entries[backend]
                    continue
                cfg = with_backends(cfg, model.name, model.backends + (added,))
                model = next(m for m in cfg.models if m.name == name)
            if not entries:
                del state.runtime[name]
        return cfg

    async def apply(self, change: Callable[[Config], Config]) -> Config:
        """Apply a change to the running config (a backend added or removed at runtime), in
        turn with reloads."""
        async with self._lock:
            state = self._app[STATE]
            new = change(state.cfg)
            state.manager.reload(new)
            state.cfg = new
            if state.cache is not None:
                state.cache.configure(new)
            state.bus.publish("reload", ok=True, generation=state.manager.generation,
                              runtime=True)
            return new

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


RELOADER = web.AppKey("lkn_reloader", Reloader)
NOTIFIER = web.AppKey("lkn_notifier", Notifier)
LIFECYCLE = web.AppKey("lkn_lifecycle", Lifecycle)


async def reload_config(app: web.Application) -> bool:
    """Reload now (serialized with every other reload); True if the new config was taken."""
    return await app[RELOADER].reload()


async def serve(cfg: Config, *, listen: list[str] | None = None,
                stop: asyncio.Event | None = None, install_signals: bool = True,
                on_started: Callable[[web.Application], None] | None = None) -> None:
    app = create_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=cfg.server.shutdown_drain_s)
    await runner.setup()
    stop = stop or asyncio.Event()
    try:
        for address in listen or list(cfg.server.listen):
            host, port = parse_listen(address)
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
            log.info("listening on http://%s", address)
        loop = asyncio.get_running_loop()
        if install_signals:
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGHUP, app[RELOADER].request)
        app[LIFECYCLE].listening = True
        if on_started is not None:
            on_started(app)
        notifier = app[NOTIFIER]
        notifier.ready(f"serving {len(cfg.models)} models")
        watchdog = asyncio.create_task(notifier.watchdog())
        await stop.wait()
        log.info("shutting down: draining in-flight requests, then stopping engines")
        app[LIFECYCLE].stopping = True
        notifier.stopping()
        watchdog.cancel()
    finally:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
