"""The OpenAI-compatible routes: chat, completions, embeddings and the Responses API. Each
request is served by a ``RequestHandler`` of the request layer, which sizes, queues, forwards
and relays it; ``/v1/models`` is answered here."""
from __future__ import annotations

from aiohttp import web

from lkn.gateway.keys import STATE
from lkn.gateway.read_models import models_payload
from lkn.ops.inflight import REQUEST_ID
from lkn.cache.store import partition_of
from lkn.request.caller import caller_of
from lkn.request.handler import RequestHandler
from lkn.request.inbound.responses import ResponsesInbound


def _handler(request: web.Request) -> RequestHandler:
    return RequestHandler(request.app[STATE], REQUEST_ID.get())


async def chat(request: web.Request) -> web.StreamResponse:
    return await _handler(request).chat(request)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _handler(request).completions(request)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _handler(request).embeddings(request)


async def responses(request: web.Request) -> web.StreamResponse:
    """OpenAI's Responses API; a stored response is its caller's (key) alone."""
    state = request.app[STATE]
    owner = partition_of(caller_of(request, state.cfg.server).tenant)
    return await _handler(request).serve(request, ResponsesInbound(store=state.responses,
                                                                   owner=owner))


async def models(request: web.Request) -> web.Response:
    return web.json_response(models_payload(request.app[STATE]))


async def model_one(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["name"]
    state.cfg.require(name)  # every name it serves, aliases too, is listed
    return web.json_response(next(item for item in models_payload(state)["data"]
                                  if item["id"] == name))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/chat/completions", chat)
    r.add_post("/v1/completions", completions)
    r.add_post("/v1/embeddings", embeddings)
    r.add_post("/v1/responses", responses)
    r.add_get("/v1/models", models)
    r.add_get("/v1/models/{name:.+}", model_one)
