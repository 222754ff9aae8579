"""Anthropic's Messages API at lkn's edge: requests, answers, errors and streams translated by
tables, and the official anthropic SDK reading what the adapter writes (served by a tiny aiohttp
app from scripted canonical answers and streams)."""
from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

import anthropic
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from lkn.errors import BadRequest
from lkn.request.inbound.anthropic import AnthropicInbound, count_tokens_body
from lkn.request.validate import validate_chat

USER = [{"role": "user", "content": "hi"}]
IMG = {"type": "base64", "media_type": "image/png", "data": "iVBOR"}


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, "messages": USER, **kw}


def canonical(b: dict[str, Any]) -> dict[str, Any]:
    out = AnthropicInbound().canonical(b)
    validate_chat(out)  # what lkn checks next must pass too
    return out


# ------------------------------------------------------------------ requests
@pytest.mark.parametrize("messages, expected", [
    (USER, USER),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}]}],
     [{"role": "user", "content": "a"}]),
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
     [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
    ([{"role": "user", "content": [{"type": "image", "source": IMG},
                                   {"type": "text", "text": "what?"}]}],
     [{"role": "user", "content": [
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
         {"type": "text", "text": "what?"}]}]),
    ([{"role": "user", "content": [{"type": "image", "source": {
        "type": "url", "url": "https://x/y.png"}}]}],
     [{"role": "user", "content": [{"type": "image_url",
                                    "image_url": {"url": "https://x/y.png"}}]}]),
    # history: thinking -> reasoning_content, redacted_thinking dropped, tool_use -> tool_calls
    (USER + [{"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "redacted_thinking", "data": "xx"},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"dir": "/"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a b"},
            {"type": "text", "text": "and now?"}]}],
     USER + [{"role": "assistant", "content": "Let me look.", "reasoning_content": "hmm",
              "tool_calls": [{"id": "toolu_1", "type": "function", "function": {
                  "name": "ls", "arguments": '{"dir": "/"}'}}]},
             {"role": "tool", "tool_call_id": "toolu_1", "content": "a b"},
             {"role": "user", "content": "and now?"}]),
    # tool results: blocks, errors, images (into the user message after), no content
    ([{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": [{"type": "text", "text": "no such file"}, {"type": "image", "source": IMG}]},
        {"type": "tool_result", "tool_use_id": "t2", "is_error": True,
         "content": "Error: denied"},
        {"type": "tool_result", "tool_use_id": "t3"}]}],
     [{"role": "tool", "tool_call_id": "t1", "content": "Error: no such file"},
      {"role": "tool", "tool_call_id": "t2", "content": "Error: denied"},
      {"role": "tool", "tool_call_id": "t3", "content": ""},
      {"role": "user", "content": [{"type": "image_url", "image_url": {
          "url": "data:image/png;base64,iVBOR"}}]}]),
    # a final assistant message is a prefill, and may be empty; a system role joins the first
    (USER + [{"role": "system", "content": "be terse"}, {"role": "assistant", "content": ""}],
     [{"role": "system", "content": "be terse"}] + USER + [{"role": "assistant", "content": ""}]),
])
def test_messages_translate(messages: list[Any], expected: list[Any]) -> None:
    assert canonical(body(messages=messages))["messages"] == expected


