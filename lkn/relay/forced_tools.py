"""Forced tool calls for engines that would not make them.

A request that forces a tool call (``tool_choice: "required"`` or a named function) must get
one. llama-server makes it happen only when the model's chat template renders tools and its
output parser knows the template's format; with any other template (SmolLM2's, many small
fine-tunes') it drops the tools silently and the model answers in prose. For those
(``tool_calls = "auto"``, the default, when llama-server reports that the template does not
render tools; or ``tool_calls = "lkn"``), lkn makes the call itself:

- the request: the tools leave it; a system note names them, with their parameters; and the
  answer is held to a JSON schema (``response_format``, a grammar in llama-server): an object
  ``{"name": <one of the allowed tools>, "arguments": <that tool's parameters>}``;
- the answer: that object becomes ``message.tool_calls`` (``finish_reason: "tool_calls"``), in a
  whole answer and in a stream, where the JSON is held back and sent as one tool-call delta
  when the engine finishes (a client assembles it as it would the engine's own).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, AsyncIterator

from lkn import fastjson
from lkn.engines.base import EngineClient
from lkn.sse import DONE, SSEParser, frame, frame_json

NOTE = ("You must answer by calling one of these tools. Reply with a JSON object "
        '{"name": <tool name>, "arguments": <its arguments>} and nothing else.\nTools:\n')


def _functions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The request's function tools by name (validated before: ``validate_chat``; read
    defensively all the same)."""
    tools = body.get("tools")
    out: dict[str, dict[str, Any]] = {}
    for tool in tools if isinstance(tools, list) else []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            out.setdefault(function["name"], function)
    return out


def _forced_names(body: dict[str, Any]) -> list[str] | None:
    """The tools one of which the request forces, None when it forces none."""
    names = list(_functions(body))
    choice = body.get("tool_choice")
    if not names:
        return None
    if choice == "required":
        return names
    function = choice.get("function") if isinstance(choice, dict) else None
    named = function.get("name") if isinstance(function, dict) else None
    return [named] if isinstance(named, str) and named in names else None


class ForcedToolCall:
    def __init__(self, body: dict[str, Any], names: list[str]) -> None:
        functions = _functions(body)
        self._functions = [functions[n] for n in names]
        self._id = f"call_{uuid.uuid4().hex[:24]}"

    @classmethod
    def of(cls, route: str, body: dict[str, Any], client: EngineClient) -> ForcedToolCall | None:
        """lkn's forced call for this request, None when the engine is to make it (or no
        call is forced)."""
        if route != "chat":
            return None
        mode = client.model.tool_calls
        if mode == "engine" or (mode == "auto" and (client.kind != "llamacpp"
                                                    or client.template_tools is not False)):
            return None
        names = _forced_names(body)
        return None if names is None else cls(body, names)

    # ------------------------------------------------------------------ the request
    def schema(self) -> dict[str, Any]:
        def one(f: dict[str, Any]) -> dict[str, Any]:
            params = f.get("parameters") or {"type": "object", "properties": {}}
            return {"type": "object", "properties": {"name": {"const": f["name"]},
                                                     "arguments": params},
                    "required": ["name", "arguments"]}
        options = [one(f) for f in self._functions]
        return options[0] if len(options) == 1 else {"anyOf": options}

    def prepare(self, payload: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in payload.items()
               if k not in ("tools", "tool_choice", "parallel_tool_calls", "response_format")}
        listing = "\n".join(json.dumps({"name": f["name"],
                                        "description": f.get("description", ""),
                                        "parameters": f.get("parameters") or {}})
                            for f in self._functions)
        messages = [_as_text(m) for m in payload.get("messages", [])]
        note = {"role": "system", "content": NOTE + listing}
        if messages and messages[0].get("role") == "system" \
                and isinstance(messages[0].get("content"), str):
            messages[0] = {**messages[0],
                           "content": messages[0]["content"] + "\n\n" + note["content"]}
        else:
            messages.insert(0, note)
        out["messages"] = messages
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "tool_call", "schema": self.schema()}}
        return out

    # ------------------------------------------------------------------ the answer
    def call_of(self, text: str) -> dict[str, Any] | None:
        """The tool call the answer's JSON spells; None if it spells none (cut short)."""
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        names = [f["name"] for f in self._functions]
        if not isinstance(obj, dict) or obj.get("name") not in names:
            return None
        return {"id": self._id, "type": "function",
                "function": {"name": obj["name"],
                             "arguments": json.dumps(obj.get("arguments") or {})}}

    def answer(self, raw: bytes) -> bytes:
        try:
            obj = fastjson.loads(raw)
            message = obj["choices"][0]["message"]
            message.get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return raw
        call = self.call_of(message.get("content") or "")
        if call is None:
            return raw  # cut short (length): the engine's text, as it came
        message["content"] = None
        message["tool_calls"] = [call]
        obj["choices"][0]["finish_reason"] = "tool_calls"
        return fastjson.dumps(obj)

    async def stream(self, source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The engine's stream with the JSON text held back and sent as the call."""
        parser = SSEParser()
        text: list[str] = []
        async for chunk in source:
            out: list[bytes] = []
            for event in parser.feed(chunk):
                if event.data is None or event.data == DONE:
                    out.append(b": ping\n\n" if event.data is None else frame(DONE))
                    continue
                out.append(self._event(event.data, text))
            if out:
                yield b"".join(out)

    def _event(self, data: str, text: list[str]) -> bytes:
        try:
            obj = fastjson.loads(data)
            choice = obj["choices"][0]
            delta = choice.get("delta") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            return frame(data)  # usage ("choices": []), errors: as they come
        if isinstance(delta.get("content"), str):
            text.append(delta["content"])
            delta = {k: v for k, v in delta.items() if k != "content"}
        finish = choice.get("finish_reason")
        if finish is None:
            if not delta:
                return b""
            choice["delta"] = delta
            return frame_json(obj)
        call = self.call_of("".join(text))
        if call is None:  # cut short: the text it wrote, then its finish
            choice["delta"] = {**delta, "content": "".join(text)}
            return frame_json(obj)
        choice["delta"] = {**delta, "tool_calls": [{"index": 0, **call}]}
        choice["finish_reason"] = "tool_calls"
        return frame_json(obj)


def _as_text(message: Any) -> Any:
    """History in a template that renders no tools: an assistant's calls and a tool's result
    as plain text, so the model still reads them."""
    if not isinstance(message, dict):
        return message
    calls = message.get("tool_calls")
    if message.get("role") == "assistant" and isinstance(calls, list) and calls:
        said = [json.dumps({"name": (c.get("function") or {}).get("name"),
                            "arguments": (c.get("function") or {}).get("arguments")})
                for c in calls if isinstance(c, dict)]
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        return {"role": "assistant", "content": "\n".join(filter(None, [text, *said]))}
    if message.get("role") == "tool":
        return {"role": "user", "content": f"Tool result: {message.get('content')}"}
    return message
