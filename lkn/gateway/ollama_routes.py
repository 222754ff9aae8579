"""Ollama's API, for the tools that speak only it: generation and embeddings go through
``RequestHandler`` like every request (``lkn.request.inbound.ollama`` translates them), the
model listings are read from the config and the fleet (``ollama_models``).

Routes::

    POST /api/chat, /api/generate, /api/embed, /api/embeddings
    GET  /api/tags, /api/ps, /api/version (HEAD too), POST /api/show
    GET  /, /api/  "Ollama is running" (what clients probe for)
    POST /api/pull, /api/push, /api/create, /api/copy; DELETE /api/delete: 501 (lkn's models
         are its config's)

A model name may carry Ollama's default tag (``smol:latest`` is ``smol``); the listings name
each model with it, as Ollama does.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from lkn.errors import ERROR_SOURCE_HEADER, BadRequest
from lkn.gateway import ollama_models
from lkn.gateway.keys import STATE
from lkn.ops.inflight import REQUEST_ID
from lkn.request.handler import RequestHandler
from lkn.request.inbound.base import Inbound
from lkn.request.inbound.ollama import (OllamaChat, OllamaEmbed, OllamaGenerate,
                                        OllamaLegacyEmbedding)
from lkn.request.validate import parse_json_object


def _served(make: Callable[[], Inbound]
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return await RequestHandler(request.app[STATE], REQUEST_ID.get()).serve(request, make())
    return serve


async def tags(request: web.Request) -> web.Response:
    return web.json_response(ollama_models.tags(request.app[STATE]))


async def ps(request: web.Request) -> web.Response:
    return web.json_response(ollama_models.running(request.app[STATE]))


async def show(request: web.Request) -> web.Response:
    body = parse_json_object(await request.read())
    name = body.get("model", body.get("name"))
    if not isinstance(name, str) or not name:
        raise BadRequest("model is required", param="model")
    model = request.app[STATE].cfg.require(name.removesuffix(":latest"))
    return web.json_response(ollama_models.show(model, name))


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": ollama_models.OLLAMA_VERSION})


async def running(request: web.Request) -> web.Response:
    return web.Response(text="Ollama is running")


async def not_here(request: web.Request) -> web.Response:
    """Ollama's model management: lkn's models are its config's (a reload adopts changes)."""
    return web.json_response({"error": f"{request.path} is not served by lkn: its models are "
                                       f"the ones its config file names (edit it, then reload)"},
                             status=501, headers={ERROR_SOURCE_HEADER: "lkn"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/chat", _served(OllamaChat))
    r.add_post("/api/generate", _served(OllamaGenerate))
    r.add_post("/api/embed", _served(OllamaEmbed))
    r.add_post("/api/embeddings", _served(OllamaLegacyEmbedding))
    r.add_get("/api/tags", tags)
    r.add_get("/api/ps", ps)
    r.add_post("/api/show", show)
    r.add_get("/api/version", version)
    r.add_get("/api/", running)
    r.add_get("/", running)
    for path in ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/blobs/{digest}"):
        r.add_post(path, not_here)
    r.add_delete("/api/delete", not_here)
