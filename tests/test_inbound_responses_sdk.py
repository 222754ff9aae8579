"""The Responses API adapter's stream, and the official openai SDK against the adapter: a tiny
aiohttp app translates what the SDK sends (``canonical``) and answers a scripted canonical
answer through ``answer()`` or the transcoder, so the SDK's own parsing and its strict stream
assembly (``responses.stream()``) judge the shapes."""
from __future__ import annotations

import json
from typing import Any, AsyncIterator

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from lkn import fastjson
from lkn.errors import LknError
from lkn.request.inbound.response_store import ResponseStore
from lkn.request.inbound.responses import ResponsesInbound

M = "my-model"
TOOL: Any = {"type": "function", "name": "get_weather", "description": "the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "e",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def usage(prompt: int = 7, completion: int = 9, reasoning: int = 4) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "e",
            "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                     "completion_tokens_details": {
                                         "reasoning_tokens": reasoning}}}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else fastjson.dumps(e))
                    + b"\n\n" for e in events)


def call_delta(index: int, *, id: str | None = None, name: str | None = None,
               arguments: str = "") -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id is not None:
        call.update(id=id, type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


THINK_AND_SAY = sse(
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning_content": "The user "}), chunk({"reasoning_content": "greets."}),
    chunk({"content": "Hello"}), chunk({"content": ", world"}),
    chunk({}, "stop"), usage(), "[DONE]")
CALL_TWO = sse(
    chunk({"role": "assistant", "content": None}),
    chunk({"reasoning_content": "Need weather."}),
    chunk(call_delta(0, id="call_a", name="get_weather")),
    chunk(call_delta(0, arguments="{\"city\":")), chunk(call_delta(0, arguments="\"Oslo\"}")),
    chunk(call_delta(1, id="call_b", name="get_weather", arguments="{\"city\":\"Rome\"}")),
    chunk({}, "tool_calls"), usage(), "[DONE]")
CUT = sse(chunk({"content": "Once upon"}), chunk({"content": " a time"}, "length"), usage(),
          "[DONE]")
FAILS = sse(chunk({"content": "partial"}),
            {"error": {"message": "the engine crashed", "type": "upstream_error",
                       "code": "upstream_error", "param": None, "source": "lkn"}})


class Scripted:
    """Plays lkn's part: each request is translated, then answered from the script."""

    def __init__(self, store: ResponseStore | None = None) -> None:
        self.store = store
        self.sent: list[dict[str, Any]] = []  # the canonical bodies
        self.stream = THINK_AND_SAY
        self.whole: dict[str, Any] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        adapter = ResponsesInbound(store=self.store, owner="k1")
        try:
            body = adapter.canonical(await request.json())
        except LknError as exc:  # as lkn answers it: through the adapter's error()
            return adapter.error_response(exc.status, exc.body("req-1"), exc.headers())
        self.sent.append(body)
        if not body.get("stream"):
            return web.json_response(adapter.answer(self.whole))
        response = web.StreamResponse(headers={"Content-Type": adapter.stream_content_type})
        await response.prepare(request)
        transcoder = adapter.transcoder()
        for i in range(0, len(self.stream), 37):  # cut anywhere, as the network does
            await response.write(transcoder.feed(self.stream[i:i + 37]))
        await response.write(transcoder.finish())
        return response


async def sdk_for(aiohttp_server: Any, scripted: Scripted) -> openai.AsyncOpenAI:
    """The official SDK pointed at an app whose /v1/responses ``scripted`` answers."""
    app = web.Application()
    app.router.add_post("/v1/responses", scripted.handle)
    server: TestServer = await aiohttp_server(app)
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="x", max_retries=0)


@pytest.fixture
async def served(aiohttp_server: Any) -> AsyncIterator[tuple[Scripted, openai.AsyncOpenAI]]:
    scripted = Scripted(ResponseStore())
    client = await sdk_for(aiohttp_server, scripted)
    yield scripted, client
    await client.close()


async def test_the_sdk_reads_a_whole_answer_with_reasoning_text_and_a_call(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    scripted.whole = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "e",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "Need weather.",
            "tool_calls": [{"id": "call_a", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}}
    response = await client.responses.create(model=M, input="weather in Oslo?",
                                             instructions="be brief", tools=[TOOL])
    assert scripted.sent[0]["messages"] == [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "weather in Oslo?"}]
    assert response.status == "completed" and response.model == M
    assert response.output_text == "Checking."
    assert [item.type for item in response.output] == ["reasoning", "message", "function_call"]
    reasoning, _, call = response.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Need weather."
    assert call.type == "function_call"
    assert (call.call_id, call.name, json.loads(call.arguments)) == (
        "call_a", "get_weather", {"city": "Oslo"})
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens,
            response.usage.total_tokens) == (7, 9, 16)
    assert response.tools[0].type == "function" and response.tools[0].name == "get_weather"


