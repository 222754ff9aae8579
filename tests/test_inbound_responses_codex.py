"""What Codex CLI sends through the Responses adapter: namespace (MCP) tools, free-form (custom)
tools, tool outputs with images, replayed empty items, mid-history developer messages, hosted
tools, and long ``previous_response_id`` chains in the store. (The openai SDK against the same
shapes: test_inbound_responses_codex_sdk.py.)"""
from __future__ import annotations

import json
from typing import Any

import pytest

from lkn.errors import BadRequest
from lkn.request.inbound.response_store import ResponseStore, StoredResponse
from lkn.request.inbound.responses import ResponsesInbound
from lkn.request.inbound.responses_input import GRAMMAR_CAP, flat_name
from lkn.request.validate import validate_chat

M = "my-model"
OBJ = {"type": "object", "properties": {"path": {"type": "string"}}}
FS: dict[str, Any] = {"type": "namespace", "name": "mcp__fs", "description": "files",
                      "tools": [{"type": "function", "name": "read", "description": "read one",
                                 "parameters": OBJ},
                                {"type": "function", "name": "list", "parameters": OBJ}]}
GRAMMAR = 'start: "*** Begin Patch" LF hunk+ "*** End Patch"'
PATCH: dict[str, Any] = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
                         "format": {"type": "grammar", "syntax": "lark",
                                    "definition": GRAMMAR}}
INPUT_ONLY = {"type": "object", "properties": {"input": {
    "type": "string", "description": "The tool's raw input (free-form text, not JSON)."}},
    "required": ["input"]}


def adapter(body: dict[str, Any], store: ResponseStore | None = None,
            owner: str = "k1") -> tuple[ResponsesInbound, dict[str, Any]]:
    inbound = ResponsesInbound(store=store, owner=owner)
    out = inbound.canonical({"model": M, **body})
    validate_chat(out)
    return inbound, out


def bad(body: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        adapter(body)
    return caught.value


def answer(message: dict[str, Any], body: dict[str, Any],
           store: ResponseStore | None = None) -> dict[str, Any]:
    inbound, _ = adapter(body, store)
    return inbound.answer({"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", **message}}]})


def chat_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ---------------------------------------------------------------------------- 1. namespaces
@pytest.mark.parametrize("namespace, name, flat", [
    (None, "read", "read"),
    ("mcp__fs", "read", "mcp__fs__read"),
    ("mcp__fs__", "read", "mcp__fs__read"),  # no doubled separator
    ("n" * 40, "t" * 30, None),  # over 64: cut, with a hash
])
def test_flat_names_stay_within_64_characters(namespace: str | None, name: str,
                                              flat: str | None) -> None:
    out = flat_name(namespace, name)
    assert len(out) <= 64 and out == flat_name(namespace, name)  # the same every time
    if flat is not None:
        assert out == flat
    else:
        assert out.startswith("n" * 40) and out != flat_name(namespace, "t" * 31)


def test_namespace_tools_flatten_to_chat_functions() -> None:
    _, out = adapter({"input": "hi", "tools": [FS, {"type": "function", "name": "shell",
                                                    "parameters": OBJ}]})
    assert out["tools"] == [
        {"type": "function", "function": {"name": "mcp__fs__read", "description": "read one",
                                          "parameters": OBJ}},
        {"type": "function", "function": {"name": "mcp__fs__list", "parameters": OBJ}},
        {"type": "function", "function": {"name": "shell", "parameters": OBJ}}]


@pytest.mark.parametrize("message, items", [
    ({"content": None, "tool_calls": [chat_call("mcp__fs__read", '{"path":"a"}')]},
     [{"type": "function_call", "name": "read", "namespace": "mcp__fs",
       "arguments": '{"path":"a"}', "call_id": "call_1"}]),
    ({"content": None, "tool_calls": [chat_call("shell", "{}")]},
     [{"type": "function_call", "name": "shell", "arguments": "{}", "call_id": "call_1"}]),
    ({"content": None, "tool_calls": [chat_call("apply_patch", json.dumps({"input": "P"}))]},
     [{"type": "custom_tool_call", "name": "apply_patch", "input": "P", "call_id": "call_1"}]),
    # arguments of another shape are the input as they are
    ({"content": None, "tool_calls": [chat_call("apply_patch", "*** Begin Patch")]},
     [{"type": "custom_tool_call", "name": "apply_patch", "input": "*** Begin Patch",
       "call_id": "call_1"}]),
])
def test_whole_answers_name_calls_as_the_client_declared_them(
        message: dict[str, Any], items: list[dict[str, Any]]) -> None:
    out = answer(message, {"input": "hi", "tools": [FS, PATCH, {"type": "function",
                                                                "name": "shell"}]})
    got = [{k: v for k, v in item.items() if k not in ("id", "status")} for item in out["output"]]
    assert got == items
    assert all(item["status"] == "completed" for item in out["output"])
    if items[0]["type"] == "custom_tool_call":
        assert "arguments" not in out["output"][0] and out["output"][0]["id"].startswith("fc_")