@pytest.mark.parametrize("system, expected", [
    ("be brief", [{"role": "system", "content": "be brief"}]),
    ([{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
      {"type": "text", "text": "b"}], [{"role": "system", "content": "a\nb"}]),
    ("", []),
])
def test_system_is_the_first_message(system: Any, expected: list[Any]) -> None:
    assert canonical(body(system=system))["messages"] == expected + USER


TOOL = {"name": "ls", "description": "list", "input_schema": {
    "type": "object", "properties": {"dir": {"type": "string"}}}}
FN = {"type": "function", "function": {"name": "ls", "parameters": TOOL["input_schema"],
                                       "description": "list"}}


@pytest.mark.parametrize("choice, expected", [
    (None, {"parallel_tool_calls": True}),
    ({"type": "auto"}, {"tool_choice": "auto", "parallel_tool_calls": True}),
    ({"type": "any"}, {"tool_choice": "required", "parallel_tool_calls": True}),
    ({"type": "none"}, {"tool_choice": "none", "parallel_tool_calls": True}),
    ({"type": "tool", "name": "ls"},
     {"tool_choice": {"type": "function", "function": {"name": "ls"}},
      "parallel_tool_calls": True}),
    ({"type": "auto", "disable_parallel_tool_use": True},
     {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "any", "disable_parallel_tool_use": True},
     {"tool_choice": "required", "parallel_tool_calls": False}),
])
def test_tools_and_tool_choice_translate(choice: Any, expected: dict[str, Any]) -> None:
    b = body(tools=[TOOL, {**TOOL, "name": "cat", "type": "custom", "strict": True}])
    if choice is not None:
        b["tool_choice"] = choice
    out = canonical(b)
    assert out["tools"] == [FN, {"type": "function", "function": {
        **FN["function"], "name": "cat", "strict": True}}]  # type: ignore[dict-item]
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


@pytest.mark.parametrize("extra, expected", [
    ({}, {}),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, {"reasoning_effort": "low"}),
    ({"thinking": {"type": "enabled", "budget_tokens": 8000}}, {"reasoning_effort": "medium"}),
    ({"thinking": {"type": "enabled", "budget_tokens": 31999}, "max_tokens": 32000},
     {"reasoning_effort": "high", "max_tokens": 32000}),
    ({"thinking": {"type": "adaptive"}}, {"reasoning_effort": "medium"}),
    ({"thinking": {"type": "disabled"}}, {"reasoning_effort": "none"}),
    ({"stop_sequences": ["END", "##"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
      "metadata": {"user_id": "u1"}},
     {"stop": ["END", "##"], "temperature": 0.5, "top_p": 0.9, "top_k": 40, "user": "u1"}),
    ({"stop_sequences": [], "metadata": {}}, {}),
    ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    ({"stream": False}, {"stream": False}),
])
def test_fields_translate(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = canonical(body(**{"max_tokens": 9000, **extra}))
    assert out == {"model": "claude-x", "max_tokens": 9000, "messages": USER, **expected}


def test_count_tokens_needs_no_max_tokens() -> None:
    b = body(stream=True, system="s", tools=[TOOL])
    del b["max_tokens"]
    assert count_tokens_body(b) == {
        "model": "claude-x", "messages": [{"role": "system", "content": "s"}] + USER,
        "tools": [FN], "parallel_tool_calls": True}
    with pytest.raises(BadRequest, match="max_tokens: field required"):
        AnthropicInbound().canonical(b)


@pytest.mark.parametrize("b, param, message", [
    ({"model": "m", "messages": USER}, "max_tokens", "max_tokens: field required"),
    (body(max_tokens=0), "max_tokens", "positive integer"),
    (body(max_tokens="9"), "max_tokens", "positive integer"),
    (body(max_tokens=True), "max_tokens", "positive integer"),
    ({"model": "m", "max_tokens": 5}, "messages", "messages: field required"),
    (body(messages="hi"), "messages", "array of messages"),
    (body(messages=["hi"]), "messages[0]", "expected an object"),
    (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "'tool'"),
    (body(messages=[{"role": "user"}]), "messages[0].content", "field required"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content", "string or an"),
    (body(messages=[{"role": "user", "content": []}]), "messages[0].content", "non-empty"),
    (body(messages=[{"role": "user", "content": ""}]), "messages[0].content", "non-empty"),
    (body(messages=[{"role": "user", "content": [5]}]), "messages[0].content[0]",
     "expected an object"),
    (body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
     "messages[0].content[0].text", "expected a string"),
    (body(messages=[{"role": "user", "content": [{"type": "search_result", "source": "x"}]}]),
     "messages[0].content[0].type", "'search_result' is not supported in a user message"),
    (body(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
     "messages[0].content[0].source.type", "expected text, content, base64, url or file"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "y",
                                                  "input": {}}]}]),
     "messages[0].content[0].type", "'tool_use' is not supported in a user message"),
    (body(messages=[{"role": "assistant", "content": [{"type": "tool_result",
                                                       "tool_use_id": "x"}]}]),
     "messages[0].content[0].type", "'tool_result' is not supported in an? assistant"),
    (body(messages=[{"role": "assistant", "content": [{"type": "image", "source": IMG}]}]),
     "messages[0].content[0].type", "'image'"),
    (body(messages=[{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "data": "x"}}]}]), "messages[0].content[0].source", "base64"),
    (body(messages=[{"role": "user", "content": [{"type": "image", "source": "x"}]}]),
     "messages[0].content[0].source", "expected an object"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                  "content": [{"type": "search_result"}]}]}]),
     "messages[0].content[0].content", "text, image and document"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                  "content": [{"type": "document"}]}]}]),
     "messages[0].content[0].content[0].source", "expected an object"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": 3}]}]),
     "messages[0].content[0].tool_use_id", "string"),
    (body(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                  "is_error": "yes"}]}]),
     "messages[0].content[0].is_error", "boolean"),
    (body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t",
                                                       "name": "n", "input": "{}"}]}]),
     "messages[0].content[0].input", "expected an object"),
    (body(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "n"}]}]),
     "messages[0].content[0].id", "string"),
    (body(system=5), "system", "string or an array"),
    (body(system=[{"type": "image", "source": IMG}]), "system", "text blocks"),
    (body(tools={"name": "x"}), "tools", "array"),
    (body(tools=[{"name": "x"}]), "tools[0].input_schema", "field required"),
    (body(tools=[{"name": "x", "input_schema": {"type": "thing"}}]),
     "tools[0].input_schema", "type must be one of"),
    (body(tools=[{"input_schema": {}}]), "tools[0].name", "string"),
    (body(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "tools[0].type",
     "'web_search_20250305' .* server tool"),
    (body(tools=[TOOL], tool_choice="auto"), "tool_choice", "expected an object"),
    (body(tools=[TOOL], tool_choice={"type": "some"}), "tool_choice.type", "one of"),
    (body(tools=[TOOL], tool_choice={"type": "tool"}), "tool_choice.name", "string"),
    (body(tools=[TOOL], tool_choice={"type": "tool", "name": "rm"}), "tool_choice.name",
     "no tool named 'rm'"),
    (body(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
     "tool_choice.disable_parallel_tool_use", "boolean"),
    (body(tool_choice={"type": "any"}), "tool_choice", "needs tools"),
    (body(thinking={"type": "enabled"}), "thinking.budget_tokens", "at least 1024"),
    (body(thinking={"type": "enabled", "budget_tokens": 100}), "thinking.budget_tokens",
     "at least 1024"),
    (body(thinking={"type": "enabled", "budget_tokens": 2048}), "max_tokens", "greater than"),
    (body(thinking={"type": "on"}), "thinking.type", "enabled, adaptive or disabled"),
    (body(thinking=True), "thinking", "expected an object"),
    (body(stop_sequences="END"), "stop_sequences", "array of strings"),
    (body(stop_sequences=["a", 1]), "stop_sequences", "array of strings"),
    (body(temperature=1.5), "temperature", "from 0 to 1"),
    (body(temperature="hot"), "temperature", "from 0 to 1"),
    (body(top_k=-1), "top_k", "non-negative"),
    (body(metadata="u"), "metadata", "expected an object"),
    (body(metadata={"user_id": 5}), "metadata.user_id", "string"),
])
def test_malformed_bodies_are_precise_400s(b: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        AnthropicInbound().canonical(b)
    assert info.value.param == param
    assert info.value.status == 400
    assert re.search(message, info.value.message), info.value.message


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["type", "text", "role", "content",
                                                       "source", "input", "name", "id"]),
                                      inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "model": JSON, "max_tokens": JSON, "messages": JSON, "system": JSON, "tools": JSON,
    "tool_choice": JSON, "thinking": JSON, "stop_sequences": JSON, "metadata": JSON,
    "temperature": JSON, "top_k": JSON, "stream": JSON, "output_config": JSON}))