async def test_the_sdk_stream_helper_assembles_reasoning_and_text(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    deltas: list[str] = []
    kinds: list[str] = []
    async with client.responses.stream(model=M, input="hi",
                                       reasoning={"effort": "low"}) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = await stream.get_final_response()
    assert scripted.sent[0]["stream"] is True
    assert scripted.sent[0]["stream_options"] == {"include_usage": True}
    assert scripted.sent[0]["reasoning_effort"] == "low"
    assert "".join(deltas) == final.output_text == "Hello, world"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.reasoning_text.delta") == 2
    assert [item.type for item in final.output] == ["reasoning", "message"]
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "The user greets."
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 4
    assert final.status == "completed"


async def test_the_sdk_stream_helper_assembles_function_calls(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    scripted.stream = CALL_TWO
    snapshots: list[str] = []
    async with client.responses.stream(model=M, input="weather in Oslo and Rome?",
                                       tools=[TOOL]) as stream:
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                snapshots.append(event.snapshot)
        final = await stream.get_final_response()
    assert snapshots == ["{\"city\":", "{\"city\":\"Oslo\"}", "{\"city\":\"Rome\"}"]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("call_a", "get_weather", {"city": "Oslo"}), ("call_b", "get_weather", {"city": "Rome"})]
    assert [item.type for item in final.output] == ["reasoning", "function_call",
                                                    "function_call"]
    assert final.output_text == ""


async def test_a_streamed_answer_is_continued_by_previous_response_id(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    scripted.stream = CALL_TWO
    async with client.responses.stream(model=M, input="weather?", tools=[TOOL]) as stream:
        first = await stream.get_final_response()
    scripted.whole = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "Sunny and warm."}}]}
    second = await client.responses.create(
        model=M, previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
               {"type": "function_call_output", "call_id": "call_b", "output": "warm"}])
    history = scripted.sent[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in history[1]["tool_calls"]] == ["call_a", "call_b"]
    assert history[1]["reasoning_content"] == "Need weather."
    assert second.previous_response_id == first.id
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=M, input="x", previous_response_id="resp_no")
    assert caught.value.param == "previous_response_id"
    assert "Previous response with id 'resp_no' not found." in caught.value.message


async def test_a_cut_answer_ends_with_response_incomplete(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    scripted.stream = CUT
    async with client.responses.stream(model=M, input="story", max_output_tokens=3) as stream:
        events = [event async for event in stream]
    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.status == "incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"
    assert last.response.output_text == "Once upon a time"
    assert scripted.sent[0]["max_tokens"] == 3


async def test_an_error_mid_stream_is_an_error_event_then_response_failed(
        served: tuple[Scripted, openai.AsyncOpenAI]) -> None:
    scripted, client = served
    scripted.stream = FAILS
    async with client.responses.stream(model=M, input="hi") as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match="response.completed"):
            await stream.get_final_response()
    error, failed = events[-2:]
    assert error.type == "error" and error.message == "the engine crashed"
    assert error.code == "upstream_error"
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.message == "the engine crashed"


# ---------------------------------------------------------------------------- the events
def events_of(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if not block or block.startswith(":"):
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        out.append((name[7:], json.loads(data[6:])))
    return out


def transcode(raw: bytes, store: ResponseStore | None = None) -> bytes:
    adapter = ResponsesInbound(store=store, owner="k")
    adapter.canonical({"model": M, "input": "hi", "stream": True})
    transcoder = adapter.transcoder()
    return transcoder.feed(raw) + transcoder.finish()


@pytest.mark.parametrize("raw, last", [
    (THINK_AND_SAY, "response.completed"),
    (CALL_TWO, "response.completed"),
    (CUT, "response.incomplete"),
    (FAILS, "response.failed"),
    (sse(chunk({"content": "x"}, "stop")), "response.completed"),  # no [DONE]: finish seen
    (sse(chunk({"content": "x"})), "response.failed"),  # no [DONE], no finish: broken off
    (sse("[DONE]"), "response.completed"),
])
def test_every_event_is_named_typed_and_numbered_in_order(raw: bytes, last: str) -> None:
    out = transcode(raw)
    events = events_of(out)
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events][:2] == ["response.created", "response.in_progress"]
    assert events[0][1]["response"]["output"] == []
    assert events[-1][0] == last
    assert b"[DONE]" not in out
    ids = {data["response"]["id"] for _, data in events if "response" in data}
    assert len(ids) == 1


def test_output_indices_follow_the_order_items_are_added() -> None:
    events = events_of(transcode(CALL_TWO))
    added = [(d["output_index"], d["item"]["type"]) for n, d in events
             if n == "response.output_item.added"]
    assert added == [(0, "reasoning"), (1, "function_call"), (2, "function_call")]
    done = [d for n, d in events if n == "response.function_call_arguments.done"]
    assert [(d["output_index"], d["arguments"]) for d in done] == [
        (1, "{\"city\":\"Oslo\"}"), (2, "{\"city\":\"Rome\"}")]
    final = events[-1][1]["response"]
    assert final["usage"]["input_tokens"] == 7 and final["status"] == "completed"


def test_an_empty_answer_still_has_a_message() -> None:
    events = events_of(transcode(sse(chunk({"role": "assistant", "content": ""}),
                                     chunk({}, "stop"), "[DONE]")))
    assert [n for n, _ in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert events[-1][1]["response"]["output"][0]["content"][0]["text"] == ""


def test_keepalive_comments_stay_comments() -> None:
    out = transcode(b": ping\n\n" + THINK_AND_SAY)
    assert out.startswith(b": ping\n\n") or b"\n\n: ping\n\n" in out
    assert events_of(out)[-1][0] == "response.completed"


def test_a_finished_stream_is_stored_and_a_failed_one_is_not() -> None:
    store = ResponseStore()
    completed = events_of(transcode(THINK_AND_SAY, store))[-1][1]["response"]
    failed = events_of(transcode(FAILS, store))[-1][1]["response"]
    kept = store.get("k", completed["id"])
    assert kept is not None and kept.response == completed
    assert kept.messages[-1] == {"role": "assistant", "content": "Hello, world",
                                 "reasoning_content": "The user greets."}
    assert store.get("k", failed["id"]) is None
