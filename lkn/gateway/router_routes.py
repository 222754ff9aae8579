"""llama.cpp's router API and llama-server's own endpoints, for the clients that use them
(Open WebUI shows load state and an eject button through them, editors call ``/infill``).

Routes::

    GET  /models                  every model with ``status.value``: loaded, loading,
                                  unloaded, sleeping or failed (router shape)
    POST /models/load    {model}  start (or swap in) the model; answers once it is ready
    POST /models/unload  {model}  stop its engines (after their requests)
    POST /v1/rerank, /rerank, /v1/reranking, /infill, /tokenize, /detokenize, /apply-template
    GET  /props?model=NAME        llama-server's, per model (``lkn.request.extras``)

``/models/load`` and ``/models/unload`` are operators' actions: they take the admin key (or a
direct loopback client without one) like ``/admin/``. Unlike llama.cpp's router, a load answers
when the engine is ready (not at once), and loading a loaded model or unloading an unloaded one
succeeds (there is nothing to refuse: the state asked for is the state it is in).
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from lkn.errors import BadRequest
from lkn.fleet import operations
from lkn.gateway.keys import STATE
from lkn.gateway.read_models import CLIENT_STATUS, ModelView, capabilities
from lkn.ops.inflight import REQUEST_ID
from lkn.request.extras import ExtraHandler
from lkn.request.validate import parse_json_object

# llama.cpp's router says "sleeping" where lkn says "asleep"
_ROUTER_STATUS = {**CLIENT_STATUS, "asleep": "sleeping"}


async def router_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    now, engines = time.monotonic(), state.manager.describe()
    data = []
    for m in state.cfg.models:
        health = ModelView.of(state, m.name, engines).health(state, now)
        status: dict[str, Any] = {"value": _ROUTER_STATUS[health]}
        if health == "failed":
            status = {"value": "unloaded", "failed": True}
        for name in m.names:
            data.append({"id": name, "object": "model", "owned_by": "lkn", "status": status,
                         "context_length": max(v.ctx_size for v in m.variants),
                         "capabilities": capabilities(m)})
    return web.json_response({"object": "list", "data": data})


async def _named(request: web.Request) -> str:
    body = parse_json_object(await request.read())
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise BadRequest("'model' is required: the model to load or unload", param="model")
    return name


async def router_load(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await operations.load(state.manager, await _named(request))
    return web.json_response({"success": True})


async def router_unload(request: web.Request) -> web.Response:
    state = request.app[STATE]
    s = state.cfg.server
    await operations.unload(state.manager, await _named(request),
                            timeout_s=s.request_timeout_s + s.stop_grace_s)
    return web.json_response({"success": True})


def _extra(route: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await ExtraHandler(request.app[STATE], REQUEST_ID.get()).serve(request, route)
    return serve


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/models", router_models)
    r.add_post("/models/load", router_load)
    r.add_post("/models/unload", router_unload)
    for path in ("/v1/rerank", "/rerank", "/v1/reranking"):
        r.add_post(path, _extra("rerank"))
    for route in ("infill", "tokenize", "detokenize", "apply-template"):
        r.add_post(f"/{route}", _extra(route))
    r.add_get("/props", _extra("props"))
