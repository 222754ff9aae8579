"""The admin API's actions, for operators, the CLI (``lkn load`` …) and the dashboard.

Guarded by ``server.admin_keys`` (sent like client keys: ``Authorization: Bearer <key>``); when
none are set they answer only on loopback (see middleware.py's ``auth_middleware``).

Routes::

    POST /admin/models/{name}/load     ?ctx=N   start (or swap in) the model; waits until ready
    POST /admin/models/{name}/unload   ?force=1 stop its engines (after in-flight work, or now)
    POST /admin/models/{name}/sleep             release memory, keep running (SGLang)
    POST /admin/models/{name}/wake
    POST /admin/reload                          like SIGHUP; the outcome and any config error
    POST /admin/models/{name}/backends          add an upstream backend (JSON: id, upstream,
                                                weight); kept across reloads, gone at restart;
                                                only to hosts server.runtime_upstreams allows
                                                (403 otherwise) and with an api_key_env the
                                                file uses for that model (lkn.config.upstreams)
    DELETE /admin/models/{name}/backends/{id}   remove one added at runtime (after its
                                                requests in flight)
    POST /admin/requests/{id}/cancel

The streams (``/admin/engines/{engine}/logs``, ``/admin/events``) are in admin_streams.py, the
traffic status (``/status``) in read_routes.py.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from lkn.config import Config, ModelConfig, runtime_backend, with_backends
from lkn.config.runtime import RuntimeBackendError
from lkn.config.upstreams import blocked_address, host_of, ip_literal, redact_url
from lkn.errors import BadRequest, ConfigError, Forbidden
from lkn.fleet import operations
from lkn.fleet.operations import Conflict
from lkn.fleet.records import EngineRecord
from lkn.gateway.keys import RELOADER, STATE
from lkn.gateway.params import NotFound, flag
from lkn.request.validate import parse_json_object


class ConfigRejected(BadRequest):
    code = "config_error"


async def load(request: web.Request) -> web.Response:
    state = request.app[STATE]
    raw = request.query.get("ctx")
    if raw is not None and not (raw.isdigit() and int(raw) > 0):
        raise BadRequest(f"query parameter ctx must be a positive integer, got {raw!r}",
                         param="ctx")
    return web.json_response(await operations.load(
        state.manager, request.match_info["name"], int(raw) if raw else None))


async def unload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(await operations.unload(
        state.manager, request.match_info["name"], force=flag(request, "force"),
        timeout_s=state.cfg.server.request_timeout_s + state.cfg.server.stop_grace_s))


async def sleep(request: web.Request) -> web.Response:
    # Shielded: a client that hangs up mid-release must not leave the engine half-released.
    return web.json_response(await asyncio.shield(operations.sleep(
        request.app[STATE].manager, request.match_info["name"])))


async def wake(request: web.Request) -> web.Response:
    return web.json_response(await operations.wake(request.app[STATE].manager,
                                                   request.match_info["name"]))


async def reload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # Shielded: a client that hangs up does not cancel a reload half-way.
    ok = await asyncio.shield(request.app[RELOADER].reload())
    if not ok:
        raise ConfigRejected(f"reload failed, the running config is kept: "
                             f"{state.last_reload_error}")
    return web.json_response({"ok": True, "generation": state.manager.generation,
                              "models": [m.name for m in state.cfg.models]})


# Each backend change is computed and recorded under the reload lock (Reloader.apply), against
# the config of that moment: a SIGHUP reload in between can neither lose it nor see half of it.

RESOLVE_S = 5.0


async def _resolves_to_blocked(entry: Any) -> str | None:
    """The runtime upstream's host name, when it resolves to a link-local or metadata address
    (checked once, here: lkn does not pin the answer, so a name that changes later is the
    allow-list's business — prefer CIDRs in ``runtime_upstreams``)."""
    upstream = entry.get("upstream") if isinstance(entry, dict) else None
    url = upstream.get("url") if isinstance(upstream, dict) else None
    host = host_of(url) if isinstance(url, str) else None
    if not host or ip_literal(host) is not None:
        return None
    try:
        async with asyncio.timeout(RESOLVE_S):
            infos = await asyncio.get_running_loop().getaddrinfo(host, None)
    except (OSError, TimeoutError):
        return None  # unresolvable now: its health check fails before any use
    return host if any(blocked_address(str(info[4][0])) for info in infos) else None


async def add_backend(request: web.Request) -> web.Response:
    state = request.app[STATE]
    entry = parse_json_object(await request.read())
    added: list[ModelConfig] = []
    host = await _resolves_to_blocked(entry)
    if host is not None:
        raise Forbidden(f"backend.upstream.url: {host} resolves to a link-local or metadata "
                        f"address", param="backend.upstream.url")

    def change(cfg: Config) -> Config:
        model = _backends_model(cfg, request.match_info["name"])
        added_so_far = {name for entries in state.runtime.values() for name in entries}
        try:
            backend = runtime_backend(cfg, model, entry, added_so_far)
        except RuntimeBackendError as exc:
            if exc.forbidden:
                raise Forbidden(redact_url(str(exc)), param=exc.param) from None
            raise ConfigRejected(redact_url(str(exc)), param=exc.param) from None
        except ConfigError as exc:
            raise ConfigRejected(redact_url(str(exc))) from None
        state.runtime.setdefault(model.name, {})[backend.name] = entry
        added.append(backend)
        return with_backends(cfg, model.name, model.backends + (backend,))

    cfg = await asyncio.shield(request.app[RELOADER].apply(change))
    model = _backends_model(cfg, added[0].public)
    return web.json_response({"model": model.name, "backend": added[0].name,
                              "backends": [b.name for b in model.backends]}, status=201)


async def remove_backend(request: web.Request) -> web.Response:
    state = request.app[STATE]
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

    await asyncio.shield(request.app[RELOADER].apply(change))
    # no new requests go to it; the ones in flight finish, then it stops
    await state.manager.wait_until(lambda: not any(r.running() for r in going),
                                   state.cfg.server.request_timeout_s,
                                   f"draining backend {removed[0]}")
    return web.json_response({"model": removed[0].split("/")[0], "removed": removed[0]})


def _backends_model(cfg: Config, name: str) -> ModelConfig:
    model = cfg.require(name)
    if not model.backends:
        raise Conflict(f"model '{model.name}' has one backend; declare backends = {{ … }} in "
                       f"the config file to add more at runtime")
    return model


async def cancel(request: web.Request) -> web.Response:
    rid = request.match_info["id"]
    count = request.app[STATE].inflight.cancel(rid)
    if not count:
        raise NotFound(f"no request with id {rid!r} is in flight")
    return web.json_response({"id": rid, "cancelled": count})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/admin/models/{name}/load", load)
    r.add_post("/admin/models/{name}/unload", unload)
    r.add_post("/admin/models/{name}/sleep", sleep)
    r.add_post("/admin/models/{name}/wake", wake)
    r.add_post("/admin/reload", reload)
    r.add_post("/admin/models/{name}/backends", add_backend)
    r.add_delete("/admin/models/{name}/backends/{id}", remove_backend)
    r.add_post("/admin/requests/{id}/cancel", cancel)
