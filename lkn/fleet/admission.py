"""Which of a model's variants a request may wait for (pure; the manager passes the state).

The selector (``lkn.fleet.model_selector``) names the variants that hold the request within the
VRAM budget. Of those, a request may not wait for a backend whose circuit is open or that it
already failed on, for another variant than the one an operator asked to load, or for an engine
that failed its starts and is not due to try again: each case is an error the client sees now
rather than a wait that cannot end well.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Mapping

from lkn.config import ModelConfig
from lkn.errors import BadRequest, EngineUnavailable
from lkn.fleet import scheduler as sched
from lkn.fleet.failures import FailurePolicy
from lkn.fleet.records import Demand, EngineRecord


def admissible(model: ModelConfig, options: tuple[sched.Option, ...], demand: Demand, *,
               records: Mapping[str, EngineRecord], backend_allowed: Callable[[str], bool],
               policy: FailurePolicy, now: float,
               start_s: float = 0.0) -> tuple[sched.Option, ...]:
    """``options`` (the selector's, for ``model``) narrowed to those the request may wait for,
    each with its engine's start cost (learned; before its first start, ``start_s``);
    EngineUnavailable or BadRequest when none is left. ``records``: the model's records by
    slot id."""
    if model.backends:  # open circuits and backends this request already failed on
        options = tuple(o for o in options if o.group not in demand.exclude
                        and backend_allowed(o.group))
        if not options:
            raise EngineUnavailable(
                f"no backend of model '{model.name}' can take the request now (circuit "
                f"open, or it failed on each already)", headers={"Retry-After": "1"})
    if demand.ctx is not None:  # an operator's load of one variant
        options = tuple(o for o in options if o.ctx == demand.ctx)
        if not options:
            raise BadRequest(f"model '{model.name}' has no variant with context "
                             f"{demand.ctx} that fits the VRAM budget", param="ctx")
    if demand.min_ctx is not None:  # the client's own context size: at least it, or the most
        options = tuple(o for o in options if o.ctx >= demand.min_ctx) or options[-1:]
    usable = tuple(replace(o, start_s=records[o.key].cost.start_s(start_s))
                   for o in options if not records[o.key].refusing(policy, now))
    if usable:
        return usable
    worst = records[options[0].key]
    retry = max(1, math.ceil(worst.history.retry_at(policy) - now))
    raise EngineUnavailable(
        f"engine {worst.key} failed {worst.history.consecutive} times in a row and is "
        f"FAILED; next try in {retry}s: {worst.history.last_error}",
        headers={"Retry-After": str(retry)})