def test_any_body_is_translated_or_refused_with_a_400(b: dict[str, Any]) -> None:
    try:
        validate_chat(AnthropicInbound().canonical(b))
    except BadRequest:
        pass


# ------------------------------------------------------------------ answers
def completion(message: dict[str, Any], finish: str | None = "stop",
               **usage: int) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "model": "local-q4",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": usage.get("p", 7), "completion_tokens": usage.get("c", 3),
                      "total_tokens": 10}}


CALL = {"id": "call_1", "type": "function", "function": {"name": "ls",
                                                         "arguments": '{"dir": "/"}'}}


@pytest.mark.parametrize("message, finish, content, stop", [
    ({"content": "Hi"}, "stop", [{"type": "text", "text": "Hi"}], "end_turn"),
    ({"content": "Hi"}, "length", [{"type": "text", "text": "Hi"}], "max_tokens"),
    ({"content": ""}, "content_filter", [], "refusal"),
    ({"content": "x"}, None, [{"type": "text", "text": "x"}], "end_turn"),
    ({"content": None, "tool_calls": [CALL]}, "tool_calls",
     [{"type": "tool_use", "id": "call_1", "name": "ls", "input": {"dir": "/"}}], "tool_use"),
    ({"content": None, "tool_calls": [CALL]}, "stop",
     [{"type": "tool_use", "id": "call_1", "name": "ls", "input": {"dir": "/"}}], "tool_use"),
    ({"content": "ok", "reasoning_content": "think", "tool_calls": [
        {**CALL, "function": {"name": "ls", "arguments": "{broken"}}]}, "tool_calls",
     [{"type": "thinking", "thinking": "think", "signature": ""},
      {"type": "text", "text": "ok"},
      {"type": "tool_use", "id": "call_1", "name": "ls", "input": {}}], "tool_use"),
])
def test_answers_translate(message: dict[str, Any], finish: str | None,
                           content: list[Any], stop: str) -> None:
    inbound = AnthropicInbound()
    inbound.canonical(body())
    assert inbound.answer(completion(message, finish)) == {
        "id": "msg_abc", "type": "message", "role": "assistant", "model": "claude-x",
        "content": content, "stop_reason": stop, "stop_sequence": None,
        "usage": {"input_tokens": 7, "output_tokens": 3}}


