"""From a request to an engine lease: size it (``ModelSelector.size``: prompt tokens, how they
were counted, the answer budget), then wait for an engine of the model whose variant holds it.
The sizing and the grant are facts of the request's ``Outcome`` (its headers name them)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from lkn.config import HomeostasisConfig, ModelConfig
from lkn.fleet.records import Demand, Lease
from lkn.homeostat.interventions import with_verify_prompt
from lkn.request.loading import LoadingFeedback
from lkn.request.outcome import Outcome
from lkn.request.state import GatewayState


@dataclass(frozen=True)
class Backends:
    """Which backends of a model with several a lease may pick."""
    exclude: frozenset[str] = frozenset()  # those this request failed on
    sticky: str | None = None              # the balancer's key for sticky backends


def sized_body(route: str, body: dict[str, Any], settings: HomeostasisConfig) -> dict[str, Any]:
    """The body to size the context for: the request as it may be sent, with the verification
    prompt an ANALYTIC verdict would add."""
    if settings.mode == "homeostatic" and settings.intervention == "verify_prompt":
        return with_verify_prompt(route, body, settings.verify_prompt)
    return body


async def lease_engine(state: GatewayState, model: ModelConfig, route: str,
                       body: dict[str, Any], outcome: Outcome, loading: LoadingFeedback | None,
                       backends: Backends, arrived: float | None = None, *,
                       min_ctx: int | None = None, budget_binding: bool = True) -> Lease:
    """Size ``body``, then wait for an engine of ``model`` whose variant holds it (a stream that
    waits long is kept informed by ``loading``). ``arrived``: when the request first queued,
    for a request that queues again (an escalation keeps its place). ``min_ctx``: the least
    context the client asked for (Ollama's ``num_ctx``); ``budget_binding`` False: the
    answer budget is a ceiling, not a demand (``Inbound.answer_budget_binding``)."""
    sizing = await state.manager.selector.size(model, route, body)
    state.metrics.token_counts.inc(sizing.method)
    outcome.prompt_tokens = sizing.demand.prompt_tokens
    outcome.counted_by = sizing.method
    demand = replace(sizing.demand, min_ctx=min_ctx)
    if not budget_binding:
        demand = replace(demand, answer_tokens=None)  # steered by default_max_tokens only
    return await lease_demand(state, model, demand, outcome, loading, backends, arrived)


async def lease_demand(state: GatewayState, model: ModelConfig, demand: Demand,
                       outcome: Outcome, loading: LoadingFeedback | None = None,
                       backends: Backends = Backends(), arrived: float | None = None) -> Lease:
    """Wait for an engine of ``model`` whose variant holds ``demand`` (already sized)."""
    outcome.model = model.name  # known before the wait: loading streams carry it
    demand = replace(demand, client_key=outcome.client_key, priority=outcome.priority)
    waited = time.monotonic()
    if outcome.queued_at is None:
        outcome.queued_at = waited
    if model.backends:
        demand = replace(demand, exclude=backends.exclude, sticky_key=backends.sticky)
    acquiring = state.manager.acquire(model, demand, arrived=arrived)
    lease = await (acquiring if loading is None else loading.wait(acquiring))
    state.metrics.queue_seconds.observe(time.monotonic() - waited, model.name)
    outcome.variant = lease.client.variant.ctx_size
    outcome.backend = lease.record.model.name if lease.record.model.parent is not None else None
    return lease
