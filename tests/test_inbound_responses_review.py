"""The Responses adapter's store and its handling of odd engine output: conversations age from
their last use, each owner has its share of the store, a streamed answer is stored whole, and
nothing an engine answers (a nameless call, deeply nested arguments) makes the adapter raise
after the engine answered. Deep or non-string ``metadata`` is a 400 before anything runs."""
from __future__ import annotations

import logging
from typing import Any

import pytest

from lkn import fastjson
from lkn.errors import BadRequest
from lkn.request.inbound.response_store import ResponseStore, StoredResponse
from lkn.request.inbound.responses import ResponsesInbound
from lkn.request.inbound.responses_stream import custom_input
from lkn.request.validate import validate_chat

M = "my-model"
WEATHER: Any = {"type": "function", "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
PATCH: Any = {"type": "custom", "name": "apply_patch"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def entry(text: str, previous: str | None = None) -> StoredResponse:
    return StoredResponse(({"role": "user", "content": text},), {"id": text}, previous)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else fastjson.dumps(e))
                    + b"\n\n" for e in events)


def call(index: int, id: str | None = None, name: str | None = None,
         arguments: str = "") -> dict[str, Any]:
    delta: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if id is not None:
        delta.update(id=id, type="function")
    if name is not None:
        delta["function"]["name"] = name
    return {"tool_calls": [delta]}


def streamed(raw: bytes, store: ResponseStore | None,
             tools: list[Any] | None = None) -> dict[str, Any]:
    """The final Response object of a streamed answer (events parsed back)."""
    adapter = ResponsesInbound(store=store, owner="k")
    adapter.canonical({"model": M, "input": "hi", "stream": True, "tools": tools or [WEATHER]})
    transcoder = adapter.transcoder()
    out = transcoder.feed(raw) + transcoder.finish()
    last = out.decode().strip().split("\n\n")[-1].split("\n")[1]
    response: dict[str, Any] = fastjson.loads(last[len("data: "):])["response"]
    return response


def whole(message: Any, store: ResponseStore | None, tools: list[Any] | None = None,
          finish: str = "tool_calls") -> dict[str, Any]:
    adapter = ResponsesInbound(store=store, owner="k")
    adapter.canonical({"model": M, "input": "hi", "tools": tools or [WEATHER]})
    return adapter.answer({"choices": [{"index": 0, "message": message,
                                        "finish_reason": finish}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1}})