def test_a_strange_answer_is_still_a_message() -> None:
    out = AnthropicInbound().answer({"choices": "x", "usage": {"prompt_tokens": "a"}})
    assert out["content"] == [] and out["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert out["id"].startswith("msg_") and out["stop_reason"] == "end_turn"


@pytest.mark.parametrize("status, kind", [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (408, "timeout_error"),
    (413, "request_too_large"), (415, "invalid_request_error"), (422, "invalid_request_error"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"),
    (503, "overloaded_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_errors_translate(status: int, kind: str) -> None:
    lkn = {"error": {"message": "nope", "type": "x", "code": None, "param": None,
                     "source": "lkn", "request_id": "req_1"}}
    assert AnthropicInbound().error(status, lkn) == {
        "type": "error", "error": {"type": kind, "message": "nope", "source": "lkn"},
        "request_id": "req_1"}
    engine = {"error": {"message": "bad", "type": "server_error", "code": 500}}
    assert AnthropicInbound().error(status, engine) == {
        "type": "error", "error": {"type": kind, "message": "bad"}}


# ------------------------------------------------------------------ streams
def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-s1", "object": "chat.completion.chunk", "model": "local",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def sse(*objs: dict[str, Any] | str) -> bytes:
    return b"".join(b": ping\n\n" if o == ":" else
                    f"data: {o if isinstance(o, str) else json.dumps(o)}\n\n".encode()
                    for o in objs)


USAGE = {"id": "chatcmpl-s1", "choices": [], "usage": {"prompt_tokens": 12,
                                                      "completion_tokens": 9}}
AGENT = sse(chunk({"role": "assistant", "content": ""}), ":",
            chunk({"reasoning_content": "The user "}), chunk({"reasoning_content": "wants ls."}),
            chunk({"content": "Listing."}),
            chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                   "function": {"name": "ls", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"dir": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"/"}'}}]}),
            chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                   "function": {"name": "pwd", "arguments": "{}"}}]}),
            chunk({}, "tool_calls"), USAGE, "[DONE]")


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block:
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            obj = json.loads(data[6:])
            assert obj["type"] == name[7:]
            out.append((name[7:], obj))
    return out


def test_a_stream_becomes_events_in_the_sdks_order() -> None:
    t = AnthropicInbound().transcoder()
    raw = b"".join(t.feed(AGENT[i:i + 7]) for i in range(0, len(AGENT), 7)) + t.finish()
    got = [(n, {k: v for k, v in e.items() if k != "type"}) for n, e in events(raw)]
    assert got[0] == ("message_start", {"message": {
        "id": "msg_s1", "type": "message", "role": "assistant", "content": [], "model": "",
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0}}})
    assert got[1:] == [
        ("ping", {}),
        ("content_block_start", {"index": 0, "content_block": {
            "type": "thinking", "thinking": "", "signature": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta",
                                                       "thinking": "The user "}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta",
                                                       "thinking": "wants ls."}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta",
                                                       "signature": ""}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "text_delta",
                                                       "text": "Listing."}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {
            "type": "tool_use", "id": "call_a", "name": "ls", "input": {}}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta",
                                                       "partial_json": '{"dir": '}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta",
                                                       "partial_json": '"/"}'}}),
        ("content_block_stop", {"index": 2}),
        ("content_block_start", {"index": 3, "content_block": {
            "type": "tool_use", "id": "call_b", "name": "pwd", "input": {}}}),
        ("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta",
                                                       "partial_json": "{}"}}),
        ("content_block_stop", {"index": 3}),
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"input_tokens": 12, "output_tokens": 9}}),
        ("message_stop", {})]


