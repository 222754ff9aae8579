"""The routes that only read: health and readiness (open, for probes and load balancers),
Prometheus metrics, and the traffic status for operators (``/status``, guarded like the admin
API: see middleware.py). The payloads are built in read_models.py.

Routes::

    GET /health                      liveness, cheap
    GET /health/{model}              a model's health; 503 when it is failed
    GET /ready                       503 until every listener is bound, and while stopping
    GET /metrics                     Prometheus
    GET /status          ?window=S   traffic and engines (JSON)
    GET /status/{model}  ?window=S
"""
from __future__ import annotations

from aiohttp import web

from lkn.gateway.keys import LIFECYCLE, STATE
from lkn.gateway.params import query_number
from lkn.gateway.read_models import (health_of_model, health_payload, ready_payload,
                                     status_payload)
from lkn.ops.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE


async def health(request: web.Request) -> web.Response:
    return web.json_response(health_payload(request.app[STATE]))


async def health_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = state.cfg.require(request.match_info["name"])
    payload = health_of_model(state, model.name)
    return web.json_response(payload, status=503 if payload["status"] == "failed" else 200)


async def ready(request: web.Request) -> web.Response:
    payload, ok = ready_payload(request.app[STATE], request.app[LIFECYCLE])
    return web.json_response(payload, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.expose(),
                        headers={"Content-Type": METRICS_CONTENT_TYPE,
                                 "X-Content-Type-Options": "nosniff"})


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    window = query_number(request, "window", None, low=1, high=state.traffic.keep_s)
    return web.json_response(status_payload(state, window))


async def status_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = state.cfg.require(request.match_info["name"])
    window = query_number(request, "window", None, low=1, high=state.traffic.keep_s)
    payload = status_payload(state, window)
    return web.json_response({"model": model.name, **payload["models"][model.name],
                              "engine_details": [e for e in payload["engines"]
                                                 if e["model"] == model.name]})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/health", health)
    r.add_get("/health/{name:.+}", health_model)
    r.add_get("/ready", ready)
    r.add_get("/metrics", metrics)
    r.add_get("/status", status)
    r.add_get("/status/{name:.+}", status_model)