# ---------------------------------------------------------------------------- 2. custom tools
@pytest.mark.parametrize("tool, description", [
    (PATCH, f"Edit files.\n\nThe input must follow this lark grammar:\n{GRAMMAR}"),
    ({**PATCH, "description": None}, f"The input must follow this lark grammar:\n{GRAMMAR}"),
    ({**PATCH, "format": {"type": "text"}}, "Edit files."),
    ({"type": "custom", "name": "apply_patch"}, None),
    ({**PATCH, "format": {"type": "grammar", "syntax": "regex",
                          "definition": "x" * (GRAMMAR_CAP + 1)}},
     "Edit files.\n\nThe input must follow the tool's regex grammar (too long to show here)."),
])
def test_custom_tools_are_functions_of_one_string(tool: dict[str, Any],
                                                  description: str | None) -> None:
    _, out = adapter({"input": "hi", "tools": [tool]})
    function = out["tools"][0]["function"]
    assert (function["name"], function["parameters"]) == ("apply_patch", INPUT_ONLY)
    assert function.get("description") == description


def test_a_custom_tool_may_be_chosen_by_name() -> None:
    _, out = adapter({"input": "hi", "tools": [PATCH],
                      "tool_choice": {"type": "custom", "name": "apply_patch"}})
    assert out["tool_choice"] == {"type": "function", "function": {"name": "apply_patch"}}


@pytest.mark.parametrize("body, param", [
    ({"tools": [{**PATCH, "format": {"type": "grammar", "syntax": "lark"}}]}, "tools[0].format"),
    ({"tools": [{**PATCH, "format": "lark"}]}, "tools[0].format"),
    ({"tools": [{**FS, "tools": []}]}, "tools[0].tools"),
    ({"tools": [{**FS, "tools": ["read"]}]}, "tools[0].tools[0]"),
    ({"tools": [{**FS, "name": ""}]}, "tools[0].name"),
    ({"tools": [{**FS, "tools": [{"type": "namespace", "name": "x", "tools": []}]}]},
     "tools[0].tools[0].type"),
    ({"tools": [FS, {"type": "function", "name": "mcp__fs__read"}]}, "tools[1].name"),
    ({"tools": [PATCH], "tool_choice": {"type": "function", "name": "apply_patch"}},
     "tool_choice.name"),
    ({"input": [{"type": "custom_tool_call", "call_id": "c", "name": "apply_patch"}]},
     "input[0].input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "read", "arguments": "{}",
                 "namespace": 5}]}, "input[0].namespace"),
])
def test_malformed_codex_shapes_are_a_400(body: dict[str, Any], param: str) -> None:
    assert bad({"input": "hi", **body}).param == param


# ---------------------------------------------------------------------------- 6. hosted tools
@pytest.mark.parametrize("kind, hint", [
    ("web_search", 'web_search = "disabled"'),
    ("web_search_preview_2025_03_11", 'web_search = "disabled"'),
    ("image_generation", "[features] image_generation = false"),
    ("file_search", "image_generation = false"),
    ("code_interpreter", 'web_search = "disabled"'),
    ("computer_use_preview", "config.toml"),
    ("mcp", "config.toml"), ("local_shell", "config.toml"), ("tool_search", "config.toml"),
    ("shell", "config.toml"),
])
def test_hosted_tools_are_a_400_that_says_what_to_do(kind: str, hint: str) -> None:
    error = bad({"input": "hi", "tools": [{"type": kind}]})
    assert (error.status, error.param) == (400, "tools[0].type")
    assert f"hosted tool {kind!r}" in error.message and "run locally" in error.message
    assert hint in error.message


def test_an_unknown_tool_type_is_not_called_hosted() -> None:
    error = bad({"input": "hi", "tools": [{"type": "teleport"}]})
    assert "'teleport'" in error.message and "hosted" not in error.message


