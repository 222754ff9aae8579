"""Ollama's request fields as the canonical request's: ``keep_alive`` (a Go duration or
seconds), ``options`` (sampling knobs under Ollama's names; ``num_ctx``), ``format``, ``think``,
base64 images, and the history's tool calls (arguments as objects) with their results."""
from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from lkn.errors import BadRequest

NUMBER, INTEGER, STRINGS = "number", "integer", "string or list of strings"
OPTIONS = {"temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER, "min_p": NUMBER,
           "typical_p": NUMBER, "seed": INTEGER, "stop": STRINGS, "repeat_penalty": NUMBER,
           "repeat_last_n": INTEGER, "presence_penalty": NUMBER, "frequency_penalty": NUMBER}
THINK_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "xhigh"}
ROLES = ("system", "user", "assistant", "tool")
IMAGE_MAGIC = ((b"\x89PNG", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"),
               (b"BM", "image/bmp"))

# Go's time.ParseDuration: an optional sign, then numbers each with a unit ("1h30m", "1.5s").
# No optional part may match what another one matches: "\d+\.?\d*" backtracked in O(n²) on a
# long run of digits (a 200 KB keep_alive blocked the event loop for minutes).
_DURATION = re.compile(r"([-+]?)((?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
MAX_DURATION = 64  # characters: no Go duration a client means is longer
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
           "h": 3600.0}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def parse_keep_alive(value: Any) -> float | None:
    """``keep_alive`` in seconds: None when absent (lkn's default applies), ``math.inf`` for any
    negative value (Ollama: keep the model loaded forever), 0 to unload after the answer. A
    number is seconds; a string is a Go duration (``"5m"``, ``"1h30m"``, ``"-1m"``). A bare
    number in a string (``"300"``, ``"-1"``) is refused by Ollama's Go parser (no unit); lkn
    takes it as seconds, as Ollama's own ``OLLAMA_KEEP_ALIVE`` setting does."""
    if value is None:
        return None
    if _number(value):
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float: for ever, as its sign says
            seconds = math.inf if value > 0 else -math.inf
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.fullmatch(text) if len(text) <= MAX_DURATION else None
            if match is None:
                raise BadRequest(f"'keep_alive' is not a duration: {value[:80]!r} (use a number "
                                 f"of seconds or a duration such as \"30s\", \"5m\", \"1h30m\")",
                                 param="keep_alive") from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(match.group(2)))
            seconds = -seconds if match.group(1) == "-" else seconds
    else:
        raise BadRequest(f"'keep_alive' must be a number of seconds or a duration such as "
                         f"\"5m\", got {value!r}", param="keep_alive")
    if math.isnan(seconds) or seconds == math.inf:
        raise BadRequest("'keep_alive' must be finite", param="keep_alive")
    return math.inf if seconds < 0 else seconds