def follow_up(store: ResponseStore, response_id: str, call_id: str) -> list[dict[str, Any]]:
    """The canonical messages of a request answering ``call_id`` of a stored response."""
    body = ResponsesInbound(store=store, owner="k").canonical({
        "model": M, "previous_response_id": response_id, "tools": [WEATHER],
        "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]})
    validate_chat(body)
    messages: list[dict[str, Any]] = body["messages"]
    return messages


# ---------------------------------------------------------------- 1. age counts from the last use
@pytest.mark.parametrize("uses, at, alive", [
    ([], 99, True),
    ([], 100, False),  # nothing used it for 100 s
    ([("walk", "2", 80)], 150, True),  # a walk refreshes every link: 70 s idle
    ([("walk", "2", 80), ("walk", "2", 160)], 250, True),  # in use: lives on
    ([("walk", "2", 80)], 180, False),
    ([("get", "2", 80)], 150, False),  # a get refreshes the head only: link 1 expired
    ([("walk", "1", 80)], 150, False),  # walking the first turn does not refresh the second
])
def test_a_conversation_expires_max_age_after_its_last_use(
        uses: list[tuple[str, str, float]], at: float, alive: bool) -> None:
    clock = Clock()
    store = ResponseStore(10, 100, clock)
    store.put("a", "1", entry("1"))
    store.put("a", "2", entry("2", "1"))
    for kind, rid, when in uses:
        clock.now = when
        found = store.conversation("a", rid) if kind == "walk" else store.get("a", rid)
        assert found is not None
    clock.now = at
    store.put("b", "x", entry("x"))  # a write drops what is expired at the old end
    assert (store.conversation("a", "2") is not None) is alive


# ---------------------------------------------------------------- 6. walks refresh oldest first
@pytest.mark.parametrize("walk, evicted", [
    ("3", "1"),  # the head is the most recently used; the first turn the least
    ("2", "3"),  # 3 was not walked: it is the least recently used
])
def test_a_walk_refreshes_its_links_oldest_to_newest(walk: str, evicted: str) -> None:
    store = ResponseStore(3, 60, owner_share=1)
    store.put("a", "1", entry("1"))
    store.put("a", "2", entry("2", "1"))
    store.put("a", "3", entry("3", "2"))
    assert store.conversation("a", walk) is not None
    store.put("a", "x", entry("x"))
    assert [i for i in "123" if store.get("a", i) is None] == [evicted]


@pytest.mark.parametrize("turns, whole", [(4, True), (5, False)])
def test_a_chain_is_at_most_the_owner_share_of_entries_long(turns: int, whole: bool) -> None:
    store = ResponseStore(8, 60)  # an owner's share: 4 entries
    previous: str | None = None
    for n in range(turns):
        store.put("a", str(n), entry(str(n), previous))
        previous = str(n)
    assert previous is not None
    assert (store.conversation("a", previous) is not None) is whole


# ---------------------------------------------------------------- 4. per-owner shares
SIZE = entry("a1").size()


@pytest.mark.parametrize("kwargs, steps, present", [
    # max 4 entries, an owner's share 2: a's puts evict a's own oldest, never b's
    ({"max_entries": 4}, ["b1", "b2", "a1", "a2", "a3", "a4", "a5"],
     ["b1", "b2", "a4", "a5"]),
    # the same by bytes
    ({"max_entries": 100, "max_bytes": 4 * SIZE}, ["b1", "b2", "a1", "a2", "a3", "a4", "a5"],
     ["b1", "b2", "a4", "a5"]),
    # a share of all: the global bound alone, least recently used first whoever owns it
    ({"max_entries": 4, "owner_share": 1}, ["b1", "b2", "a1", "a2", "a3", "a4", "a5"],
     ["a2", "a3", "a4", "a5"]),
    # a use counts within the share too
    ({"max_entries": 4}, ["a1", "a2", "get a1", "a3"], ["a1", "a3"]),
    # the global bound is the last resort: three owners of 2 each in 4 entries
    ({"max_entries": 4}, ["a1", "a2", "b1", "b2", "c1"], ["a2", "b1", "b2", "c1"]),
])
def test_each_owner_is_bounded_by_its_share(kwargs: dict[str, Any], steps: list[str],
                                            present: list[str]) -> None:
    store = ResponseStore(max_age_s=60, **kwargs)
    for step in steps:
        if step.startswith("get "):
            name = step[4:]
            assert store.get(name[0], name) is not None
        else:
            store.put(step[0], step, entry(step))
    names = {s[-2:] for s in steps}
    assert sorted(n for n in names if store.get(n[0], n) is not None) == sorted(present)


def test_an_entry_larger_than_its_owners_share_is_not_kept() -> None:
    store = ResponseStore(100, 60, max_bytes=4 * SIZE)
    store.put("a", "a1", entry("a1"))
    store.put("a", "big", entry("x" * 3 * SIZE))  # fits the store, not a's half
    assert store.get("a", "big") is None and store.get("a", "a1") is not None


@pytest.mark.parametrize("share", [0, -1, 1.5])
def test_the_owner_share_is_a_fraction(share: float) -> None:
    with pytest.raises(ValueError):
        ResponseStore(owner_share=share)


# ---------------------------------------------------------------- 2. a streamed answer stored whole
CALL_C1 = {"id": "c1", "type": "function",
           "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}


@pytest.mark.parametrize("raw, stored", [
    # text, a call, text again
    (sse(chunk({"role": "assistant", "content": "Let me check."}),
         chunk(call(0, "c1", "get_weather", "{\"city\":")), chunk(call(0, None, None, "\"Oslo\"}")),
         chunk({"content": "Done."}), chunk({}, "tool_calls"), "[DONE]"),
     {"role": "assistant", "content": "Let me check.\nDone.", "tool_calls": [CALL_C1]}),
    # message, reasoning, message
    (sse(chunk({"content": "a"}), chunk({"reasoning_content": "r"}), chunk({"content": "b"}),
         chunk({}, "stop"), "[DONE]"),
     {"role": "assistant", "content": "a\nb", "reasoning_content": "r"}),
    # reasoning, text, a call, reasoning, text
    (sse(chunk({"reasoning_content": "r1"}), chunk({"content": "a"}),
         chunk(call(0, "c1", "get_weather", "{\"city\":\"Oslo\"}")),
         chunk({"reasoning_content": "r2"}), chunk({"content": "b"}), chunk({}, "stop"),
         "[DONE]"),
     {"role": "assistant", "content": "a\nb", "reasoning_content": "r1\nr2",
      "tool_calls": [CALL_C1]}),
    # a call alone: no content
    (sse(chunk(call(0, "c1", "get_weather", "{\"city\":\"Oslo\"}")), chunk({}, "tool_calls"),
         "[DONE]"),
     {"role": "assistant", "content": None, "tool_calls": [CALL_C1]}),
])
def test_a_streamed_answer_is_stored_as_one_whole_assistant_message(
        raw: bytes, stored: dict[str, Any]) -> None:
    store = ResponseStore()
    response = streamed(raw, store)
    kept = store.get("k", response["id"])
    assert kept is not None
    assert kept.messages == ({"role": "user", "content": "hi"}, stored)
    if "tool_calls" in stored:  # the next turn answers the call: the engine sees it made
        messages = follow_up(store, response["id"], "c1")
        assert messages[-2]["tool_calls"][0]["id"] == "c1"
        assert messages[-1] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}


# ---------------------------------------------------------------- 3. odd engine output never raises
NAMELESS = [
    {"content": None, "tool_calls": [{"id": "c1", "function": {"arguments": "{}"}}]},
    {"content": None, "tool_calls": [{"id": "c1", "function": None}]},
    {"content": None, "tool_calls": [{"id": "c1", "type": "function",
                                      "function": {"name": None, "arguments": None}}]},
]


@pytest.mark.parametrize("message", NAMELESS)
def test_a_nameless_call_is_answered_as_built_and_stored_as_unknown(
        message: dict[str, Any]) -> None:
    store = ResponseStore()
    response = whole(message, store)
    assert [(i["type"], i["name"], i["call_id"]) for i in response["output"]] == [
        ("function_call", "", "c1")]
    kept = store.get("k", response["id"])
    assert kept is not None
    assert kept.messages[-1]["tool_calls"][0]["function"]["name"] == "unknown"
    assert follow_up(store, response["id"], "c1")[-2]["tool_calls"][0]["id"] == "c1"


def test_a_streamed_nameless_call_is_answered_and_stored_as_unknown() -> None:
    store = ResponseStore()
    response = streamed(sse(chunk(call(0, "c1", None, "{}")), chunk({}, "tool_calls"),
                            "[DONE]"), store)
    assert response["status"] == "completed"
    assert [(i["type"], i["name"]) for i in response["output"]] == [("function_call", "")]
    kept = store.get("k", response["id"])
    assert kept is not None
    assert kept.messages[-1]["tool_calls"][0]["function"]["name"] == "unknown"


class Broken(ResponseStore):
    def put(self, owner: str, response_id: str, entry: StoredResponse) -> None:
        raise RuntimeError("the store broke")


def test_a_failure_to_store_is_logged_and_the_answer_still_goes_out(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lkn.request.inbound.responses"):
        response = whole({"content": "hello"}, Broken(), finish="stop")
        final = streamed(sse(chunk({"content": "hello"}), chunk({}, "stop"), "[DONE]"),
                         Broken())
    assert response["output"][0]["content"][0]["text"] == "hello"
    assert final["status"] == "completed"
    assert [r.name for r in caplog.records if r.levelno == logging.WARNING] == [
        "lkn.request.inbound.responses"] * 2


DEEP = "[" * 5000
ODD_MESSAGES: list[Any] = [
    None, "text", [], {"content": 5, "reasoning_content": ["x"]},
    {"tool_calls": {"not": "a list"}}, {"tool_calls": [None, 3, "x"]},
    {"tool_calls": [{"id": 7, "function": {"name": 5, "arguments": {"a": 1}}}]},
    {"tool_calls": [{"id": "", "function": {"name": "apply_patch", "arguments": DEEP}}]},
    {"tool_calls": [{"id": "c", "function": {"name": "apply_patch", "arguments": "\ud800"}}]},
    {"content": "\ud800 broken", "tool_calls": [{"function": {"name": "get_weather"}}]},
]


@pytest.mark.parametrize("message", ODD_MESSAGES)
def test_odd_whole_answers_never_raise(message: Any) -> None:
    store = ResponseStore()
    response = whole(message, store, tools=[WEATHER, PATCH])
    assert response["output"] and fastjson.dumps(response)
    assert store.get("k", response["id"]) is not None


ODD_STREAMS = [
    sse({"choices": "x"}, {"choices": [None]}, {"choices": [{"delta": []}]},
        {"choices": [{"delta": {"content": 3, "tool_calls": [None, {"index": "x"}]}}]},
        {"choices": [], "usage": {"prompt_tokens": "many"}}, chunk({}, 5), "[DONE]"),
    sse(chunk({"tool_calls": [{"index": True, "id": 5, "function": None}]}),
        chunk({"tool_calls": [{"index": -1, "function": {"name": 3, "arguments": 4}}]}),
        chunk({}, "tool_calls"), "[DONE]"),
    sse(chunk(call(0, "c", "apply_patch", DEEP)), chunk({}, "tool_calls"), "[DONE]"),
    sse(chunk(call(0, "c", "apply", "{}")), chunk(call(0, None, "_patch", DEEP)),
        chunk({"content": "after"}), "[DONE]"),
    sse(chunk({"reasoning_content": "only thinking"})),  # cut: no finish, no [DONE]
]


@pytest.mark.parametrize("raw", ODD_STREAMS)
def test_odd_streams_never_raise(raw: bytes) -> None:
    response = streamed(raw, ResponseStore(), tools=[WEATHER, PATCH])
    assert response["status"] in ("completed", "failed")


# ---------------------------------------------------------------- 5. deep engine JSON
@pytest.mark.parametrize("arguments, expected", [
    ('{"input": "x"}', "x"),
    (DEEP, DEEP),  # a RecursionError in the parser: the arguments as they are
    ('{"input": ' + "[" * 5000 + "]" * 5000 + "}", '{"input": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("not json", "not json"),
])
def test_custom_input_survives_any_arguments(arguments: str, expected: str) -> None:
    assert custom_input(arguments) == expected


# ---------------------------------------------------------------- 7. metadata
def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("body", [
    {"metadata": nested(1000)},
    {"metadata": {"a": 1}},
    {"metadata": {"a": {"b": "c"}}},
    {"metadata": {str(n): "v" for n in range(17)}},
    {"metadata": {"a": "v" * 513}},
    {"metadata": {"k" * 65: "v"}},
    {"metadata": ["a"]},
    {"reasoning": {"summary": nested(1000)}},
    {"truncation": nested(1000)},
])
def test_metadata_is_a_small_map_of_strings(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as caught:
        ResponsesInbound(store=None, owner="k").canonical({"model": M, "input": "hi", **body})
    assert caught.value.param == next(iter(body)) or caught.value.param == "reasoning.summary"


def test_valid_metadata_is_echoed() -> None:
    metadata = {str(n): "v" * 512 for n in range(16)}
    adapter = ResponsesInbound(store=None, owner="k")
    adapter.canonical({"model": M, "input": "hi", "metadata": metadata})
    response = adapter.answer({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]})
    assert response["metadata"] == metadata and fastjson.dumps(response)
