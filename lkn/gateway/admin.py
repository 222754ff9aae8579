"""The admin API (``/admin/…``) and the traffic status (``/status``), for operators, the CLI
(``lkn ps``, ``lkn load`` …) and the dashboard.

Guarded by ``server.admin_keys`` (sent like client keys: ``Authorization: Bearer <key>``); when
none are set, ``/admin/`` answers only on loopback and ``/status`` is guarded like the OpenAI
routes (see server.py's ``auth_middleware``).

Routes::

    POST /admin/models/{name}/load     ?ctx=N   start (or swap in) the model; waits until ready
    POST /admin/models/{name}/unload   ?force=1 stop its engines (after in-flight work, or now)
    POST /admin/models/{name}/sleep             release memory, keep running (SGLang)
    POST /admin/models/{name}/wake
    POST /admin/reload                          like SIGHUP; the outcome and any config error
    POST /admin/models/{name}/backends          add an upstream backend (JSON: id, upstream,
                                                weight); kept across reloads, gone at restart
    DELETE /admin/models/{name}/backends/{id}   remove one added at runtime (after its
                                                requests in flight)
    GET  /admin/engines/{engine}/logs  ?lines=N&follow=1   the engine's output (SSE to follow)
    POST /admin/requests/{id}/cancel
    GET  /admin/events                 ?history=N   SSE: engine states, swaps, requests, reloads
    GET  /status                       ?window=S    traffic and engines (JSON)
    GET  /status/{model}               ?window=S
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from lkn.config import Config, ModelConfig, runtime_backend, with_backends
from lkn.fleet import operations
from lkn.fleet.operations import Conflict
from lkn.fleet.records import EngineRecord
from lkn.sse import frame_json, sse_headers
from lkn.errors import BadRequest, ConfigError, ModelNotFound
from lkn.request.state import STATE, GatewayState
from lkn.ops.traffic import DEFAULT_WINDOWS
from lkn.request.validate import parse_json_object

if TYPE_CHECKING:
    from lkn.gateway.server import Reloader

KEEPALIVE_S = 15.0


class NotFound(ModelNotFound):
    code = "not_found"


def _query_number(request: web.Request, name: str, default: float | None, *,
                  low: float, high: float) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:  # nan fails too
        raise BadRequest(f"query parameter {name} must be a number in [{low:g}, {high:g}], "
                         f"got {raw!r}", param=name)
    return value


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


# ------------------------------------------------------------------ status

def status_payload(state: GatewayState, window_s: float | None = None) -> dict[str, Any]:
    m = state.manager
    now = time.monotonic()
    engines = m.describe()
    windows = DEFAULT_WINDOWS + ((window_s,) if window_s and window_s not in DEFAULT_WINDOWS
                                 else ())
    models = {model.name: _model_status(state, model.name, engines, now, windows)
              for model in state.cfg.models}
    for model in state.cfg.models:
        if model.backends:  # balancing, and each backend's circuit breaker
            models[model.name]["balance"] = model.balance
            models[model.name]["backends"] = [
                {**b, "runtime": b["backend"] in state.runtime.get(model.name, {})}
                for b in m.backend_status(model)]
    running = [e for e in engines if e["state"] in ("starting", "ready", "stopping")]
    return {"uptime_s": round(now - state.started, 1),
            "config": {"path": state.cfg.path, "generation": m.generation,
                       "reloads": state.reloads, "last_reload_error": state.last_reload_error},
            "vram": {"budget_mb": state.cfg.server.vram_budget_mb,
                     "estimated_mb": sum(e["vram_mb"] for e in running)},
            "queued": m.queued(), "in_flight": m.in_flight(),
            "engines": engines, "models": models,
            "unload_candidates": m.unload_candidates(),
            "requests": state.inflight.describe(),
            "unexpected_errors": list(m.unexpected),
            "cache": state.cache.describe() if state.cache else []}


def _model_status(state: GatewayState, name: str, engines: list[dict[str, Any]], now: float,
                  windows: tuple[float, ...]) -> dict[str, Any]:
    mine = [e for e in engines if e["model"] == name]
    busy = any(e["in_flight"] for e in mine) or any(
        r["model"] == name for r in state.inflight.describe())
    loaded = any(e["state"] in ("ready", "asleep", "starting") for e in mine)
    last = state.traffic.last_used(name)
    return {"state": "active" if busy else "idle" if loaded else "unloaded",
            "engines": [e["engine"] for e in mine],
            "last_used_s_ago": round(now - last, 1) if last is not None else None,
            "traffic": state.traffic.windows(name, now, windows),
            **_model_settings(state, name)}


def _model_settings(state: GatewayState, name: str) -> dict[str, Any]:
    """What the dashboard shows beside the traffic: the homeostat's settings (its histogram
    marks the threshold), the variants (load buttons) and whether the engine can sleep."""
    model = next(m for m in state.cfg.models if m.name == name)
    h = model.homeostasis
    return {"homeostasis": {"mode": h.mode, "threshold": h.threshold,
                            "intervention": h.intervention},
            "variants": [v.ctx_size for v in model.variants],
            "can_sleep": any(r.process.client.supports_sleep for r in state.manager.records()
                             if r.model.name == name and not r.retired),
            "pinned": model.pinned}


async def status(request: web.Request) -> web.Response:
    state = _state(request)
    window = _query_number(request, "window", None, low=1, high=state.traffic.keep_s)
    return web.json_response(status_payload(state, window))


async def status_model(request: web.Request) -> web.Response:
    state = _state(request)
    model = state.cfg.require(request.match_info["name"])
    window = _query_number(request, "window", None, low=1, high=state.traffic.keep_s)
    payload = status_payload(state, window)
    return web.json_response({"model": model.name, **payload["models"][model.name],
                              "engine_details": [e for e in payload["engines"]
                                                 if e["model"] == model.name]})


# ------------------------------------------------------------------ models

async def load(request: web.Request) -> web.Response:
    state = _state(request)
    raw = request.query.get("ctx")
    if raw is not None and not (raw.isdigit() and int(raw) > 0):
        raise BadRequest(f"query parameter ctx must be a positive integer, got {raw!r}",
                         param="ctx")
    return web.json_response(await operations.load(
        state.manager, request.match_info["name"], int(raw) if raw else None))


async def unload(request: web.Request) -> web.Response:
    state = _state(request)
    return web.json_response(await operations.unload(
        state.manager, request.match_info["name"], force=_flag(request, "force"),
        timeout_s=state.cfg.server.request_timeout_s + state.cfg.server.stop_grace_s))


async def sleep(request: web.Request) -> web.Response:
    # Shielded: a client that hangs up mid-release must not leave the engine half-released.
    return web.json_response(await asyncio.shield(operations.sleep(
        _state(request).manager, request.match_info["name"])))


async def wake(request: web.Request) -> web.Response:
    return web.json_response(await operations.wake(_state(request).manager,
                                                   request.match_info["name"]))


# ------------------------------------------------------------------ reload, cancel

class ConfigRejected(BadRequest):
    code = "config_error"


def reload_route(reloader: Callable[[], Reloader]) -> Callable[[web.Request],
                                                               Awaitable[web.Response]]:
    async def reload(request: web.Request) -> web.Response:
        state = _state(request)
        # Shielded: a client that hangs up does not cancel a reload half-way.
        ok = await asyncio.shield(reloader().reload())
        generation, models = state.manager.generation, [m.name for m in state.cfg.models]
        if not ok:
            raise ConfigRejected(f"reload failed, the running config is kept: "
                                 f"{state.last_reload_error}")
        return web.json_response({"ok": True, "generation": generation, "models": models})
    return reload


def backend_routes(reloader: Callable[[], Reloader]) -> tuple[Any, Any]:
    """Each change is computed and recorded under the reload lock, against the config of that
    moment: a SIGHUP reload in between can neither lose it nor see half of it."""
    async def add(request: web.Request) -> web.Response:
        state = _state(request)
        entry = parse_json_object(await request.read())
        added: list[ModelConfig] = []

        def change(cfg: Config) -> Config:
            model = _backends_model(cfg, request.match_info["name"])
            try:
                backend = runtime_backend(cfg, model, entry)
            except ConfigError as exc:
                raise ConfigRejected(str(exc)) from None
            if backend.upstream is None:
                raise BadRequest("only upstream backends can be added at runtime",
                                 param="upstream")
            state.runtime.setdefault(model.name, {})[backend.name] = entry
            added.append(backend)
            return with_backends(cfg, model.name, model.backends + (backend,))

        cfg = await asyncio.shield(reloader().apply(change))
        model = _backends_model(cfg, added[0].public)
        return web.json_response({"model": model.name, "backend": added[0].name,
                                  "backends": [b.name for b in model.backends]}, status=201)

    async def remove(request: web.Request) -> web.Response:
        state = _state(request)
        going: list[EngineRecord] = []
        removed: list[str] = []

        def change(cfg: Config) -> Config:
            model = _backends_model(cfg, request.match_info["name"])
            name = f"{model.name}/{request.match_info['id']}"
            if name not in state.runtime.get(model.name, {}):
                if name in [b.name for b in model.backends]:
                    raise Conflict(f"backend {name} is declared in the config file: remove it "
                                   f"there and reload")
                raise NotFound(f"model '{model.name}' has no backend {name}")
            remaining = tuple(b for b in model.backends if b.name != name)
            if not remaining:
                raise Conflict(f"{name} is the last backend of model '{model.name}'")
            del state.runtime[model.name][name]
            going.extend(r for r in state.manager.records()
                         if r.model.name == name and r.running())
            removed.append(name)
            return with_backends(cfg, model.name, remaining)

        await asyncio.shield(reloader().apply(change))
        # no new requests go to it; the ones in flight finish, then it stops
        await state.manager.wait_until(lambda: not any(r.running() for r in going),
                                       state.cfg.server.request_timeout_s,
                                       f"draining backend {removed[0]}")
        return web.json_response({"model": removed[0].split("/")[0], "removed": removed[0]})

    return add, remove


def _backends_model(cfg: Config, name: str) -> ModelConfig:
    model = cfg.require(name)
    if not model.backends:
        raise Conflict(f"model '{model.name}' has one backend; declare backends = {{ … }} in "
                       f"the config file to add more at runtime")
    return model


async def cancel(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    count = _state(request).inflight.cancel(rid)
    if not count:
        raise NotFound(f"no request with id {rid!r} is in flight")
    return web.json_response({"id": rid, "cancelled": count})


# ------------------------------------------------------------------ logs and events

def _record(state: GatewayState, name: str) -> EngineRecord:
    """An engine by its id (``model@ctx#n``), its variant (``model@ctx``: the newest engine of
    it) or its model's name (when the model has one variant, or one running)."""
    records = sorted(state.manager.records(), key=lambda r: r.id)
    for r in records:
        if r.slot_id == name:
            return r
    same = [r for r in records if r.key == name]
    if same:
        return same[-1]
    mine = [r for r in records if r.model.public == name]
    running = [r for r in mine if r.running()]
    if len({r.key for r in mine}) == 1 or len(running) == 1:
        return (running or mine)[-1]
    if mine:
        raise BadRequest(f"model {name!r} has several engines; name one of "
                         f"{', '.join(sorted({r.key for r in mine}))}", param="engine")
    known = ", ".join(sorted({r.key for r in records}))
    raise NotFound(f"no engine {name!r}; engines: {known}")


