"""Table tests for the cheap prompt bound and the decision it can make alone (pure)."""
from __future__ import annotations

from typing import Any

import pytest

from lkn.engines.bound import TemplateShape, prompt_bound
from lkn.fleet.selector import VariantInfo, bound_decides

SHAPE = TemplateShape(fixed=100, per_message=30)


@pytest.mark.parametrize("route, body, expected", [
    ("chat", {"messages": [{"role": "user", "content": "héllo"}]}, 6 + 100 + 30 + 2),
    ("chat", {"messages": [{"role": "user", "content": "a"},
                           {"role": "assistant", "content": "bb"}]}, 3 + 100 + 60 + 2),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     None),                                                       # content parts: count exactly
    ("chat", {"messages": [{"role": "user", "content": "x", "name": "n"}]}, None),
    ("chat", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     None),
    ("chat", {"messages": [{"role": "user", "content": "x"}],
              "chat_template_kwargs": {"enable_thinking": True}}, None),
    ("completions", {"prompt": "abc"}, 5),
    ("completions", {"prompt": ["a", "abcd"]}, 6),                # a batch: its longest prompt
    ("completions", {"prompt": [1, 2, 3]}, 3),                    # token ids are exact
    ("embeddings", {"input": "ü"}, 4),
    ("completions", {"prompt": [["nested"]]}, None),
])
def test_prompt_bound(route: str, body: dict[str, Any], expected: int | None) -> None:
    assert prompt_bound(route, body, SHAPE) == expected


def test_no_template_shape_means_no_chat_bound() -> None:
    assert prompt_bound("chat", {"messages": [{"role": "user", "content": "x"}]}, None) is None


VARIANTS = [VariantInfo("m@512", 512, 400), VariantInfo("m@2048", 2048, 700)]


@pytest.mark.parametrize("bound, answer, budget, decides", [
    (100, None, 8192, True),     # 100 + 64 default + 16 margin fits the smallest: no count
    (433, None, 8192, False),    # 433 + 64 + 16 > 512: the exact count may pick 512 or 2048
    (300, 300, 8192, False),     # an explicit answer budget that only 2048 holds
    (300, 100, 8192, True),
    (100, None, 500, True),      # only the 512 variant fits the budget: it is the smallest
    (100, None, 100, False),     # no variant fits the budget: let the count produce the 400
])
def test_bound_decides_only_when_the_count_cannot_change_the_choice(
        bound: int, answer: int | None, budget: int, decides: bool) -> None:
    assert bound_decides(VARIANTS, bound, answer_tokens=answer, default_max_tokens=64,
                         margin=16, budget_mb=budget) is decides
