"""Anthropic's Messages API as an upstream, translated both ways (pure, tested by tables), so an
OpenAI SDK client (or agent traffic escalated or falling back to Claude) can be answered by
Anthropic: requests to ``/v1/messages``, answers and event streams back into
``chat.completion`` objects and chunks.

Translated: system and developer messages (into ``system``), user and assistant messages with
text and image parts (``data:`` URLs become base64 sources, http(s) URLs url sources),
``max_tokens`` / ``max_completion_tokens`` (required by Anthropic: the model's
``default_max_tokens`` when absent), ``stop`` into ``stop_sequences``, ``temperature``,
``top_p``, ``top_k``, ``user`` into ``metadata.user_id``; function ``tools``, ``tool_choice``
(auto, none, required -> any, a named function -> tool) and ``parallel_tool_calls: false``
(``disable_parallel_tool_use``); an assistant's ``tool_calls`` become ``tool_use`` blocks
(arguments that are not a JSON object become ``{}``) and ``tool`` messages ``tool_result``
blocks in a user message; consecutive messages of one role are merged into one (consecutive tool
results, or tool results and the user's next words), as Anthropic wants roles to alternate. An
assistant's ``reasoning_content`` is dropped: Anthropic takes thinking back only with its own
signature. Back: text, ``thinking`` as ``reasoning_content``, ``tool_use`` blocks as
``tool_calls`` (whole and streamed: a tool_use block start is a tool call's id and name, its
``input_json_delta`` fragments its arguments), the stop reason as ``finish_reason``, usage, and
errors (Anthropic's ``{"type": "error", "error": {...}}`` has the OpenAI fields already).
Not translated (a 400 says so): legacy ``functions``, non-function tools, other media, ``n`` > 1,
logprobs, ``response_format``.
"""
from __future__ import annotations

import json
import time
from typing import Any

from lkn.engines.anthropic_blocks import FINISH, anthropic_tool_choice, image_source, tool_input
from lkn.errors import BadRequest

__all__ = ["VERSION", "FINISH", "UNSUPPORTED", "to_messages_request", "from_message",
           "StreamTranslator"]

VERSION = "2023-06-01"  # the anthropic-version header
UNSUPPORTED = ("functions", "logprobs", "top_logprobs", "response_format")