async def logs(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    record = _record(state, request.match_info["engine"])
    lines = int(_query_number(request, "lines", 100, low=0, high=10_000) or 0)
    ring = record.process.logs
    tail = ring.tail(lines).splitlines() if lines else []
    if not _flag(request, "follow"):
        return web.json_response({"engine": record.slot_id, "key": record.key,
                                  "file": ring.path, "lines": tail})
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=10_000)
    missed = 0

    def on_line(line: str) -> None:
        nonlocal missed
        try:
            queue.put_nowait(line)
        except asyncio.QueueFull:  # a reader far behind: say so rather than drop silently
            missed += 1

    # Listening before the headers go out: no line falls between the tail and the follow.
    ring.listeners.add(on_line)
    try:
        resp = web.StreamResponse(headers=sse_headers({}))
        await resp.prepare(request)
        _track(request)
        for line in tail:
            await resp.write(frame_json({"engine": record.slot_id, "line": line}))
        while True:
            try:
                line = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if missed:
                await resp.write(frame_json({"engine": record.slot_id, "dropped": missed}))
                missed = 0
            await resp.write(frame_json({"engine": record.slot_id, "line": line}))
    except ConnectionResetError:
        return resp
    finally:
        ring.listeners.discard(on_line)


async def events(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    history = int(_query_number(request, "history", 0, low=0, high=10_000) or 0)
    resp = web.StreamResponse(headers=sse_headers({}))
    await resp.prepare(request)
    _track(request)
    with state.bus.subscribe() as sub:
        try:
            for event in state.bus.recent(limit=history) if history else []:
                await resp.write(frame_json(event))
            while True:
                event = await sub.get(KEEPALIVE_S)
                await resp.write(b": keep-alive\n\n" if event is None else frame_json(event))
        except ConnectionResetError:
            return resp


STREAMS = web.AppKey("lkn_admin_streams", set)


def _track(request: web.Request) -> None:
    """Endless admin streams end at shutdown instead of holding it for the drain timeout."""
    task = asyncio.current_task()
    if task is not None:
        streams = request.app[STREAMS]
        streams.add(task)
        task.add_done_callback(streams.discard)


async def _close_streams(app: web.Application) -> None:
    for task in list(app[STREAMS]):
        task.cancel()


# ------------------------------------------------------------------ wiring

def _state(request: web.Request) -> GatewayState:
    return request.app[STATE]


def add_routes(app: web.Application, reloader: Callable[[], Reloader]) -> None:
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    r = app.router
    r.add_get("/status", status)
    r.add_get("/status/{name:.+}", status_model)
    r.add_post("/admin/models/{name}/load", load)
    r.add_post("/admin/models/{name}/unload", unload)
    r.add_post("/admin/models/{name}/sleep", sleep)
    r.add_post("/admin/models/{name}/wake", wake)
    r.add_post("/admin/reload", reload_route(reloader))
    add_backend, remove_backend = backend_routes(reloader)
    r.add_post("/admin/models/{name}/backends", add_backend)
    r.add_delete("/admin/models/{name}/backends/{id}", remove_backend)
    r.add_get("/admin/engines/{engine}/logs", logs)
    r.add_post("/admin/requests/{id}/cancel", cancel)
    r.add_get("/admin/events", events)


def is_admin_path(path: str) -> bool:
    return path.startswith("/admin/") or path == "/status" or path.startswith("/status/")


__all__ = ["add_routes", "is_admin_path", "status_payload"]
