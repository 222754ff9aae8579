"""Thinking and response formats with the openai SDK against a real llama-server serving SmolLM2
with a chat template whose generation prompt opens ``<think>`` (tests/data/smollm2-think.jinja)
and with a minimal harmony template (tests/data/harmony-mini.jinja): the same model once with
``reasoning = "engine"`` (llama-server splits) and once with ``reasoning = "lkn"`` (lkn splits
the raw text) must give clients the same answer.

SmolLM2-135M rarely closes the block, so most answers are all reasoning and end with
``finish_reason: "length"``; that is the unclosed-block case, on a real engine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lkn.relay.thinking import engine_body
from tests.conftest import TESTS, Gateway, http, lua_str, smollm2_path, write_config

pytestmark = pytest.mark.engine

TEMPLATE = TESTS / "data" / "smollm2-think.jinja"
HARMONY = TESTS / "data" / "harmony-mini.jinja"
MSG = [{"role": "user", "content": "Why is the sky blue?"}]
SAMPLING: dict[str, Any] = {"max_tokens": 40, "temperature": 0, "seed": 1}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("think")
    def model(template: Path) -> str:
        return f"""model_file = smol, gpu_layers = 0, ctx_size = 512,
    args = {{ "--threads", 1, "--chat-template-file", {lua_str(str(template))} }}"""
    lua = f"""
