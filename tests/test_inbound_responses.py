"""The Responses API adapter, pure: requests to canonical chat bodies, chat answers to Response
objects, and the store behind ``previous_response_id``. (The stream and the openai SDK against
both: test_inbound_responses_sdk.py.)"""
from __future__ import annotations

from typing import Any

import pytest

from lkn.errors import BadRequest
from lkn.request.inbound.response_store import ResponseStore, StoredResponse
from lkn.request.inbound.responses import ResponsesInbound
from lkn.request.validate import validate_chat

M = "my-model"


def canonical(body: dict[str, Any], store: ResponseStore | None = None,
              owner: str = "k1") -> dict[str, Any]:
    out = ResponsesInbound(store=store, owner=owner).canonical({"model": M, **body})
    validate_chat(out)  # what lkn does next: the result must be a valid chat request
    return out


def bad(body: dict[str, Any], store: ResponseStore | None = None) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        canonical(body, store)
    return caught.value


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}


@pytest.mark.parametrize("items, messages", [
    ("hi", [{"role": "user", "content": "hi"}]),
    ([{"role": "user", "content": "hi"}], [{"role": "user", "content": "hi"}]),
    ([{"type": "message", "role": "developer", "content": "be brief"}],
     [{"role": "system", "content": "be brief"}]),
    ([{"type": "message", "role": "user",
       "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]}],
     [{"role": "user", "content": "a\nb"}]),
    ([{"role": "user", "content": [
        {"type": "input_text", "text": "what is it?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}],
     [{"role": "user", "content": [
         {"type": "text", "text": "what is it?"},
         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                             "detail": "low"}}]}]),
    # an assistant's history, easy (no type) and as an output message
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
    ([{"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
       "content": [{"type": "output_text", "text": "x", "annotations": []},
                   {"type": "output_text", "text": "y", "annotations": []}]},
      {"role": "user", "content": "more"}],
     [{"role": "assistant", "content": "xy"}, {"role": "user", "content": "more"}]),
    # a function call joins the assistant message before it; its output is a tool message
    ([{"role": "user", "content": "q"},
      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "t"}]},
      {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
      {"type": "function_call_output", "call_id": "call_1", "output": "42"}],
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "t", "tool_calls": [CALL]},
      {"role": "tool", "tool_call_id": "call_1", "content": "42"}]),
    # ... or makes one; two calls in a row share it; an output may be input_text parts
    ([{"role": "user", "content": "q"},
      {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}",
       "id": "fc_1", "status": "completed"},
      {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{}"},
      {"type": "function_call_output", "call_id": "call_1",
       "output": [{"type": "input_text", "text": "4"}, {"type": "input_text", "text": "2"}]}],
     [{"role": "user", "content": "q"},
      {"role": "assistant", "content": None, "tool_calls": [
          CALL, {"id": "call_2", "type": "function",
                 "function": {"name": "g", "arguments": "{}"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "42"}]),
    # reasoning goes onto the assistant message that follows it (content, else summary) ...
    ([{"role": "user", "content": "q"},
      {"type": "reasoning", "id": "rs_1", "summary": [],
       "content": [{"type": "reasoning_text", "text": "hmm"}]},
      {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]}],
     [{"role": "user", "content": "q"},
      {"role": "assistant", "content": "a", "reasoning_content": "hmm"}]),
    ([{"role": "user", "content": "q"},
      {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}]},
      {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"}],
     [{"role": "user", "content": "q"},
      {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "s"}]),
    # ... and is dropped when none follows (or it carries only encrypted content)
    ([{"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "zzz"},
      {"role": "user", "content": "q"}],
     [{"role": "user", "content": "q"}]),
    ([{"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "s"}]},
      {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),
])
def test_input_items_become_chat_messages(items: Any, messages: list[dict[str, Any]]) -> None:
    assert canonical({"input": items})["messages"] == messages


USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}
CHAT_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "f", "description": "d",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}
SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}


@pytest.mark.parametrize("extra, expected", [
    ({}, {"model": M, "messages": USER}),
    ({"instructions": "be brief"},
     {"messages": [{"role": "system", "content": "be brief"}, *USER]}),
    ({"instructions": "rules", "input": [{"role": "system", "content": "more"}, *USER]},
     {"messages": [{"role": "system", "content": "rules\n\nmore"}, *USER]}),
    ({"max_output_tokens": 64, "temperature": 0.2, "top_p": 0.9},
     {"max_tokens": 64, "temperature": 0.2, "top_p": 0.9}),
    ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    ({"stream": False}, {"messages": USER}),
    # tools: flat to chat's wrapped form; parallel calls by default, as the API has it
    ({"tools": [TOOL]}, {"tools": [CHAT_TOOL], "parallel_tool_calls": True}),
    ({"tools": [{**TOOL, "strict": True}], "parallel_tool_calls": False},
     {"tools": [{"type": "function", "function": {**CHAT_TOOL["function"], "strict": True}}],
      "parallel_tool_calls": False}),
    ({"tools": [{"type": "function", "name": "g", "parameters": None}]},
     {"tools": [{"type": "function", "function": {
         "name": "g", "parameters": {"type": "object", "properties": {}}}}]}),
    # every tool_choice form
    ({"tools": [TOOL], "tool_choice": "none"}, {"tool_choice": "none"}),
    ({"tools": [TOOL], "tool_choice": "auto"}, {"tool_choice": "auto"}),
    ({"tools": [TOOL], "tool_choice": "required"}, {"tool_choice": "required"}),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "f"}},
     {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    # text.format forms
    ({"text": {"format": {"type": "text"}}}, {"messages": USER}),
    ({"text": {"format": {"type": "json_object"}, "verbosity": "low"}},
     {"response_format": {"type": "json_object"}}),
    ({"text": {"format": {"type": "json_schema", "name": "out", "schema": SCHEMA,
                          "strict": True, "description": "d"}}},
     {"response_format": {"type": "json_schema",
                          "json_schema": {"name": "out", "schema": SCHEMA, "strict": True}}}),
    # reasoning effort; none and minimal also turn the template's thinking off
    ({"reasoning": {"effort": "high", "summary": "auto"}}, {"reasoning_effort": "high"}),
    ({"reasoning": {"effort": "max"}}, {"reasoning_effort": "xhigh"}),
    ({"reasoning": {"effort": "none"}},
     {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": False}}),
    ({"reasoning": {"effort": "minimal"}, "chat_template_kwargs": {"x": 1}},
     {"reasoning_effort": "minimal",
      "chat_template_kwargs": {"x": 1, "enable_thinking": False}}),
    ({"reasoning": {"effort": "none"}, "chat_template_kwargs": {"enable_thinking": True}},
     {"chat_template_kwargs": {"enable_thinking": True}}),
    # accepted and ignored; engine extras pass
    ({"include": ["reasoning.encrypted_content"], "truncation": "auto", "store": False,
      "metadata": {"a": "b"}, "user": "u", "background": False, "service_tier": "auto"},
     {"model": M, "messages": USER}),
    ({"top_k": 20, "seed": 7, "stop": ["\n"]}, {"top_k": 20, "seed": 7, "stop": ["\n"]}),
])
def test_request_parameters_translate(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = canonical({"input": "hi", **extra})
    assert {k: out.get(k) for k in expected} == expected
    if expected.get("messages") == USER and len(expected) == 1:
        assert set(out) == {"model", "messages"}


def test_ignored_fields_do_not_reach_the_engine() -> None:
    out = canonical({"input": "hi", "include": [], "truncation": "auto", "metadata": {"a": "b"},
                     "store": True, "text": {"format": {"type": "text"}}})
    assert out == {"model": M, "messages": USER}


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": ["hi"]}, "input[0]"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": "a"}, {"type": "web_search_call"}]},
     "input[1].type"),
    ({"input": [{"content": "no role or type"}]}, "input[0].type"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": ["user"], "content": "x"}]}, "input[0].role"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
     "input[0].content[0].text"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image",
                                                   "image_url": "x"}]}]},
     "input[0].content[0]"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
     "input[0].name"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
     "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 42}]},
     "input[0].output"),
    ({"input": [{"type": "function_call_output", "call_id": "c",
                 "output": [{"type": "input_image", "image_url": "x"},
                            {"type": "input_file", "file_id": "f"}]}]},
     "input[0].output[1]"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"input": [{"type": "reasoning", "summary": "x"}]}, "input[0].summary"),
    ({"input": "hi", "instructions": 5}, "instructions"),
    ({"input": "hi", "stream": "yes"}, "stream"),
    ({"input": "hi", "store": 1}, "store"),
    ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": True}, "max_output_tokens"),
    ({"input": "hi", "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"input": "hi", "metadata": []}, "metadata"),
    ({"input": "hi", "tools": {}}, "tools"),
    ({"input": "hi", "tools": ["f"]}, "tools[0]"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [TOOL, {"type": "file_search", "vector_store_ids": []}]},
     "tools[1].type"),
    ({"input": "hi", "tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
    ({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"input": "hi", "tools": [{**TOOL, "parameters": {"type": "thing"}}]},
     "tools[0].parameters"),
    ({"input": "hi", "tools": [{**TOOL, "strict": "yes"}]}, "tools[0].strict"),
    ({"input": "hi", "tool_choice": "any"}, "tool_choice"),
    ({"input": "hi", "tool_choice": 1}, "tool_choice"),
    ({"input": "hi", "tool_choice": {"type": "allowed_tools", "tools": []}},
     "tool_choice.type"),
    ({"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function"}},
     "tool_choice.name"),
    ({"input": "hi", "tools": [TOOL], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice.name"),
    ({"input": "hi", "text": "json"}, "text"),
    ({"input": "hi", "text": {"format": "json"}}, "text.format"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": SCHEMA}}},
     "text.format.name"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "o"}}},
     "text.format.schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "o",
                                         "schema": {"required": "x"}}}},
     "text.format.schema"),
    ({"input": "hi", "reasoning": "high"}, "reasoning"),
    ({"input": "hi", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "hi", "background": True}, "background"),
    ({"input": "hi", "conversation": "conv_1"}, "conversation"),
    ({"input": "hi", "previous_response_id": 5}, "previous_response_id"),
    ({"input": "hi", "previous_response_id": "resp_nope"}, "previous_response_id"),
])
def test_malformed_requests_are_a_400_naming_the_param(body: dict[str, Any],
                                                      param: str) -> None:
    error = bad(body)
    assert (error.status, error.param) == (400, param)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_unknown_tool_types_are_named_in_the_message() -> None:
    assert "'code_interpreter'" in bad({"input": "hi",
                                        "tools": [{"type": "code_interpreter"}]}).message


