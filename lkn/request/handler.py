"""RequestHandler: one OpenAI request end to end.

parse + validate -> resolve the model -> size the request and lease an engine whose variant holds
it (the scheduler may start or swap one) -> the homeostat's gate (probe, then intervene or
escalate) -> forward and relay the answer (``forward``) -> release the lease.

A model that fails before the first byte is retried on another of its backends, then replaced by
its ``fallbacks``; a request no variant holds moves to its ``context_fallback``. Each level
returns what happened (an ``Attempt``); the request's facts go to its ``Outcome``, from which its
headers and its ``request`` event are built.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Iterator

from aiohttp import web

from lkn.cache.http import CacheTicket, cache_opt_out, partition_of
from lkn.config import HomeostasisConfig, ModelConfig
from lkn.errors import (BadRequest, Cancelled, ContextLengthExceeded, EngineUnavailable,
                        EngineUnreachable, GatewayTimeout, LknError, ModelNotFound,
                        UpstreamError)
from lkn.fleet.records import Lease
from lkn.homeostat.interventions import request_overrides
from lkn.homeostat.probe import PASSTHROUGH
from lkn.request.caller import caller_of, take_priority
from lkn.request.finish import finished
from lkn.request.forward import Forwarder, write_deadline
from lkn.request.inbound.base import Inbound
from lkn.request.gating import homeostat
from lkn.request.lease import Backends, lease_engine, sized_body
from lkn.request.loading import LoadingFeedback
from lkn.request.open_stream import OpenStream
from lkn.request.outcome import Outcome
from lkn.request.residency import is_operator, load_or_unload
from lkn.request.tenancy import Tenancy
from lkn.request.state import GatewayState
from lkn.request.validate import VALIDATORS, parse_json_object
from lkn.request.validate_formats import check_media_urls, media_engine

log = logging.getLogger("lkn.request.handler")

# What makes lkn give up on an engine before the first byte and try another backend or model.
_ENGINE_FAILURES = (EngineUnavailable, UpstreamError, GatewayTimeout)


@dataclass(frozen=True)
class Attempt:
    """What one try to answer came to: the response, or why there is none before the first
    byte (lkn's error, or the engine's own error answer, relayed as it is when nothing else
    answers) and the backend that failed, which the next try avoids. ``engine_died``: the
    request never reached the engine and the engine was found dead: one more try restarts it."""
    response: web.StreamResponse | None = None
    failure: LknError | web.StreamResponse | None = None
    failed_backend: str | None = None
    engine_died: bool = False


class RequestHandler:
    _cache: CacheTicket | None = None  # this request's response cache ticket, if any
    inbound: Inbound  # the client's API (``serve``)
    tenancy: Tenancy  # its key's policy (``serve``)
    operator = False  # its caller's keep_alive counts (``residency.is_operator``)
    stream: OpenStream  # the client's event stream, once its headers go out

    def __init__(self, state: GatewayState, request_id: str = "") -> None:
        self.state = state
        # The request's config generation, pinned when it arrives: its model, fallbacks,
        # homeostasis and cache settings come from this snapshot, whatever reloads come while
        # it runs. The manager maps it onto the config in force (Config.in_force). A model it
        # moves to (context_fallback, escalate_to) is looked up in the config in force.
        self.cfg = state.cfg
        self.cache = state.cache
        self.request_id = request_id
        self.outcome = Outcome(request_id)

    # ------------------------------------------------------------------ routes
    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, Inbound("chat"))

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, Inbound("completions"))

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self.serve(request, Inbound("embeddings"))

    # ------------------------------------------------------------------ core
    async def serve(self, request: web.Request, inbound: Inbound) -> web.StreamResponse:
        """Answer ``request`` of the client API ``inbound`` speaks: its body made the canonical
        request, the answer (whole, streamed, an error) put back into the API's shape."""
        self.inbound = inbound
        route = inbound.route
        started = time.monotonic()
        label = "unknown"  # metrics never carry unvalidated client input as a label
        status = 500
        outcome = self.outcome
        deadline = write_deadline(self.state, self.cfg.server, outcome)
        self.stream = stream = OpenStream(request, outcome.headers, deadline)
        entry = self.state.inflight.add(self.request_id, route)
        held = contextlib.AsyncExitStack()  # the key's place among its requests in flight
        failure: LknError | None = None
        # Known before the body: even a malformed request is its key's (activity, metrics)
        caller = caller_of(request, self.cfg.server)
        self.tenancy = tenancy = Tenancy(self.state, caller, outcome)
        self._raw = b""
        try:
            self._raw = await request.read()
            body = inbound.canonical(parse_json_object(self._raw))
            route = entry.route = inbound.route  # the API may choose it by the body
            VALIDATORS[route](body)
            lkn_field, cache_off = cache_opt_out(body.pop("lkn", None))
            lkn_field, outcome.priority = take_priority(lkn_field, caller)
            outcome.client_key = caller.key
            model = self.cfg.require(body["model"])
            label = entry.model = model.name
            tenancy.check_model(model)
            check_media_urls(body, media_engine(model))  # before an engine starts for it
            if route == "embeddings" and not model.embeddings:
                raise BadRequest(f"model '{model.name}' does not serve embeddings (set "
                                 f"embeddings = true in its config)", param="model")
            self.operator = operator = is_operator(caller, self.cfg.server)
            if inbound.load_only:  # the client only asks for its model's residency
                await load_or_unload(self.state, model, inbound, outcome, operator)
                status = 200
                return inbound.whole(web.json_response({}, headers=outcome.headers()))
            if body.get("stream") and route != "embeddings":
                stream.transcoder = inbound.transcoder()
                stream.content_type = inbound.stream_content_type
                if inbound.sse:
                    stream.loading = LoadingFeedback(request, route, model, self.state.manager,
                                                     outcome.headers, deadline,
                                                     openai=inbound.identity)
            settings = self._settings(request, route, model, lkn_field)
            tenancy.admit(len(self._raw))  # the key's rates and quotas, before any engine
            if self.cache is not None:
                self._cache = CacheTicket.open(self.cache, self.state.metrics, request,
                                               route, model, body, settings, cache_off,
                                               partition_of(caller.tenant))
                if self._cache is not None:
                    outcome.cache = self._cache.lookup.result
                    if self._cache.hit:
                        status = 200
                        return inbound.whole(self._cache.answer(outcome.headers(),
                                                                time.monotonic()))
            await held.enter_async_context(tenancy.slot())
            asked, attempt = model, Attempt()
            for tried, model in enumerate(self._candidates(route, asked)):
                if tried:  # a fallback: the models before it failed before the first byte
                    self._fall_back(asked, model, attempt)
                label = entry.model = model.name
                try:
                    attempt = await self._serve(request, route, model, body,
                                                self._settings(request, route, model,
                                                               lkn_field), started)
                except ModelNotFound as gone:
                    if not tried:
                        raise
                    attempt = Attempt(failure=gone)  # a fallback a reload removed: the next
                    continue
                if attempt.response is not None:
                    break
            response = attempt.response
            if response is None:  # every candidate failed before the first byte
                if isinstance(attempt.failure, LknError):
                    raise attempt.failure
                assert attempt.failure is not None
                response = attempt.failure  # the last engine's own error answer
            label = outcome.model or label  # escalation may have moved it
            status = response.status
            if not response.prepared:
                response.headers.update(outcome.headers())
            if stream.response is not None and response is not stream.response:
                response = await stream.engine_error(response)
            status = 499 if outcome.client_gone else status
            if self._cache is not None and not outcome.client_gone:
                self._cache.settle(response)
            return inbound.whole(response)
        except LknError as exc:
            status, failure = exc.status, exc
            if stream.response is None:
                for name, value in outcome.extra_headers.items():  # x-ratelimit-*, x-lkn-skipped
                    exc.extra_headers.setdefault(name, value)
                raise
            return await stream.error_event(exc, self.request_id)  # the headers went out
        except (asyncio.CancelledError, ConnectionResetError) as gone:
            status = 499  # the client went away (nginx's code for it)
            if not entry.cancelled:
                if isinstance(gone, ConnectionResetError) and stream.response is not None:
                    return stream.response  # quietly: aiohttp would log a traceback
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # an operator's cancel: answer the client with an error
            cancelled = Cancelled(f"request {self.request_id} was cancelled by an operator")
            status = cancelled.status
            if stream.response is None:
                raise cancelled from None
            return await stream.error_event(cancelled, self.request_id)
        finally:
            await held.aclose()
            self.state.inflight.remove(entry)
            self.tenancy.settle()
            finished(self.state, request, inbound, self.outcome, self.tenancy.key, self._raw,
                     label, status, time.monotonic() - started, failure)

    @staticmethod
    def _settings(request: web.Request, route: str, model: ModelConfig,
                  lkn_field: Any) -> HomeostasisConfig:
        if route == "embeddings":
            return HomeostasisConfig(mode="passthrough")
        return request_overrides(model.homeostasis, lkn_field, request.headers.get("x-lkn-mode"))

    def _candidates(self, route: str, asked: ModelConfig) -> Iterator[ModelConfig]:
        """The asked model, then each of its ``fallbacks`` that can serve the route (resolved
        when its turn comes). A fallback's own fallbacks are not followed."""
        yield asked
        for name in asked.fallbacks:
            model = self.cfg.resolve(name)
            if model is not None and not self.tenancy.allows(model):
                self.tenancy.skipped("fallback", model)
            elif model is not None and (route != "embeddings" or model.embeddings):
                yield model

    def _fall_back(self, asked: ModelConfig, model: ModelConfig, attempt: Attempt) -> None:
        log.warning("model %s failed before answering (%s); falling back to %s",
                    asked.name, _describe(attempt.failure), model.name)
        self.state.metrics.fallbacks.inc(asked.name, model.name)
        self.outcome.fallback_from = asked.name
        self._cache = None  # another model's answer is not the asked model's to cache
        if self.stream.loading is not None:
            self.stream.loading.model = model

    async def _serve(self, request: web.Request, route: str, model: ModelConfig,
                     body: dict[str, Any], settings: HomeostasisConfig,
                     started: float) -> Attempt:
        """Answer with ``model``; a model with several backends tries up to ``retries`` other
        backends (jittered backoff) when one fails before the first byte."""
        backends = Backends()
        if model.backends:
            backends = Backends(sticky=request.headers.get(model.sticky_header)
                                if model.sticky_header else body.get("user")
                                if isinstance(body.get("user"), str) else None)
        attempt = Attempt()
        for retry in range(1 + (model.retries if model.backends else 0)):
            if retry:
                await asyncio.sleep(random.uniform(0.05, 0.15) * retry)
                log.warning("model %s: backend %s failed before answering (%s); retrying on "
                            "another", model.name, attempt.failed_backend,
                            _describe(attempt.failure))
                self.state.metrics.retries.inc(model.name)
            attempt = await self._serve_once(route, model, body, settings, backends, started)
            if attempt.engine_died and attempt.failed_backend is None:
                # Nothing reached the client and the engine is gone: the one engine of this
                # model restarts for this request, once (a model with backends moves on).
                log.warning("model %s: its engine died before answering (%s); once more on a "
                            "restarted engine", model.name, _describe(attempt.failure))
                attempt = await self._serve_once(route, model, body, settings, backends,
                                                 started)
            if attempt.response is not None or attempt.failed_backend is None:
                return attempt
            backends = replace(backends, exclude=backends.exclude | {attempt.failed_backend})
        return attempt

    async def _serve_once(self, route: str, model: ModelConfig, body: dict[str, Any],
                          settings: HomeostasisConfig, backends: Backends,
                          started: float) -> Attempt:
        """Lease an engine of ``model`` and answer. A request no variant holds moves to the
        model's ``context_fallback``."""
        self.outcome.forget_engine()
        fell_back = False
        while True:
            try:
                lease = await self.lease(model, route, sized_body(route, body, settings),
                                          backends)
                break
            except ContextLengthExceeded:
                # the config in force: a target a reload removed is not a 404 for this model
                target = self.state.cfg.resolve(model.context_fallback or "")
                if target is not None and not self.tenancy.allows(target):
                    self.tenancy.skipped("context_fallback", target)
                    raise
                if target is None or fell_back:
                    raise
                log.info("model %s cannot hold the request; its context_fallback %s answers",
                         model.name, target.name)
                self.outcome.fallback_from = model.name
                self._cache = None
                fell_back, model = True, target
            except _ENGINE_FAILURES as exc:
                return Attempt(failure=exc)
        try:
            kept = None
            if settings.mode == "homeostatic":
                gated = await homeostat(self, route, body, lease, model, settings, backends)
                body, lease, model, kept = gated.body, gated.lease, gated.model, gated.kept
            elif route != "embeddings":
                self.outcome.mode = PASSTHROUGH
            forwarder = Forwarder(self.state, self.cfg.server, self.outcome, self.stream,
                                  self._cache)
            try:
                response = await forwarder.forward(route, body, lease, started, kept)
            except _ENGINE_FAILURES as exc:
                # Looked at for every broken exchange (a dead engine is a crash now, not at
                # the next poll); tried again only when the request never reached it: one
                # that may have killed the engine is not replayed on the next.
                dead = (isinstance(exc, UpstreamError)
                        and not await lease.process.confirm_alive())
                return Attempt(failure=exc, failed_backend=self._backend_failed(lease),
                               engine_died=dead and isinstance(exc, EngineUnreachable))
            if not response.prepared and (response.status >= 500 or response.status == 429):
                # refused before the first byte: another backend or a fallback may answer
                return Attempt(failure=response, failed_backend=self._backend_failed(lease))
            if self.outcome.probe_kept:
                self.state.metrics.probe_tokens.inc(model.name, "kept",
                                                    amount=self.outcome.probe_kept)
            if not forwarder.broken:  # a broken stream proves nothing of its engine
                self.state.manager.report(lease.record, True)
            return Attempt(response=response)
        finally:
            lease.release()

    async def lease(self, model: ModelConfig, route: str, body: dict[str, Any],
                     backends: Backends, arrived: float | None = None,
                     facts: Outcome | None = None) -> Lease:
        """Lease an engine of ``model`` for ``body``; what the lease learns (model, variant,
        prompt count) goes into the request's outcome, or ``facts`` for a lease that may not
        answer (the verifier's: it waits without the loading feedback too)."""
        inbound = self.inbound
        lease = await lease_engine(self.state, model, route, body, facts or self.outcome,
                                   None if facts else self.stream.loading, backends, arrived,
                                   min_ctx=inbound.min_ctx,
                                   budget_binding=inbound.answer_budget_binding)
        # The operator's last residency wish rules (Ollama's way); a request of theirs without
        # one restores the model's idle_unload_s. Other clients' requests leave it alone.
        if self.operator:
            lease.record.keep_alive_s = inbound.keep_alive_s
        return lease

    def decline_cache(self) -> None:
        """This request's answer is not for the cache (another model's, or not gated)."""
        if self._cache is not None:
            self._cache.decline()

    def _backend_failed(self, lease: Lease) -> str | None:
        """Report a backend's failure to its balancer; its name (None: not a backend)."""
        if lease.record.model.parent is None:
            return None
        self.state.manager.report(lease.record, False)
        return lease.record.model.name


def _describe(failure: LknError | web.StreamResponse | None) -> str:
    """Why a try gave up, for the log."""
    if isinstance(failure, LknError):
        return failure.message
    return f"the engine answered HTTP {failure.status}" if failure is not None else "?"

