"""Table tests for the variant choice (pure)."""
from __future__ import annotations

import pytest

from lkn.errors import ContextLengthExceeded
from lkn.scheduler import Option
from lkn.selector import VariantInfo, answer_budget, candidate_options, needed_tokens

VARIANTS = [VariantInfo("m@512", 512, 400), VariantInfo("m@2048", 2048, 700),
            VariantInfo("m@8192", 8192, 9000)]


@pytest.mark.parametrize("body, default, expected", [
    ({}, 256, 256),
    ({"max_tokens": 100}, 256, 100),
    ({"max_completion_tokens": 50, "max_tokens": 100}, 256, 50),
    ({"max_tokens": None}, 256, 256),
])
def test_answer_budget(body: dict, default: int, expected: int) -> None:
    assert answer_budget(body, default) == expected


def test_needed_tokens_adds_prompt_answer_and_margin() -> None:
    assert needed_tokens(30, {"max_tokens": 100}, default_max_tokens=256, margin=16) == 146


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
