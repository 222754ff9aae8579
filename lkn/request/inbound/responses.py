"""The OpenAI Responses API (``POST /v1/responses``) at lkn's edge.

A Responses request becomes one canonical chat completions request; its answer (whole or
streamed) becomes a Response object (or its events, ``responses_stream``). Where the API and
the engines differ, lkn decides so that any engine behind it serves the API the same way:

- ``previous_response_id``: llama-server refuses it and SGLang keeps per-process state, so lkn
  keeps the conversation itself (``response_store``, one entry per turn chained to the turn
  before) and sends the engine the whole history; the earlier request's ``instructions`` are
  not carried over (the API's own rule), its input messages and its answer are;
- input items and tools become chat messages and chat functions (``responses_input``):
  ``namespace`` tools (Codex sends one per MCP server) are flattened to functions named
  ``<namespace>__<name>`` and a call of one is answered as a ``function_call`` with the short
  ``name`` and its ``namespace``; ``custom`` (free-form) tools become a function of one string
  ``input`` and a call of one is answered as a ``custom_tool_call``;
- ``instructions``, then every system and developer message of the history (wherever it
  stands), become ONE leading system message: chat templates such as Qwen's refuse a system
  message after the first turn, and harmony templates render the first one as the developer
  message;
- ``input_file``, an ``input_image`` by ``file_id``, and hosted tools (web_search, file_search,
  code_interpreter, computer_use, image_generation, remote mcp, local_shell, shell,
  tool_search) are a 400 that says what to do: lkn has no file store and no hosted tools, and
  llama-server's silent skipping of such tools hides the problem;
- ``text.format`` becomes chat's ``response_format`` (llama-server ignores it on its own
  ``/v1/responses``, so structured output would silently not be enforced);
- ``reasoning.effort`` becomes ``reasoning_effort`` (``max`` as ``xhigh``); ``none`` and
  ``minimal`` also set ``chat_template_kwargs.enable_thinking = false`` (a local template knows
  thinking on or off, and "minimal" is as close to off as it gets); ``reasoning.summary`` is
  accepted, and no summary is written (the reasoning text itself is returned as
  ``reasoning_text`` content);
- ``include``, ``truncation``, ``text.verbosity``, ``service_tier`` and the like are accepted
  and ignored; ``background: true`` and ``conversation`` are a 400 (no background jobs and no
  Conversations API here); ``metadata`` must be what the API allows (at most 16 string keys of
  up to 64 characters, to strings of up to 512), since the Response object echoes it;
- a stored answer is ONE assistant message (``assistant_message``): its texts joined by a new
  line, its reasoning likewise, and all its tool calls, even when the stream interleaved them
  (text, a call, more text): chat templates expect the calls of a turn on one assistant
  message, and the next request's tool results must find every call. Storing never fails the
  answer: a call the engine sent without a name is stored as ``unknown``, and anything else
  that goes wrong is logged and the answer goes out unstored.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

from lkn.errors import BadRequest
from lkn.relay.thinking import EFFORTS
from lkn.request.inbound.base import Inbound, StreamTranscoder
from lkn.request.inbound.response_store import ResponseStore, StoredResponse
from lkn.request.inbound.responses_input import (
    CALLS, ToolName, chat_tools, fold_system, input_messages, shown)
from lkn.request.inbound.responses_stream import (
    ResponseFrame, ResponsesStream, as_dict, call_item, message_item, new_id, outcome,
    reasoning_item, response_object, response_usage)
from lkn.request.validate_formats import is_int, schema_problem

log = logging.getLogger("lkn.request.inbound.responses")

THINKING_OFF = ("none", "minimal")
# OpenAI's bounds on ``metadata``: keys, key length, value length
METADATA_KEYS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
UNNAMED = "unknown"  # what a call the engine sent without a name is stored as
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
        raise _fail(f"'{name}' must be {what}, got {shown(value)}", name)
    return value


# ---------------------------------------------------------------------------- the answer
def output_items(message: dict[str, Any],
                 names: dict[str, ToolName] | None = None) -> list[dict[str, Any]]:
    """A chat answer's message as Response output items: its reasoning, its text (also an
    empty text when there is nothing else), then its tool calls (as the client declared each
    tool: ``names``)."""
    out: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        out.append(reasoning_item(new_id("rs"), reasoning))
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    if content or not calls:
        out.append(message_item(new_id("msg"), content))
    for call in calls:
        function = as_dict(call.get("function"))
        call_id, name, arguments = call.get("id"), function.get("name"), function.get("arguments")
        name = name if isinstance(name, str) else ""
        out.append(call_item(new_id("fc"),
                             call_id if isinstance(call_id, str) and call_id else new_id("call"),
                             name, arguments if isinstance(arguments, str) else "{}",
                             tool=(names or {}).get(name)))
    return out


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The output items as one canonical assistant message: what a later request continuing
    this response (``previous_response_id``) sends the engine as history. Read as input items,
    as a client replaying them would send them, then merged: a streamed answer may hold several
    messages (text, a call, more text), and a chat template wants one assistant message per
    turn with all of its tool calls. A nameless call (an engine's fault) is named ``unknown``,
    so that the turn still reads and its result still finds it."""
    named = [{**item, "name": UNNAMED}
             if item.get("type") in CALLS and not (isinstance(item.get("name"), str)
                                                   and item["name"]) else item
             for item in output]
    said = [m for m in input_messages(named, allow_empty=True) if m["role"] == "assistant"]
    texts = [m["content"] for m in said if isinstance(m.get("content"), str) and m["content"]]
    reasoning = [m["reasoning_content"] for m in said if m.get("reasoning_content")]
    calls = [c for m in said for c in m.get("tool_calls", ())]
    message: dict[str, Any] = {"role": "assistant",
                               "content": "\n".join(texts) or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = "\n".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return message


def check_metadata(value: Any) -> None:
    """``metadata`` as the API allows it: a small map of strings (the Response echoes it)."""
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= METADATA_KEY and isinstance(v, str)
            and len(v) <= METADATA_VALUE for k, v in value.items()):
        raise _fail(f"'metadata' must be an object of at most {METADATA_KEYS} keys (strings of "
                    f"up to {METADATA_KEY} characters) to strings of up to {METADATA_VALUE} "
                    f"characters", "metadata")