def _blocks(content: Any, where: str, *, images: bool) -> list[dict[str, Any]]:
    """Message content as Anthropic blocks (text, and images where the role may carry them)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}: content must be a string or an array of parts",
                         param="messages")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url" and images:
            blocks.append(_image(part, f"{where}.content[{j}]"))
        else:
            raise BadRequest(f"{where}.content[{j}]: a {kind!r} part cannot go to an Anthropic "
                             f"upstream (text{' and image_url' if images else ''} only)",
                             param="messages")
    return blocks


def _image(part: dict[str, Any], where: str) -> dict[str, Any]:
    media = part.get("image_url")
    url = media.get("url") if isinstance(media, dict) else media
    source = image_source(url) if isinstance(url, str) else None
    if source is None:
        raise BadRequest(f"{where}: an image for an Anthropic upstream must be a data: URL "
                         f"(base64) or an http(s) URL", param="messages")
    return {"type": "image", "source": source}


def _text(content: Any, where: str) -> str:
    return "".join(b["text"] for b in _blocks(content, where, images=False))


def _tool_uses(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise BadRequest(f"{where}.tool_calls must be an array", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.tool_calls[{j}] must be a function call with a name",
                             param="messages")
        assert isinstance(call, dict) and isinstance(fn, dict)
        out.append({"type": "tool_use", "id": str(call.get("id") or f"toolu_{j}"),
                    "name": name, "input": tool_input(fn.get("arguments"))})
    return out


def _message(m: Any, i: int) -> tuple[str, list[dict[str, Any]]]:
    """One OpenAI message as (Anthropic role or "system", blocks)."""
    where = f"messages[{i}]"
    role = m.get("role") if isinstance(m, dict) else None
    if role in ("system", "developer"):
        return "system", [{"type": "text", "text": _text(m.get("content"), where)}]
    if role == "user":
        return "user", _blocks(m.get("content"), where, images=True) or \
            [{"type": "text", "text": ""}]
    if role == "assistant":
        text = [b for b in _blocks(m.get("content"), where, images=False) if b["text"]]
        blocks = text + _tool_uses(m, where)
        return "assistant", blocks or [{"type": "text", "text": ""}]
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise BadRequest(f"{where}: a tool message needs its tool_call_id",
                             param="messages")
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
        output = _text(m.get("content"), where)
        if output:  # an empty result is no content, not an empty text block
            result["content"] = output
        return "user", [result]
    raise BadRequest(f"{where}.role '{role}' has no Anthropic equivalent", param="messages")


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise BadRequest("'tools' must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or \
                not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"tools[{i}]: only function tools (with a name) can go to an "
                             f"Anthropic upstream", param="tools")
        params = fn.get("parameters")
        entry: dict[str, Any] = {"name": fn["name"], "input_schema": params if isinstance(
            params, dict) else {"type": "object", "properties": {}}}
        if isinstance(fn.get("description"), str):
            entry["description"] = fn["description"]
        out.append(entry)
    return out


def to_messages_request(body: dict[str, Any], model: str,
                        default_max_tokens: int) -> dict[str, Any]:
    for key in UNSUPPORTED:
        if body.get(key):
            raise BadRequest(f"'{key}' is not translated to Anthropic's Messages API by lkn",
                             param=key)
    if (body.get("n") or 1) != 1:
        raise BadRequest("Anthropic's Messages API answers one choice: 'n' must be 1",
                         param="n")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(body.get("messages") or []):
        role, blocks = _message(m, i)
        if role == "system":
            system.append(blocks[0]["text"])
        elif messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)  # roles must alternate
        else:
            messages.append({"role": role, "content": blocks})
    out: dict[str, Any] = {
        "model": model, "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or default_max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for key in ("temperature", "top_p", "top_k", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
        choice: dict[str, Any] = {"type": "auto"}
        if body.get("tool_choice") is not None:
            translated = anthropic_tool_choice(body["tool_choice"])
            if translated is None:
                raise BadRequest(f"tool_choice {body['tool_choice']!r} has no Anthropic "
                                 f"equivalent", param="tool_choice")
            choice = translated
        if body.get("parallel_tool_calls") is False and choice["type"] != "none":
            choice = {**choice, "disable_parallel_tool_use": True}
        if body.get("tool_choice") is not None or len(choice) > 1:
            out["tool_choice"] = choice
    return out


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def from_message(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic message as an OpenAI ``chat.completion``."""
    blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    thinking = "".join(str(b.get("thinking", "")) for b in blocks if b.get("type") == "thinking")
    calls = [{"id": str(b.get("id", "")), "type": "function",
              "function": {"name": str(b.get("name", "")),
                           "arguments": json.dumps(b.get("input") or {})}}
             for b in blocks if b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if thinking:
        message["reasoning_content"] = thinking
    if calls:
        message["tool_calls"] = calls
    usage = data.get("usage") or {}
    return {"id": f"chatcmpl-{data.get('id', '')}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": FINISH.get(str(data.get("stop_reason")), "stop"),
                         "logprobs": None}],
            "usage": _usage(int(usage.get("input_tokens") or 0),
                            int(usage.get("output_tokens") or 0))}


class StreamTranslator:
    """Anthropic stream events in, OpenAI chunks (and the end) out."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-anthropic"
        self.created = int(time.time())
        self.input_tokens = 0
        self.output_tokens = 0
        self.done = False
        self.tool_index: dict[int, int] = {}  # a tool_use block's index -> its tool call index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": finish}]}

    def _block_start(self, event: dict[str, Any]) -> list[dict[str, Any] | str]:
        block = event.get("content_block") or {}
        if block.get("type") != "tool_use":
            return []
        index = len(self.tool_index)
        self.tool_index[int(event.get("index") or 0)] = index
        return [self._chunk({"tool_calls": [{
            "index": index, "id": str(block.get("id", "")), "type": "function",
            "function": {"name": str(block.get("name", "")), "arguments": ""}}]})]

    def _block_delta(self, event: dict[str, Any]) -> list[dict[str, Any] | str]:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "input_json_delta":
            index = self.tool_index.get(int(event.get("index") or 0))
            if index is None or not delta.get("partial_json"):
                return []
            return [self._chunk({"tool_calls": [{"index": index, "function": {
                "arguments": str(delta["partial_json"])}}]})]
        return []  # signature_delta, citations_delta

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any] | str]:
        """One decoded event; the OpenAI payloads to send (dicts, or "[DONE]")."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', 'anthropic')}"
            self.input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            self.output_tokens = int((event.get("usage") or {}).get("output_tokens") or 0)
            reason = (event.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, FINISH.get(str(reason), "stop"))]
        if kind == "message_stop":
            self.done = True
            tail: list[dict[str, Any] | str] = []
            if self.include_usage:
                tail.append({**self._chunk({}), "choices": [],
                             "usage": _usage(self.input_tokens, self.output_tokens)})
            return [*tail, "[DONE]"]
        if kind == "error":
            err = event.get("error") or {}
            return [{"error": {"message": str(err.get("message", "upstream error")),
                               "type": str(err.get("type", "server_error")), "param": None,
                               "code": None}}]
        return []  # ping, content_block_stop
