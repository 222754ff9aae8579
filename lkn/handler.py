"""RequestHandler: one OpenAI request end to end.

parse + validate -> resolve the model -> count tokens and pick the variants that hold the request
-> lease an engine (the scheduler may start or swap one) -> probe entropy (homeostatic mode) and
intervene if needed -> forward -> relay the answer (streams event by event) -> release the lease.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from . import probe as probe_math
from .cache import ResponseCache
from .cache_http import CacheTicket, cache_opt_out
from .config import Config, HomeostasisConfig, ModelConfig
from .engines.base import EngineRequestError
from .engines.manager import EngineManager
from .engines.records import Demand, Lease
from .errors import (ERROR_SOURCE_HEADER, BadRequest, GatewayTimeout, LknError, ModelNotFound,
                     UpstreamError)
from .homeostat import (request_overrides, with_reasoning, with_verify_prompt,
                        without_reasoning)
from .metrics import Metrics
from .bound import model_shape, prompt_bound
from .selector import bound_decides, explicit_answer_budget
from .sse import DONE, SSEParser, frame, frame_json
from .thinking_relay import ThinkingRelay
from .tokens import count_prompt, local_source
from .validate import VALIDATORS, parse_json_object

log = logging.getLogger("lkn.handler")
RECONNECT_WINDOW_S = 0.5  # a pooled connection the engine closed fails at once, not later


@dataclass
class GatewayState:
    cfg: Config
    manager: EngineManager
    session: aiohttp.ClientSession
    metrics: Metrics
    started: float
    last_reload_error: str | None = None
    reloads: int = 0
    cache: ResponseCache | None = None


class RequestHandler:
    _cache: CacheTicket | None = None  # this request's response cache ticket, if any
    client_gone = False  # the client left mid-stream (counted as 499)
    _arrived: float | None = None  # when this request first queued for an engine

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    # ------------------------------------------------------------------ routes
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "chat")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "completions")

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "embeddings")

    # ------------------------------------------------------------------ core
    async def _generate(self, request: web.Request, route: str) -> web.StreamResponse:
        started = time.monotonic()
        label = "unknown"  # metrics never carry unvalidated client input as a label
        status = 500
        headers: dict[str, str] = {}
        try:
            body = parse_json_object(await request.read())
            VALIDATORS[route](body)
            lkn_field, cache_off = cache_opt_out(body.pop("lkn", None))
            model = self._resolve(self.state.cfg, body["model"])
            label = model.name
            if route == "embeddings" and not model.embeddings:
                raise BadRequest(f"model '{model.name}' does not serve embeddings (set "
                                 f"embeddings = true in its config)", param="model")
            settings = request_overrides(model.homeostasis, lkn_field,
                                         request.headers.get("x-lkn-mode"))
            if route == "embeddings":
                settings = HomeostasisConfig(mode="passthrough")
            if self.state.cache is not None:
                self._cache = CacheTicket.open(self.state.cache, self.state.metrics, request,
                                               route, model, body, settings, cache_off, headers)
                if self._cache is not None and self._cache.hit:
                    status = 200
                    return self._cache.answer(headers, time.monotonic())
            lease = await self._lease(model, route, self._sized_body(route, body, settings),
                                      headers)
            try:
                if settings.mode == "homeostatic":
                    body, lease, model = await self._homeostat(route, body, lease, model,
                                                               settings, headers)
                    label = model.name
                elif route != "embeddings":
                    headers["x-lkn-mode"] = probe_math.PASSTHROUGH
                response = await self._forward(request, route, body, lease, headers, started)
                status = 499 if self.client_gone else response.status
                if self._cache is not None and not self.client_gone:
                    self._cache.settle(response)
                return response
            finally:
                lease.release()
        except LknError as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499  # the client went away (nginx's code for it)
            raise
        finally:
            elapsed = time.monotonic() - started
            m = self.state.metrics
            m.requests.inc(label, route, str(status))
            m.request_seconds.observe(elapsed, label, route)
            log.info("%s %s model=%s status=%d variant=%s mode=%s %.0fms", request.method,
                     request.path, label, status, headers.get("x-lkn-variant", "-"),
                     headers.get("x-lkn-mode", "-"), elapsed * 1000)

    def _resolve(self, cfg: Config, name: str) -> ModelConfig:
        model = cfg.resolve(name)
        if model is None:
            known = ", ".join(n for m in cfg.models for n in m.names)
            raise ModelNotFound(f"The model '{name}' does not exist; this gateway serves: {known}",
                                param="model")
        return model

    @staticmethod
    def _sized_body(route: str, body: dict[str, Any],
                    settings: HomeostasisConfig) -> dict[str, Any]:
        # Size the context for the request as it may be sent: with the verification prompt.
        if settings.mode == "homeostatic" and settings.intervention == "verify_prompt":
            return with_verify_prompt(route, body, settings.verify_prompt)
        return body

    async def _lease(self, model: ModelConfig, route: str, body: dict[str, Any],
                     headers: dict[str, str], arrived: float | None = None) -> Lease:
        manager, s = self.state.manager, self.state.cfg.server
        answer = explicit_answer_budget(body)
        embeddings = route == "embeddings"
        bound = prompt_bound(route, body, await model_shape(model))
        if bound is not None and bound_decides(
                manager.variants(model), bound, answer_tokens=answer, margin=s.token_margin,
                default_max_tokens=model.default_max_tokens, budget_mb=s.vram_budget_mb,
                embeddings=embeddings):
            # Far from every limit: the exact count could not change the choice. One upstream
            # call per request instead of three.
            return await self._acquire(model, Demand(bound, answer, embeddings=embeddings),
                                       bound, "bound", headers, arrived)
        proc = manager.ready_process(model.name)
        live = None
        if proc is not None:
            client, base = proc.client, proc.base_url
            live = lambda: client.count_tokens(self.state.session, base, route, body)  # noqa: E731
        local_path, local_kind = local_source(model)
        prompt_tokens, method = await count_prompt(
            route=route, body=body, live=live, local_path=local_path, local_kind=local_kind)
        return await self._acquire(model, Demand(prompt_tokens, answer, embeddings=embeddings),
                                   prompt_tokens, method, headers, arrived)

    async def _acquire(self, model: ModelConfig, demand: Demand, prompt_tokens: int,
                       method: str, headers: dict[str, str],
                       arrived: float | None = None) -> Lease:
        self.state.metrics.token_counts.inc(method)
        waited = time.monotonic()
        if self._arrived is None:
            self._arrived = waited  # when this request first queued (an escalation keeps it)
        lease = await self.state.manager.acquire(model, demand, arrived=arrived)
        self.state.metrics.queue_seconds.observe(time.monotonic() - waited, model.name)
        headers["x-lkn-model"] = model.name
        headers["x-lkn-variant"] = str(lease.client.variant.ctx_size)
        headers["x-lkn-prompt-tokens"] = f"{prompt_tokens};{method}"
        return lease

    # ------------------------------------------------------------------ homeostat
    async def _homeostat(self, route: str, body: dict[str, Any], lease: Lease,
                         model: ModelConfig, settings: HomeostasisConfig,
                         headers: dict[str, str]) -> tuple[dict[str, Any], Lease, ModelConfig]:
        m = self.state.metrics
        t0 = time.monotonic()
        try:
            # never score more of the answer than the client asked for
            n_tokens = min(settings.probe_tokens,
                           explicit_answer_budget(body) or settings.probe_tokens)
            result = await asyncio.wait_for(
                lease.client.probe(self.state.session, lease.base_url, route, body,
                                   settings.top_k, n_tokens),
                settings.probe_timeout_s)
            entropy = probe_math.aggregate(
                [probe_math.token_uncertainty(p, settings.probe_score)
                 for p in result.positions] or [None],
                settings.probe_aggregate, result.tokens)
            if entropy is None:
                raise EngineRequestError("the probe returned no usable logprobs")
        except Exception as exc:  # noqa: BLE001 - any failed probe passes the request through
            reason = ("timed out" if isinstance(exc, asyncio.TimeoutError) else
                      str(exc) if isinstance(exc, (EngineRequestError, aiohttp.ClientError))
                      else f"{exc.__class__.__name__}: {exc}")
            log.warning("probe failed for model=%s (%s); passing the request through",
                        model.name, reason)
            m.probes.inc(model.name, probe_math.PASSTHROUGH)
            headers["x-lkn-mode"] = probe_math.PASSTHROUGH
            return body, lease, model
        elapsed = time.monotonic() - t0
        mode = probe_math.classify(entropy, settings.threshold)
        headers["x-lkn-mode"] = mode
        headers["x-lkn-entropy"] = f"{entropy:.4f}"
        m.probes.inc(model.name, mode)
        m.probe_entropy.observe(entropy, model.name)
        m.probe_seconds.observe(elapsed, model.name)
        log.info("probe model=%s entropy=%.4f threshold=%.2f mode=%s probe_ms=%.1f",
                 model.name, entropy, settings.threshold, mode, elapsed * 1000)
        if mode != probe_math.ANALYTIC or settings.intervention == "none":
            if settings.intervention == "reasoning" and route == "chat":
                body = without_reasoning(body)  # thinking only where the probe asks for it
            return body, lease, model
        headers["x-lkn-intervention"] = settings.intervention
        m.interventions.inc(model.name, settings.intervention)
        if settings.intervention == "verify_prompt":
            return with_verify_prompt(route, body, settings.verify_prompt), lease, model
        if settings.intervention == "reasoning":
            return (with_reasoning(body, settings.reasoning_effort) if route == "chat" else body,
                    lease, model)
        # escalate: serve with the stronger model instead
        target = self.state.cfg.resolve(settings.escalate_to or "")
        if target is None or target.name == model.name:
            return body, lease, model
        lease.release()
        headers["x-lkn-escalated-from"] = model.name
        m.escalations.inc(model.name, target.name)
        # Queued by the time the request first arrived: behind a busy strong model it is the
        # oldest, not the newest, request, so the wait bound (max_queue_wait_s) covers it.
        # _lease sets x-lkn-model to the model that answers.
        return body, await self._lease(target, route, body, headers, self._arrived), target

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, request: web.Request, route: str, body: dict[str, Any],
                       lease: Lease, headers: dict[str, str],
                       started: float) -> web.StreamResponse:
        s = self.state.cfg.server
        client = lease.client
        stream = bool(body.get("stream")) and route != "embeddings"
        thinking = ThinkingRelay(route, body, lease, self.state.session)
        payload = thinking.prepare(client.prepare_body(route, body))
        url = lease.base_url + client.upstream_path(route)
        timeout = aiohttp.ClientTimeout(
            total=None if stream else s.request_timeout_s, sock_connect=10,
            sock_read=s.stream_idle_timeout_s if stream else None)
        try:
            sent = time.monotonic()
            try:
                upstream = await self.state.session.post(url, json=payload, timeout=timeout)
            except aiohttp.ServerDisconnectedError:
                if time.monotonic() - sent > RECONNECT_WINDOW_S:
                    raise  # the engine had the request and died on it: never run it twice
                # The engine closed a pooled keep-alive connection just as it was reused
                # (llama-server drops idle ones after ~5 s): it saw no request. Once more, on a
                # fresh connection.
                upstream = await self.state.session.post(url, json=payload, timeout=timeout)
        except asyncio.TimeoutError:
            raise GatewayTimeout(f"engine {lease.process.key} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"engine {lease.process.key} is unreachable: {exc}") from None
        async with upstream:
            if upstream.status >= 400:
                raw = await upstream.read()
                return web.json_response(client.normalize_error(upstream.status, raw),
                                         status=upstream.status,
                                         headers={**headers, ERROR_SOURCE_HEADER: "engine"})
            if not stream or "text/event-stream" not in upstream.headers.get("Content-Type", ""):
                try:
                    raw = await upstream.read()
                except asyncio.TimeoutError:
                    raise GatewayTimeout(f"engine {lease.process.key} did not finish within "
                                         f"{s.request_timeout_s:g}s") from None
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"engine {lease.process.key} broke off its answer: "
                                        f"{exc}") from None
                return web.Response(body=await thinking.response(raw), status=upstream.status,
                                    content_type="application/json", headers=headers)
            return await self._relay_stream(request, upstream, lease, headers, started, thinking)

    async def _relay_stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                            lease: Lease, headers: dict[str, str],
                            started: float,
                            thinking: ThinkingRelay | None = None) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={
            **headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        parser = SSEParser()
        saw_done = False
        first = True
        failure: str | None = None
        model = headers.get("x-lkn-model", "")
        try:
            source = upstream.content.iter_any()
            relayed = thinking.stream(source) if thinking is not None else source
            if self._cache is not None:
                relayed = self._cache.tee(relayed)
            async for chunk in relayed:
                for event in parser.feed(chunk):
                    if event.comment:
                        await resp.write(b": ping\n\n")  # keep proxies and clients patient
                        continue
                    if event.data == DONE:
                        saw_done = True
                        await resp.write(frame(DONE))
                        continue
                    if first:
                        first = False
                        self.state.metrics.ttft_seconds.observe(time.monotonic() - started, model)
                    await resp.write(frame(lease.client.normalize_stream_data(event.data or "")))
            for event in parser.flush():
                if event.data == DONE:
                    saw_done = True
                    await resp.write(frame(DONE))
                elif event.data:
                    await resp.write(frame(lease.client.normalize_stream_data(event.data)))
        except asyncio.CancelledError:
            upstream.close()  # the client went away: the engine stops generating for nobody
            raise
        except ConnectionResetError:
            # A write to a gone client. First: aiohttp's ClientConnectionResetError is a
            # ClientError too, and must not be taken for the engine breaking off. Returned, not
            # raised: aiohttp would log every disconnect as an internal error with a traceback.
            upstream.close()
            self.client_gone = True
            return resp
        except asyncio.TimeoutError:
            failure = (f"engine {lease.process.key} sent nothing for "
                       f"{self.state.cfg.server.stream_idle_timeout_s:g}s")
        except aiohttp.ClientError as exc:
            failure = f"engine {lease.process.key} broke off the stream: {exc}"
        if failure is None and not saw_done:
            failure = (f"engine {lease.process.key} ended the stream without [DONE] "
                       f"(it stopped or crashed mid-answer)")
        if failure is not None:
            log.warning("stream for model=%s failed: %s", model, failure)
            try:
                await resp.write(frame_json(UpstreamError(failure).body()))
            except ConnectionResetError:
                pass
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


def models_payload(state: GatewayState) -> dict[str, Any]:
    created = int(time.time() - (time.monotonic() - state.started))
    data = []
    for m in state.cfg.models:
        loaded = state.manager.is_loaded(m.name)
        for name in m.names:
            data.append({"id": name, "object": "model", "created": created, "owned_by": "lkn",
                         "loaded": loaded,
                         "lkn": {"model": m.name, "alias_of": m.name if name != m.name else None,
                                 "engine": m.engine,
                                 "contexts": [v.ctx_size for v in m.variants],
                                 "embeddings": m.embeddings}})
    return {"object": "list", "data": data}