def test_errors_keep_openais_envelope() -> None:
    body = BadRequest("nope", param="input").body("req-1")
    assert ResponsesInbound(store=None, owner="k").error(400, body) is body


# ---------------------------------------------------------------------------- answers
def chat_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "engine",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                      "completion_tokens_details": {"reasoning_tokens": 3}}}


@pytest.mark.parametrize("finish, status, incomplete", [
    ("stop", "completed", None),
    ("tool_calls", "completed", None),
    ("length", "incomplete", {"reason": "max_output_tokens"}),
    ("content_filter", "incomplete", {"reason": "content_filter"}),
    (None, "completed", None),
])
def test_finish_reasons_become_a_status(finish: Any, status: str, incomplete: Any) -> None:
    adapter = ResponsesInbound(store=None, owner="k")
    adapter.canonical({"model": M, "input": "hi"})
    out = adapter.answer(chat_answer({"content": "x"}, finish))
    assert (out["status"], out["incomplete_details"]) == (status, incomplete)


@pytest.mark.parametrize("message, kinds", [
    ({"content": "hello"}, ["message"]),
    ({"content": ""}, ["message"]),
    ({"content": None}, ["message"]),
    ({"content": "x", "reasoning_content": "think"}, ["reasoning", "message"]),
    ({"content": None, "tool_calls": [CALL]}, ["function_call"]),
    ({"content": "", "reasoning_content": "r", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
     ["reasoning", "function_call", "function_call"]),
    ({"content": "let me check", "tool_calls": [CALL]}, ["message", "function_call"]),
])
def test_answers_become_output_items(message: dict[str, Any], kinds: list[str]) -> None:
    adapter = ResponsesInbound(store=None, owner="k")
    adapter.canonical({"model": M, "input": "hi"})
    out = adapter.answer(chat_answer(message))
    assert [item["type"] for item in out["output"]] == kinds


def test_a_whole_answer_is_a_full_response_object() -> None:
    adapter = ResponsesInbound(store=None, owner="k")
    adapter.canonical({"model": M, "input": "hi", "instructions": "sys", "tools": [TOOL],
                       "max_output_tokens": 100, "metadata": {"a": "b"}})
    out = adapter.answer(chat_answer({"content": "ok", "reasoning_content": "why",
                                      "tool_calls": [CALL]}, "tool_calls"))
    assert out["id"].startswith("resp_") and out["object"] == "response"
    assert (out["model"], out["status"], out["error"]) == (M, "completed", None)
    assert out["completed_at"] >= out["created_at"]
    reasoning, message, call = out["output"]
    assert reasoning["id"].startswith("rs_") and reasoning["summary"] == []
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "why"}]
    assert message["id"].startswith("msg_") and message["role"] == "assistant"
    assert message["content"] == [{"type": "output_text", "text": "ok", "annotations": [],
                                   "logprobs": []}]
    assert call["id"].startswith("fc_")
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == (
        "call_1", "f", "{\"a\":1}", "completed")
    assert out["usage"] == {"input_tokens": 10,
                            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 3},
                            "total_tokens": 15}
    assert (out["instructions"], out["tools"], out["max_output_tokens"], out["metadata"],
            out["tool_choice"], out["parallel_tool_calls"], out["store"]) == (
        "sys", [TOOL], 100, {"a": "b"}, "auto", True, True)
    assert out["text"] == {"format": {"type": "text"}}


