"""Anthropic's Messages API at lkn's edge (``POST /v1/messages``): the request as a canonical
chat body, the chat answer as an Anthropic message, OpenAI errors as Anthropic's.

Decisions where Anthropic and the engines differ (llama-server's own ``/v1/messages`` differs
from both in places; see the client-apis notes, 4.4):

- ``system`` (a string or text blocks, joined with "\\n" as Anthropic and SGLang do) becomes the
  first system message; a mid-conversation ``system`` role message stays a system message.
- A user message's ``tool_result`` blocks become ``tool`` messages placed before the rest of that
  message (OpenAI wants them right after the assistant's calls). Their text is the tool
  message's content; their images go into the user message that follows, since engines take
  images in user messages only. ``is_error: true`` prefixes the text with "Error: " (chat has
  no flag for it, and the model should know the call failed).
- ``thinking`` blocks in an assistant's history become ``reasoning_content`` (templates that
  render past thinking use it); ``redacted_thinking`` is dropped: it is Anthropic's ciphertext.
- ``tool_choice``: auto, any -> required, none, and tool -> the named function (llama-server
  drops the name); ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``, and tools
  without it get ``parallel_tool_calls: true`` (Anthropic allows parallel calls by default,
  llama-server does not).
- ``thinking``: enabled -> ``reasoning_effort`` from ``budget_tokens`` (under 4096 low, under
  16384 medium, else high), adaptive -> medium, disabled -> "none". lkn turns the effort into
  the template's ``enable_thinking`` (false only for "none") and effort for local engines, and
  passes it on to remote ones. No ``thinking`` field: the model's own default.
- ``stop_reason``: the chat answer does not say which stop sequence ended it (or whether one
  did), so "stop" is always ``end_turn`` with ``stop_sequence: null``.
- Other block types (document, search_result, server tools' blocks) and non-custom tools are a
  400 naming them: there is nothing on the chat side that could carry them.
"""
from __future__ import annotations

import json
import uuid
from typing import Any

from lkn.engines.anthropic_blocks import (as_dict, count, error_type, image_url,
                                          openai_tool_choice, stop_reason, tool_input)
from lkn.errors import BadRequest
from lkn.request.inbound.anthropic_stream import AnthropicStream, message_id
from lkn.request.inbound.base import Inbound
from lkn.request.validate_formats import is_int, schema_problem

CHOICES = ("auto", "any", "tool", "none")


def _budget_effort(budget: int) -> str:
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object", param=where)
    return value


def _str(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{where}.{key}: expected a string", param=f"{where}.{key}")
    return value


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}: expected a string or an array of content blocks",
                         param=where)
    return [_obj(b, f"{where}[{j}]") for j, b in enumerate(content)]


