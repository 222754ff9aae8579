"""GatewayServer: the aiohttp application, its long-lived resources, signals and reload.

``create_app(cfg)`` is a pure factory. The HTTP client session and the engine manager live in a
``cleanup_ctx`` generator, so on shutdown the engines stop (after in-flight requests drained)
before the session closes. ``serve()`` binds every configured address, handles SIGTERM/SIGINT
(drain, stop engines, exit) and SIGHUP (reload the Lua file without dropping requests), and
tells systemd (``sd_notify``) where it stands.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from lkn.cache.store import ResponseCache
from lkn.config import Config, parse_listen
from lkn.engines.bound import warm_shapes
from lkn.engines.registry import EngineRegistry, default_state_dir, sweep_stale
from lkn.fleet.manager import EngineManager
from lkn.gateway import (admin_actions, admin_streams, admin_usage, anthropic_routes,
                         ollama_routes, openai_routes, read_routes, router_routes, ui_static)
from lkn.gateway.admin_usage import open_activity, restore_quotas
from lkn.gateway.keys import (INTAKE, LIFECYCLE, NOTIFIER, RELOADER, STATE, GatewayState, Intake,
                              Lifecycle)
from lkn.gateway.middleware import MIDDLEWARES, add_cors, body_limit
from lkn.gateway.read_models import live_metrics
from lkn.gateway.reload import Reloader
from lkn.gateway.signals import Signals
from lkn.ops.events import EventBus
from lkn.ops.metrics import Metrics
from lkn.ops.notify import Notifier
from lkn.request.inbound.response_store import ResponseStore

log = logging.getLogger("lkn.gateway.server")

# llama-server closes idle keep-alive connections after 5 s: lkn drops its own sooner, so it
# never sends a request on a connection the engine is closing.
KEEPALIVE_S = 4.0
BACKEND_CHECK_S = 5.0  # a backend's health path is asked this often (circuit breakers)
LINGER_S = 2.0


class GatewayServer:
    """One lkn: the app with its routes and middleware, and (while the app runs) the engine
    manager, the HTTP session to the engines, housekeeping and the reloader."""

    def __init__(self, cfg: Config, *,
                 manager_factory: Callable[..., EngineManager] = EngineManager) -> None:
        self.cfg = cfg
        self._manager_factory = manager_factory
        self.notifier = Notifier()
        self.lifecycle = Lifecycle()
        self.app = web.Application(middlewares=MIDDLEWARES,
                                   client_max_size=body_limit(cfg.server))
        self.app[INTAKE] = Intake()
        self.app[NOTIFIER] = self.notifier
        self.app[LIFECYCLE] = self.lifecycle
        self.app.cleanup_ctx.append(self._resources)
        openai_routes.add_routes(self.app)
        router_routes.add_routes(self.app)
        ollama_routes.add_routes(self.app)
        anthropic_routes.add_routes(self.app)
        read_routes.add_routes(self.app)
        admin_actions.add_routes(self.app)
        admin_streams.add_routes(self.app)
        admin_usage.add_routes(self.app)
        ui_static.add_routes(self.app)
        if cfg.server.cors_origins:
            add_cors(self.app, cfg.server.cors_origins)

    async def _resources(self, app: web.Application) -> AsyncIterator[None]:
        cfg = self.cfg
        state_dir = cfg.server.state_dir or default_state_dir()
        # Engines a killed lkn left behind hold VRAM: sweep them before anything starts.
        swept = await asyncio.to_thread(sweep_stale, state_dir)
        if swept:
            log.warning("swept %d engine processes left by an lkn that died: %s", len(swept),
                        swept)
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0, force_close=False,
                                           keepalive_timeout=KEEPALIVE_S))
        bus = EventBus()
        manager = self._manager_factory(cfg, session, registry=EngineRegistry(state_dir),
                                        events=bus)
        state = GatewayState(cfg=cfg, manager=manager, session=session, metrics=Metrics(),
                             started=time.monotonic(),
                             cache=ResponseCache(cfg, clock=time.monotonic), bus=bus,
                             responses=_response_store(cfg),
                             activity=open_activity(cfg, state_dir))
        if state.activity is not None:
            await restore_quotas(state.activity, state.ledger, cfg)
            writer = asyncio.create_task(state.activity.run())
        state.metrics.watch(lambda: live_metrics(state))
        manager.on_backend = lambda model, backend, ok: state.metrics.backend_requests.inc(
            model, backend, "ok" if ok else "failed")
        reloader = Reloader(state, self.notifier)
        app[STATE] = state
        app[RELOADER] = reloader
        housekeeping = asyncio.create_task(_housekeeping(state))
        reloader.preload()
        # Only the templates (from the files' headers): a local tokenizer (llama-cpp-python,
        # ~40 MB) is loaded by the first request that must be counted locally.
        warm = asyncio.create_task(asyncio.to_thread(warm_shapes, list(cfg.models)))
        try:
            yield
        finally:
            reloader.stop_preloads()
            housekeeping.cancel()
            self.lifecycle.stopping = True
            await asyncio.gather(warm, return_exceptions=True)  # a thread: it ends by itself
            await reloader.close()
            try:
                await manager.shutdown(state.cfg.server.shutdown_drain_s)
            finally:
                if state.activity is not None:  # after the drain: its rows, then closed
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
            await session.close()

    async def serve(self, *, listen: list[str] | None = None,
                    stop: asyncio.Event | None = None, install_signals: bool = True,
                    on_started: Callable[[web.Application], None] | None = None) -> None:
        """Serve until ``stop`` is set (or SIGTERM/SIGINT), then drain and stop the engines."""
        app, cfg = self.app, self.cfg
        # keepalive_timeout: aiohttp closes a connection whose request (headers included) has
        # not arrived by then, and an idle keep-alive one: the headers' deadline. After an
        # answer to a body lkn did not read (408, 413) it reads and drops what still comes
        # for at most LINGER_S, so the client sees the answer, then closes.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                               shutdown_timeout=cfg.server.shutdown_drain_s,
                               keepalive_timeout=cfg.server.body_timeout_s,
                               lingering_time=LINGER_S)
        await runner.setup()
        stop = stop or asyncio.Event()
        signals = Signals(stop.set, app[RELOADER].request, lambda: _disconnect(runner))
        try:
            for address in listen or list(cfg.server.listen):
                host, port = parse_listen(address)
                site = web.TCPSite(runner, host, port, reuse_address=True)
                await site.start()
                log.info("listening on http://%s", address)
            if install_signals:
                signals.install()
            self.lifecycle.listening = True
            if on_started is not None:
                on_started(app)
            self.notifier.ready(f"serving {len(cfg.models)} models")
            watchdog = asyncio.create_task(self.notifier.watchdog())
            await stop.wait()
            log.info("shutting down: draining in-flight requests, then stopping engines")
            self.lifecycle.stopping = True
            self.notifier.stopping()
            watchdog.cancel()
        finally:
            signals.drain()
            try:
                await runner.cleanup()
            finally:
                if install_signals:
                    signals.remove()


def _disconnect(runner: web.AppRunner) -> int:
    """Closes every client connection (a stop signal during the drain): their requests are
    cancelled, which ends their leases."""
    connections = runner.server.connections if runner.server is not None else []
    for connection in connections:
        connection.force_close()
    return len(connections)


def _response_store(cfg: Config) -> ResponseStore | None:
    """The Responses kept for previous_response_id; its size takes a restart to change."""
    s = cfg.server
    if s.responses_store_size < 1:
        return None
    return ResponseStore(s.responses_store_size, s.responses_store_age_s,
                         max_bytes=int(s.responses_store_mb * 1024 * 1024))


async def _housekeeping(state: GatewayState) -> None:
    """Every second: idle engines go to sleep or stop; every ``BACKEND_CHECK_S`` the backends'
    health is checked."""
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


def create_app(cfg: Config, *, manager_factory: Callable[..., EngineManager] = EngineManager
               ) -> web.Application:
    """The application for ``cfg``; nothing starts until it runs (tests, ``serve``)."""
    return GatewayServer(cfg, manager_factory=manager_factory).app


async def serve(cfg: Config, *, listen: list[str] | None = None,
                stop: asyncio.Event | None = None, install_signals: bool = True,
                on_started: Callable[[web.Application], None] | None = None) -> None:
    await GatewayServer(cfg).serve(listen=listen, stop=stop, install_signals=install_signals,
                                   on_started=on_started)