# ---------------------------------------------------------------------------- the store
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(n: int) -> StoredResponse:
    return StoredResponse(({"role": "user", "content": str(n)},), {"id": f"resp_{n}"})


@pytest.mark.parametrize("steps, present, absent", [
    # puts (owner, id, when), then what is there at 100 s (the age limit is 100 s)
    ([("a", "1", 10), ("a", "2", 10), ("a", "3", 10)], [("a", "2"), ("a", "3")], [("a", "1")]),
    ([("a", "1", 10), ("b", "1", 10)], [("a", "1"), ("b", "1")], []),
    ([("a", "1", 0), ("a", "2", 50)], [("a", "2")], [("a", "1")]),  # 1 is 100 s old at 100
    ([("a", "1", 60)], [("a", "1")], [("b", "1"), ("a", "2")]),  # owner partition
])
def test_store_is_bounded_by_size_and_age_and_partitioned_by_owner(
        steps: list[tuple[str, str, float]], present: list[tuple[str, str]],
        absent: list[tuple[str, str]]) -> None:
    clock = Clock()
    store = ResponseStore(max_entries=2, max_age_s=100, clock=clock, owner_share=1)
    for n, (owner, rid, at) in enumerate(steps):
        clock.now = at
        store.put(owner, rid, entry(n))
    clock.now = 100
    assert all(store.get(o, i) is not None for o, i in present)
    assert all(store.get(o, i) is None for o, i in absent)
    assert len(store) <= 2


