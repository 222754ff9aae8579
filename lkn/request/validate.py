"""Request body validation (pure): bad input gets a precise 400 here, never a 500 from the engine.

llama-server answers malformed JSON and several wrongly-typed fields with HTTP 500, which the
openai SDK retries three times; lkn checks the fields it relies on and the common sampling
fields itself.
"""
from __future__ import annotations

import re
from typing import Any

from lkn import fastjson
from lkn.errors import BadRequest
from lkn.request.validate_formats import check_reasoning_fields, check_response_format, is_int

ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        body = fastjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _deeper_than(body, MAX_DEPTH):
        raise BadRequest(f"request body is nested too deeply (more than {MAX_DEPTH} levels)")
    if _SURROGATE_ESCAPE.search(raw):  # rare: only then is the whole body walked
        where = lone_surrogate_at(body)
        if where is not None:
            raise BadRequest(f"{where} is not valid Unicode text: it holds a lone surrogate "
                             f"escape (\\ud800-\\udfff without its pair)", param=where,
                             code="invalid_unicode")
    return body


# The JSON parser takes 1024 levels, but re-encoding a body (for the engine, for the client's
# API) recurses: past a few hundred that is a RecursionError, a 500. No real request nests more
# than a few dozen. Only a body with this many brackets is walked at all.
MAX_DEPTH = 128


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` arrays and objects deep (iterative)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            todo.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            todo.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return False


# A JSON string escape of a UTF-16 surrogate. Valid UTF-8 carries no surrogate, so a lone one
# can only come in as an escape; JSON parsers accept it, but it is no text: it cannot be
# encoded, sent to an engine or logged.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate_at(value: Any) -> str | None:
    """Where the first string or key holding a lone surrogate is (``messages[0].content``,
    ``a key in tools[0]``), None when every string and key is valid text. Iterative: a body
    may nest as deep as the JSON parser allows."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:
        path, item = todo.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return path
        elif isinstance(item, dict):
            for key in item:
                if _SURROGATE.search(key):
                    return f"a key in {path}" if path else "a key at the top level"
            todo.extend((f"{path}.{k}" if path else k, v) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            todo.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_common(body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None:
        raise BadRequest("'model' is required", param="model")
    if not isinstance(model, str) or not model:
        raise BadRequest(f"'model' must be a non-empty string, got {model!r}", param="model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise BadRequest(f"'stream' must be a boolean, got {body['stream']!r}", param="stream")
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is not None and (not is_int(v) or v < 1):
            raise BadRequest(f"'{name}' must be a positive integer, got {v!r}", param=name)
    for name, lo, hi in (("temperature", 0.0, 2.0), ("presence_penalty", -2.0, 2.0),
                         ("frequency_penalty", -2.0, 2.0)):
        v = body.get(name)
        if v is not None and (not _is_number(v) or not lo <= v <= hi):
            raise BadRequest(f"'{name}' must be a number between {lo:g} and {hi:g}, got {v!r}",
                             param=name)
    # (0, 1], not [0, 1]: SGLang answers top_p = 0 with a 400 (srt/sampling/sampling_params.py
    # ``verify``), and a request may be escalated from one engine to another.
    top_p = body.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise BadRequest(f"'top_p' must be a number greater than 0 and at most 1 (for greedy "
                         f"decoding use temperature 0), got {top_p!r}", param="top_p")
    n = body.get("n")
    if n is not None and (not is_int(n) or n < 1):
        raise BadRequest(f"'n' must be a positive integer, got {n!r}", param="n")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest(f"'stop' must be a string or a list of strings, got {stop!r}",
                         param="stop")
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    check_response_format(body)


def validate_chat(body: dict[str, Any]) -> None:
    _check_common(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("'messages' is required", param="messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                             f"got {role!r}", param=f"messages[{i}].role")
        content = m.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or an array of parts",
                             param=f"messages[{i}].content")
    logprobs = body.get("logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest(f"'logprobs' must be a boolean, got {logprobs!r}", param="logprobs")
    top = body.get("top_logprobs")
    if top is not None and (not is_int(top) or top < 0):
        raise BadRequest(f"'top_logprobs' must be a non-negative integer, got {top!r}",
                         param="top_logprobs")
    check_reasoning_fields(body)
    _check_tools(body)


TOOL_CHOICES = ("none", "auto", "required")


def _check_tools(body: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice`` as the chat API shapes them (a function tool has a named
    ``function``); other tool types pass to the engine as they are."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise BadRequest("'tools' must be an array of tools", param="tools")
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise BadRequest(f"tools[{i}] must be an object with a 'type'", param=f"tools[{i}]")
        function = tool.get("function")
        if tool["type"] == "function" and not (
                isinstance(function, dict) and isinstance(function.get("name"), str)
                and function["name"]):
            raise BadRequest(f"tools[{i}].function must be an object with a 'name'",
                             param=f"tools[{i}].function")
    choice = body.get("tool_choice")
    if choice is None or choice in TOOL_CHOICES:
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or not isinstance(choice.get("type"), str) or (
            choice["type"] == "function" and not (isinstance(function, dict)
                                                  and isinstance(function.get("name"), str))):
        raise BadRequest(f"'tool_choice' must be one of {', '.join(TOOL_CHOICES)} or "
                         f"{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                         param="tool_choice")


def validate_completions(body: dict[str, Any]) -> None:
    _check_common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest("'prompt' is required", param="prompt")
    ok = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and (
        all(isinstance(p, str) for p in prompt) or all(is_int(t) for t in prompt)
        or all(isinstance(p, list) and all(is_int(t) for t in p) for p in prompt)))
    if not ok:
        raise BadRequest("'prompt' must be a string, an array of strings, or an array of "
                         "token ids", param="prompt")


def validate_embeddings(body: dict[str, Any]) -> None:
    _check_common(body)
    value = body.get("input")
    if value is None:
        raise BadRequest("'input' is required", param="input")
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise BadRequest("'input' must be a string or a non-empty array", param="input")


VALIDATORS = {"chat": validate_chat, "completions": validate_completions,
              "embeddings": validate_embeddings}
