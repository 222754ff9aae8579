"""The OpenAI Responses API (``POST /v1/responses``) at lkn's edge.

A Responses request becomes one canonical chat completions request; its answer (whole or
streamed) becomes a Response object (or its events, ``responses_stream``). Where the API and
the engines differ, lkn decides so that any engine behind it serves the API the same way:

- ``previous_response_id``: llama-server refuses it and SGLang keeps per-process state, so lkn
  keeps the conversation itself (``response_store``) and sends the engine the whole history;
  the earlier request's ``instructions`` are not carried over (the API's own rule), its input
  messages and its answer are;
- input items: easy messages need no ``type`` (llama-server wants one on assistant items);
  ``developer`` becomes ``system`` (chat templates know no developer role; harmony templates
  render the first system message as the developer message); text parts join into a string;
  ``function_call`` items join the assistant message before them as ``tool_calls``; a
  ``reasoning`` item becomes the ``reasoning_content`` of the assistant message that follows it
  (its ``content`` text, else its summary text), and is dropped when none follows (an
  ``encrypted_content``-only item carries nothing an engine can read);
- ``input_file``, an ``input_image`` by ``file_id``, and every tool type other than ``function``
  (web_search, file_search, code_interpreter, mcp, ...) are a 400: lkn has no file store and
  no hosted tools, and llama-server's silent skipping of such tools hides the problem;
- ``text.format`` becomes chat's ``response_format`` (llama-server ignores it on its own
  ``/v1/responses``, so structured output would silently not be enforced);
- ``reasoning.effort`` becomes ``reasoning_effort`` (``max`` as ``xhigh``); ``none`` and
  ``minimal`` also set ``chat_template_kwargs.enable_thinking = false`` (a local template knows
  thinking on or off, and "minimal" is as close to off as it gets); ``reasoning.summary`` is
  accepted, and no summary is written (the reasoning text itself is returned as
  ``reasoning_text`` content);
- ``include``, ``truncation``, ``text.verbosity``, ``service_tier`` and the like are accepted
  and ignored; ``background: true`` and ``conversation`` are a 400 (no background jobs and no
  Conversations API here).
"""
from __future__ import annotations

import copy
from typing import Any

from lkn.errors import BadRequest
from lkn.relay.thinking import EFFORTS, with_instructions
from lkn.request.inbound.base import Inbound, StreamTranscoder
from lkn.request.inbound.response_store import ResponseStore, StoredResponse
from lkn.request.inbound.responses_stream import (
    ResponseFrame, ResponsesStream, as_dict, assistant_message, new_id, outcome, output_items,
    response_object, response_usage)
from lkn.request.validate_formats import is_int, schema_problem

THINKING_OFF = ("none", "minimal")
# Fields of engines behind lkn (and lkn's own) a client may add to a Responses request
# (``extra_body``); they pass to the canonical request as they are and are checked there.
PASSED = ("top_k", "min_p", "seed", "stop", "presence_penalty", "frequency_penalty",
          "repeat_penalty", "chat_template_kwargs", "separate_thinking")
REFUSED = {"background": "background responses are not supported",
           "conversation": "conversations are not supported: send the history as 'input' "
                           "or continue with 'previous_response_id'",
           "prompt": "stored prompt templates are not supported"}


def _fail(message: str, param: str) -> BadRequest:
    return BadRequest(message, param=param)


def _optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
              what: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)
                              and kind is not bool):
        raise _fail(f"'{name}' must be {what}, got {value!r}", name)
    return value


# ---------------------------------------------------------------------------- input items
ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
ITEMS = "message, function_call, function_call_output, reasoning"


