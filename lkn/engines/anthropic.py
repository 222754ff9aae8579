"""Anthropic's Messages API as an upstream, translated both ways (pure, tested by tables), so an
OpenAI SDK client can be answered by Claude: requests to ``/v1/messages``, answers and event
streams back into ``chat.completion`` objects and chunks.

Translated: system and developer messages (into ``system``), user and assistant messages with
text content (strings or text parts), ``max_tokens`` / ``max_completion_tokens`` (required by
Anthropic: the model's ``default_max_tokens`` when absent), ``stop`` into ``stop_sequences``,
``temperature``, ``top_p``, ``user`` into ``metadata.user_id``; the answer's text, the stop
reason into ``finish_reason``, usage, and errors (Anthropic's ``{"type": "error", "error":
{...}}`` has the OpenAI fields already). Not translated (a 400 says so): tools, images, ``n`` > 1,
logprobs.
"""
from __future__ import annotations

import time
from typing import Any

from lkn.errors import BadRequest

VERSION = "2023-06-01"  # the anthropic-version header
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}
UNSUPPORTED = ("tools", "tool_choice", "functions", "logprobs", "top_logprobs",
               "response_format")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"{where}: only text content can go to an Anthropic upstream",
                                 param="messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise BadRequest(f"{where}: content must be a string or text parts", param="messages")


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
        role = m.get("role")
        text = _text(m.get("content"), f"messages[{i}]")
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            messages.append({"role": role, "content": [{"type": "text", "text": text}]})
        else:
            raise BadRequest(f"messages[{i}].role '{role}' has no Anthropic equivalent",
                             param="messages")
    out: dict[str, Any] = {
        "model": model, "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
        or default_max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for key in ("temperature", "top_p", "stream"):
        if body.get(key) is not None:
            out[key] = body[key]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    return out


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": input_tokens, "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens}


def from_message(data: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic message as an OpenAI ``chat.completion``."""
    text = "".join(b.get("text", "") for b in data.get("content") or []
                   if isinstance(b, dict) and b.get("type") == "text")
    usage = data.get("usage") or {}
    return {"id": f"chatcmpl-{data.get('id', '')}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
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

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta,
                                                  "finish_reason": finish}]}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any] | str]:
        """One decoded event; the OpenAI payloads to send (dicts, or "[DONE]")."""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', 'anthropic')}"
            self.input_tokens = int((message.get("usage") or {}).get("input_tokens") or 0)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            return []
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
        return []  # ping, content_block_start / stop