# ---------------------------------------------------------------------------- history
CALL_P = chat_call("apply_patch", json.dumps({"input": "*** Begin Patch\n"}), "call_p")
IMG = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "high"}
CHAT_IMG = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                               "detail": "high"}}
Q = {"role": "user", "content": "q"}


@pytest.mark.parametrize("items, messages", [
    # 1: a namespaced call is re-qualified; 2: a custom call and its output
    ([Q, {"type": "function_call", "call_id": "call_1", "name": "read", "namespace": "mcp__fs",
          "arguments": "{}"},
      {"type": "function_call_output", "call_id": "call_1", "output": "text"}],
     [Q, {"role": "assistant", "content": None,
          "tool_calls": [chat_call("mcp__fs__read", "{}")]},
      {"role": "tool", "tool_call_id": "call_1", "content": "text"}]),
    ([Q, {"type": "custom_tool_call", "id": "ctc_1", "call_id": "call_p", "name": "apply_patch",
          "input": "*** Begin Patch\n", "status": "completed"},
      {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"}],
     [Q, {"role": "assistant", "content": None, "tool_calls": [CALL_P]},
      {"role": "tool", "tool_call_id": "call_p", "content": "Done!"}]),
    # 3: images of tool outputs follow the turn's tool messages, in one user message
    ([Q, {"type": "function_call", "call_id": "call_1", "name": "view_image", "arguments": "{}"},
      {"type": "function_call", "call_id": "call_2", "name": "view_image", "arguments": "{}"},
      {"type": "function_call_output", "call_id": "call_1", "output": [IMG]},
      {"type": "function_call_output", "call_id": "call_2",
       "output": [{"type": "input_text", "text": "a "}, IMG, {"type": "input_text", "text": "b"}]},
      {"role": "user", "content": "and?"}],
     [Q, {"role": "assistant", "content": None,
          "tool_calls": [chat_call("view_image", "{}"), chat_call("view_image", "{}", "call_2")]},
      {"role": "tool", "tool_call_id": "call_1", "content": "(image)"},
      {"role": "tool", "tool_call_id": "call_2", "content": "a b"},
      {"role": "user", "content": [CHAT_IMG, CHAT_IMG]},
      {"role": "user", "content": "and?"}]),
    ([Q, {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
      {"type": "function_call_output", "call_id": "call_1", "output": [IMG]}],
     [Q, {"role": "assistant", "content": None, "tool_calls": [chat_call("f", "{}")]},
      {"role": "tool", "tool_call_id": "call_1", "content": "(image)"},
      {"role": "user", "content": [CHAT_IMG]}]),
    # 4: empty texts, as lkn itself answers them and Codex replays them
    ([Q, {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": ""}]},
      {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
       "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]},
      {"role": "user", "content": "again"}],
     [Q, {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}]),
    ([Q, {"type": "message", "role": "assistant",
          "content": [{"type": "output_text", "text": ""}]},
      {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}],
     [Q, {"role": "assistant", "content": None, "tool_calls": [chat_call("f", "{}")]}]),
    # 5: system and developer messages fold into one leading system message
    ([{"role": "developer", "content": "d1"}, Q, {"role": "assistant", "content": "a"},
      {"role": "developer", "content": [{"type": "input_text", "text": "d2"}]},
      {"role": "system", "content": "s3"}, {"role": "user", "content": "u"}],
     [{"role": "system", "content": "d1\n\nd2\n\ns3"}, Q, {"role": "assistant", "content": "a"},
      {"role": "user", "content": "u"}]),
])
def test_codex_history_becomes_chat_messages(items: list[dict[str, Any]],
                                             messages: list[dict[str, Any]]) -> None:
    assert adapter({"input": items})[1]["messages"] == messages


@pytest.mark.parametrize("instructions, items, system", [
    ("I", [Q, {"role": "developer", "content": "late"}], "I\n\nlate"),
    ("I", [{"role": "system", "content": "early"}, Q, {"role": "developer", "content": "late"}],
     "I\n\nearly\n\nlate"),
    (None, [Q, {"role": "developer", "content": "late"}], "late"),
    ("I", [Q, {"role": "developer", "content": ""}], "I"),
])
def test_instructions_come_first_in_the_folded_system_message(
        instructions: str | None, items: list[dict[str, Any]], system: str) -> None:
    body: dict[str, Any] = {"input": items}
    if instructions is not None:
        body["instructions"] = instructions
    messages = adapter(body)[1]["messages"]
    assert messages[0] == {"role": "system", "content": system}
    assert [m["role"] for m in messages[1:]] == ["user"]


def test_replaying_the_output_is_the_same_history_as_previous_response_id() -> None:
    """Codex sends every output item back as input (store off); the engine must see the same
    messages as when the conversation is continued from lkn's store."""
    store = ResponseStore()
    tools = [FS, PATCH]
    first = answer({"content": "", "reasoning_content": "plan", "tool_calls": [
        chat_call("mcp__fs__read", '{"path":"a"}'), CALL_P]},
        {"input": "edit a", "tools": tools}, store)
    outputs = [{"type": "function_call_output", "call_id": "call_1", "output": "x"},
               {"type": "custom_tool_call_output", "call_id": "call_p", "output": "ok"}]
    _, replayed = adapter({"input": [{"role": "user", "content": "edit a"}, *first["output"],
                                     *outputs], "tools": tools})
    _, chained = adapter({"previous_response_id": first["id"], "input": outputs,
                          "tools": tools}, store)
    assert replayed["messages"] == chained["messages"]
    assert chained["messages"][1] == {
        "role": "assistant", "content": None, "reasoning_content": "plan",
        "tool_calls": [chat_call("mcp__fs__read", '{"path":"a"}'), CALL_P]}


# ---------------------------------------------------------------------------- 7. the store
def test_a_chain_stores_each_turn_once_and_is_rebuilt_by_walking_it() -> None:
    store = ResponseStore()
    previous: str | None = None
    for n in range(30):
        body: dict[str, Any] = {"input": f"turn {n}"}
        if previous is not None:
            body["previous_response_id"] = previous
        out = answer({"content": f"answer {n}"}, body, store)
        entry = store.get("k1", out["id"])
        assert entry is not None and entry.previous == previous
        assert [m["content"] for m in entry.messages] == [f"turn {n}", f"answer {n}"]
        previous = out["id"]
    assert previous is not None
    conversation = store.conversation("k1", previous)
    assert conversation is not None and len(conversation) == 60
    assert conversation[-3:] == [{"role": "assistant", "content": "answer 28"},
                                 {"role": "user", "content": "turn 29"},
                                 {"role": "assistant", "content": "answer 29"}]
    assert store.bytes < 30 * 2000  # linear in the turns, not quadratic


def test_a_missing_link_is_the_same_400_as_an_unknown_id() -> None:
    store = ResponseStore()
    first = answer({"content": "a"}, {"input": "1"}, store)
    second = answer({"content": "b"}, {"input": "2", "previous_response_id": first["id"]}, store)
    store._drop(("k1", first["id"]))  # evicted or expired
    assert store.get("k1", second["id"]) is not None
    with pytest.raises(BadRequest) as caught:
        adapter({"input": "3", "previous_response_id": second["id"]}, store)
    assert caught.value.param == "previous_response_id"
    assert caught.value.message == f"Previous response with id '{second['id']}' not found."


def entry(text: str, previous: str | None = None) -> StoredResponse:
    return StoredResponse(({"role": "user", "content": text},), {"id": "r"}, previous)


def test_the_store_is_bounded_by_bytes_least_recently_used_first() -> None:
    size = entry("x" * 100).size()
    store = ResponseStore(100, 60, max_bytes=2 * size, owner_share=1)  # the global bound
    store.put("a", "1", entry("x" * 100))
    store.put("a", "2", entry("y" * 100))
    assert store.get("a", "1") is not None  # 1 is now the most recently used
    store.put("a", "3", entry("z" * 100))
    assert [store.get("a", i) is not None for i in "123"] == [True, False, True]
    assert store.bytes == 2 * size
    store.put("a", "4", entry("w" * 1000))  # larger than the whole bound: not kept
    assert store.get("a", "4") is None and len(store) == 2


def test_the_store_keeps_its_positional_arguments() -> None:
    store = ResponseStore(5, 30.0)
    assert (store.max_entries, store.max_age_s, store.max_bytes) == (5, 30.0, 64 * 1024 * 1024)
    with pytest.raises(ValueError):
        ResponseStore(max_bytes=0)


def test_walking_a_chain_refreshes_every_link() -> None:
    store = ResponseStore(3, 60, owner_share=1)
    store.put("a", "1", entry("1"))
    store.put("a", "2", entry("2", "1"))
    store.put("a", "x", entry("x"))
    assert store.conversation("a", "2") == [{"role": "user", "content": "1"},
                                            {"role": "user", "content": "2"}]
    store.put("a", "y", entry("y"))  # x is now the least recently used, not 1
    assert store.get("a", "x") is None and store.conversation("a", "2") is not None
