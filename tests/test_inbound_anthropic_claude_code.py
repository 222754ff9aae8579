"""What Claude Code really sends lkn's Anthropic edge: system messages mid-conversation,
``output_config.effort``, documents, Anthropic's own tool types, and the "prompt is too long"
words it compacts on (tables; the official SDK reads the refusal)."""
from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import pytest
from aiohttp import web

from lkn.errors import BadRequest
from lkn.request.inbound.anthropic import AnthropicInbound, count_tokens_body
from lkn.request.inbound.base import Inbound
from lkn.request.validate import validate_chat

USER = [{"role": "user", "content": "hi"}]
IMG = {"type": "base64", "media_type": "image/png", "data": "iVBOR"}
IMG_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
PDF = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}


def body(**kw: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 32000, "messages": USER, **kw}


def canonical(b: dict[str, Any]) -> dict[str, Any]:
    out = AnthropicInbound().canonical(b)
    validate_chat(out)
    return out


def refused(b: dict[str, Any]) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        AnthropicInbound().canonical(b)
    assert info.value.status == 400
    return info.value


def sys(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def asst(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# ------------------------------------------------------------------ 1. system messages
@pytest.mark.parametrize("system, messages, expected", [
    # Claude Code >= 2.1.154: reminders mid-conversation join the leading system message
    ("You are Claude Code.", USER + [asst("ok"), sys("<reminder>"), *USER],
     [sys("You are Claude Code.\n\n<reminder>"), *USER, asst("ok"), *USER]),
    (None, USER + [sys("a"), asst("ok"), sys("b"), *USER],
     [sys("a\n\nb"), *USER, asst("ok"), *USER]),
    # system blocks join with "\n" (Anthropic's way), then each system message with "\n\n"
    ([{"type": "text", "text": "x"}, {"type": "text", "text": "y"}],
     [sys("first"), *USER, sys("later")], [sys("x\ny\n\nfirst\n\nlater"), *USER]),
    ([{"type": "text", "text": "x"}], [{"role": "system", "content": [
        {"type": "text", "text": "p"}, {"type": "text", "text": "q"}]}, *USER],
     [sys("x\n\np\nq"), *USER]),
    ("", USER + [sys("late")], [sys("late"), *USER]),
    ("only", USER, [sys("only"), *USER]),
])
def test_every_system_message_joins_the_first(system: Any, messages: list[Any],
                                              expected: list[Any]) -> None:
    b = body(messages=messages) if system is None else body(system=system, messages=messages)
    out = canonical(b)["messages"]
    assert out == expected
    assert [m["role"] for m in out].count("system") == 1 and out[0]["role"] == "system"


@pytest.mark.parametrize("content, param", [
    ([{"type": "image", "source": IMG}], "messages[1].content"),
    ("", "messages[1].content"),
    (5, "messages[1].content"),
])
def test_a_bad_system_message_is_a_400(content: Any, param: str) -> None:
    assert refused(body(messages=USER + [{"role": "system", "content": content}])).param == param


# ------------------------------------------------------------------ 2. output_config.effort
@pytest.mark.parametrize("extra, effort", [
    ({"output_config": {"effort": "low"}}, "low"),
    ({"output_config": {"effort": "medium"}}, "medium"),
    ({"output_config": {"effort": "high"}}, "high"),
    ({"output_config": {"effort": "xhigh"}}, "xhigh"),
    ({"output_config": {"effort": "max"}}, "xhigh"),
    # adaptive's default (medium) gives way to the effort asked
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low"),
    ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "xhigh"),
    ({"thinking": {"type": "enabled", "budget_tokens": 20000},
      "output_config": {"effort": "low"}}, "low"),
    # disabled thinking wins
    ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, "none"),
    # no effort asked: what thinking says, or nothing
    ({"thinking": {"type": "adaptive"}, "output_config": {}}, "medium"),
    ({"output_config": {"effort": None}}, None),
    ({"output_config": {"format": {"type": "json_schema", "schema": {}}}}, None),
])
def test_output_config_effort_is_the_reasoning_effort(extra: dict[str, Any],
                                                      effort: str | None) -> None:
    assert canonical(body(**extra)).get("reasoning_effort") == effort