@pytest.mark.parametrize("stream, tail", [
    # finish reasons
    (sse(chunk({"content": "a"}), chunk({}, "stop"), "[DONE]"),
     [("message_delta", "end_turn"), ("message_stop", None)]),
    (sse(chunk({"content": "a"}), chunk({}, "length"), "[DONE]"),
     [("message_delta", "max_tokens"), ("message_stop", None)]),
    (sse(chunk({"content": "a"}), chunk({}, "content_filter"), "[DONE]"),
     [("message_delta", "refusal"), ("message_stop", None)]),
    # no [DONE]: finished if the finish reason came, else an error
    (sse(chunk({"content": "a"}), chunk({}, "stop")),
     [("message_delta", "end_turn"), ("message_stop", None)]),
    (sse(chunk({"content": "a"})), [("error", "api_error")]),
    # an error event ends it; its type comes from the code
    (sse(chunk({"content": "a"}), {"error": {"message": "gone", "type": "upstream_error",
                                             "code": "upstream_error", "source": "lkn"}}),
     [("error", "api_error")]),
    (sse({"error": {"message": "full", "type": "rate_limit_error", "code": "queue_full"}}),
     [("error", "rate_limit_error")]),
    (sse({"error": {"message": "x", "type": "server_error", "code": "overloaded"}}, "[DONE]"),
     [("error", "overloaded_error")]),
])
def test_stream_ends(stream: bytes, tail: list[tuple[str, str | None]]) -> None:
    t = AnthropicInbound().transcoder()
    got = events(t.feed(stream) + t.finish())
    ends = [(n, e["delta"]["stop_reason"] if n == "message_delta" else
             e["error"]["type"] if n == "error" else None)
            for n, e in got if n in ("message_delta", "message_stop", "error")]
    assert ends == tail
    if tail[0][0] != "error" or got[0][0] != "error":
        assert got[0][0] == "message_start"
    starts = [e["index"] for n, e in got if n == "content_block_start"]
    stops = [e["index"] for n, e in got if n == "content_block_stop"]
    assert starts == list(range(len(starts)))
    # a finished message closes every block; an error just ends the stream
    assert stops == ([] if tail[0][0] == "error" else starts)


