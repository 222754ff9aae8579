"""Reloading the config while serving: a SIGHUP or ``POST /admin/reload`` re-reads the file,
and a backend added or removed through the admin API changes the running config.

Both come into force the same way: the engine manager takes the new config (engines whose
settings changed are retired once idle), then ``Reloader._adopt`` points the gateway's state to
it, the cache drops the answers of changed models, and the event bus tells the dashboard.
Changes run one at a time, in order, under one lock.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

from aiohttp import web

from lkn.config import Config, load_config, runtime_backend, with_backends
from lkn.errors import ConfigError
from lkn.fleet import operations
from lkn.gateway.keys import RELOADER, GatewayState
from lkn.ops.notify import Notifier

log = logging.getLogger("lkn.gateway.reload")


class Reloader:
    """Reloads run one at a time, in order. A SIGHUP during a reload runs one more reload after
    it (several such signals: still one), so the file's last state always wins."""

    def __init__(self, state: GatewayState, notifier: Notifier) -> None:
        self._state = state
        self._notifier = notifier
        self._lock = asyncio.Lock()
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self._preloads: list[asyncio.Task[None]] = []

    def preload(self) -> None:
        """Load the ``server.preload`` models of the running config in the background (at
        start and after each reload of the file)."""
        self._preloads = [t for t in self._preloads if not t.done()]
        self._preloads += operations.preload(self._state.manager)

    def request(self) -> None:
        """Reload soon (SIGHUP): coalesced with a reload already under way."""
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
            self._notifier.reloading()
            ok = False
            try:
                ok = await self._reload_file()
            finally:  # even when cancelled: systemd must not stay in "reloading"
                state = self._state
                self._notifier.ready(
                    f"config generation {state.manager.generation}" if ok else
                    f"reload failed, running config kept: {state.last_reload_error}")
            return ok

    async def _reload_file(self) -> bool:
        state = self._state
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
        self._adopt(new, from_file=True)
        self.preload()
        return True

    def _with_runtime(self, cfg: Config) -> Config:
        """The backends registered at runtime, on top of the file's models (dropped, with a
        log line, where the model is gone or no longer takes them)."""
        runtime = self._state.runtime
        for name, entries in list(runtime.items()):
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
                del runtime[name]
        return cfg

    async def apply(self, change: Callable[[Config], Config]) -> Config:
        """Apply a change to the running config (a backend added or removed at runtime), in
        turn with reloads. What ``change`` raises reaches the caller; nothing is applied."""
        async with self._lock:
            new = change(self._state.cfg)
            self._state.manager.reload(new)
            self._adopt(new, from_file=False)
            return new

    def _adopt(self, new: Config, *, from_file: bool) -> None:
        """The one way a new config comes into force, once the engine manager took it (the only
        step that may fail; a failure there keeps the running config everywhere).
        ``from_file``: a reload of the file (counted, clears the last reload error, forgets the
        traffic of removed models); else a runtime change (its event says ``runtime``)."""
        state = self._state
        state.cfg = new
        if state.cache is not None:
            for model, n in state.cache.configure(new).items():
                log.info("reload: dropped %d cached answers of model %s (its config "
                         "changed, it was removed or its cache turned off)", n, model)
        event: dict[str, Any] = {}
        if from_file:
            state.reloads += 1
            state.last_reload_error = None
            state.traffic.forget({m.name for m in new.models})
            state.ledger.forget({k.id for k in new.server.keys})  # keys the file removed
            log.info("reloaded %s: %d models (config generation %d)", new.path,
                     len(new.models), state.manager.generation)
        else:
            event["runtime"] = True
        state.bus.publish("reload", ok=True, generation=state.manager.generation, **event)

    def stop_preloads(self) -> None:
        for task in self._preloads:
            task.cancel()

    async def close(self) -> None:
        """Stop a reload under way (at shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def reload_config(app: web.Application) -> bool:
    """Reload now (serialized with every other reload); True if the new config was taken."""
    return await app[RELOADER].reload()
