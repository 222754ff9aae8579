"""llama-server's endpoints beyond OpenAI's, per model: ``/v1/rerank`` (also ``/rerank``,
``/v1/reranking``; the model needs ``reranking = true``), ``/infill``, ``/tokenize``,
``/detokenize``, ``/apply-template`` and ``GET /props?model=``.

They go through the scheduler like any request (a lease of the model's engine: started, or
swapped in, if none runs), and are relayed as the engine answers them: a whole JSON answer, or
``/infill``'s own event stream (llama-server's ``/completion`` chunks, which end without
``[DONE]``) byte for byte. They are not sized by tokens (any variant holds a tokenization; an
infill's prompt is bounded by the variant it lands on, as llama-server's own), not probed and
not cached. A model on another engine gets a 400 naming the engine. They count as their
caller's in the queue's fair share, like any request, and are recorded under the ``llamacpp``
API.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from lkn.config import ModelConfig
from lkn.engines.limits import UpstreamTooLarge, read_limited
from lkn.engines.upstream import upstream_timeout
from lkn.engines.base import EngineRequestError
from lkn.errors import (ERROR_SOURCE_HEADER, BadRequest, Cancelled, EngineUnavailable,
                        EngineUnreachable, GatewayTimeout, LknError, UpstreamError)
from lkn.fleet.records import Demand, Lease
from lkn.relay.client_write import BoundedResponse, ClientWriter
from lkn.request.caller import caller_of
from lkn.request.forward import write_deadline
from lkn.request.lease import lease_demand
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState
from lkn.request.tenancy import Tenancy, record_activity
from lkn.request.validate import parse_json_object

EXTRA_ROUTES = ("rerank", "infill", "tokenize", "detokenize", "apply-template", "props")


def _model_of(state: GatewayState, name: Any, route: str) -> ModelConfig:
    if name is None:
        raise BadRequest(f"'model' is required: the model whose llama-server answers /{route}",
                         param="model")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"'model' must be a non-empty string, got {name!r}", param="model")
    model = state.cfg.require(name)
    if model.engine != "llamacpp":
        raise BadRequest(f"/{route} is llama-server's endpoint; model '{model.name}' runs on "
                         f"{model.engine}", param="model")
    if route == "rerank" and not model.reranking:
        raise BadRequest(f"model '{model.name}' does not rerank (set reranking = true in its "
                         f"config, for a reranker model)", param="model")
    return model


class ExtraHandler:
    def __init__(self, state: GatewayState, request_id: str = "") -> None:
        self.state = state
        self.outcome = Outcome(request_id)

    async def serve(self, request: web.Request, route: str) -> web.StreamResponse:
        state, outcome = self.state, self.outcome
        started = time.monotonic()
        entry = state.inflight.add(outcome.request_id, route)
        label, status = "unknown", 500
        failure: LknError | None = None
        caller = caller_of(request, state.cfg.server)  # its fair share, its key's policy
        outcome.client_key = caller.key
        tenancy = Tenancy(state, caller, outcome)
        try:
            raw = b""
            if route == "props":
                body: dict[str, Any] | None = None
                model = _model_of(state, request.query.get("model"), route)
            else:
                raw = await request.read()
                body = parse_json_object(raw)
                model = _model_of(state, body.get("model"), route)
            label = entry.model = model.name
            tenancy.check_model(model)
            tenancy.admit(len(raw))
            # A tokenization needs no context; an infill's answer budget steers the variant.
            answer = body.get("n_predict") if body is not None and route == "infill" else 0
            demand = Demand(0, answer if isinstance(answer, int) and answer > 0 else None)
            async with tenancy.slot():
                lease = await lease_demand(state, model, demand, outcome)
                try:
                    response = await self._relay(request, route, body, lease)
                finally:
                    lease.release()
            status = response.status
            return response
        except LknError as exc:
            status, failure = exc.status, exc
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = 499
            if not entry.cancelled:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # an operator's cancel: the client gets an error, not a reset
            cancelled = Cancelled(f"request {outcome.request_id} was cancelled by an operator")
            status = cancelled.status
            raise cancelled from None
        finally:
            state.inflight.remove(entry)
            elapsed = time.monotonic() - started
            state.metrics.requests.inc(label, route, str(status), "llamacpp", outcome.key_id)
            state.metrics.request_seconds.observe(elapsed, label, route, "llamacpp")
            tenancy.settle()
            record_activity(state, request, api="llamacpp", route=route, model=label,
                            status=status, elapsed_s=elapsed, outcome=outcome,
                            key=caller.policy, error=failure)

    async def _relay(self, request: web.Request, route: str, body: dict[str, Any] | None,
                     lease: Lease) -> web.StreamResponse:
        state, client, server = self.state, lease.client, self.state.cfg.server
        stream = bool(body and body.get("stream"))
        timeout = upstream_timeout(stream, server.request_timeout_s, server.stream_idle_timeout_s)
        key = lease.process.key
        try:
            if body is None:
                upstream = await client.get(state.session, lease.base_url, route, timeout=timeout)
            else:
                upstream = await client.send(state.session, lease.base_url, route,
                                             client.prepare_body(route, body), timeout=timeout)
        except EngineRequestError as exc:  # not lkn's engine on that port any more
            await lease.process.confirm_alive()
            raise EngineUnavailable(str(exc)) from None
        except asyncio.TimeoutError:
            raise GatewayTimeout(f"engine {key} did not answer in time") from None
        except aiohttp.ClientError as exc:
            await lease.process.confirm_alive()  # a dead engine is a crash now
            if isinstance(exc, aiohttp.ClientConnectorError):
                raise EngineUnreachable(f"engine {key} is unreachable") from None
            raise UpstreamError(f"engine {key} failed: {exc.__class__.__name__}") from None
        deadline = write_deadline(state, server, self.outcome)
        async with upstream:
            if 300 <= upstream.status < 400:  # never followed: it could point anywhere
                raise UpstreamError(f"engine {key} answered with a redirect (HTTP "
                                    f"{upstream.status}), which lkn does not follow")
            headers = {"Content-Type": upstream.headers.get("Content-Type", "application/json"),
                       **self.outcome.headers()}
            if upstream.status >= 400:
                headers[ERROR_SOURCE_HEADER] = "engine"
            if not (stream and upstream.status < 400):
                try:
                    raw = await read_limited(upstream)
                except asyncio.TimeoutError:
                    raise GatewayTimeout(f"engine {key} did not finish in time") from None
                except (UpstreamTooLarge, aiohttp.ClientError) as exc:
                    raise UpstreamError(f"engine {key} broke off its answer: {exc}") from None
                return BoundedResponse(deadline=deadline, status=upstream.status, body=raw,
                                       headers=headers)
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            writer = ClientWriter(response, request.transport, deadline)
            try:
                async for chunk in upstream.content.iter_any():
                    await writer.write(chunk)
                await writer.write_eof()
            except ConnectionResetError:
                upstream.close()  # the client left: the engine stops for nobody
            except (asyncio.TimeoutError, aiohttp.ClientError):
                pass  # the engine broke off: the client sees its stream end early
            return response