def test_an_empty_stream_is_still_a_message() -> None:
    t = AnthropicInbound().transcoder()
    got = events(t.feed(sse("[DONE]")) + t.finish())
    assert [n for n, _ in got] == ["message_start", "message_delta", "message_stop"]
    assert got[1][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}


# ------------------------------------------------------------------ the official SDK
@pytest.fixture
async def clients() -> AsyncIterator[list[anthropic.AsyncAnthropic]]:
    made: list[anthropic.AsyncAnthropic] = []
    yield made
    for client in made:
        await client.close()


async def sdk_client(aiohttp_server: Any, made: list[anthropic.AsyncAnthropic],
                     inbound: AnthropicInbound, *, whole: dict[str, Any] | None = None,
                     stream: bytes = b"", status: int = 200,
                     error: dict[str, Any] | None = None) -> anthropic.AsyncAnthropic:
    """An SDK client whose server answers with what ``inbound`` makes of scripted answers."""
    async def messages(request: web.Request) -> web.StreamResponse:
        canonical = inbound.canonical(await request.json())
        if error is not None:
            return web.json_response(inbound.error(status, error), status=status)
        if not canonical.get("stream"):
            assert whole is not None
            return web.json_response(inbound.answer(whole))
        assert canonical["stream_options"] == {"include_usage": True}
        resp = web.StreamResponse(headers={"Content-Type": inbound.stream_content_type})
        await resp.prepare(request)
        t = inbound.transcoder()
        for i in range(0, len(stream), 11):  # in pieces, as a relay writes them
            await resp.write(t.feed(stream[i:i + 11]))
        await resp.write(t.finish())
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    made.append(anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="x",
                                         max_retries=0))
    return made[-1]


async def test_the_sdk_reads_a_whole_answer(aiohttp_server: Any, clients: Any) -> None:
    client = await sdk_client(aiohttp_server, clients, AnthropicInbound(), whole=completion(
        {"content": "Listing.", "reasoning_content": "hmm", "tool_calls": [CALL]},
        "tool_calls", p=20, c=5))
    msg = await client.messages.create(model="claude-x", max_tokens=100, messages=[
        {"role": "user", "content": "ls /"}], tools=[TOOL])  # type: ignore[list-item]
    assert msg.id == "msg_abc" and msg.model == "claude-x" and msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use"]
    assert isinstance(msg.content[0], anthropic.types.ThinkingBlock)
    assert msg.content[0].thinking == "hmm"
    assert isinstance(msg.content[2], anthropic.types.ToolUseBlock)
    assert msg.content[2].input == {"dir": "/"} and msg.content[2].name == "ls"
    assert msg.usage.input_tokens == 20 and msg.usage.output_tokens == 5


