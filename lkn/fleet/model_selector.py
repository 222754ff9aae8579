"""ModelSelector: sizes a request and picks the context variants that can hold it.

It counts the prompt's tokens only when the count can change the choice: a cheap upper bound
(lkn.engines.bound) that fits the smallest variant decides alone. Otherwise it counts through
the live engine (chat template + tokenize) or locally (llama-cpp-python reading only the
vocabulary), and the candidate variants are those whose context holds prompt + answer budget
and whose VRAM estimate fits the budget (the pure rules in lkn.fleet.selector). The handler asks
``size()`` once per request; the manager asks ``options()`` when it queues the request, and
again when a reload re-plans it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from lkn.config import Config, ModelConfig
from lkn.engines.bound import model_shape, prompt_bound

from lkn.engines.tokens import count_prompt, local_source
from lkn.fleet import scheduler as sched
from lkn.fleet.records import Demand, Process
from lkn.fleet.selector import VariantInfo, bound_decides, explicit_answer_budget, options_for


class FleetView(Protocol):
    """What the selector reads of the fleet: the config in force, each model's variants as they
    run or would run, and the engine that is ready to count tokens."""
    @property
    def cfg(self) -> Config: ...
    def variants(self, model: ModelConfig) -> list[VariantInfo]: ...
    def ready_process(self, model_name: str) -> Process | None: ...


@dataclass(frozen=True)
class Sizing:
    """A request's size: its demand, and how its prompt tokens were known."""
    demand: Demand
    method: str  # skipped (not counted), bound, engine, local or estimate


class ModelSelector:
    def __init__(self, fleet: FleetView, session: aiohttp.ClientSession) -> None:
        self._fleet = fleet
        self._session = session

    async def size(self, model: ModelConfig, route: str, body: dict[str, Any]) -> Sizing:
        answer = explicit_answer_budget(body)
        embeddings = route == "embeddings"
        if not model.engine_tokenizes and model.tokenizer_path is None:
            # A server lkn has no tokenizer for counts for itself and refuses what does not
            # fit: the smallest variant that holds the answer budget is started.
            return Sizing(Demand(0, answer, embeddings=embeddings), "skipped")
        shape = await model_shape(model)
        # A reload may have come during the await: the variants to size against are those
        # of the config in force (a 404 if the model is gone).
        model = self._fleet.cfg.in_force(model)
        s = self._fleet.cfg.server
        bound = prompt_bound(route, body, shape)
        if bound is not None and bound_decides(
                self._fleet.variants(model), bound, answer_tokens=answer, margin=s.token_margin,
                default_max_tokens=model.default_max_tokens, budget_mb=s.vram_budget_mb,
                embeddings=embeddings):
            # Far from every limit: the exact count could not change the choice. One upstream
            # call per request instead of three.
            return Sizing(Demand(bound, answer, embeddings=embeddings), "bound")
        prompt_tokens, method = await self.count(model, route, body)
        return Sizing(Demand(prompt_tokens, answer, embeddings=embeddings), method)

    async def count(self, model: ModelConfig, route: str, body: dict[str, Any]) -> tuple[int, str]:
        """The prompt's exact token count and how it was made: through the live engine
        (``engine``), with the model's own tokenizer here (``local``), else ``estimate``."""
        proc = self._fleet.ready_process(model.name)
        live = None
        if proc is not None and model.engine_tokenizes:
            client, base, session = proc.client, proc.base_url, self._session
            live = lambda: client.count_tokens(session, base, route, body)  # noqa: E731
        local_path, local_kind = local_source(model)
        return await count_prompt(route=route, body=body, live=live, local_path=local_path,
                                  local_kind=local_kind)

    def options(self, model: ModelConfig, demand: Demand) -> tuple[sched.Option, ...]:
        """The variants of ``model`` that hold ``demand`` within the VRAM budget, smallest
        first; ContextLengthExceeded when none can."""
        s = self._fleet.cfg.server
        return options_for(model.name, self._fleet.variants(model),
                           prompt_tokens=demand.prompt_tokens,
                           answer_tokens=demand.answer_tokens,
                           default_max_tokens=model.default_max_tokens,
                           margin=s.token_margin, budget_mb=s.vram_budget_mb,
                           embeddings=demand.embeddings)
