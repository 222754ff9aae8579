"""Streams to whole answers and back (cache_stream), checked against each other and the SDK."""
from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.completion import Completion

from lkn.cache.stream import StreamAccumulator, replay
from lkn.sse import SSEParser

HEAD = {"id": "chatcmpl-1", "created": 7, "model": "m", "object": "chat.completion.chunk"}


def sse(*payloads: Any, done: bool = True) -> bytes:
    out = b": ping\n\n" + b"".join(
        f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n".encode() for p in payloads)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(delta: dict | None = None, finish: str | None = None, **extra: Any) -> dict:
    return {**HEAD, "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish,
                                 **extra}]}


def accumulate(raw: bytes, piece: int = 7) -> dict | None:
    acc = StreamAccumulator()
    for i in range(0, len(raw), piece):  # bytes split anywhere
        acc.feed(raw[i:i + piece])
    acc.finish()
    return acc.answer()


def events(frames: list[bytes]) -> list[str]:
    parser = SSEParser()
    return [e.data for f in frames for e in parser.feed(f) if e.data is not None]


def test_chat_stream_becomes_a_chat_completion() -> None:
    raw = sse(chunk({"role": "assistant", "content": None}),
              chunk({"content": "Hel"}), chunk({"content": "lo é"}),
              chunk({"reasoning_content": "think"}), chunk(finish="stop"),
              {**HEAD, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2,
                                                "total_tokens": 5}})
    answer = accumulate(raw)
    assert answer is not None
    parsed = ChatCompletion.model_validate(answer)
    assert parsed.choices[0].message.content == "Hello é"
    assert answer["choices"][0]["message"]["reasoning_content"] == "think"
    assert parsed.choices[0].finish_reason == "stop" and parsed.usage is not None
    assert parsed.usage.total_tokens == 5 and parsed.id == "chatcmpl-1"


def test_tool_call_deltas_merge_by_index() -> None:
    raw = sse(chunk({"role": "assistant", "tool_calls": [
                  {"index": 0, "id": "c1", "type": "function",
                   "function": {"name": "get", "arguments": "{\"a\""}}]}),
              chunk({"tool_calls": [{"index": 0, "type": "function",
                                     "function": {"arguments": ": 1}"}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "c2", "type": "function",
                                     "function": {"name": "put", "arguments": "{}"}}]}),
              chunk(finish="tool_calls"))
    answer = accumulate(raw)
    assert answer is not None
    calls = ChatCompletion.model_validate(answer).choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("c1", "get", '{"a": 1}'), ("c2", "put", "{}")]


@pytest.mark.parametrize("raw", [
    sse(chunk({"content": "a"}), chunk(finish="stop"), done=False),      # no [DONE]
    sse(chunk({"content": "a"}), {"error": {"message": "boom"}}),        # an error event
    sse(chunk({"content": "a"})),                                        # no finish_reason
    sse(chunk({"content": "a"}), "not json", chunk(finish="stop")),
    sse(),                                                               # nothing at all
])
def test_a_stream_that_did_not_end_well_is_no_answer(raw: bytes) -> None:
    assert accumulate(raw) is None


def test_completion_stream_becomes_a_text_completion() -> None:
    head = {**HEAD, "object": "text_completion"}
    raw = sse({**head, "choices": [{"index": 0, "text": " a", "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "text": " b", "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "text": "", "finish_reason": "length"}]})
    answer = accumulate(raw)
    assert answer is not None
    parsed = Completion.model_validate(answer)
    assert parsed.choices[0].text == " a b" and parsed.choices[0].finish_reason == "length"


ANSWER = {"id": "chatcmpl-9", "object": "chat.completion", "created": 5, "model": "m",
          "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                       "message": {"role": "assistant", "content": "Hi there",
                                   "reasoning_content": "hmm"}}],
          "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}}


@pytest.mark.parametrize("include_usage", [True, False])
def test_replay_is_an_openai_stream_that_accumulates_to_the_answer(include_usage: bool) -> None:
    frames = replay(ANSWER, include_usage=include_usage)
    data = events(frames)
    assert data[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(d)) for d in data[:-1]]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, "stop"]
    assert (chunks[-1].usage is not None and not chunks[-1].choices) is include_usage
    again = accumulate(b"".join(frames))
    expected = ANSWER if include_usage else {k: v for k, v in ANSWER.items() if k != "usage"}
    assert again == expected


def test_replay_of_tool_calls_and_completions_round_trips() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools = {**ANSWER, "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                                    "message": {"role": "assistant", "content": None,
                                                "tool_calls": [call]}}]}
    again = accumulate(b"".join(replay(tools, include_usage=True)))
    assert again is not None
    assert again["choices"][0]["message"]["tool_calls"] == [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    text = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": " w0 w1", "finish_reason": "stop",
                         "logprobs": None}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    assert accumulate(b"".join(replay(text, include_usage=True))) == text
