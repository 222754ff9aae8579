"""The tables shared by both directions of the Anthropic translation (pure): lkn answering
Anthropic clients (``lkn.request.inbound.anthropic``) and lkn calling Anthropic as an upstream
(``lkn.engines.anthropic``). One place says what a stop reason, a tool choice, an image or an
error type is on the other side, so the two directions cannot drift apart.
"""
from __future__ import annotations

import json
import re
from typing import Any

# Anthropic's stop_reason -> OpenAI's finish_reason.
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter"}
# OpenAI's finish_reason -> Anthropic's stop_reason ("function_call" is the legacy name).
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
               "function_call": "tool_use", "content_filter": "refusal"}

# HTTP status -> Anthropic's error.type. 504 has no documented type; timeout_error (in the SDK's
# ErrorType) says what happened better than api_error.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               504: "timeout_error", 529: "overloaded_error"}
# An OpenAI error's type or code -> Anthropic's error.type, for errors that come without their
# HTTP status (an error event in the middle of a stream).
ERROR_TYPES_BY_NAME = {"invalid_request_error": "invalid_request_error",
                       "authentication_error": "authentication_error",
                       "invalid_api_key": "authentication_error",
                       "permission_error": "permission_error",
                       "not_found_error": "not_found_error",
                       "model_not_found": "not_found_error",
                       "rate_limit_error": "rate_limit_error", "queue_full": "rate_limit_error",
                       "overloaded": "overloaded_error", "overloaded_error": "overloaded_error",
                       "engine_unavailable": "overloaded_error",
                       "timeout": "timeout_error", "request_timeout": "timeout_error",
                       "request_too_large": "request_too_large"}


def as_dict(value: Any) -> dict[str, Any]:
    """A field that should hold an object, or ``{}``: answers are read, never refused."""
    return value if isinstance(value, dict) else {}


def count(value: Any) -> int:
    """A token count as an answer gives it (anything else: 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def stop_reason(finish: Any, called: bool) -> str:
    """A finish_reason as a stop_reason. An answer that called tools but says only "stop" (some
    engines do) stopped for them."""
    if called and finish in (None, "stop"):
        return "tool_use"
    return STOP_REASON.get(str(finish), "end_turn")


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_type_of(error: dict[str, Any]) -> str:
    """The Anthropic type of an OpenAI error object seen without its status (its code is more
    precise than its type, so it is asked first)."""
    for key in ("code", "type"):
        name = error.get(key)
        if isinstance(name, str) and name in ERROR_TYPES_BY_NAME:
            return ERROR_TYPES_BY_NAME[name]
    return "api_error"


_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL | re.IGNORECASE)


def image_url(source: dict[str, Any]) -> str | None:
    """An Anthropic image source as the URL of an OpenAI ``image_url`` part (None: not one)."""
    kind = source.get("type")
    if kind == "base64":
        media, data = source.get("media_type"), source.get("data")
        if isinstance(media, str) and media and isinstance(data, str) and data:
            return f"data:{media};base64,{data}"
        return None
    if kind == "url":
        url = source.get("url")
        return url if isinstance(url, str) and url else None
    return None


def image_source(url: str) -> dict[str, Any] | None:
    """An OpenAI image URL as an Anthropic image source (None: neither base64 data nor http)."""
    match = _DATA_URL.fullmatch(url)
    if match:
        return {"type": "base64", "media_type": match.group(1), "data": match.group(2)}
    if url[:8].lower().startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    return None


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as a tool_use block's ``input``: ``{}`` when they
    are not a JSON object (a model can write broken JSON; the block must still be valid)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str):
        return {}
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):  # broken, or nested beyond any real input
        return {}
    return value if isinstance(value, dict) else {}


def openai_tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    """Anthropic's tool_choice (checked) as OpenAI's. The named tool keeps its name (llama-server
    turns it into "required", which lets the model call another tool)."""
    kind = choice["type"]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    """OpenAI's tool_choice as Anthropic's (None: not a choice Anthropic has)."""
    if isinstance(choice, str):
        kind = {"auto": "auto", "required": "any", "none": "none"}.get(choice)
        return {"type": kind} if kind else None
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        return {"type": "tool", "name": name} if isinstance(name, str) and name else None
    return None
