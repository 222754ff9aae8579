"""Anthropic's Messages API as an upstream: the translation by tables, and the openai SDK
answered by a fake Anthropic server through lkn (whole answers, streams, errors, the key)."""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from lkn.engines.anthropic import StreamTranslator, from_message, to_messages_request
from lkn.errors import BadRequest
from tests.conftest import SECRET, Gateway, free_port, http, lua_str, write_config


@pytest.mark.parametrize("body, expected", [
    ({"messages": [{"role": "user", "content": "hi"}]},
     {"model": "claude", "max_tokens": 256,
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
    ({"messages": [{"role": "system", "content": "be brief"},
                   {"role": "developer", "content": [{"type": "text", "text": "no lists"}]},
                   {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
      "max_completion_tokens": 9, "max_tokens": 99, "stop": "END", "temperature": 0,
      "top_p": 0.5, "stream": True, "user": "u1", "seed": 3},
     {"model": "claude", "max_tokens": 9, "system": "be brief\n\nno lists",
      "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                   {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}],
      "stop_sequences": ["END"], "temperature": 0, "top_p": 0.5, "stream": True,
      "metadata": {"user_id": "u1"}}),
])
def test_requests_translate(body: dict[str, Any], expected: dict[str, Any]) -> None:
    assert to_messages_request(body, "claude", 256) == expected


IMG = "data:image/png;base64,iVBOR"
CALL = {"id": "call_1", "type": "function", "function": {"name": "ls",
                                                         "arguments": '{"dir": "/"}'}}
FN = {"type": "function", "function": {"name": "ls", "description": "list",
                                       "parameters": {"type": "object"}}}
TOOL = {"name": "ls", "description": "list", "input_schema": {"type": "object"}}


@pytest.mark.parametrize("messages, expected", [
    # images: data: URLs are base64 sources, http(s) URLs url sources
    ([{"role": "user", "content": [{"type": "text", "text": "what?"},
                                   {"type": "image_url", "image_url": {"url": IMG}},
                                   {"type": "image_url", "image_url": "https://x/y.png"}]}],
     [{"role": "user", "content": [
         {"type": "text", "text": "what?"},
         {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                      "data": "iVBOR"}},
         {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]),
    # an agent's turn: calls, results merged into one user message with the next words
    ([{"role": "user", "content": "ls / and pwd"},
      {"role": "assistant", "content": None, "reasoning_content": "hmm", "tool_calls": [
          CALL, {"id": "call_2", "type": "function",
                 "function": {"name": "pwd", "arguments": "not json"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "bin etc"},
      {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "/"}]},
      {"role": "tool", "tool_call_id": "call_3", "content": ""},
      {"role": "user", "content": "thanks"},
      {"role": "assistant", "content": "Done.", "tool_calls": []}],
     [{"role": "user", "content": [{"type": "text", "text": "ls / and pwd"}]},
      {"role": "assistant", "content": [
          {"type": "tool_use", "id": "call_1", "name": "ls", "input": {"dir": "/"}},
          {"type": "tool_use", "id": "call_2", "name": "pwd", "input": {}}]},
      {"role": "user", "content": [
          {"type": "tool_result", "tool_use_id": "call_1", "content": "bin etc"},
          {"type": "tool_result", "tool_use_id": "call_2", "content": "/"},
          {"type": "tool_result", "tool_use_id": "call_3"},
          {"type": "text", "text": "thanks"}]},
      {"role": "assistant", "content": [{"type": "text", "text": "Done."}]}]),
])
def test_agent_messages_translate(messages: list[Any], expected: list[Any]) -> None:
    assert to_messages_request({"messages": messages}, "claude", 256)["messages"] == expected


@pytest.mark.parametrize("extra, expected", [
    ({}, {"tools": [TOOL]}),
    ({"tool_choice": "auto"}, {"tools": [TOOL], "tool_choice": {"type": "auto"}}),
    ({"tool_choice": "none"}, {"tools": [TOOL], "tool_choice": {"type": "none"}}),
    ({"tool_choice": "required"}, {"tools": [TOOL], "tool_choice": {"type": "any"}}),
    ({"tool_choice": {"type": "function", "function": {"name": "ls"}}},
     {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "ls"}}),
    ({"parallel_tool_calls": False},
     {"tools": [TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    ({"tool_choice": "required", "parallel_tool_calls": False},
     {"tools": [TOOL], "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}),
    ({"tool_choice": "none", "parallel_tool_calls": False},
     {"tools": [TOOL], "tool_choice": {"type": "none"}}),
    ({"tools": [{"type": "function", "function": {"name": "pwd"}}]},
     {"tools": [{"name": "pwd", "input_schema": {"type": "object", "properties": {}}}]}),
])
def test_tools_translate(extra: dict[str, Any], expected: dict[str, Any]) -> None:
    out = to_messages_request({"messages": [{"role": "user", "content": "x"}], "tools": [FN],
                               **extra}, "claude", 256)
    assert {k: out[k] for k in ("tools", "tool_choice") if k in out} == expected


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": "ls"}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [FN], "tool_choice": "any"},
     "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]},
     "functions"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages"),
    ({"messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": IMG}}]}]}, "messages"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "x"}]}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages"),
])
def test_what_does_not_translate_is_a_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        to_messages_request(body, "claude", 256)
    assert info.value.param == param


def test_answers_and_events_translate() -> None:
    answer = from_message({"id": "msg_1", "content": [{"type": "text", "text": "Hi"},
                                                       {"type": "text", "text": "!"}],
                           "stop_reason": "max_tokens",
                           "usage": {"input_tokens": 3, "output_tokens": 2}}, "m")
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi!"}
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    t = StreamTranslator("m", include_usage=True)
    out = [x for e in [
        {"type": "message_start", "message": {"id": "msg_2", "usage": {"input_tokens": 4}}},
        {"type": "content_block_start"}, {"type": "ping"},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Yo"}},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 1}},
        {"type": "message_stop"}] for x in t.feed(e)]
    assert [o["choices"][0]["delta"] for o in out[:2] if isinstance(o, dict)] == [
        {"role": "assistant", "content": ""}, {"content": "Yo"}]
    assert out[2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert out[3]["usage"]["total_tokens"] == 5 and out[4] == "[DONE]"  # type: ignore[index]
    assert t.feed({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}) \
        == [{"error": {"message": "busy", "type": "overloaded_error", "param": None,
                       "code": None}}]


@pytest.mark.parametrize("stop, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("model_context_window_exceeded", "length"), (None, "stop")])
def test_stop_reasons_translate(stop: str | None, finish: str) -> None:
    answer = from_message({"id": "m", "content": [], "stop_reason": stop}, "m")
    assert answer["choices"][0]["finish_reason"] == finish
    t = StreamTranslator("m", include_usage=False)
    out = t.feed({"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {}})
    assert out[0]["choices"][0]["finish_reason"] == finish  # type: ignore[index]


def test_tool_use_answers_and_events_translate() -> None:
    answer = from_message({"id": "msg_1", "stop_reason": "tool_use", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {"dir": "/"}}]}, "m")
    assert answer["choices"][0]["message"] == {
        "role": "assistant", "content": None, "reasoning_content": "hmm", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "ls", "arguments": '{"dir": "/"}'}}]}
    assert answer["choices"][0]["finish_reason"] == "tool_calls"
    t = StreamTranslator("m", include_usage=False)
    deltas = [o["choices"][0]["delta"] for e in [  # type: ignore[index]
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "signature_delta", "signature": "s"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 1,
         "delta": {"type": "text_delta", "text": "Let me see."}},
        {"type": "content_block_start", "index": 2, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": "ls", "input": {}}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": '{"dir": '}},
        {"type": "content_block_delta", "index": 2,
         "delta": {"type": "input_json_delta", "partial_json": '"/"}'}},
        {"type": "content_block_start", "index": 3, "content_block": {
            "type": "tool_use", "id": "toolu_2", "name": "pwd", "input": {}}},
        {"type": "content_block_delta", "index": 3,
         "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    ] for o in t.feed(e)]
    assert deltas == [
        {"reasoning_content": "hmm"}, {"content": "Let me see."},
        {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                         "function": {"name": "ls", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"dir": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"/"}'}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function",
                         "function": {"name": "pwd", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}]


@pytest.fixture
def gw(upstream: Any, tmp_path: Path, gateway_factory: Any,
       monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, Path]:
    url, capture = upstream("--api", "anthropic", "--name", "claude-x")
    monkeypatch.setenv("LKN_TEST_ANTHROPIC_KEY", SECRET)
    return gateway_factory(write_config(tmp_path, f"""
server = {{ log_dir = {lua_str(str(tmp_path / 'logs'))} }}
models = {{ {{ name = "claude", default_max_tokens = 64,
              upstream = {{ url = {lua_str(url)}, api = "anthropic", model = "claude-x",
                           api_key_env = "LKN_TEST_ANTHROPIC_KEY" }} }} }}
""")), capture


MSG = [{"role": "system", "content": "Answer in five words."},
       {"role": "user", "content": "Capital of France?"}]


def test_the_openai_sdk_is_answered_by_anthropic(gw: tuple[Gateway, Path]) -> None:
    g, capture = gw
    client = g.client()
    answer = client.chat.completions.create(model="claude", messages=MSG)
    assert answer.choices[0].message.content == "Paris is the capital."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens == 11
    short = client.chat.completions.create(model="claude", messages=MSG, max_tokens=2)
    assert short.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model="claude", messages=MSG, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Paris is the capital."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    sent = [json.loads(x)["body"] for x in capture.read_text().splitlines()]
    assert sent[0]["system"] == "Answer in five words." and sent[0]["max_tokens"] == 64
    assert "stream_options" not in sent[2]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="claude", prompt="x")
    assert "only chat completions" in info.value.message


def test_anthropic_errors_are_openai_errors_and_the_key_stays_secret(
        upstream: Any, tmp_path: Path, gateway_factory: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url, _ = upstream("--api", "anthropic", "--name", "claude-x")
    wrong = "sk-ant-wrong-and-secret"
    monkeypatch.setenv("LKN_TEST_ANTHROPIC_KEY", wrong)
    g = gateway_factory(write_config(tmp_path, f"""
models = {{ {{ name = "claude", upstream = {{ url = {lua_str(url)}, api = "anthropic",
              model = "claude-x", api_key_env = "LKN_TEST_ANTHROPIC_KEY", health_path = "" }} }} }}
"""))
    r = http("POST", g.base_url + "/v1/chat/completions",
             json.dumps({"model": "claude", "messages": MSG}))
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and err["source"] == "upstream"
    assert "***" in err["message"] and wrong not in r.text and wrong not in caplog.text


class FakeClaude:
    """An in-process Anthropic that answers every request with a tool call (the subprocess fake
    knows only text), whole or streamed; it keeps the bodies it was sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        assert started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_t", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "Looking."},
                            {"type": "tool_use", "id": "toolu_9", "name": "ls",
                             "input": {"dir": "/"}}],
                "stop_reason": "tool_use", "stop_sequence": None,
                "usage": {"input_tokens": 30, "output_tokens": 12}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        script: list[tuple[str, dict[str, Any]]] = [
                ("message_start", {"message": {"id": "msg_t", "type": "message",
                                               "role": "assistant", "content": [],
                                               "model": body["model"],
                                               "usage": {"input_tokens": 30,
                                                         "output_tokens": 0}}}),
                ("content_block_start", {"index": 0, "content_block": {
                    "type": "tool_use", "id": "toolu_9", "name": "ls", "input": {}}}),
                ("ping", {}),
                ("content_block_delta", {"index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": '{"dir"'}}),
                ("content_block_delta", {"index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": ': "/"}'}}),
                ("content_block_stop", {"index": 0}),
                ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                                   "usage": {"output_tokens": 12}}),
                ("message_stop", {})]
        for name, data in script:
            await resp.write(f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"
                             .encode())
        return resp


def test_agent_traffic_reaches_anthropic(tmp_path: Path, gateway_factory: Any) -> None:
    """The openai SDK, with tools, through lkn to Anthropic: the tools, the history of calls
    and results go there translated, and the calls come back whole and streamed."""
    claude = FakeClaude()
    try:
        g = gateway_factory(write_config(tmp_path, f"""
models = {{ {{ name = "claude", upstream = {{ url = "http://127.0.0.1:{claude.port}/v1",
              api = "anthropic", model = "claude-x", health_path = "" }} }} }}
"""))
        client = g.client()
        tools: list[dict[str, Any]] = [{"type": "function", "function": {"name": "ls", "parameters": {
            "type": "object", "properties": {"dir": {"type": "string"}}}}}]
        history = [{"role": "user", "content": "ls / twice"},
                   {"role": "assistant", "content": None, "tool_calls": [CALL]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "bin etc"}]
        answer = client.chat.completions.create(model="claude", messages=history, tools=tools,
                                                tool_choice="required")
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Looking."
        assert [(c.id, c.function.name, json.loads(c.function.arguments))
                for c in choice.message.tool_calls or []] == [("toolu_9", "ls", {"dir": "/"})]
        chunks = list(client.chat.completions.create(model="claude", messages=history,
                                                     tools=tools, stream=True))
        calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
        assert calls[0].id == "toolu_9" and calls[0].function.name == "ls"
        assert "".join(tc.function.arguments or "" for tc in calls) == '{"dir": "/"}'
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        sent = claude.bodies[0]
        assert sent["tools"] == [{"name": "ls", "input_schema": tools[0]["function"][
            "parameters"]}] and sent["tool_choice"] == {"type": "any"}
        assert sent["messages"][1:] == [
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "ls",
                                               "input": {"dir": "/"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                          "content": "bin etc"}]}]
    finally:
        claude.stop()
