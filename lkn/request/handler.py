"""RequestHandler: one OpenAI request end to end.

parse + validate -> resolve the model -> count tokens and pick the variants that hold the request
-> lease an engine (the scheduler may start or swap one) -> probe entropy (homeostatic mode) and
intervene if needed -> forward -> relay the answer (streams event by event) -> release the lease.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import aiohttp
from aiohttp import web

from lkn.homeostat import probe as probe_math
from lkn.cache.store import ResponseCache
from lkn.cache.http import CacheTicket, cache_opt_out
from lkn.config import Config, HomeostasisConfig, ModelConfig
from lkn.engines.base import EngineRequestError
from lkn.fleet.manager import EngineManager
from lkn.fleet.records import Demand, Lease
from lkn.errors import (ERROR_SOURCE_HEADER, BadRequest, Cancelled, ContextLengthExceeded,
                     EngineUnavailable, GatewayTimeout, LknError, ModelNotFound, UpstreamError)
from lkn.ops.events import EventBus
from lkn.ops.inflight import InFlight
from lkn.request.loading import LoadingFeedback
from lkn.ops.traffic import Finished, TrafficStats
from lkn.homeostat.interventions import (request_overrides, with_reasoning, with_verify_prompt,
                        without_reasoning)
from lkn.ops.metrics import Metrics
from lkn.fleet.selector import explicit_answer_budget
from lkn.sse import frame_bytes, frame_json, sse_headers
from lkn.relay.stream import StreamRelay
from lkn.relay.thinking_stream import ThinkingRelay
from lkn.engines.upstream import upstream_timeout, with_usage
from lkn.ops.usage import Usage, answer_usage, read_usage
from lkn.request.validate import VALIDATORS, parse_json_object

from lkn.request.state import GatewayState

log = logging.getLogger("lkn.request.handler")




class RequestHandler:
    _cache: CacheTicket | None = None  # this request's response cache ticket, if any
    client_gone = False  # the client left mid-stream (counted as 499)
    _loading: LoadingFeedback | None = None
    _stream: web.StreamResponse | None = None  # the relayed stream, once its headers went out
    completion_tokens: int | None = None  # from the engine's usage, when it reported one
    # Why the last model tried gave up before the first byte: lkn's error, or the engine's
    # own error answer (relayed as it is when no fallback answers).
    _failure: LknError | web.StreamResponse | None = None
    _failed_backend: str | None = None       # the backend that just failed (it is retried)
    _exclude: frozenset[str] = frozenset()   # backends this request failed on
    _sticky: str | None = None               # the balancer's key for sticky backends
    ttft_s: float | None = None           # time to the first streamed event
    _arrived: float | None = None  # when this request first queued for an engine

    def __init__(self, state: GatewayState, request_id: str = "") -> None:
        self.state = state
        self.request_id = request_id

    @property
    def _early(self) -> web.StreamResponse | None:
        """The stream whose SSE headers went out (while it waited for an engine, or once the
        answer began): errors from then on are error events on it, never a new response."""
        if self._stream is not None:
            return self._stream
        return self._loading.response if self._loading is not None else None

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
        headers: dict[str, str] = {"x-request-id": self.request_id}
        entry = self.state.inflight.add(self.request_id, route)
        try:
            body = parse_json_object(await request.read())
            VALIDATORS[route](body)
            lkn_field, cache_off = cache_opt_out(body.pop("lkn", None))
            model = self._resolve(self.state.cfg, body["model"])
            label = entry.model = model.name
            if body.get("stream") and route != "embeddings":
                self._loading = LoadingFeedback(request, route, model, self.state.manager,
                                                headers)
            if route == "embeddings" and not model.embeddings:
                raise BadRequest(f"model '{model.name}' does not serve embeddings (set "
                                 f"embeddings = true in its config)", param="model")
            settings = self._settings(request, route, model, lkn_field)
            if self.state.cache is not None:
                self._cache = CacheTicket.open(self.state.cache, self.state.metrics, request,
                                               route, model, body, settings, cache_off, headers)
                if self._cache is not None and self._cache.hit:
                    status = 200
                    return self._cache.answer(headers, time.monotonic())
            response = None
            for model, settings in self._candidates(request, route, model, lkn_field, headers):
                label = entry.model = model.name
                response = await self._serve(request, route, model, body, settings, headers,
                                             started)
                if response is not None:
                    break
            if response is None:  # every candidate failed before the first byte
                if isinstance(self._failure, LknError):
                    raise self._failure
                response = self._failure  # the last engine's own error answer
            label = headers.get("x-lkn-model", label)  # escalation may have moved it
            status = response.status
            if self._early is not None and response is not self._early:
                response = await self._late_error(response)  # an engine error, say
            status = 499 if self.client_gone else status
            if self._cache is not None and not self.client_gone:
                self._cache.settle(response)
            return response
        except LknError as exc:
            status = exc.status
            if self._early is None:
                raise
            return await self._error_event(exc)  # the headers went out while it waited
        except (asyncio.CancelledError, ConnectionResetError) as gone:
            status = 499  # the client went away (nginx's code for it)
            if not entry.cancelled:
                if isinstance(gone, ConnectionResetError) and self._early is not None:
                    return self._early  # quietly: aiohttp would log a traceback
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # an operator's cancel: answer the client with an error
            exc = Cancelled(f"request {self.request_id} was cancelled by an operator")
            status = exc.status
            if self._early is None:
                raise exc from None
            return await self._error_event(exc)
        finally:
            self.state.inflight.remove(entry)
            self._finished(request, route, label, status, headers, time.monotonic() - started)

    def _finished(self, request: web.Request, route: str, label: str, status: int,
                  headers: dict[str, str], elapsed: float) -> None:
        m, st = self.state.metrics, self.state
        m.requests.inc(label, route, str(status))
        m.request_seconds.observe(elapsed, label, route)
        log.info("%s %s model=%s status=%d variant=%s mode=%s %.0fms", request.method,
                 request.path, label, status, headers.get("x-lkn-variant", "-"),
                 headers.get("x-lkn-mode", "-"), elapsed * 1000)
        if label == "unknown":
            return  # not a configured model: no statistics for arbitrary names
        ok = status < 400
        st.traffic.record(label, Finished(time.monotonic(), elapsed, ok,
                                          self.completion_tokens))
        prompt = headers.get("x-lkn-prompt-tokens", "")
        tokens, _, method = prompt.partition(";")
        st.bus.publish("request", id=self.request_id, model=label, route=route,
                       variant=int(headers["x-lkn-variant"]) if "x-lkn-variant" in headers
                       else None,
                       prompt_tokens=int(tokens) if tokens.isdigit() else None,
                       counted_by=method or None, mode=headers.get("x-lkn-mode"),
                       entropy=float(headers["x-lkn-entropy"]) if "x-lkn-entropy" in headers
                       else None,
                       intervention=headers.get("x-lkn-intervention"),
                       escalated_from=headers.get("x-lkn-escalated-from"),
                       cache=headers.get("x-lkn-cache"), status=status,
                       latency_ms=round(elapsed * 1000, 1),
                       ttft_ms=round(self.ttft_s * 1000, 1) if self.ttft_s is not None
                       else None,
                       completion_tokens=self.completion_tokens)

    async def _error_event(self, exc: LknError) -> web.StreamResponse:
        """An error after the SSE headers went out: an error event, then the end."""
        assert self._early is not None
        with contextlib.suppress(ConnectionResetError):
            await self._early.write(frame_json(exc.body(self.request_id)))
            await self._early.write_eof()
        return self._early

    async def _late_error(self, response: web.StreamResponse) -> web.StreamResponse:
        """The engine answered with an error status after lkn had sent its SSE headers."""
        assert self._early is not None
        raw = response.body if isinstance(response, web.Response) else None
        with contextlib.suppress(ConnectionResetError):
            await self._early.write(frame_bytes(raw if isinstance(raw, bytes) else b"{}"))
            await self._early.write_eof()
        return self._early

    @staticmethod
    def _settings(request: web.Request, route: str, model: ModelConfig,
                  lkn_field: Any) -> HomeostasisConfig:
        if route == "embeddings":
            return HomeostasisConfig(mode="passthrough")
        return request_overrides(model.homeostasis, lkn_field, request.headers.get("x-lkn-mode"))

    def _candidates(self, request: web.Request, route: str, asked: ModelConfig,
                    lkn_field: Any, headers: dict[str, str]
                    ) -> Iterator[tuple[ModelConfig, HomeostasisConfig]]:
        """The asked model, then (when ``_serve`` gave up on one before the first byte) each
        of its ``fallbacks`` in order. A fallback's own fallbacks are not followed."""
        yield asked, self._settings(request, route, asked, lkn_field)
        for name in asked.fallbacks:
            model = self.state.cfg.resolve(name)
            if model is None or (route == "embeddings" and not model.embeddings):
                continue
            log.warning("model %s failed before answering (%s); falling back to %s",
                        asked.name, _why(self._failure), model.name)
            self.state.metrics.fallbacks.inc(asked.name, model.name)
            headers["x-lkn-fallback-from"] = asked.name
            self._cache = None  # another model's answer is not the asked model's to cache
            if self._loading is not None:
                self._loading.model = model
            yield model, self._settings(request, route, model, lkn_field)

    async def _serve(self, request: web.Request, route: str, model: ModelConfig,
                     body: dict[str, Any], settings: HomeostasisConfig, headers: dict[str, str],
                     started: float) -> web.StreamResponse | None:
        """Answer with ``model``; a model with several backends tries up to ``retries`` other
        backends (jittered backoff) when one fails before the first byte."""
        self._exclude = frozenset()
        self._sticky = None
        if model.backends:
            self._sticky = (request.headers.get(model.sticky_header) if model.sticky_header
                            else body.get("user") if isinstance(body.get("user"), str) else None)
        for attempt in range(1 + (model.retries if model.backends else 0)):
            if attempt:
                await asyncio.sleep(random.uniform(0.05, 0.15) * attempt)
                log.warning("model %s: backend %s failed before answering (%s); retrying on "
                            "another", model.name, self._failed_backend, _why(self._failure))
                self.state.metrics.retries.inc(model.name)
            self._failed_backend = None
            response = await self._serve_once(request, route, model, body, settings, headers,
                                              started)
            if response is not None or self._failed_backend is None:
                return response
            self._exclude |= {self._failed_backend}
        return None

    async def _serve_once(self, request: web.Request, route: str, model: ModelConfig,
                          body: dict[str, Any], settings: HomeostasisConfig,
                          headers: dict[str, str], started: float) -> web.StreamResponse | None:
        """Lease an engine of ``model`` and answer; None when it failed before the first byte
        and a fallback may try (``_failure`` holds the error, or the engine's error answer). A
        request no variant holds moves to the model's ``context_fallback``."""
        for stale in ("x-lkn-backend", "x-lkn-entropy", "x-lkn-escalated-from",
                      "x-lkn-intervention", "x-lkn-mode"):
            headers.pop(stale, None)  # from a model or backend tried before
        fell_back = False
        while True:
            try:
                lease = await self._lease(model, route, self._sized_body(route, body, settings),
                                          headers)
                break
            except ContextLengthExceeded:
                target = self.state.cfg.resolve(model.context_fallback or "")
                if target is None or fell_back:
                    raise
                log.info("model %s cannot hold the request; its context_fallback %s answers",
                         model.name, target.name)
                headers["x-lkn-fallback-from"] = model.name
                self._cache = None
                fell_back, model = True, target
            except (EngineUnavailable, UpstreamError, GatewayTimeout) as exc:
                self._failure = exc
                return None
        try:
            if settings.mode == "homeostatic":
                body, lease, model = await self._homeostat(route, body, lease, model,
                                                           settings, headers)
            elif route != "embeddings":
                headers["x-lkn-mode"] = probe_math.PASSTHROUGH
            try:
                response = await self._forward(request, route, body, lease, headers, started)
            except (EngineUnavailable, UpstreamError, GatewayTimeout) as exc:
                self._failure = exc
                self._backend_failed(lease)
                return None
            if not response.prepared and (response.status >= 500 or response.status == 429):
                self._failure = response  # refused before the first byte: a fallback may try
                self._backend_failed(lease)
                return None
            self.state.manager.report(lease.record, True)
            return response
        finally:
            lease.release()

    def _backend_failed(self, lease: Lease) -> None:
        if lease.record.model.parent is not None:
            self.state.manager.report(lease.record, False)
            self._failed_backend = lease.record.model.name

    def _resolve(self, cfg: Config, name: str) -> ModelConfig:
        return cfg.require(name)

    @staticmethod
    def _sized_body(route: str, body: dict[str, Any],
                    settings: HomeostasisConfig) -> dict[str, Any]:
        # Size the context for the request as it may be sent: with the verification prompt.
        if settings.mode == "homeostatic" and settings.intervention == "verify_prompt":
            return with_verify_prompt(route, body, settings.verify_prompt)
        return body

    async def _lease(self, model: ModelConfig, route: str, body: dict[str, Any],
                     headers: dict[str, str], arrived: float | None = None) -> Lease:
        sizing = await self.state.manager.selector.size(model, route, body)
        return await self._acquire(model, sizing.demand, sizing.demand.prompt_tokens,
                                   sizing.method, headers, arrived)

    async def _acquire(self, model: ModelConfig, demand: Demand, prompt_tokens: int,
                       method: str, headers: dict[str, str],
                       arrived: float | None = None) -> Lease:
        self.state.metrics.token_counts.inc(method)
        headers["x-lkn-model"] = model.name  # known before the wait: loading streams carry it
        headers["x-lkn-prompt-tokens"] = f"{prompt_tokens};{method}"
        waited = time.monotonic()
        if self._arrived is None:
            self._arrived = waited  # when this request first queued (an escalation keeps it)
        if model.backends:
            demand = replace(demand, exclude=self._exclude, sticky_key=self._sticky)
        acquiring = self.state.manager.acquire(model, demand, arrived=arrived)
        if self._loading is None:
            lease = await acquiring
        else:  # a stream: keep the client informed while it waits for a start or a swap
            lease = await self._loading.wait(acquiring)
        self.state.metrics.queue_seconds.observe(time.monotonic() - waited, model.name)
        headers["x-lkn-variant"] = str(lease.client.variant.ctx_size)
        if lease.record.model.parent is not None:
            headers["x-lkn-backend"] = lease.record.model.name
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
        if self._loading is not None:
            self._loading.model = target  # progress names what it now waits for
        # Queued by the time the request first arrived: behind a busy strong model it is the
        # oldest, not the newest, request, so the wait bound (max_queue_wait_s) covers it.
        # _lease sets x-lkn-model to the model that answers.
        return body, await self._lease(target, route, body, headers, self._arrived), target

    def _usage(self, model: str, usage: Usage | None) -> None:
        """The engine's usage report: metrics, and the traffic statistics' tokens/s."""
        self.state.metrics.observe_usage(model, usage)
        if usage is not None:
            self.completion_tokens = usage.completion_tokens

    # ------------------------------------------------------------------ forwarding
    async def _forward(self, request: web.Request, route: str, body: dict[str, Any],
                       lease: Lease, headers: dict[str, str],
                       started: float) -> web.StreamResponse:
        s = self.state.cfg.server
        client = lease.client
        stream = bool(body.get("stream")) and route != "embeddings"
        thinking = ThinkingRelay(route, body, lease, self.state.session)
        payload = thinking.prepare(client.prepare_body(route, body))
        # usage feeds the metrics (an engine with another wire format reports it its own way)
        strip_usage = stream and client.openai_wire and with_usage(payload)
        whole = client.request_timeout_s or s.request_timeout_s
        timeout = upstream_timeout(stream, whole, s.stream_idle_timeout_s)
        sent = time.monotonic()
        try:
            upstream = await client.send(self.state.session, lease.base_url, route, payload,
                                         timeout=timeout)
        except EngineRequestError as exc:  # a remote upstream's key vanished from the env
            raise EngineUnavailable(str(exc)) from None
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
                                         f"{whole:g}s") from None
                except aiohttp.ClientError as exc:
                    raise UpstreamError(f"engine {lease.process.key} broke off its answer: "
                                        f"{exc}") from None
                raw = client.translate_answer(raw)
                self._usage(headers.get("x-lkn-model", ""),
                            answer_usage(raw, time.monotonic() - sent))
                return web.Response(body=await thinking.response(raw), status=upstream.status,
                                    content_type="application/json", headers=headers)
            return await self._relay_stream(request, upstream, lease, headers, started, thinking,
                                            strip_usage=strip_usage, body=body)

    async def _relay_stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                            lease: Lease, headers: dict[str, str],
                            started: float,
                            thinking: ThinkingRelay | None = None, *,
                            strip_usage: bool = False,
                            body: dict[str, Any] | None = None) -> web.StreamResponse:
        resp = self._early
        if resp is None:
            resp = web.StreamResponse(status=200, headers=sse_headers(headers))
            await resp.prepare(request)
        self._stream = resp
        relay = StreamRelay(lease.client.normalize_stream_data, strip_usage=strip_usage)
        first_at: float | None = None
        failure: str | None = None
        model = headers.get("x-lkn-model", "")
        metrics = self.state.metrics
        try:
            source = upstream.content.iter_any()
            if not lease.client.openai_wire:  # e.g. Anthropic's events, as OpenAI chunks
                source = lease.client.translate_stream(source, body or {})
            # Only a splitting relay touches the bytes: no generator layer per chunk otherwise.
            relayed = thinking.stream(source) if thinking is not None and thinking.splits \
                else source
            if self._cache is not None:
                relayed = self._cache.tee(relayed)
            async for chunk in relayed:
                out = relay.feed(chunk)
                if first_at is None and relay.started:
                    first_at = time.monotonic()
                    self.ttft_s = first_at - started
                    metrics.ttft_seconds.observe(self.ttft_s, model)
                if out:
                    await resp.write(out)
            out = relay.finish()
            if out:
                await resp.write(out)
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
        self._usage(model, read_usage(relay.usage, relay.timings,
                                      None if first_at is None else time.monotonic() - first_at))
        if failure is None and not relay.done:
            failure = (f"engine {lease.process.key} ended the stream without [DONE] "
                       f"(it stopped or crashed mid-answer)")
        if failure is not None:
            log.warning("stream for model=%s failed: %s", model, failure)
            try:
                await resp.write(frame_json(UpstreamError(failure).body(self.request_id)))
            except ConnectionResetError:
                pass
        try:
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


def _why(failure: LknError | web.StreamResponse | None) -> str:
    if isinstance(failure, LknError):
        return failure.message
    return f"the engine answered HTTP {failure.status}" if failure is not None else "?"

