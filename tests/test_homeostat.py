from __future__ import annotations

import pytest

from lkn.config import HomeostasisConfig
from lkn.errors import BadRequest
from lkn.homeostat.interventions import request_overrides, with_reasoning, with_verify_prompt

V = "Verify."


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": "q"}],
     [{"role": "system", "content": V}, {"role": "user", "content": "q"}]),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}],
     [{"role": "system", "content": V + "\n\nBe brief."}, {"role": "user", "content": "q"}]),
    ([{"role": "system", "content": [{"type": "text", "text": "S"}]}],
     [{"role": "system", "content": [{"type": "text", "text": V}, {"type": "text", "text": "S"}]}]),
    ([{"role": "developer", "content": ""}], [{"role": "developer", "content": V}]),
])
def test_verify_prompt_merges_or_inserts_system_message(messages: list, expected: list) -> None:
    body = {"model": "m", "messages": messages}
    out = with_verify_prompt("chat", body, V)
    assert out["messages"] == expected
    assert body["messages"] == messages  # the original is not modified


def test_verify_prompt_prefixes_raw_prompt() -> None:
    assert with_verify_prompt("completions", {"prompt": "2+2="}, V)["prompt"] == V + "\n\n2+2="
    assert with_verify_prompt("completions", {"prompt": ["a", "b"]}, V)["prompt"] == [
        V + "\n\na", V + "\n\nb"]


def test_reasoning_turns_thinking_on() -> None:
    out = with_reasoning({"messages": [], "chat_template_kwargs": {"x": 1}}, "high")
    assert out["reasoning_effort"] == "high"
    assert out["chat_template_kwargs"] == {"x": 1, "enable_thinking": True,
                                           "reasoning_effort": "high"}


def test_request_overrides() -> None:
    base = HomeostasisConfig(mode="passthrough", threshold=0.6)
    got = request_overrides(base, {"mode": "homeostatic", "threshold": 0}, None)
    assert (got.mode, got.threshold) == ("homeostatic", 0.0)
    assert request_overrides(base, {"mode": "homeostatic"}, "PASSTHROUGH").mode == "passthrough"
    with pytest.raises(BadRequest, match="lkn threshold"):
        request_overrides(base, {"threshold": 2}, None)
    with pytest.raises(BadRequest, match="lkn mode"):
        request_overrides(base, None, "sometimes")
    with pytest.raises(BadRequest, match="'lkn.foo' is not a known option"):
        request_overrides(base, {"foo": 1}, None)