def _system_text(content: Any, where: str) -> str:
    parts = []
    for j, block in enumerate(_blocks(content, where)):
        if block.get("type") != "text":
            raise BadRequest(f"{where}[{j}]: system content must be text blocks, got "
                             f"{block.get('type')!r}", param=where)
        parts.append(_str(block, "text", f"{where}[{j}]"))
    return "\n".join(parts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = _obj(block.get("source"), f"{where}.source")
    url = image_url(source)
    if url is None:
        raise BadRequest(f"{where}.source: expected {{type: base64, media_type, data}} or "
                         f"{{type: url, url}}", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[Any]]:
    """A tool_result block as a tool message, and the images it carried."""
    call_id = _str(block, "tool_use_id", where)
    content = block.get("content", "")
    texts, images = [], []
    for j, part in enumerate(_blocks(content, f"{where}.content")):
        kind = part.get("type")
        if kind == "text":
            texts.append(_str(part, "text", f"{where}.content[{j}]"))
        elif kind == "image":
            images.append(_image_part(part, f"{where}.content[{j}]"))
        else:
            raise BadRequest(f"{where}.content[{j}]: a tool_result holds text and image "
                             f"blocks, got {kind!r}", param=f"{where}.content")
    text = "\n".join(texts)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise BadRequest(f"{where}.is_error: expected a boolean", param=f"{where}.is_error")
    if is_error and not text.lower().startswith("error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at, kind = f"{where}.content[{j}]", block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": _str(block, "text", at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "tool_result":
            message, images = _tool_result(block, at)
            tools.append(message)
            parts.extend(images)
        else:
            raise _unknown(kind, at, "user")
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant(content: Any, where: str) -> dict[str, Any]:
    texts, thinking, calls = [], [], []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at, kind = f"{where}.content[{j}]", block.get("type")
        if kind == "text":
            texts.append(_str(block, "text", at))
        elif kind == "thinking":
            thinking.append(_str(block, "thinking", at))
        elif kind == "redacted_thinking":
            continue  # Anthropic's ciphertext: nothing a local model can read
        elif kind == "tool_use":
            name = _str(block, "name", at)
            args = block.get("input", {})
            if not isinstance(args, dict):
                raise BadRequest(f"{at}.input: expected an object", param=f"{at}.input")
            calls.append({"id": _str(block, "id", at), "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args)}})
        else:
            raise _unknown(kind, at, "assistant")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _unknown(kind: Any, where: str, role: str) -> BadRequest:
    return BadRequest(f"{where}: content block type {kind!r} is not supported in a {role} "
                      f"message by lkn", param=f"{where}.type")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("messages: field required", param="messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: expected an array of messages", param="messages")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = _system_text(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = _obj(m, where).get("role")
        content = m.get("content")
        if content is None:
            raise BadRequest(f"{where}.content: field required", param=f"{where}.content")
        if content in ("", []) and not (role == "assistant" and i == len(messages) - 1):
            raise BadRequest(f"{where}: all messages must have non-empty content except for "
                             f"the optional final assistant message", param=f"{where}.content")
        if role == "user":
            out.extend(_user(content, where))
        elif role == "assistant":
            out.append(_assistant(content, where))
        elif role == "system":
            out.append({"role": "system", "content": _system_text(content, f"{where}.content")})
        else:
            raise BadRequest(f"{where}.role: expected 'user' or 'assistant', got {role!r}",
                             param=f"{where}.role")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools: expected an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        _obj(tool, where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(f"{where}: tool type {kind!r} is not supported by lkn (only "
                             f"custom tools with an input_schema)", param=f"{where}.type")
        name = _str(tool, "name", where)
        schema = tool.get("input_schema")
        problem = schema_problem(schema, f"{where}.input_schema") if schema is not None else \
            f"{where}.input_schema: field required"
        if problem or not isinstance(schema, dict):
            raise BadRequest(problem or f"{where}.input_schema must be an object",
                             param=f"{where}.input_schema")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if tool.get("description") is not None:
            fn["description"] = _str(tool, "description", where)
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(body: dict[str, Any], names: list[str], out: dict[str, Any]) -> None:
    raw = body.get("tool_choice")
    choice = _obj(raw, "tool_choice") if raw is not None else {"type": "auto"}
    kind = choice.get("type")
    if kind not in CHOICES:
        raise BadRequest(f"tool_choice.type: expected one of {', '.join(CHOICES)}, got "
                         f"{kind!r}", param="tool_choice.type")
    if kind == "tool":
        name = _str(choice, "name", "tool_choice")
        if name not in names:
            raise BadRequest(f"tool_choice.name: no tool named {name!r} in tools",
                             param="tool_choice.name")
    disable = choice.get("disable_parallel_tool_use", False)
    if not isinstance(disable, bool):
        raise BadRequest("tool_choice.disable_parallel_tool_use: expected a boolean",
                         param="tool_choice.disable_parallel_tool_use")
    if not names:
        if kind in ("any", "tool"):
            raise BadRequest(f"tool_choice.type {kind!r} needs tools", param="tool_choice")
        return
    if raw is not None:
        out["tool_choice"] = openai_tool_choice(choice)
    out["parallel_tool_calls"] = not disable


def _thinking(body: dict[str, Any], max_tokens: Any) -> str | None:
    raw = body.get("thinking")
    if raw is None:
        return None
    kind = _obj(raw, "thinking").get("type")
    if kind == "disabled":
        return "none"
    if kind == "adaptive":
        return "medium"
    if kind != "enabled":
        raise BadRequest(f"thinking.type: expected enabled, adaptive or disabled, got {kind!r}",
                         param="thinking.type")
    budget = raw.get("budget_tokens")
    if not is_int(budget) or budget < 1024:
        raise BadRequest(f"thinking.budget_tokens: expected an integer of at least 1024, got "
                         f"{budget!r}", param="thinking.budget_tokens")
    if is_int(max_tokens) and budget >= max_tokens:
        raise BadRequest("max_tokens must be greater than thinking.budget_tokens",
                         param="max_tokens")
    return _budget_effort(budget)


def translate(body: dict[str, Any], *, need_max_tokens: bool = True) -> dict[str, Any]:
    """A Messages body as the canonical chat body (``need_max_tokens`` false: count_tokens)."""
    out: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    max_tokens = body.get("max_tokens")
    if max_tokens is None and need_max_tokens:
        raise BadRequest("max_tokens: field required", param="max_tokens")
    if max_tokens is not None:
        if not is_int(max_tokens) or max_tokens < 1:
            raise BadRequest(f"max_tokens: expected a positive integer, got {max_tokens!r}",
                             param="max_tokens")
        out["max_tokens"] = max_tokens
    tools = _tools(body["tools"]) if body.get("tools") is not None else []
    if tools:
        out["tools"] = tools
    _tool_choice(body, [t["function"]["name"] for t in tools], out)
    effort = _thinking(body, max_tokens)
    if effort is not None:
        out["reasoning_effort"] = effort
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop_sequences: expected an array of strings",
                             param="stop_sequences")
        if stop:
            out["stop"] = stop
    for key in ("temperature", "top_p", "top_k", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(
            temperature, bool) or not 0 <= temperature <= 1):
        raise BadRequest(f"temperature: expected a number from 0 to 1, got {temperature!r}",
                         param="temperature")
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise BadRequest(f"top_k: expected a non-negative integer, got {top_k!r}",
                         param="top_k")
    metadata = body.get("metadata")
    if metadata is not None:
        user = _obj(metadata, "metadata").get("user_id")
        if user is not None:
            out["user"] = _str(metadata, "user_id", "metadata")
    if out.get("stream") is True:
        out["stream_options"] = {"include_usage": True}
    return out


def count_tokens_body(body: dict[str, Any]) -> dict[str, Any]:
    """A ``/v1/messages/count_tokens`` body (no ``max_tokens``) as the chat body to count."""
    out = translate(body, need_max_tokens=False)
    out.pop("stream", None)
    out.pop("stream_options", None)
    return out


def message(obj: dict[str, Any], model: str) -> dict[str, Any]:
    """A ``chat.completion`` as an Anthropic message."""
    choices = obj.get("choices")
    choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
    msg = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    calls = msg.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        fn = as_dict(call).get("function")
        if isinstance(fn, dict):
            content.append({"type": "tool_use", "id": str(call.get("id") or
                                                          "toolu_" + uuid.uuid4().hex[:24]),
                            "name": str(fn.get("name", "")),
                            "input": tool_input(fn.get("arguments"))})
    usage = as_dict(obj.get("usage"))
    return {"id": message_id(obj.get("id")), "type": "message", "role": "assistant",
            "model": model, "content": content,
            "stop_reason": stop_reason(choice.get("finish_reason"),
                                       any(b["type"] == "tool_use" for b in content)),
            "stop_sequence": None,
            "usage": {"input_tokens": count(usage.get("prompt_tokens")),
                      "output_tokens": count(usage.get("completion_tokens"))}}


def error_body(status: int, body: dict[str, Any]) -> dict[str, Any]:
    err = body.get("error")
    err = err if isinstance(err, dict) else {"message": str(err or body)}
    out_err: dict[str, Any] = {"type": error_type(status),
                               "message": str(err.get("message") or "error")}
    if err.get("source") is not None:
        out_err["source"] = err["source"]
    out: dict[str, Any] = {"type": "error", "error": out_err}
    if err.get("request_id"):
        out["request_id"] = err["request_id"]
    return out


class AnthropicInbound(Inbound):
    """One ``/v1/messages`` request (see the module's docstring)."""
    api = "anthropic"
    stream_content_type = "text/event-stream"

    def __init__(self) -> None:
        super().__init__("chat")
        self.model = ""

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        out = translate(body)
        self.model = out["model"] if isinstance(out["model"], str) else ""
        return out

    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        return message(obj, self.model or str(obj.get("model") or ""))

    def transcoder(self) -> AnthropicStream:
        return AnthropicStream(self.model)

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return error_body(status, body)
