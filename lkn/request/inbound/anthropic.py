"""Anthropic's Messages API at lkn's edge (``POST /v1/messages``): the request as a canonical
chat body, the chat answer as an Anthropic message, OpenAI errors as Anthropic's. The messages'
content blocks are translated by ``anthropic_request`` (system messages, tool results,
documents: see there).

Decisions where Anthropic and the engines differ (llama-server's own ``/v1/messages`` differs
from both in places; see the client-apis notes, 4.4):

- ``tool_choice``: auto, any -> required, none, and tool -> the named function (llama-server
  drops the name); ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``, and tools
  without it get ``parallel_tool_calls: true`` (Anthropic allows parallel calls by default,
  llama-server does not).
- Anthropic's own tool types (server tools such as ``web_search_*`` and ``code_execution_*``,
  and the schema-less ``bash_*``, ``text_editor_*``, ``computer_*``, ``memory_*``) are a 400
  that says why and what to do instead: a local model can neither run nor know them.
- ``thinking``: enabled -> ``reasoning_effort`` from ``budget_tokens`` (under 4096 low, under
  16384 medium, else high), adaptive -> medium, disabled -> "none". ``output_config.effort``
  (low, medium, high, xhigh, max -> xhigh) overrides the effort ``thinking`` implies, except
  that disabled stays "none". lkn turns the effort into the template's ``enable_thinking``
  (false only for "none") and effort for local engines, and passes it on to remote ones. No
  ``thinking`` nor effort: the model's own default.
- ``max_tokens`` is a ceiling, not a demand (``answer_budget_binding``): Claude Code asks 32000
  of any model, so the context is sized by the prompt and the answer ends at the context's
  end with ``stop_reason: max_tokens``.
- ``stop_reason``: the chat answer does not say which stop sequence ended it (or whether one
  did), so "stop" is always ``end_turn`` with ``stop_sequence: null``.
- A ``context_length_exceeded`` error's message starts with "prompt is too long: ", the words
  Claude Code looks for before it compacts the conversation (not for the VRAM budget's
  refusal, which compacting cannot help).
"""
from __future__ import annotations

import uuid
from typing import Any

from lkn.engines.anthropic_blocks import (as_dict, count, error_type, openai_tool_choice,
                                          stop_reason, tool_input)
from lkn.errors import BadRequest
from lkn.request.inbound.anthropic_request import messages, obj, string
from lkn.request.inbound.anthropic_stream import AnthropicStream, error_message, message_id
from lkn.request.inbound.base import Inbound
from lkn.request.validate_formats import is_int, schema_problem

CHOICES = ("auto", "any", "tool", "none")
# output_config.effort -> reasoning_effort (OpenAI's scale ends at xhigh).
EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "xhigh"}
# Anthropic's tool types that run on Anthropic's servers, and those whose schema is built into
# Claude models (the client runs them, but only a Claude model knows their input).
SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_")
BUILTIN_TOOLS = ("bash_", "text_editor_", "computer_", "memory_")


def _budget_effort(budget: int) -> str:
    return "low" if budget < 4096 else "medium" if budget < 16384 else "high"


def _tool_type_error(kind: Any, name: Any, where: str) -> BadRequest:
    label = f"{where}: tool type {kind!r}" + (f" ({name!r})" if isinstance(name, str) else "")
    if isinstance(kind, str) and kind.startswith(SERVER_TOOLS):
        why = ("is a server tool that Anthropic's API runs; lkn's local models cannot run it. "
               "Remove it from tools, or declare a custom tool (with an input_schema) that "
               "your client runs")
    elif isinstance(kind, str) and kind.startswith(BUILTIN_TOOLS):
        why = ("is an Anthropic-defined tool whose schema only Claude models know; lkn's local "
               "models cannot use it. Declare it as a custom tool with an input_schema instead")
    else:
        why = "is not supported by lkn (only custom tools with an input_schema)"
    return BadRequest(f"{label} {why}.", param=f"{where}.type")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("tools: expected an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        obj(tool, where)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise _tool_type_error(kind, tool.get("name"), where)
        name = string(tool, "name", where)
        schema = tool.get("input_schema")
        problem = schema_problem(schema, f"{where}.input_schema") if schema is not None else \
            f"{where}.input_schema: field required"
        if problem or not isinstance(schema, dict):
            raise BadRequest(problem or f"{where}.input_schema must be an object",
                             param=f"{where}.input_schema")
        fn: dict[str, Any] = {"name": name, "parameters": schema}
        if tool.get("description") is not None:
            fn["description"] = string(tool, "description", where)
        if isinstance(tool.get("strict"), bool):
            fn["strict"] = tool["strict"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(body: dict[str, Any], names: list[str], out: dict[str, Any]) -> None:
    raw = body.get("tool_choice")
    choice = obj(raw, "tool_choice") if raw is not None else {"type": "auto"}
    kind = choice.get("type")
    if kind not in CHOICES:
        raise BadRequest(f"tool_choice.type: expected one of {', '.join(CHOICES)}, got "
                         f"{kind!r}", param="tool_choice.type")
    if kind == "tool":
        name = string(choice, "name", "tool_choice")
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
    kind = obj(raw, "thinking").get("type")
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


def _effort(body: dict[str, Any], max_tokens: Any) -> str | None:
    """The reasoning effort ``thinking`` and ``output_config.effort`` ask (None: neither)."""
    effort = _thinking(body, max_tokens)
    config = body.get("output_config")
    asked = obj(config, "output_config").get("effort") if config is not None else None
    if asked is None:
        return effort
    if not isinstance(asked, str) or asked not in EFFORTS:
        raise BadRequest(f"output_config.effort: expected one of {', '.join(EFFORTS)}, got "
                         f"{asked!r}", param="output_config.effort")
    return effort if effort == "none" else EFFORTS[asked]


def translate(body: dict[str, Any], *, need_max_tokens: bool = True) -> dict[str, Any]:
    """A Messages body as the canonical chat body (``need_max_tokens`` false: count_tokens)."""
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages(body)}
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
    effort = _effort(body, max_tokens)
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
        user = obj(metadata, "metadata").get("user_id")
        if user is not None:
            out["user"] = string(metadata, "user_id", "metadata")
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
    out_err: dict[str, Any] = {"type": error_type(status), "message": error_message(err)}
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
    # max_tokens is a ceiling: Claude Code asks 32000 of small local models too, so lkn sizes
    # the context by the prompt and the answer stops at its end (stop_reason max_tokens).
    answer_budget_binding = False

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
