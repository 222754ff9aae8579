"""thinking.py: the request as each engine gets it, and answers reshaped whole and streamed."""
from __future__ import annotations

import json
from typing import Any

import pytest

from lkn.homeostat.interventions import without_reasoning
from lkn.relay.thinking import StreamShaper, engine_body, split_message

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("engine,mode,extra,expected", [
    ("llamacpp", "engine", {}, {}),
    ("llamacpp", "lkn", {}, {"reasoning_format": "none"}),
    ("llamacpp", "none", {}, {"reasoning_format": "none"}),
    ("llamacpp", "engine", {"separate_thinking": False}, {"reasoning_format": "none"}),
    ("llamacpp", "lkn", {"separate_thinking": False}, {"reasoning_format": "none"}),
    ("sglang", "engine", {"separate_thinking": False}, {"separate_reasoning": False}),
    ("sglang", "lkn", {"separate_thinking": False}, {}),
    ("llamacpp", "lkn", {"response_format": {"type": "json_object"}},
     {"response_format": {"type": "json_object"}, "reasoning_format": "deepseek"}),
    ("llamacpp", "none", {"response_format": {"type": "text"}},
     {"response_format": {"type": "text"}, "reasoning_format": "none"}),
    ("sglang", "lkn", {"response_format": {"type": "json_object"}},
     {"response_format": {"type": "json_object"}}),
    ("llamacpp", "engine", {"reasoning": "high"},
     {"reasoning_effort": "high",
      "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "high"}}),
    ("llamacpp", "engine", {"reasoning": {"effort": "minimal"}},
     {"reasoning_effort": "low",
      "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "low"}}),
    ("llamacpp", "engine", {"reasoning_effort": "medium", "reasoning": "high"},
     {"reasoning_effort": "medium",
      "chat_template_kwargs": {"enable_thinking": True, "reasoning_effort": "medium"}}),
    ("llamacpp", "engine", {"reasoning_effort": "none"},
     {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": False}}),
    ("sglang", "engine", {"reasoning_effort": "none"},
     {"chat_template_kwargs": {"enable_thinking": False}}),
    ("llamacpp", "engine",
     {"reasoning": "low", "chat_template_kwargs": {"enable_thinking": False, "x": 1}},
     {"reasoning_effort": "low",
      "chat_template_kwargs": {"enable_thinking": False, "x": 1, "reasoning_effort": "low"}}),
])
def test_engine_body(engine: str, mode: str, extra: dict[str, Any],
                     expected: dict[str, Any]) -> None:
    body = {"model": "m", "messages": MSG, "include_channels": ["final"], **extra}
    out = engine_body(body, engine=engine, mode=mode)
    assert not {"separate_thinking", "reasoning", "include_channels",
                "developer_instructions"} & set(out)
    want = {"model": "m", "messages": MSG, **expected}
    assert out == want
    assert "include_channels" in body  # the client's body is not changed


@pytest.mark.parametrize("messages,expected", [
    (MSG, [{"role": "system", "content": "Be terse."}, *MSG]),
    ([{"role": "system", "content": "You help."}, *MSG],
     [{"role": "system", "content": "Be terse.\n\nYou help."}, *MSG]),
    ([{"role": "developer", "content": [{"type": "text", "text": "x"}]}],
     [{"role": "system", "content": "Be terse."},
      {"role": "developer", "content": [{"type": "text", "text": "x"}]}]),
])
def test_developer_instructions_lead_the_system_message(messages: list[Any],
                                                        expected: list[Any]) -> None:
    body = {"model": "m", "messages": messages, "developer_instructions": "Be terse."}
    assert engine_body(body, engine="llamacpp", mode="engine")["messages"] == expected


def test_split_message_fills_reasoning_and_channels() -> None:
    message = {"role": "assistant", "content": "<think>plan</think>\n\nanswer"}
    assert split_message(message, think_opened=False, channels=("analysis",)) == "plan"
    assert message == {"role": "assistant", "content": "answer", "reasoning_content": "plan",
                       "channels": {"analysis": "plan"}}


def test_split_message_leaves_an_engine_split_alone() -> None:
    message = {"role": "assistant", "content": "<think>x", "reasoning_content": "done"}
    assert split_message(message, think_opened=False) == ""
    assert message["content"] == "<think>x"


BASE = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def upstream(text: str, cut: int, finish: str = "stop") -> list[str]:
    """A llama-server style stream of ``text`` in pieces of ``cut`` characters."""
    chunks = [{**BASE, "choices": [{"index": 0, "finish_reason": None,
                                    "delta": {"role": "assistant", "content": None}}]}]
    for i in range(0, len(text), cut):
        chunks.append({**BASE, "choices": [{"index": 0, "finish_reason": None,
                                            "delta": {"content": text[i:i + cut]}}]})
    chunks.append({**BASE, "choices": [{"index": 0, "finish_reason": finish, "delta": {}}]})
    chunks.append({**BASE, "choices": [], "usage": {"prompt_tokens": 3,
                                                    "completion_tokens": 9}})
    return [json.dumps(c) for c in chunks]


def shape(datas: list[str], opened: bool = False, **kw: Any) -> list[dict[str, Any]]:
    shaper = StreamShaper(think_opened=opened, **kw)
    out = [o for d in datas for o in shaper.feed(d)] + shaper.finish()
    return [json.loads(o) for o in out]


def fields(chunks: list[dict[str, Any]]) -> tuple[str, str, list[Any]]:
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    reasoning = "".join(d["delta"].get("reasoning_content") or "" for d in deltas)
    content = "".join(d["delta"].get("content") or "" for d in deltas)
    return reasoning, content, [d["finish_reason"] for d in deltas if d["finish_reason"]]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 8, 100])
def test_stream_splits_think_cut_anywhere(cut: int) -> None:
    chunks = shape(upstream("<think>\nstep one\n</think>\n\nThe answer.", cut))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert fields(chunks) == ("step one", "The answer.", ["stop"])
    assert chunks[-1] == {**BASE, "choices": [], "usage": {"prompt_tokens": 3,
                                                           "completion_tokens": 9}}
    for c in chunks[1:-2]:  # every chunk between role and finish carries text
        delta = c["choices"][0]["delta"]
        assert delta.get("content") or delta.get("reasoning_content")
        assert c["id"] == "c1" and c["model"] == "m"


def test_stream_reasoning_comes_before_content_and_before_finish() -> None:
    chunks = shape(upstream("plan</think>ok", 4), opened=True)
    kinds = [k for c in chunks if c["choices"] for k in c["choices"][0]["delta"]
             if k in ("reasoning_content", "content") and c["choices"][0]["delta"][k]]
    assert kinds == ["reasoning_content", "content"]


def test_unclosed_think_ends_as_reasoning_and_keeps_finish_reason() -> None:
    chunks = shape(upstream("<think>still going </th", 3, finish="length"))
    assert fields(chunks) == ("still going </th", "", ["length"])
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["delta"] == {}


def test_stream_cut_without_finish_releases_held_text_at_the_end() -> None:
    datas = upstream("<think>a</think>b </thi", 2)[:-2]  # no finish chunk, no usage
    assert fields(shape(datas)) == ("a", "b </thi", [])


def test_stream_harmony_with_channels() -> None:
    text = ("<|channel|>analysis<|message|>p<|end|><|start|>assistant<|channel|>final"
            "<|message|>ans")
    chunks = shape(upstream(text, 3), channels=("analysis",))
    assert fields(chunks)[:2] == ("p", "ans")
    assert [c["choices"][0]["delta"]["channels"] for c in chunks
            if c["choices"] and "channels" in c["choices"][0]["delta"]] == [{"analysis": "p"}]


def test_stream_keeps_logprobs_of_held_back_tokens() -> None:
    chunk = {**BASE, "choices": [{"index": 0, "finish_reason": None, "delta": {"content": "<th"},
                                  "logprobs": {"content": [{"token": "<th"}]}}]}
    [out] = shape([json.dumps(chunk)])[:1]
    assert out["choices"][0]["logprobs"] == {"content": [{"token": "<th"}]}
    assert "content" not in out["choices"][0]["delta"]


def test_stream_passes_errors_and_non_json_through() -> None:
    shaper = StreamShaper(think_opened=False)
    err = json.dumps({"error": {"message": "boom"}})
    assert shaper.feed(err) == [err]
    assert shaper.feed("not json") == ["not json"]


def test_without_reasoning_respects_the_clients_choice() -> None:
    body = {"messages": MSG}
    assert without_reasoning(body)["chat_template_kwargs"] == {"enable_thinking": False}
    assert body == {"messages": MSG}
    for own in ({"reasoning_effort": "high"}, {"reasoning": "low"},
                {"chat_template_kwargs": {"enable_thinking": True}}):
        assert without_reasoning({**body, **own}) == {**body, **own}