async def test_the_sdk_assembles_a_stream(aiohttp_server: Any, clients: Any) -> None:
    client = await sdk_client(aiohttp_server, clients, AnthropicInbound(), stream=AGENT)
    async with client.messages.stream(
            model="claude-x", max_tokens=2000, messages=[{"role": "user", "content": "ls /"}],
            tools=[TOOL],  # type: ignore[list-item]
            thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        texts = [t async for t in stream.text_stream]
        msg = await stream.get_final_message()
    assert texts == ["Listing."]
    assert msg.id == "msg_s1" and msg.model == "claude-x" and msg.stop_reason == "tool_use"
    assert [b.type for b in msg.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, ls, pwd = msg.content
    assert isinstance(thinking, anthropic.types.ThinkingBlock)
    assert thinking.thinking == "The user wants ls." and thinking.signature == ""
    assert isinstance(text, anthropic.types.TextBlock) and text.text == "Listing."
    assert isinstance(ls, anthropic.types.ToolUseBlock) and isinstance(
        pwd, anthropic.types.ToolUseBlock)
    assert (ls.id, ls.name, ls.input) == ("call_a", "ls", {"dir": "/"})
    assert (pwd.id, pwd.name, pwd.input) == ("call_b", "pwd", {})
    assert msg.usage.input_tokens == 12 and msg.usage.output_tokens == 9


async def test_the_sdk_raw_stream_and_create(aiohttp_server: Any, clients: Any) -> None:
    stream = sse(chunk({"role": "assistant", "content": ""}), chunk({"content": "Pa"}),
                 chunk({"content": "ris"}), chunk({}, "length"), USAGE, "[DONE]")
    client = await sdk_client(aiohttp_server, clients, AnthropicInbound(), stream=stream)
    raw = await client.messages.create(model="claude-x", max_tokens=5, stream=True,
                                       messages=[{"role": "user", "content": "capital?"}])
    kinds = [e.type async for e in raw]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    async with client.messages.stream(model="claude-x", max_tokens=5, messages=[
            {"role": "user", "content": "capital?"}]) as s:
        msg = await s.get_final_message()
    assert [b.type for b in msg.content] == ["text"] and msg.stop_reason == "max_tokens"
    assert isinstance(msg.content[0], anthropic.types.TextBlock)
    assert msg.content[0].text == "Paris"


@pytest.mark.parametrize("status, error_class", [
    (400, anthropic.BadRequestError), (401, anthropic.AuthenticationError),
    (404, anthropic.NotFoundError), (429, anthropic.RateLimitError),
    (503, anthropic.InternalServerError), (529, anthropic.OverloadedError),
])
async def test_the_sdk_reads_errors(aiohttp_server: Any, clients: Any, status: int,
                                    error_class: type[Exception]) -> None:
    client = await sdk_client(aiohttp_server, clients, AnthropicInbound(), status=status, error={
        "error": {"message": "no engine", "type": "x", "source": "lkn", "request_id": "r9"}})
    with pytest.raises(error_class) as info:
        await client.messages.create(model="claude-x", max_tokens=5,
                                     messages=USER)  # type: ignore[arg-type]
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status
    assert info.value.body == {"type": "error", "error": {
        "type": AnthropicInbound().error(status, {"error": {}})["error"]["type"],
        "message": "no engine", "source": "lkn"}, "request_id": "r9"}


async def test_the_sdk_raises_an_error_event(aiohttp_server: Any, clients: Any) -> None:
    stream = sse(chunk({"content": "Pa"}), {"error": {
        "message": "the engine crashed", "type": "upstream_error", "code": "upstream_error"}})
    client = await sdk_client(aiohttp_server, clients, AnthropicInbound(), stream=stream)
    with pytest.raises(anthropic.APIStatusError, match="the engine crashed"):
        async with client.messages.stream(model="claude-x", max_tokens=5,
                                          messages=USER) as s:  # type: ignore[arg-type]
            await s.get_final_message()


def test_an_engines_broken_text_and_deep_arguments_never_break_the_stream() -> None:
    # a lone surrogate (an emoji cut by the engine) is escaped, never an error; arguments
    # nested past any real input are an empty input, as broken JSON is
    from lkn.engines.anthropic_blocks import tool_input
    stream = AnthropicInbound().transcoder()
    out = stream.chunk({"id": "c", "choices": [{"index": 0, "delta": {"content": "ok \ud83d"}}]})
    assert b"text_delta" in out and b"\\ud83d" in out
    assert tool_input("[" * 5000) == {}
