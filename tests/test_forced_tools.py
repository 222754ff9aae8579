"""lkn's forced tool calls (``lkn.relay.forced_tools``): when lkn makes them, the request it
sends, and the call it makes of the answer, whole and streamed. Pure: no engine."""
from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, AsyncIterator

import pytest

from lkn.relay.forced_tools import ForcedToolCall

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "now"}}
BODY = {"model": "m", "messages": [{"role": "user", "content": "weather?"}],
        "tools": [WEATHER, TIME], "tool_choice": "required"}


def client(mode: str = "auto", kind: str = "llamacpp", renders: bool | None = False) -> Any:
    return SimpleNamespace(model=SimpleNamespace(tool_calls=mode), kind=kind,
                           template_tools=renders)


@pytest.mark.parametrize("route,body,engine,forced", [
    ("chat", BODY, client(), True),
    ("chat", {**BODY, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     client(), True),
    ("chat", {**BODY, "tool_choice": "auto"}, client(), False),       # nothing forced
    ("chat", {**BODY, "tool_choice": None}, client(), False),
    ("chat", {**BODY, "tool_choice": {"type": "function", "function": {"name": "other"}}},
     client(), False),                                                  # not one of its tools
    ("chat", {**BODY, "tools": []}, client(), False),
    ("completions", BODY, client(), False),
    ("chat", BODY, client(renders=True), False),      # the template renders tools: the engine's
    ("chat", BODY, client(renders=None), False),      # not known: the engine's
    ("chat", BODY, client(kind="sglang"), False),
    ("chat", BODY, client("lkn", renders=True), True),  # always lkn's
    ("chat", BODY, client("engine"), False),             # never
])
def test_when_lkn_makes_the_call(route: str, body: dict[str, Any], engine: Any,
                                 forced: bool) -> None:
    assert (ForcedToolCall.of(route, body, engine) is not None) is forced


def test_the_request_names_the_tools_and_holds_the_answer_to_them() -> None:
    forced = ForcedToolCall.of("chat", BODY, client())
    assert forced is not None
    sent = forced.prepare({**BODY, "parallel_tool_calls": True, "stream": True})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sent)
    assert sent["stream"] is True
    note = sent["messages"][0]
    assert note["role"] == "system" and "get_weather" in note["content"] \
        and "get_time" in note["content"]
    schema = sent["response_format"]["json_schema"]["schema"]
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == \
        ["get_weather", "get_time"]
    assert schema["anyOf"][0]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    one = ForcedToolCall.of("chat", {**BODY, "tool_choice": {
        "type": "function", "function": {"name": "get_weather"}}}, client())
    assert one is not None and one.schema()["properties"]["name"] == {"const": "get_weather"}


def test_history_in_a_template_without_tools_is_plain_text() -> None:
    forced = ForcedToolCall.of("chat", BODY, client())
    assert forced is not None
    history = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "weather?"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
               {"role": "tool", "tool_call_id": "c1", "content": "rain"}]
    sent = forced.prepare({**BODY, "messages": history})["messages"]
    assert sent[0]["content"].startswith("Be brief.\n\n")  # the note joins the system message
    assert sent[2] == {"role": "assistant", "content": json.dumps(
        {"name": "get_weather", "arguments": '{"city": "Oslo"}'})}
    assert sent[3] == {"role": "user", "content": "Tool result: rain"}


def answer(content: str, finish: str = "stop") -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": finish,
         "message": {"role": "assistant", "content": content}}]}).encode()


def test_a_whole_answer_becomes_the_call() -> None:
    forced = ForcedToolCall.of("chat", BODY, client())
    assert forced is not None
    out = json.loads(forced.answer(answer('{"name": "get_weather", "arguments": {"city": "Oslo"}}')))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert call["id"].startswith("call_") and call["type"] == "function"
    cut = answer('{"name": "get_wea', "length")  # cut short: the engine's text as it came
    assert forced.answer(cut) == cut


async def _stream(events: list[str]) -> AsyncIterator[bytes]:
    data = "".join(f"data: {e}\n\n" for e in events).encode()
    for i in range(0, len(data), 7):  # split anywhere
        yield data[i:i + 7]


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    return json.dumps({"id": "x", "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


@pytest.mark.parametrize("pieces,finish,call", [
    (['{"name": "get_time", ', '"arguments": {}}'], "tool_calls",
     {"name": "get_time", "arguments": "{}"}),
    (['{"name": "get_ti'], "length", None),  # cut short: its text, then its finish
])
async def test_a_stream_holds_the_json_back_and_sends_the_call(
        pieces: list[str], finish: str, call: dict[str, str] | None) -> None:
    forced = ForcedToolCall.of("chat", BODY, client())
    assert forced is not None
    usage = json.dumps({"choices": [], "usage": {"completion_tokens": 5}})
    events = [chunk({"role": "assistant", "content": None}),
              *[chunk({"content": p}) for p in pieces],
              chunk({}, "stop" if call else "length"), usage, "[DONE]"]
    out = b"".join([c async for c in forced.stream(_stream(events))]).decode()
    datas = [line[6:] for line in out.split("\n") if line.startswith("data: ")]
    assert datas[-2:] == [usage, "[DONE]"]
    objs = [json.loads(d) for d in datas[:-2]]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    last = objs[-1]["choices"][0]
    assert last["finish_reason"] == finish
    assert len(objs) == 2  # the text deltas were held back
    if call is None:
        assert last["delta"] == {"content": "".join(pieces)}
    else:
        (tc,) = last["delta"]["tool_calls"]
        assert tc["index"] == 0 and tc["function"] == call and tc["id"].startswith("call_")
