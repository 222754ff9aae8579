"""The official openai SDK against the adapter for Codex's tool shapes: a call of a namespaced
(MCP) tool and a call of a free-form (custom) tool, whole and streamed through
``responses.stream()``, then sent back as the next request's history."""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import openai
import pytest

from lkn.request.inbound.response_store import ResponseStore
from lkn.request.inbound.responses import ResponsesInbound
from tests.test_inbound_responses_sdk import (Scripted, call_delta, chunk, events_of, sdk_for,
                                              sse, usage)

M = "my-model"
FS: Any = {"type": "namespace", "name": "mcp__fs", "description": "files", "tools": [
    {"type": "function", "name": "read", "description": "read a file", "strict": True,
     "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                    "required": ["path"], "additionalProperties": False}}]}
PATCH: Any = {"type": "custom", "name": "apply_patch", "description": "Edit files.",
              "format": {"type": "grammar", "syntax": "lark",
                         "definition": 'start: "*** Begin Patch" LF "*** End Patch"'}}
TOOLS = [FS, PATCH]
PATCH_TEXT = "*** Begin Patch\n*** End Patch"
PATCH_ARGS = json.dumps({"input": PATCH_TEXT})
BOTH = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "Read, then patch."}),
    chunk(call_delta(0, id="call_r", name="mcp__fs__read")),
    chunk(call_delta(0, arguments="{\"path\":")), chunk(call_delta(0, arguments="\"a.py\"}")),
    chunk(call_delta(1, id="call_p", name="apply_patch", arguments=PATCH_ARGS[:20])),
    chunk(call_delta(1, arguments=PATCH_ARGS[20:])),
    chunk({}, "tool_calls"), usage(), "[DONE]")
WHOLE = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "e",
         "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
             "role": "assistant", "content": None, "tool_calls": [
                 {"id": "call_r", "type": "function",
                  "function": {"name": "mcp__fs__read", "arguments": "{\"path\":\"a.py\"}"}},
                 {"id": "call_p", "type": "function",
                  "function": {"name": "apply_patch", "arguments": PATCH_ARGS}}]}}],
         "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}


@pytest.fixture
async def served(aiohttp_server: Any) -> AsyncIterator[tuple[Scripted, openai.AsyncOpenAI]]:
    scripted = Scripted(ResponseStore())
    scripted.stream, scripted.whole = BOTH, WHOLE
    client = await sdk_for(aiohttp_server, scripted)
    yield scripted, client
    await client.close()


def check_calls(output: list[Any]) -> None:
    read, patch = [item for item in output if item.type != "reasoning"]
    assert read.type == "function_call"
    assert (read.call_id, read.name, read.namespace, json.loads(read.arguments)) == (
        "call_r", "read", "mcp__fs", {"path": "a.py"})
    assert patch.type == "custom_tool_call"
    assert (patch.call_id, patch.name, patch.input) == ("call_p", "apply_patch", PATCH_TEXT)


async def test_the_sdk_reads_whole_namespace_and_custom_calls(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    response = await client.responses.create(model=M, input="fix a.py", tools=TOOLS)
    assert [t["function"]["name"] for t in scripted.sent[0]["tools"]] == [
        "mcp__fs__read", "apply_patch"]
    assert [item.type for item in response.output] == ["function_call", "custom_tool_call"]
    check_calls(response.output)
    assert [tool.type for tool in response.tools] == ["namespace", "custom"]


async def test_the_sdk_stream_helper_assembles_namespace_and_custom_calls(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    kinds: list[str] = []
    async with client.responses.stream(model=M, input="fix a.py", tools=TOOLS) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.custom_tool_call_input.done":
                assert event.input == PATCH_TEXT
        final = await stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "function_call",
                                                    "custom_tool_call"]
    check_calls(final.output)
    read = final.output[1]
    assert read.type == "function_call"
    assert read.parsed_arguments == {"path": "a.py"}  # the SDK found the strict tool by namespace
    assert kinds.count("response.custom_tool_call_input.delta") == 1
    assert kinds[-1] == "response.completed"

    # the next turn, Codex's way: every output item back as input, store off
    replay: list[Any] = [item.model_dump(exclude_none=True) for item in final.output]
    await client.responses.create(model=M, store=False, tools=TOOLS, input=[
        {"role": "user", "content": "fix a.py"}, *replay,
        {"type": "function_call_output", "call_id": "call_r", "output": "print(1)"},
        {"type": "custom_tool_call_output", "call_id": "call_p", "output": "Done!"}])
    history = scripted.sent[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "tool"]
    assert history[1]["reasoning_content"] == "Read, then patch."
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in history[1]["tool_calls"]] == [
        ("call_r", "mcp__fs__read", {"path": "a.py"}),
        ("call_p", "apply_patch", {"input": PATCH_TEXT})]


async def test_a_view_image_output_reaches_the_engine_as_a_user_image(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    first = await client.responses.create(model=M, input="look", tools=TOOLS)
    await client.responses.create(
        model=M, previous_response_id=first.id, tools=TOOLS,
        input=[{"type": "function_call_output", "call_id": "call_r",
                "output": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
               {"type": "custom_tool_call_output", "call_id": "call_p", "output": "ok"}])
    history = scripted.sent[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "tool", "user"]
    assert history[2]["content"] == "(image)"
    assert history[4]["content"] == [{"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AA"}}]


def test_custom_call_events_are_in_order() -> None:
    adapter = ResponsesInbound(store=None, owner="k")
    adapter.canonical({"model": M, "input": "hi", "stream": True, "tools": TOOLS})
    transcoder = adapter.transcoder()
    events = events_of(transcoder.feed(BOTH) + transcoder.finish())
    custom = [(n, d) for n, d in events if d.get("output_index") == 2]
    assert [n for n, _ in custom] == [
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done"]
    assert custom[0][1]["item"]["input"] == "" and custom[-1][1]["item"]["input"] == PATCH_TEXT
    assert custom[1][1]["delta"] == PATCH_TEXT
    read_added = [d for n, d in events if n == "response.output_item.added"
                  and d["output_index"] == 1][0]
    assert read_added["item"]["name"] == "read" and read_added["item"]["namespace"] == "mcp__fs"
    assert not any(n == "response.function_call_arguments.delta" and d["output_index"] == 2
                   for n, d in events)
