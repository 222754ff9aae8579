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
import logging
import signal
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from .cache import ResponseCache
from .config import Config, load_config, parse_listen
from .engines.manager import EngineManager
from .engines.registry import EngineRegistry, default_state_dir, sweep_stale
from .errors import BadRequest, LknError, ModelNotFound, Unauthorized
from .handler import GatewayState, RequestHandler, models_payload
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .notify import Notifier
from .bound import warm_shapes

log = logging.getLogger("lkn.server")

STATE = web.AppKey("lkn_state", GatewayState)
OPEN_PATHS = ("/health", "/metrics")
KEEPALIVE_S = 4.0


def _error_response(exc: LknError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers())


@web.middleware
async def errors_middleware(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    try:
        return await handler(request)
    except LknError as exc:
        return _error_response(exc)
    except web.HTTPException as exc:
        if exc.status == 404:
            return _error_response(ModelNotFound(f"no route {request.method} {request.path}",
                                                 code="not_found"))
        if exc.status == 405:
            err = BadRequest(f"method {request.method} is not allowed on {request.path}",
                             code="method_not_allowed")
            err.status = 405
            return _error_response(err)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:  # a bug of ours: log it, answer in OpenAI shape, keep serving
        log.exception("internal error on %s %s", request.method, request.path)
        return _error_response(LknError(f"internal error in lkn: {exc.__class__.__name__}: "
                                        f"{exc}"))


@web.middleware
async def auth_middleware(request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
    keys = request.app[STATE].cfg.server.api_keys
    if keys and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        token = given[7:].strip() if given.lower().startswith("bearer ") else \
            request.headers.get("x-api-key", "")
        if not any(hmac.compare_digest(token.encode(), k.encode()) for k in keys):
            raise Unauthorized("invalid or missing API key: send 'Authorization: Bearer <key>'")
    return await handler(request)


def create_app(cfg: Config, *, manager_factory: Callable[..., EngineManager] = EngineManager
               ) -> web.Application:
    app = web.Application(middlewares=[errors_middleware, auth_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[NOTIFIER] = Notifier()

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
        manager = manager_factory(cfg, session, registry=EngineRegistry(state_dir))
        state = GatewayState(cfg=cfg, manager=manager, session=session, metrics=Metrics(),
                             started=time.monotonic(),
                             cache=ResponseCache(cfg, clock=time.monotonic))
        state.metrics.watch(lambda: _live(state))
        app[STATE] = state
        app[RELOADER] = Reloader(app)
        housekeeping = asyncio.create_task(_housekeeping(state))
        def warm_up() -> None:
            # Only the templates (from the files' headers): a local tokenizer (llama-cpp-python,
            # ~40 MB) is loaded by the first request that must be counted locally.
            warm_shapes(list(cfg.models))

        warm = asyncio.create_task(asyncio.to_thread(warm_up))
        try:
            yield
        finally:
            housekeeping.cancel()
            await asyncio.gather(warm, return_exceptions=True)  # a thread: it ends by itself
            await app[RELOADER].close()
            await manager.shutdown(state.cfg.server.shutdown_drain_s)
            await session.close()

    app.cleanup_ctx.append(resources)

    def handler() -> RequestHandler:
        return RequestHandler(app[STATE])

    async def chat(request: web.Request) -> web.StreamResponse:
        return await handler().chat(request)

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handler().completions(request)

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await handler().embeddings(request)

    async def models(request: web.Request) -> web.Response:
        return web.json_response(models_payload(app[STATE]))

    async def model_one(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for item in models_payload(app[STATE])["data"]:
            if item["id"] == name:
                return web.json_response(item)
        raise ModelNotFound(f"The model '{name}' does not exist", param="model")

    async def health(request: web.Request) -> web.Response:
        st = app[STATE]
        return web.json_response({"status": "ok", "engines": st.manager.describe(),
                                  "queued": st.manager.queued(),
                                  "in_flight": st.manager.in_flight(),
                                  "uptime_s": round(time.monotonic() - st.started, 1),
                                  "config": {"path": st.cfg.path,
                                             "generation": st.manager.generation,
                                             "reloads": st.reloads,
                                             "last_reload_error": st.last_reload_error},
                                  "unexpected_errors": list(st.manager.unexpected),
                                  "cache": st.cache.describe() if st.cache else []})

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
    app.router.add_get("/metrics", metrics)
    return app


def _live(state: GatewayState) -> dict[str, Any]:
    m = state.manager
    return {"engines": m.describe(), "in_flight": m.in_flight(), "queued": m.queued(),
            "starts": m.starts, "start_failures": m.start_failures,
            "generation": m.generation,
            "cache": state.cache.describe() if state.cache else [],
            "cache_dropped": dict(state.cache.dropped) if state.cache else {}}


async def _housekeeping(state: GatewayState) -> None:
    while True:
        await asyncio.sleep(1.0)
        try:
            await state.manager.sleep_idle()
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
            ok = await self._reload()
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
            return False
        if new.server.listen != state.cfg.server.listen:
            log.warning("reload: listen addresses changed; that takes a restart")
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
        log.info("reloaded %s: %d models (config generation %d)", path, len(new.models),
                 state.manager.generation)
        return True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


RELOADER = web.AppKey("lkn_reloader", Reloader)
NOTIFIER = web.AppKey("lkn_notifier", Notifier)


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
        if on_started is not None:
            on_started(app)
        notifier = app[NOTIFIER]
        notifier.ready(f"serving {len(cfg.models)} models")
        watchdog = asyncio.create_task(notifier.watchdog())
        await stop.wait()
        log.info("shutting down: draining in-flight requests, then stopping engines")
        notifier.stopping()
        watchdog.cancel()
    finally:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