@pytest.mark.parametrize("config, param", [
    ({"effort": "extreme"}, "output_config.effort"),
    ({"effort": "MAX"}, "output_config.effort"),
    ({"effort": 3}, "output_config.effort"),
    ("high", "output_config"),
])
def test_a_bad_effort_is_a_400(config: Any, param: str) -> None:
    for thinking in ({"type": "adaptive"}, {"type": "disabled"}):
        err = refused(body(thinking=thinking, output_config=config))
        assert err.param == param and param in err.message


def test_count_tokens_takes_output_config_too() -> None:
    out = count_tokens_body({"model": "m", "messages": USER, "output_config": {"effort": "max"}})
    assert out["reasoning_effort"] == "xhigh"


# ------------------------------------------------------------------ 3. documents
def doc(source: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "document", "source": source, **kw}


TEXT_SRC = {"type": "text", "media_type": "text/plain", "data": "line 1\nline 2"}
OMIT_PDF = "[document 'spec' (application/pdf) omitted: lkn's local models read no PDF]"


@pytest.mark.parametrize("block, parts", [
    (doc(TEXT_SRC), [{"type": "text", "text": "line 1\nline 2"}]),
    (doc(TEXT_SRC, title="notes.txt", context="ignored", citations={"enabled": True}),
     [{"type": "text", "text": "notes.txt\n\nline 1\nline 2"}]),
    (doc({"type": "content", "content": [{"type": "text", "text": "a"},
                                         {"type": "image", "source": IMG}]}, title="T"),
     [{"type": "text", "text": "T"}, {"type": "text", "text": "a"}, IMG_PART]),
    (doc({"type": "content", "content": "plain"}), [{"type": "text", "text": "plain"}]),
    (doc(PDF, title="spec"), [{"type": "text", "text": OMIT_PDF}]),
    (doc(PDF), [{"type": "text", "text": "[document (application/pdf) omitted: lkn's local "
                                         "models read no PDF]"}]),
    (doc({"type": "url", "url": "https://x/a.pdf"}, title="a"),
     [{"type": "text", "text": "[document 'a' (https://x/a.pdf) omitted: lkn fetches no "
                               "document]"}]),
    (doc({"type": "file", "file_id": "file_1"}),
     [{"type": "text", "text": "[document (a Files API file) omitted: lkn has no Files API]"}]),
])
def test_documents_in_a_user_message(block: dict[str, Any], parts: list[Any]) -> None:
    content = [block, {"type": "text", "text": "summarise"}]
    out = canonical(body(messages=[{"role": "user", "content": content}]))["messages"]
    assert out == [{"role": "user", "content": [*parts, {"type": "text", "text": "summarise"}]}]


def test_a_lone_text_document_is_a_plain_user_message() -> None:
    out = canonical(body(messages=[{"role": "user", "content": [doc(TEXT_SRC, title="t")]}]))
    assert out["messages"] == [{"role": "user", "content": "t\n\nline 1\nline 2"}]


def test_documents_in_a_tool_result() -> None:
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "text", "text": "read:"}, doc(TEXT_SRC, title="f"), doc(PDF, title="spec"),
        doc({"type": "content", "content": [{"type": "image", "source": IMG}]})]}
    history = [*USER, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "read", "input": {}}]},
        {"role": "user", "content": [result]}]
    out = canonical(body(messages=history))["messages"]
    assert out[2:] == [
        {"role": "tool", "tool_call_id": "t1",
         "content": f"read:\nf\n\nline 1\nline 2\n{OMIT_PDF}"},
        {"role": "user", "content": [IMG_PART]}]


@pytest.mark.parametrize("block, param, message", [
    (doc({}), "messages[0].content[0].source.type", "text, content, base64, url or file"),
    (doc({"type": "pdf"}), "messages[0].content[0].source.type", "got 'pdf'"),
    ({"type": "document"}, "messages[0].content[0].source", "expected an object"),
    (doc({"type": "text", "data": 5}), "messages[0].content[0].source.data", "string"),
    (doc(TEXT_SRC, title=5), "messages[0].content[0].title", "string"),
    (doc({"type": "content", "content": [{"type": "document", "source": TEXT_SRC}]}),
     "messages[0].content[0].source.content[0].type", "text and image blocks"),
    (doc({"type": "content", "content": 7}), "messages[0].content[0].source.content",
     "string or an array"),
])
def test_a_malformed_document_is_a_400(block: dict[str, Any], param: str, message: str) -> None:
    err = refused(body(messages=[{"role": "user", "content": [block]}]))
    assert err.param == param and re.search(message, err.message), err.message