server = {{ max_loaded_engines = 4, stop_grace_s = 5, log_dir = {lua_str(str(tmp / 'logs'))} }}
local smol = {lua_str(smollm2_path())}
models = {{
  {{ name = "by-engine", reasoning = "engine", {model(TEMPLATE)} }},
  {{ name = "by-lkn", reasoning = "lkn", {model(TEMPLATE)} }},
  {{ name = "harmony-by-engine", reasoning = "engine", {model(HARMONY)} }},
  {{ name = "harmony-by-lkn", reasoning = "lkn", {model(HARMONY)} }},
}}
"""
    gateway = Gateway(write_config(tmp, lua))
    yield gateway
    gateway.stop()


def whole(gw: Gateway, model: str, **extra: Any) -> tuple[str, str, str]:
    sampling = {**SAMPLING, "max_tokens": extra.pop("max_tokens", SAMPLING["max_tokens"])}
    r = gw.client().chat.completions.create(model=model, messages=MSG, **sampling,
                                            extra_body=extra)
    m = r.choices[0].message
    return ((getattr(m, "reasoning_content", None) or "").strip(), (m.content or "").strip(),
            r.choices[0].finish_reason)


def streamed(gw: Gateway, model: str, **extra: Any) -> tuple[str, str, str]:
    sampling = {**SAMPLING, "max_tokens": extra.pop("max_tokens", SAMPLING["max_tokens"])}
    stream = gw.client().chat.completions.create(model=model, messages=MSG, stream=True,
                                                 **sampling, extra_body=extra)
    reasoning, content, finish = [], [], ""
    for chunk in stream:
        for c in chunk.choices:
            reasoning.append(getattr(c.delta, "reasoning_content", None) or "")
            content.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(reasoning).strip(), "".join(content).strip(), finish


def test_engine_and_lkn_split_the_same_whole_and_streamed(gw: Gateway) -> None:
    by_engine = whole(gw, "by-engine")
    # The template opens <think>: until the model closes it, what it writes is reasoning.
    # Whether (and when) a 135M model closes it is the model's business, not lkn's.
    if not by_engine[1]:
        assert by_engine[0] or by_engine[2] == "stop", "the open block must come back as reasoning"
    assert whole(gw, "by-lkn") == by_engine
    assert streamed(gw, "by-engine") == by_engine
    assert streamed(gw, "by-lkn") == by_engine


def test_a_closed_block_splits_the_same_whole_and_streamed(gw: Gateway) -> None:
    # SmolLM2 seldom closes the block itself: a grammar (llama-server's own field) makes it.
    forced = {"grammar": 'root ::= "Light scatters.\\n</think>\\n\\nBlue light scatters most."'}
    expected = ("Light scatters.", "Blue light scatters most.")
    for model in ("by-engine", "by-lkn"):
        got = whole(gw, model, **forced)
        assert got[:2] == expected, model
        assert streamed(gw, model, **forced) == got, model


def test_harmony_splits_the_same_whole_and_streamed(gw: Gateway) -> None:
    forced = {"max_tokens": 80, "grammar": 'root ::= "<|channel|>analysis<|message|>Add them.'
              '<|end|><|start|>assistant<|channel|>final<|message|>It is 4."'}
    for model in ("harmony-by-engine", "harmony-by-lkn"):
        assert whole(gw, model, **dict(forced)) == ("Add them.", "It is 4.", "stop"), model
        assert streamed(gw, model, **dict(forced)) == ("Add them.", "It is 4.", "stop"), model


def test_reasoning_effort_reaches_the_harmony_template(gw: Gateway) -> None:
    whole(gw, "harmony-by-lkn", max_tokens=1)  # make sure it runs
    proc = gw.call(gw.manager.ready_process, "harmony-by-lkn")
    for fields, line in (({}, "Reasoning: medium"), ({"reasoning": "high"}, "Reasoning: high"),
                         ({"reasoning_effort": "minimal"}, "Reasoning: low")):
        body = engine_body({"messages": MSG, **fields}, engine="llamacpp", mode="lkn")
        prompt = http("POST", proc.base_url + "/apply-template", json.dumps(body),
                      headers=proc.client.headers()).json()["prompt"]
        assert line in prompt


def test_reasoning_tokens_are_counted_where_lkn_splits(gw: Gateway) -> None:
    r = gw.client().chat.completions.create(model="by-lkn", messages=MSG, **SAMPLING)
    details = r.usage.completion_tokens_details
    assert details is not None
    # the whole answer is reasoning when the block stays open
    if not r.choices[0].message.content:
        assert abs(details.reasoning_tokens - r.usage.completion_tokens) <= 3
    else:
        assert 0 <= details.reasoning_tokens < r.usage.completion_tokens


def test_separate_thinking_false_returns_the_raw_text_from_both(gw: Gateway) -> None:
    raw_engine = whole(gw, "by-engine", separate_thinking=False)
    raw_lkn = whole(gw, "by-lkn", separate_thinking=False)
    assert raw_engine == raw_lkn
    assert raw_engine[0] == "" and raw_engine[1]
    split = whole(gw, "by-lkn")
    # the thinking, now inline; llama-server writes back the <think> the template opened
    assert raw_engine[1].startswith("<think>") and split[0] in raw_engine[1]
    assert streamed(gw, "by-lkn", separate_thinking=False) == raw_lkn


def test_thinking_off_gives_a_plain_answer(gw: Gateway) -> None:
    # the template then writes an empty block itself: nothing opens in the output
    for model in ("by-engine", "by-lkn"):
        reasoning, content, finish = whole(gw, model, reasoning_effort="none")
        assert reasoning == "" and (content or finish == "stop")


@pytest.mark.parametrize("model", ["by-engine", "by-lkn"])
def test_homeostat_thinks_only_for_analytic_requests(gw: Gateway, model: str) -> None:
    for threshold, mode, thinks in ((0, "ANALYTIC", True), (1, "FLUID", False)):
        raw = gw.client().chat.completions.with_raw_response.create(
            model=model, messages=MSG, **SAMPLING, extra_body={"lkn": {
                "mode": "homeostatic", "threshold": threshold, "intervention": "reasoning"}})
        assert raw.headers["x-lkn-mode"] == mode
        message = raw.parse().choices[0].message
        reasoning = getattr(message, "reasoning_content", None)
        # thinking off: the template closes the block itself, so nothing comes back as
        # reasoning; thinking on: the block is open, and what the model writes before it closes
        # it (how much is the model's business) is reasoning
        if not thinks:
            assert not reasoning, mode
        elif not message.content:
            assert reasoning or raw.parse().choices[0].finish_reason == "stop", mode


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "capital", "schema": {
        "type": "object", "properties": {"capital": {"type": "string", "maxLength": 30}},
        "required": ["capital"], "additionalProperties": False}}},
], ids=["json_object", "json_schema"])
def test_response_format_gives_parseable_json(gw: Gateway, fmt: dict[str, Any]) -> None:
    # What lkn guarantees, not what a 135M model writes: the format reaches the engine (its
    # grammar makes even an answer to a question that asks for no JSON open an object), and a
    # finished answer parses. One cut by max_tokens may not parse (SmolLM2 nests objects until
    # the budget ends, at a point that depends on the CPU).
    r = gw.client().chat.completions.create(
        model="by-lkn", max_tokens=120, temperature=0, response_format=fmt,
        messages=[{"role": "user", "content": "Why is the sky blue?"}],
        extra_body={"reasoning_effort": "none"})
    choice = r.choices[0]
    content = choice.message.content or ""
    assert content.lstrip().startswith("{"), content
    assert choice.finish_reason in ("stop", "length")
    if choice.finish_reason != "stop":
        return
    value = json.loads(content)
    assert isinstance(value, dict)
    if fmt["type"] == "json_schema":
        assert set(value) == {"capital"}