def chat_tool_choice(choice: Any, names: dict[str, ToolName]) -> Any:
    """``none``, ``auto``, ``required`` or ``{"type": "function" | "custom", "name"}`` as
    chat's (a name is the chat function's: a namespaced tool goes by its flattened name)."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, str):
        raise _fail(f"'tool_choice' must be one of none, auto, required, or an object "
                   f"naming a tool, got {choice!r}", "tool_choice")
    if not isinstance(choice, dict):
        raise _fail("'tool_choice' must be a string or an object", "tool_choice")
    kind = choice.get("type")
    if kind not in ("function", "custom"):
        raise _fail(f"tool_choice of type {shown(kind)} is not supported: use none, auto, required "
                   f"or {{\"type\": \"function\", \"name\": ...}}", "tool_choice.type")
    name = choice.get("name")
    if not isinstance(name, str) or not name:
        raise _fail("tool_choice.name must be a non-empty string", "tool_choice.name")
    if name not in names or names[name].custom != (kind == "custom"):
        raise _fail(f"tool_choice names the {kind} tool {name!r}, which is not in 'tools'",
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
                    f"got {shown(kind)}", "text.format.type")
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
    if reasoning.get("summary") is not None and not isinstance(reasoning["summary"], str):
        raise _fail("reasoning.summary must be a string", "reasoning.summary")
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if effort == "max":
        return "xhigh"  # lkn's (and OpenAI chat's) highest
    if effort not in EFFORTS:
        raise _fail(f"reasoning.effort must be one of {', '.join(EFFORTS)}, max, "
                    f"got {shown(effort)}", "reasoning.effort")
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
        self._new: list[dict[str, Any]] = []  # this request's input messages (to store)
        self._previous_id: str | None = None
        self._names: dict[str, ToolName] = {}  # chat function name -> the client's tool
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
        check_metadata(body.get("metadata"))
        _optional(body, "user", str, "a string")
        _optional(body, "truncation", str, "a string")
        _optional(body, "include", list, "an array")
        max_output = body.get("max_output_tokens")
        if max_output is not None and (not is_int(max_output) or max_output < 1):
            raise _fail(f"'max_output_tokens' must be a positive integer, got {shown(max_output)}",
                        "max_output_tokens")
        previous = _optional(body, "previous_response_id", str, "a string")
        history = self._previous(previous) if previous is not None else []
        if "input" not in body or body["input"] is None:
            raise _fail("'input' is required", "input")
        new = input_messages(body["input"], allow_empty=previous is not None)
        tools, names = chat_tools(body.get("tools"))
        tool_choice = chat_tool_choice(body.get("tool_choice"), names)
        if parallel is None and tools:
            parallel = True  # the API's default (llama-server's chat default is false)
        fmt = response_format(body.get("text"))
        effort = reasoning_effort(body.get("reasoning"))

        self._new = copy.deepcopy(new)  # the canonical body may be changed downstream
        out: dict[str, Any] = {"model": model,
                               "messages": fold_system(history + new, instructions)}
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

        self._previous_id, self._names = previous, names
        self._keep = self._store is not None and store is not False
        self.frame = ResponseFrame(id=self.frame.id, echo=_echo(body, instructions),
                                   model=model if isinstance(model, str) else "")
        return out

    def _previous(self, response_id: str) -> list[dict[str, Any]]:
        """The stored conversation up to ``response_id``; any missing turn of it (evicted or
        expired) is the same 400 as an unknown id."""
        found = (self._store.conversation(self._owner, response_id)
                 if self._store is not None else None)
        if found is None:
            raise _fail(f"Previous response with id '{response_id}' not found.",
                        "previous_response_id")
        return copy.deepcopy(found)

    # ------------------------------------------------------------------ the answer
    def answer(self, obj: dict[str, Any]) -> dict[str, Any]:
        choices = obj.get("choices")
        choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
        message = as_dict(choice.get("message"))
        status, incomplete = outcome(choice.get("finish_reason"))
        response = response_object(self.frame, status=status, incomplete=incomplete,
                                   output=output_items(message, self._names),
                                   usage=response_usage(obj.get("usage")))
        self.keep(response)
        return response

    def transcoder(self) -> StreamTranscoder:
        return ResponsesStream(self.frame, self.keep, self._names)

    def error(self, status: int, body: dict[str, Any]) -> dict[str, Any]:
        return body  # the Responses API answers errors in OpenAI's own envelope

    def keep(self, response: dict[str, Any]) -> None:
        """Store a finished response (``store`` not false) for ``previous_response_id``. Never
        raises: the engine has answered and the client gets its answer whatever the store
        makes of it; a turn that cannot be stored is logged, and continuing it is a 400."""
        if not self._keep or self._store is None:
            return
        try:
            turn = (*self._new, assistant_message(response["output"]))
            self._store.put(self._owner, response["id"],
                            StoredResponse(turn, response, self._previous_id))
        except Exception as exc:  # whatever it is, the answer goes out
            log.warning("response %s not stored for previous_response_id: %s: %s",
                        response.get("id"), type(exc).__name__, exc)
