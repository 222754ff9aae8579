"""Anthropic's Messages API, for Claude Code and the Anthropic SDKs: ``POST /v1/messages``
goes through ``RequestHandler`` like every request (``lkn.request.inbound.anthropic``
translates it); ``POST /v1/messages/count_tokens`` counts the translated request exactly as the
sizing does (the live engine's chat template and tokenizer, else the model's own tokenizer
here). Keys come as ``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` and
``anthropic-beta`` are accepted and need nothing from lkn."""
from __future__ import annotations

import time

from aiohttp import web

from lkn.errors import LknError
from lkn.gateway.keys import STATE
from lkn.ops.inflight import REQUEST_ID
from lkn.request.caller import caller_of
from lkn.request.handler import RequestHandler
from lkn.request.outcome import Outcome
from lkn.request.tenancy import Tenancy
from lkn.request.inbound.anthropic import AnthropicInbound, count_tokens_body
from lkn.request.validate import parse_json_object, validate_chat


async def messages(request: web.Request) -> web.StreamResponse:
    return await RequestHandler(request.app[STATE], REQUEST_ID.get()).serve(
        request, AnthropicInbound())


async def count_tokens(request: web.Request) -> web.Response:
    state = request.app[STATE]
    started, label, status = time.monotonic(), "unknown", 500
    try:
        body = count_tokens_body(parse_json_object(await request.read()))
        validate_chat(body)
        model = state.cfg.require(body["model"])
        label = model.name
        Tenancy(state, caller_of(request, state.cfg.server), Outcome("")).check_model(model)
        tokens, method = await state.manager.selector.count(model, "chat", body)
        status = 200
        return web.json_response({"input_tokens": tokens},
                                 headers={"x-lkn-prompt-tokens": f"{tokens};{method}",
                                          "x-lkn-model": model.name})
    except LknError as exc:
        status = exc.status
        raise
    finally:
        state.metrics.requests.inc(label, "count_tokens", str(status), "anthropic",
                                   caller_of(request, state.cfg.server).key_id)
        state.metrics.request_seconds.observe(time.monotonic() - started, label,
                                              "count_tokens", "anthropic")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
