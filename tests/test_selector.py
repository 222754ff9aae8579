"""Table tests for the variant choice (pure)."""
from __future__ import annotations

import pytest

from lkn.errors import ContextLengthExceeded
from lkn.fleet.scheduler import Option
from lkn.fleet.selector import (VariantInfo, candidate_options, explicit_answer_budget, need,
                          options_for)

VARIANTS = [VariantInfo("m@512", 512, 400), VariantInfo("m@2048", 2048, 700),
            VariantInfo("m@8192", 8192, 9000)]


@pytest.mark.parametrize("body, default, expected", [
    ({}, 256, 256),
    ({"max_tokens": 100}, 256, 100),
    ({"max_completion_tokens": 50, "max_tokens": 100}, 256, 50),
    ({"max_tokens": None}, 256, 256),
])
def test_answer_budget(body: dict, default: int, expected: int) -> None:
    explicit = explicit_answer_budget(body)
    assert (default if explicit is None else explicit) == expected
    assert need(0, explicit, default_max_tokens=default, margin=0) == expected


def test_needed_tokens_adds_prompt_answer_and_margin() -> None:
    assert need(30, explicit_answer_budget({"max_tokens": 100}), default_max_tokens=256,
                margin=16) == 146
    assert need(30, None, default_max_tokens=256, margin=16, embeddings=True) == 46


@pytest.mark.parametrize("need, budget, keys", [
    (100, 8192, ["m@512", "m@2048"]),    # both hold it; smallest first; 8192 exceeds the budget
    (512, 8192, ["m@512", "m@2048"]),    # exactly fits
    (513, 8192, ["m@2048"]),
    (3000, 10000, ["m@8192"]),
    (100, 500, ["m@512"]),               # only the small one fits VRAM
])
def test_candidate_options(need: int, budget: int, keys: list[str]) -> None:
    options = candidate_options("m", VARIANTS, need, budget_mb=budget, prompt_tokens=10)
    assert [o.key for o in options] == keys
    assert all(isinstance(o, Option) for o in options)


def test_context_length_exceeded_carries_the_numbers() -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        candidate_options("m", VARIANTS, 3000, budget_mb=8192, prompt_tokens=2700)
    err = info.value
    assert err.status == 400 and err.code == "context_length_exceeded"
    assert "3000 tokens" in err.message and "2700 in the prompt" in err.message
    assert "holds 2048 tokens" in err.message


def test_no_variant_fits_vram() -> None:
    with pytest.raises(ContextLengthExceeded, match="fits the VRAM budget of 100 MiB"):
        candidate_options("m", VARIANTS, 10, budget_mb=100, prompt_tokens=5)


@pytest.mark.parametrize("prompt, answer, default, keys", [
    (100, None, 256, ["m@512", "m@2048"]),   # the default fits: it steers to the smallest
    (300, None, 256, ["m@2048"]),            # 300 + 256 + 16 > 512: the default steers to 2048
    (1884, None, 256, ["m@2048"]),           # 1884 + 256 + 16 > 2048, but the prompt fits: served
    (490, None, 512, ["m@2048"]),            # steered to the variant that holds the default
    (2040, None, 256, None),                 # the prompt itself fits no variant: 400
    (1884, 256, 256, None),                  # an explicit max_tokens that cannot fit: 400
    (100, 300, 256, ["m@512", "m@2048"]),    # explicit and fitting
])
def test_only_what_the_client_asked_for_is_refused(prompt: int, answer: int | None,
                                                   default: int, keys: list[str] | None) -> None:
    def choose() -> list[str]:
        return [o.key for o in options_for("m", VARIANTS, prompt_tokens=prompt,
                                           answer_tokens=answer, default_max_tokens=default,
                                           margin=16, budget_mb=8192)]
    if keys is None:
        with pytest.raises(ContextLengthExceeded):
            choose()
    else:
        assert choose() == keys


def test_a_model_with_one_small_context_serves_requests_without_max_tokens() -> None:
    only = [VariantInfo("s@512", 512, 100)]
    options = options_for("s", only, prompt_tokens=40, answer_tokens=None,
                          default_max_tokens=512, margin=16, budget_mb=8192)
    assert [o.key for o in options] == ["s@512"]