def input_messages(value: Any, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """``input`` (a string, or a list of items) as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not (value or allow_empty):
        raise _fail("'input' must be a string or a non-empty array of input items", "input")
    messages: list[dict[str, Any]] = []
    reasoning = ""  # waits for the assistant message that follows it
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _fail(f"{where} must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        last = messages[-1] if messages else None
        if kind == "reasoning":
            reasoning += _reasoning_text(item, where)
            continue
        if kind == "function_call" and last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(_function_call(item, where))
            if reasoning and "reasoning_content" not in last:
                last["reasoning_content"] = reasoning
            reasoning = ""
            continue
        if kind == "message":
            message = _message(item, where)
        elif kind == "function_call":
            message = {"role": "assistant", "content": None,
                       "tool_calls": [_function_call(item, where)]}
        elif kind == "function_call_output":
            message = {"role": "tool", "tool_call_id": _string(item, "call_id", where),
                       "content": _texts(item.get("output"), f"{where}.output", ("input_text",),
                                         "")}
        else:
            raise _fail(f"{where} has type {kind!r}, which is not supported (supported: "
                        f"{ITEMS})", f"{where}.type")
        if reasoning and message["role"] == "assistant":
            message["reasoning_content"] = reasoning
        reasoning = ""  # a reasoning item not followed by its assistant message is dropped
        messages.append(message)
    return messages


def _string(item: dict[str, Any], name: str, where: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}.{name} must be a non-empty string", f"{where}.{name}")
    return value


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise _fail(f"{where}.arguments must be a string (JSON text)", f"{where}.arguments")
    return {"id": _string(item, "call_id", where), "type": "function",
            "function": {"name": _string(item, "name", where), "arguments": arguments}}


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """The reasoning's own text (``content``), else its summary; both are lists of parts."""
    for name, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        parts = item.get(name)
        if parts is None:
            continue
        text = _texts(parts, f"{where}.{name}", (kind,), "\n\n", strings=False)
        if text:
            return text
    return ""


def _texts(parts: Any, where: str, kinds: tuple[str, ...], joiner: str,
           strings: bool = True) -> str:
    """A string, or a list of text parts of the ``kinds`` joined, as one string."""
    if isinstance(parts, str) and strings:
        return parts
    if not isinstance(parts, list):
        raise _fail(f"{where} must be {'a string or ' if strings else ''}an array of parts",
                    where)
    out = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise _fail(f"{where}[{j}] must be a part of type {' or '.join(kinds)}, "
                        f"got {kind!r}", f"{where}[{j}]")
        out.append(_string(part, "refusal" if kind == "refusal" else "text", f"{where}[{j}]"))
    return joiner.join(out)


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = ROLES.get(item["role"]) if isinstance(item.get("role"), str) else None
    if role is None:
        raise _fail(f"{where}.role must be one of {', '.join(ROLES)}, got "
                    f"{item.get('role')!r}", f"{where}.role")
    content, path = item.get("content"), f"{where}.content"
    if role == "assistant":  # history: the text it answered (or refused)
        return {"role": role, "content": _texts(content, path,
                                                 ("output_text", "input_text", "refusal"), "")}
    if not isinstance(content, list) or all(isinstance(p, dict) and p.get("type") ==
                                            "input_text" for p in content):
        return {"role": role, "content": _texts(content, path, ("input_text",), "\n")}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{path}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text":
            parts.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "input_image" and part.get("file_id") is not None:
            raise _fail(f"{at}.file_id: images by file id are not supported (lkn has no "
                        f"file store); send image_url", f"{at}.file_id")
        elif kind == "input_image":
            image = {"url": _string(part, "image_url", at)}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        elif kind == "input_file":
            raise _fail(f"{at}: input_file parts are not supported (send the file's text as "
                        f"input_text)", f"{at}.type")
        else:
            raise _fail(f"{at} must be a part of type input_text, input_image or input_file, "
                        f"got {kind!r}", f"{at}.type")
    return {"role": role, "content": parts}


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """Flat Responses function tools as chat tools; any other tool type is a 400."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _fail("'tools' must be an array", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _fail(f"tools[{i}] must be an object", f"tools[{i}]")
        kind = tool.get("type")
        if kind != "function":
            raise _fail(f"tools[{i}] has type {kind!r}: only 'function' tools are supported "
                        f"(lkn serves models itself and has no hosted {kind} tool)",
                        f"tools[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _fail(f"tools[{i}].name must be a non-empty string", f"tools[{i}].name")
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        problem = schema_problem(parameters, f"tools[{i}].parameters")
        if problem:
            raise _fail(f"invalid JSON schema: {problem}", f"tools[{i}].parameters")
        function: dict[str, Any] = {"name": name, "parameters": parameters}
        description = tool.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise _fail(f"tools[{i}].description must be a string",
                            f"tools[{i}].description")
            function["description"] = description
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise _fail(f"tools[{i}].strict must be a boolean", f"tools[{i}].strict")
            function["strict"] = strict
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> Any:
    """``none``, ``auto``, ``required`` or ``{"type": "function", "name"}`` as chat's."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, str):
        raise _fail(f"'tool_choice' must be one of none, auto, required, or an object "
                    f"naming a function, got {choice!r}", "tool_choice")
    if not isinstance(choice, dict):
        raise _fail("'tool_choice' must be a string or an object", "tool_choice")
    kind = choice.get("type")
    if kind != "function":
        raise _fail(f"tool_choice of type {kind!r} is not supported: use none, auto, required "
                    f"or {{\"type\": \"function\", \"name\": ...}}", "tool_choice.type")
    name = choice.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("tool_choice.name must be a non-empty string", "tool_choice.name")
    if name not in [t["function"]["name"] for t in tools or []]:
        raise _fail(f"tool_choice names the function {name!r}, which is not in 'tools'",
                    "tool_choice.name")
    return {"type": "function", "function": {"name": name}}


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (None for plain text)."""
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _fail("'text' must be an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _fail("text.format must be an object", "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise _fail(f"text.format.type must be one of text, json_object, json_schema, "
                    f"got {kind!r}", "text.format.type")
    name = fmt.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("text.format.name must be a non-empty string", "text.format.name")
    if "schema" not in fmt:
        raise _fail("text.format.schema is required", "text.format.schema")
    problem = schema_problem(fmt["schema"], "text.format.schema")
    if problem:
        raise _fail(f"invalid JSON schema: {problem}", "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": fmt["schema"]}
    strict = fmt.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise _fail("text.format.strict must be a boolean", "text.format.strict")
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def reasoning_effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _fail("'reasoning' must be an object", "reasoning")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort == "max":
        return "xhigh"  # lkn's (and OpenAI chat's) highest
    if effort not in EFFORTS:
        raise _fail(f"reasoning.effort must be one of {', '.join(EFFORTS)}, max, "
                    f"got {effort!r}", "reasoning.effort")
    return str(effort)


def _echo(body: dict[str, Any], instructions: str | None) -> dict[str, Any]:
    """The request parameters a Response object repeats (with the API's defaults)."""
    reasoning, text = as_dict(body.get("reasoning")), as_dict(body.get("text"))
    return {"instructions": instructions,
            "max_output_tokens": body.get("max_output_tokens"),
            "tools": body.get("tools") or [],
            "tool_choice": body.get("tool_choice") or "auto",
            "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
            "temperature": body.get("temperature"), "top_p": body.get("top_p"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "reasoning": {"effort": reasoning.get("effort"),
                          "summary": reasoning.get("summary")},
            "previous_response_id": body.get("previous_response_id"),
            "store": body.get("store") is not False,
            "metadata": body.get("metadata") or {}, "user": body.get("user"),
            "truncation": body.get("truncation") or "disabled", "background": False}


class ResponsesInbound(Inbound):
    """``POST /v1/responses`` over lkn's chat route (see the module's docstring)."""
    api = "responses"
    stream_content_type = "text/event-stream"

    def __init__(self, *, store: ResponseStore | None, owner: str) -> None:
        super().__init__("chat")
        self._store = store
        self._owner = owner
        self._keep = False  # store this answer (``store`` is not false and there is a store)
        self._history: list[dict[str, Any]] = []  # the conversation so far, instructions out
        self.frame = ResponseFrame(id=new_id("resp"), model="", echo=_echo({}, None))

    # ------------------------------------------------------------------ the request
    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        for name, why in REFUSED.items():
            if body.get(name) not in (None, False):
                raise _fail(f"'{name}': {why}", name)
        model = body.get("model")
        instructions = _optional(body, "instructions", str, "a string")
        stream = _optional(body, "stream", bool, "a boolean")
        store = _optional(body, "store", bool, "a boolean")
        parallel = _optional(body, "parallel_tool_calls", bool, "a boolean")
        _optional(body, "metadata", dict, "an object of strings")
        _optional(body, "user", str, "a string")
        _optional(body, "include", list, "an array")
        max_output = body.get("max_output_tokens")
        if max_output is not None and (not is_int(max_output) or max_output < 1):
            raise _fail(f"'max_output_tokens' must be a positive integer, got {max_output!r}",
                        "max_output_tokens")
        previous = _optional(body, "previous_response_id", str, "a string")
        history = self._previous(previous) if previous is not None else []
        if "input" not in body or body["input"] is None:
            raise _fail("'input' is required", "input")
        history += input_messages(body["input"], allow_empty=previous is not None)
        tools = chat_tools(body.get("tools"))
        tool_choice = chat_tool_choice(body.get("tool_choice"), tools)
        if parallel is None and tools:
            parallel = True  # the API's default (llama-server's chat default is false)
        fmt = response_format(body.get("text"))
        effort = reasoning_effort(body.get("reasoning"))

        messages = with_instructions(history, instructions) if instructions else list(history)
        out: dict[str, Any] = {"model": model, "messages": messages}
        for key, value in (("tools", tools), ("tool_choice", tool_choice),
                           ("parallel_tool_calls", parallel),
                           ("max_tokens", max_output), ("temperature", body.get("temperature")),
                           ("top_p", body.get("top_p")), ("response_format", fmt),
                           ("reasoning_effort", effort)):
            if value is not None:
                out[key] = value
        out.update({k: body[k] for k in PASSED if k in body})
        if effort in THINKING_OFF:
            kwargs = out.get("chat_template_kwargs")
            kwargs = dict(kwargs) if isinstance(kwargs, dict) else {}
            kwargs.setdefault("enable_thinking", False)
            out["chat_template_kwargs"] = kwargs
        if stream:
            out["stream"] = True
            out["stream_options"] = {"include_usage": True}

        self._history = copy.deepcopy(history)
        self._keep = self._store is not None and store is not False
        self.frame = ResponseFrame(id=self.frame.id, echo=_echo(body, instructions),
                                   model=model if isinstance(model, str) else "")
        return out

    def _previous(self, response_id: str) -> list[dict[str, Any]]:
        entry = self._store.get(self._owner, response_id) if self._store is not None else None
        if entry is None:
            raise _fail(f"Previous response with id '{response_id}' not found.",
                        "previous_response_id")
        return copy.deepcopy(list(entry.messages))

    # ------------------------------------------------------------------ the answer
    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        choices = obj.get("choices")
        choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
        message = as_dict(choice.get("message"))
        status, incomplete = outcome(choice.get("finish_reason"))
        response = response_object(self.frame, status=status, incomplete=incomplete,
                                   output=output_items(message),
                                   usage=response_usage(obj.get("usage")))
        self.keep(response)
        return response

    def transcoder(self) -> StreamTranscoder:
        return ResponsesStream(self.frame, self.keep)

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return body  # the Responses API answers errors in OpenAI's own envelope

    def keep(self, response: dict[str, Any]) -> None:
        """Store a finished response (``store`` not false) for ``previous_response_id``."""
        if not self._keep or self._store is None:
            return
        conversation = (*self._history, assistant_message(response["output"]))
        self._store.put(self._owner, response["id"], StoredResponse(conversation, response))