# ------------------------------------------------------------------ 6. Anthropic's tool types
@pytest.mark.parametrize("kind, words", [
    ("web_search_20250305", "server tool that Anthropic's API runs"),
    ("web_fetch_20250910", "server tool that Anthropic's API runs"),
    ("code_execution_20250825", "server tool that Anthropic's API runs"),
    ("bash_20250124", "schema only Claude models know"),
    ("text_editor_20250728", "schema only Claude models know"),
    ("computer_20250124", "schema only Claude models know"),
    ("memory_20250818", "schema only Claude models know"),
    ("mcp_toolset", "not supported by lkn"),
])
def test_anthropics_tool_types_are_actionable_400s(kind: str, words: str) -> None:
    tools = [{"name": "ls", "input_schema": {"type": "object"}}, {"type": kind, "name": "x"}]
    err = refused(body(tools=tools))
    assert err.param == "tools[1].type"
    assert f"{kind!r} ('x')" in err.message and words in err.message
    assert "lkn's local models cannot" in err.message or "custom tools" in err.message


# ------------------------------------------------------------------ 4. prompt is too long
NEEDS = ("This request needs 40960 tokens (39000 in the prompt plus the answer budget), but the "
         "largest context of model 'm' that fits the VRAM budget holds 32768 tokens. Shorten "
         "the prompt or lower max_tokens.")
VRAM = "no variant of model 'm' fits the VRAM budget of 100 MiB (smallest needs 900 MiB)"


@pytest.mark.parametrize("err, message", [
    ({"code": "context_length_exceeded", "param": "messages", "message": NEEDS},
     "prompt is too long: " + NEEDS),
    ({"code": "context_length_exceeded", "message": "too many tokens"},
     "prompt is too long: too many tokens"),
    ({"code": "context_length_exceeded", "message": "prompt is too long: 9 tokens > 8"},
     "prompt is too long: 9 tokens > 8"),
    # the VRAM budget's refusal: compacting would not help
    ({"code": "context_length_exceeded", "param": "model", "message": VRAM}, VRAM),
    ({"code": "invalid_value", "message": NEEDS}, NEEDS),
    ({"code": None, "message": "nope"}, "nope"),
])
def test_a_prompt_no_context_holds_is_too_long(err: dict[str, Any], message: str) -> None:
    lkn = {"error": {"type": "invalid_request_error", "source": "lkn", **err}}
    whole = AnthropicInbound().error(400, lkn)
    assert whole["error"] == {"type": "invalid_request_error", "message": message,
                              "source": "lkn"}
    t = AnthropicInbound().transcoder()
    raw = t.feed(f"data: {json.dumps(lkn)}\n\n".encode()) + t.finish()
    name, data = raw.decode().strip().split("\n")
    assert name == "event: error"
    assert json.loads(data[6:])["error"] == {"type": "invalid_request_error",
                                             "message": message, "source": "lkn"}


async def test_the_sdk_sees_prompt_is_too_long(aiohttp_server: Any) -> None:
    inbound = AnthropicInbound()
    seen: list[dict[str, Any]] = []

    async def messages(request: web.Request) -> web.Response:
        seen.append(inbound.canonical(await request.json()))
        err = {"error": {"message": NEEDS, "type": "invalid_request_error",
                         "code": "context_length_exceeded", "param": "messages",
                         "source": "lkn"}}
        return web.json_response(inbound.error(400, err), status=400)

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    client = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="x",
                                      max_retries=0)
    try:
        with pytest.raises(anthropic.BadRequestError) as info:
            async with client.messages.stream(  # as Claude Code asks
                    model="claude-x", max_tokens=32000, messages=USER,  # type: ignore[arg-type]
                    thinking={"type": "adaptive"}, output_config={"effort": "high"}) as s:
                await s.get_final_message()
    finally:
        await client.close()
    assert "prompt is too long: This request needs 40960 tokens" in info.value.message
    assert seen[0]["reasoning_effort"] == "high" and seen[0]["stream"] is True


# ------------------------------------------------------------------ 5. the answer budget
def test_max_tokens_is_a_ceiling_for_anthropic_clients() -> None:
    assert AnthropicInbound.answer_budget_binding is False
    assert AnthropicInbound().answer_budget_binding is False
    assert Inbound("chat").answer_budget_binding is True
    assert canonical(body())["max_tokens"] == 32000  # still sent: the engine's ceiling
