"""Which variants a request may wait for (``admission.admissible``), by tables: here the least
context a client asked for (Ollama's ``num_ctx``) and an operator's pinned variant."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lkn.config import build_config
from lkn.errors import BadRequest
from lkn.fleet import scheduler as sched
from lkn.fleet.admission import admissible
from lkn.fleet.failures import FailurePolicy
from lkn.fleet.records import Demand

MODEL = build_config({"models": [{"name": "m", "binary": "/bin/x", "model_file": "/x.gguf",
                                  "variants": [{"ctx_size": c, "vram_mb": 100}
                                               for c in (512, 2048, 8192)]}]}).models[0]
OPTIONS = tuple(sched.Option(f"m@{c}", c, 100) for c in (512, 2048, 8192))  # smallest first
RECORDS: Any = {o.key: SimpleNamespace(refusing=lambda policy, now: False,
                                       cost=SimpleNamespace(start_s=lambda default: default))
                for o in OPTIONS}


def ctxs(demand: Demand) -> list[int]:
    return [o.ctx for o in admissible(MODEL, OPTIONS, demand, records=RECORDS,
                                      backend_allowed=lambda _: True, policy=FailurePolicy(),
                                      now=0.0)]


@pytest.mark.parametrize("min_ctx,expected", [
    (None, [512, 2048, 8192]),
    (1, [512, 2048, 8192]),
    (512, [512, 2048, 8192]),
    (513, [2048, 8192]),
    (4096, [8192]),
    (8192, [8192]),
    (32768, [8192]),  # larger than any: the largest the model has
])
def test_a_clients_context_size_keeps_the_variants_at_least_that_large(
        min_ctx: int | None, expected: list[int]) -> None:
    assert ctxs(Demand(10, 10, min_ctx=min_ctx)) == expected


def test_an_operators_variant_is_the_only_one() -> None:
    assert ctxs(Demand(0, 0, ctx=2048)) == [2048]
    with pytest.raises(BadRequest):
        ctxs(Demand(0, 0, ctx=1000))