def test_store_evicts_the_least_recently_used() -> None:
    store = ResponseStore(max_entries=2, max_age_s=100, clock=Clock(), owner_share=1)
    store.put("a", "1", entry(1))
    store.put("a", "2", entry(2))
    assert store.get("a", "1") == entry(1)  # 1 is now the most recently used
    store.put("a", "3", entry(3))
    assert (store.get("a", "1"), store.get("a", "2"), store.get("a", "3")) == (
        entry(1), None, entry(3))


def test_store_drops_expired_entries_when_it_is_written() -> None:
    clock = Clock()
    store = ResponseStore(max_entries=10, max_age_s=10, clock=clock)
    store.put("a", "1", entry(1))
    clock.now = 11
    store.put("a", "2", entry(2))
    assert len(store) == 1


@pytest.mark.parametrize("kwargs", [{"max_entries": 0}, {"max_age_s": 0}])
def test_store_refuses_a_bound_of_nothing(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ResponseStore(**kwargs)


def turn(store: ResponseStore, body: dict[str, Any], message: dict[str, Any],
         owner: str = "k1") -> tuple[dict[str, Any], dict[str, Any]]:
    adapter = ResponsesInbound(store=store, owner=owner)
    out = adapter.canonical({"model": M, **body})
    return out, adapter.answer(chat_answer(message, "tool_calls" if "tool_calls" in message
                                           else "stop"))


def test_previous_response_id_continues_the_stored_conversation() -> None:
    store = ResponseStore()
    tools = [TOOL]
    _, first = turn(store, {"input": "weather?", "instructions": "sys", "tools": tools},
                    {"content": None, "reasoning_content": "use f", "tool_calls": [CALL]})
    sent, second = turn(store, {"previous_response_id": first["id"], "instructions": "new",
                                "tools": tools,
                                "input": [{"type": "function_call_output", "call_id": "call_1",
                                           "output": "sunny"}]},
                        {"content": "It is sunny."})
    # the earlier instructions are not carried over; its input and its answer are
    assert sent["messages"] == [
        {"role": "system", "content": "new"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "reasoning_content": "use f",
         "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    third, _ = turn(store, {"previous_response_id": second["id"], "input": "thanks"},
                    {"content": "You're welcome."})
    assert [m["role"] for m in third["messages"]] == ["user", "assistant", "tool", "assistant",
                                                      "user"]
    assert third["messages"][3] == {"role": "assistant", "content": "It is sunny."}
    assert second["previous_response_id"] == first["id"]


@pytest.mark.parametrize("store_flag, owner, found", [
    (True, "k1", True),
    (None, "k1", True),  # store defaults to true
    (False, "k1", False),
    (True, "k2", False),  # another key's response is not found
])
def test_previous_response_id_hits_only_what_was_stored_for_the_owner(
        store_flag: bool | None, owner: str, found: bool) -> None:
    store = ResponseStore()
    body: dict[str, Any] = {"input": "hi"}
    if store_flag is not None:
        body["store"] = store_flag
    _, first = turn(store, body, {"content": "hello"})
    follow = {"model": M, "input": "again", "previous_response_id": first["id"]}
    adapter = ResponsesInbound(store=store, owner=owner)
    if found:
        assert len(adapter.canonical(follow)["messages"]) == 3
    else:
        with pytest.raises(BadRequest) as caught:
            adapter.canonical(follow)
        assert caught.value.param == "previous_response_id"
        assert caught.value.message == f"Previous response with id '{first['id']}' not found."


def test_without_a_store_previous_response_id_is_not_found() -> None:
    assert bad({"input": "x", "previous_response_id": "resp_1"}).param == "previous_response_id"


def test_a_stored_conversation_is_not_changed_by_a_later_request() -> None:
    store = ResponseStore()
    _, first = turn(store, {"input": "hi"}, {"content": "hello"})
    sent, _ = turn(store, {"previous_response_id": first["id"], "input": "x"}, {"content": "y"})
    sent["messages"][0]["content"] = "changed downstream"
    again, _ = turn(store, {"previous_response_id": first["id"], "input": "x"}, {"content": "y"})
    assert again["messages"][0] == {"role": "user", "content": "hi"}


def test_an_empty_input_continues_a_previous_response() -> None:
    store = ResponseStore()
    _, first = turn(store, {"input": "hi"}, {"content": "hello"})
    sent, _ = turn(store, {"previous_response_id": first["id"], "input": []}, {"content": "!"})
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant"]