def as_int(v: Any) -> int | None:
    """An integer as Go's JSON decoding into an int option takes it (``40.0`` too)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def map_options(options: Any) -> tuple[dict[str, Any], int | None]:
    """Ollama's ``options`` as canonical fields, and ``num_ctx``. ``num_predict`` ->
    ``max_tokens`` (0 or negative, Ollama's "no limit", is left out); sampling options keep
    their names, which are llama-server's; the runner's options (``num_gpu``, ...) and unknown
    ones are ignored, as Ollama ignores unknown ones. A wrong type is a 400 on the option."""
    if options is None:
        return {}, None
    if not isinstance(options, dict):
        raise BadRequest("'options' must be an object", param="options")
    out = {name: v for name, kind in OPTIONS.items()
           if (v := _option(options, name, kind)) is not None}
    predict = _option(options, "num_predict", INTEGER)
    if predict is not None and predict > 0:
        out["max_tokens"] = predict
    num_ctx = _option(options, "num_ctx", INTEGER)
    if num_ctx is not None and num_ctx < 1:
        raise BadRequest(f"option 'num_ctx' must be a positive integer, got {num_ctx!r}",
                         param="options.num_ctx")
    return out, num_ctx


def _option(options: dict[str, Any], name: str, kind: str) -> Any:
    raw = options.get(name)
    value = as_int(raw) if kind == INTEGER else raw
    ok = value is not None if kind == INTEGER else _number(raw) if kind == NUMBER else (
        isinstance(raw, str) or isinstance(raw, list) and all(isinstance(x, str) for x in raw))
    if raw is not None and not ok:
        raise BadRequest(f"option '{name}' must be a {kind}, got {raw!r}",
                         param=f"options.{name}")
    return value


def map_format(fmt: Any) -> dict[str, Any] | None:
    """``"json"`` -> ``json_object``; a schema -> ``json_schema`` named ``schema``."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "schema", "schema": fmt}}
    raise BadRequest(f"'format' must be \"json\" or a JSON schema object, got {fmt!r}",
                     param="format")


def map_think(think: Any) -> dict[str, Any]:
    """false -> ``reasoning_effort: "none"`` (lkn makes it the template's ``enable_thinking:
    false``); true -> ``enable_thinking: true``; a level -> that effort (``max`` -> ``xhigh``)."""
    if think is None:
        return {}
    if think is True:
        return {"chat_template_kwargs": {"enable_thinking": True}}
    if think is False:
        return {"reasoning_effort": "none"}
    if isinstance(think, str) and think in THINK_EFFORTS:
        return {"reasoning_effort": THINK_EFFORTS[think]}
    raise BadRequest(f"'think' must be true, false, \"low\", \"medium\", \"high\" or \"max\", "
                     f"got {think!r}", param="think")


def image_url(image: Any, param: str) -> dict[str, Any]:
    """A base64 image as a chat ``image_url`` part with a ``data:`` URL, its type sniffed from
    its magic bytes (anything but PNG, JPEG, GIF, WebP, BMP is a 400); a data: URL as it is."""
    if not isinstance(image, str) or not image:
        raise BadRequest(f"{param} must be a base64-encoded image", param=param)
    if image[:5].lower() == "data:":
        return {"type": "image_url", "image_url": {"url": image}}
    try:
        head = base64.b64decode(image, validate=True)[:12]
    except (binascii.Error, ValueError):
        raise BadRequest(f"{param} is not valid base64", param=param) from None
    mime = next((m for magic, m in IMAGE_MAGIC if head.startswith(magic)), None)
    if mime is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None:
        raise BadRequest(f"{param} is not a PNG, JPEG, GIF, WebP or BMP image", param=param)
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{image}"}}


def user_content(text: str, images: Any, param: str) -> str | list[dict[str, Any]]:
    if images is None or images == []:
        return text
    if not isinstance(images, list):
        raise BadRequest(f"{param} must be an array of base64 images", param=param)
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    return parts + [image_url(image, f"{param}[{j}]") for j, image in enumerate(images)]


def _history_calls(calls: Any, i: int) -> list[dict[str, Any]]:
    param = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise BadRequest(f"{param} must be an array", param=param)
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not function["name"]:
            raise BadRequest(f"{param}[{j}].function.name must be a non-empty string",
                             param=f"{param}[{j}].function.name")
        name = function["name"]
        arguments = function.get("arguments", {})
        if not isinstance(arguments, dict):
            raise BadRequest(f"{param}[{j}].function.arguments must be an object",
                             param=f"{param}[{j}].function.arguments")
        call_id = call.get("id")
        out.append({"id": call_id if isinstance(call_id, str) and call_id else f"call_{i}_{j}",
                    "type": "function",
                    "function": {"name": name, "arguments": json.dumps(arguments)}})
    return out


def map_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama's chat messages as canonical ones. History tool calls (``arguments`` an object)
    get ids (their own ``id`` if given) and ``arguments`` as a JSON string. A tool result keeps
    its ``tool_call_id``, or gets the id of the last assistant message's first unanswered call
    named ``tool_name`` (its first unanswered call when no name is given), or none."""
    if not isinstance(messages, list):
        raise BadRequest("'messages' must be an array", param="messages")
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (id, name) of the last assistant's unanswered calls
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role, content = m.get("role"), m.get("content", "")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role must be one of {', '.join(ROLES)}, got "
                             f"{role!r}", param=f"messages[{i}].role")
        content = "" if content is None else content
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content must be a string",
                             param=f"messages[{i}].content")
        images = m.get("images")
        if images and role != "user":
            raise BadRequest(f"messages[{i}].images: images go in user messages",
                             param=f"messages[{i}].images")
        message: dict[str, Any] = {"role": role,
                                   "content": user_content(content, images,
                                                           f"messages[{i}].images")}
        if role == "assistant":
            thinking = m.get("thinking")
            if isinstance(thinking, str) and thinking:
                message["reasoning_content"] = thinking
            if m.get("tool_calls") is not None:
                message["tool_calls"] = _history_calls(m["tool_calls"], i)
            pending = [(c["id"], c["function"]["name"]) for c in message.get("tool_calls", [])]
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not (isinstance(call_id, str) and call_id):
                name = m.get("tool_name")
                found = next((p for p in pending if p[1] == name or not isinstance(name, str)),
                             None)
                call_id = found[0] if found else None
            pending = [p for p in pending if p[0] != call_id]
            if call_id:
                message["tool_call_id"] = call_id
        out.append(message)
    return out
