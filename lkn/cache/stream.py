"""Streams and whole answers, both ways, for the response cache (pure).

``StreamAccumulator`` reads the SSE bytes relayed to a client and assembles the complete answer
they spell: a ``chat.completion`` (deltas joined per choice: strings concatenated, tool calls
merged by their index, logprobs appended) or a ``text_completion``. ``replay`` turns a complete
answer back into an OpenAI-shaped stream: per choice one chunk with the role and everything the
answer holds, one with ``finish_reason`` and an empty delta, a usage chunk (``choices: []``)
when the client asked with ``stream_options.include_usage``, then ``data: [DONE]``.
"""
from __future__ import annotations

import json
from typing import Any

from lkn.sse import DONE, SSEParser, frame, frame_json

REPLACED = frozenset({"id", "type", "role", "index", "name"})  # repeated, never continued


def _merge(into: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        old = into.get(key)
        if value is None:
            into.setdefault(key, None)
        elif key == "tool_calls" and isinstance(value, list):
            calls = into.setdefault(key, [])
            for call in value:
                if not isinstance(call, dict):
                    continue
                index = call.get("index", len(calls))
                while len(calls) <= index:
                    calls.append({})
                _merge(calls[index], call)
        elif isinstance(value, str) and isinstance(old, str) and key not in REPLACED:
            into[key] = old + value
        elif isinstance(value, list) and isinstance(old, list):
            old.extend(value)
        elif isinstance(value, dict) and isinstance(old, dict):
            _merge(old, value)
        else:
            into[key] = json.loads(json.dumps(value)) if isinstance(value, (dict, list)) \
                else value


class StreamAccumulator:
    def __init__(self) -> None:
        self._parser = SSEParser()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._usage: Any = None
        self._chat = True
        self.done = False
        self.broken = False  # an error event, or a payload that is not a chunk

    def feed(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            self._event(event.data)

    def finish(self) -> None:
        for event in self._parser.flush():
            self._event(event.data)

    def _event(self, data: str | None) -> None:
        if data is None:
            return
        if data == DONE:
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            self.broken = True
            return
        if not isinstance(obj, dict) or "error" in obj or not isinstance(
                obj.get("choices"), list):
            self.broken = True
            return
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in obj:
                self._head.setdefault(key, obj[key])
        if obj.get("object") == "text_completion":
            self._chat = False
        if obj.get("usage"):
            self._usage = obj["usage"]
        for choice in obj["choices"]:
            if not isinstance(choice, dict):
                self.broken = True
                return
            index = choice.get("index", 0)
            into = self._choices.setdefault(index, {"index": index, "finish_reason": None})
            if choice.get("finish_reason") is not None:
                into["finish_reason"] = choice["finish_reason"]
            if self._chat and isinstance(choice.get("delta"), dict):
                _merge(into.setdefault("message", {}), choice["delta"])
            if "text" in choice:
                self._chat = False
                into["text"] = into.get("text", "") + (choice["text"] or "")
            if choice.get("logprobs") is not None:
                _merge(into.setdefault("logprobs", {}), choice["logprobs"])

    def answer(self) -> dict[str, Any] | None:
        """The complete answer, or None when the stream did not end well (no [DONE], an error
        event, a choice without finish_reason)."""
        if not self.done or self.broken or not self._choices or any(
                c["finish_reason"] is None for c in self._choices.values()):
            return None
        choices = []
        for index in sorted(self._choices):
            c = dict(self._choices[index])
            if self._chat:
                message = c.pop("message", {})
                message.setdefault("role", "assistant")
                message.setdefault("content", None)
                c["message"] = message
                c.pop("text", None)
            else:
                c.pop("message", None)
                c.setdefault("text", "")
            c.setdefault("logprobs", None)
            choices.append(c)
        out = {**self._head, "object": "chat.completion" if self._chat else "text_completion",
               "choices": choices}
        if self._usage is not None:
            out["usage"] = self._usage
        return out


def replay(answer: dict[str, Any], *, include_usage: bool) -> list[bytes]:
    """An OpenAI-shaped stream of ``answer`` (a chat.completion or text_completion), framed."""
    chat = answer.get("object") != "text_completion"
    head: dict[str, Any] = {k: answer[k] for k in ("id", "created", "model",
                                                   "system_fingerprint") if k in answer}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    frames = []
    for choice in answer.get("choices") or []:
        index = choice.get("index", 0)
        if chat:
            message = dict(choice.get("message") or {})
            delta: dict[str, Any] = {"role": message.pop("role", "assistant")}
            for key, value in message.items():
                if key == "tool_calls" and isinstance(value, list):
                    value = [{"index": i, **call} for i, call in enumerate(value)]
                if value is not None:
                    delta[key] = value
            body: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
            last: dict[str, Any] = {"index": index, "delta": {},
                                    "finish_reason": choice.get("finish_reason")}
        else:
            body = {"index": index, "text": choice.get("text") or "", "finish_reason": None}
            last = {"index": index, "text": "", "finish_reason": choice.get("finish_reason")}
        if choice.get("logprobs") is not None:
            body["logprobs"] = choice["logprobs"]
        frames.append(frame_json({**head, "choices": [body]}))
        frames.append(frame_json({**head, "choices": [last]}))
    if include_usage and answer.get("usage") is not None:
        frames.append(frame_json({**head, "choices": [], "usage": answer["usage"]}))
    frames.append(frame(DONE))
    return frames
