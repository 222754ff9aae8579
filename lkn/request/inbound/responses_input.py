"""What a Responses request declares and sends: its input items as chat messages, and the names
its tools get as chat functions.

Input items (the history a client such as Codex replays in full, lkn's own output items
included):

- easy messages need no ``type``; ``developer`` becomes ``system``; text parts join into a
  string; an empty text is accepted (lkn itself answers an empty message item when the model
  says nothing, and Codex replays every output item) and adds no content;
- ``function_call`` and ``custom_tool_call`` items join the assistant message before them as
  ``tool_calls`` (a custom call's free-form ``input`` as the arguments ``{"input": ...}``, how
  the tool is declared to the engine); a call that names a ``namespace`` gets its flattened name
  back (``flat_name``);
- ``function_call_output`` / ``custom_tool_call_output`` become tool messages; an output that is
  an array of parts keeps its texts in the tool message (``(image)`` when it has none) and moves
  its images to one user message after the tool messages of that turn (chat templates want the
  tool results right after the calls, and only user messages carry images);
- a ``reasoning`` item becomes the ``reasoning_content`` of the assistant message that follows
  it (its ``content`` text, else its summary text), and is dropped when none follows;
- system and developer messages anywhere in the history fold into one leading system message
  (``fold_system``): Qwen-style chat templates refuse a system message after the first turn.

Tools (``chat_tools``): ``function`` tools pass; a ``namespace``'s tools are flattened to
``<namespace>__<name>`` (``flat_name``); a ``custom`` tool is a function of one string, ``input``;
hosted tools are a 400 naming the tool and how to turn it off in Codex.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from lkn.errors import BadRequest
from lkn.request.validate_formats import schema_problem

ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
ITEMS = ("message, function_call, function_call_output, custom_tool_call, "
         "custom_tool_call_output, reasoning")
CALLS = ("function_call", "custom_tool_call")
OUTPUTS = ("function_call_output", "custom_tool_call_output")
MAX_NAME = 64  # OpenAI's (and most chat templates' tool parsers') limit on a function name


def fail(message: str, param: str) -> BadRequest:
    return BadRequest(message, param=param)


def shown(value: Any) -> str:
    """A client's value as an error message quotes it: a scalar's repr (cut short), a container
    by its kind only (its repr recurses, and a deeply nested one is a RecursionError)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------- tool names
@dataclass(frozen=True)
class ToolName:
    """What the client declared behind one chat function name."""
    name: str  # the client's own name (inside its namespace, if any)
    namespace: str | None = None
    custom: bool = False  # a free-form (``custom``) tool: its call is a ``custom_tool_call``


def flat_name(namespace: str | None, name: str) -> str:
    """A namespaced tool's chat function name: ``<namespace>__<name>`` (``mcp__fs`` and
    ``read`` give ``mcp__fs__read``; a namespace that already ends in ``__`` is not doubled).
    Over 64 characters, it is cut and ends in a hash of the whole, so it stays unique and the
    same in every request (a replayed call is re-qualified by this same function)."""
    if namespace is None:
        return name
    full = f"{namespace}{'' if namespace.endswith('__') else '__'}{name}"
    if len(full) <= MAX_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[:MAX_NAME - 9]}_{digest}"


# ---------------------------------------------------------------------------- input items
@dataclass
class _Turn:
    messages: list[dict[str, Any]]
    reasoning: str = ""  # waits for the assistant message that follows it
    images: list[dict[str, Any]] | None = None  # tool outputs' images, after the tool messages

    def add(self, message: dict[str, Any]) -> None:
        if message["role"] != "tool":
            self.flush()
        if self.reasoning and message["role"] == "assistant":
            message["reasoning_content"] = self.reasoning
        self.reasoning = ""  # a reasoning item not followed by its assistant message is dropped
        self.messages.append(message)

    def flush(self) -> None:
        if self.images:
            self.messages.append({"role": "user", "content": self.images})
        self.images = None


def input_messages(value: Any, *, allow_empty: bool = False) -> list[dict[str, Any]]:
    """``input`` (a string, or a list of items) as chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not (value or allow_empty):
        raise fail("'input' must be a string or a non-empty array of input items", "input")
    turn = _Turn([])
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise fail(f"{where} must be an object", where)
        kind = item.get("type", "message" if "role" in item else None)
        last = turn.messages[-1] if turn.messages else None
        if kind == "reasoning":
            turn.reasoning += _reasoning_text(item, where)
        elif kind in CALLS and last is not None and last["role"] == "assistant":
            if not last.get("content"):
                last["content"] = None  # an empty text before the calls: no content
            last.setdefault("tool_calls", []).append(_call(item, kind, where))
            if turn.reasoning and "reasoning_content" not in last:
                last["reasoning_content"] = turn.reasoning
            turn.reasoning = ""
        elif kind == "message":
            turn.add(_message(item, where))
        elif kind in CALLS:
            turn.add({"role": "assistant", "content": None,
                      "tool_calls": [_call(item, kind, where)]})
        elif kind in OUTPUTS:
            text, images = _output(item.get("output"), f"{where}.output")
            turn.add({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                      "content": text})
            if images:
                turn.images = (turn.images or []) + images
        else:
            raise fail(f"{where} has type {shown(kind)}, which is not supported (supported: "
                       f"{ITEMS})", f"{where}.type")
    turn.flush()
    return turn.messages


def fold_system(messages: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """The messages with ``instructions`` and every system message, wherever it stands, as one
    leading system message (joined by blank lines, instructions first)."""
    texts = [instructions or ""] + [m["content"] for m in messages if m["role"] == "system"]
    texts = [t for t in texts if isinstance(t, str) and t]
    rest = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": "\n\n".join(texts)}, *rest] if texts else rest


def _string(item: dict[str, Any], name: str, where: str, empty: bool = False) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not (value or empty):
        raise fail(f"{where}.{name} must be a {'' if empty else 'non-empty '}string",
                   f"{where}.{name}")
    return value


def _call(item: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    namespace = _string(item, "namespace", where) if item.get("namespace") is not None else None
    arguments = item.get("arguments")
    if kind == "custom_tool_call":
        arguments = json.dumps({"input": _string(item, "input", where, empty=True)},
                               ensure_ascii=False)
    elif not isinstance(arguments, str):
        raise fail(f"{where}.arguments must be a string (JSON text)", f"{where}.arguments")
    return {"id": _string(item, "call_id", where), "type": "function",
            "function": {"name": flat_name(namespace, _string(item, "name", where)),
                         "arguments": arguments}}


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
           strings: bool = True, empty: bool = True) -> str:
    """A string, or a list of text parts of the ``kinds`` joined (empty texts left out)."""
    if isinstance(parts, str) and strings:
        return parts
    if not isinstance(parts, list):
        raise fail(f"{where} must be {'a string or ' if strings else ''}an array of parts",
                   where)
    out = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise fail(f"{where}[{j}] must be a part of type {' or '.join(kinds)}, "
                       f"got {shown(kind)}", f"{where}[{j}]")
        text = _string(part, "refusal" if kind == "refusal" else "text", f"{where}[{j}]", empty)
        if text:
            out.append(text)
    return joiner.join(out)


def _output(output: Any, where: str) -> tuple[str, list[dict[str, Any]]]:
    """A tool output (a string, or text and image parts) as the tool message's text and the
    images that go to a user message."""
    if not isinstance(output, list):
        return _texts(output, where, ("input_text",), ""), []
    texts: list[str] = []
    images: list[dict[str, Any]] = []
    for j, part in enumerate(output):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_image":
            images.append(_image(part, at))
        elif kind in ("input_text", "output_text"):
            texts.append(_string(part, "text", at, empty=True))
        else:
            raise fail(f"{at} must be a part of type input_text or input_image, got {shown(kind)}",
                       at)
    return "".join(texts) or ("(image)" if images else ""), images


def _image(part: dict[str, Any], at: str) -> dict[str, Any]:
    if part.get("file_id") is not None:
        raise fail(f"{at}.file_id: images by file id are not supported (lkn has no file "
                   f"store); send image_url", f"{at}.file_id")
    image = {"url": _string(part, "image_url", at)}
    if isinstance(part.get("detail"), str):
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = ROLES.get(item["role"]) if isinstance(item.get("role"), str) else None
    if role is None:
        raise fail(f"{where}.role must be one of {', '.join(ROLES)}, got "
                   f"{shown(item.get('role'))}", f"{where}.role")
    content, path = item.get("content"), f"{where}.content"
    if role == "assistant":  # history: the text it answered (or refused)
        return {"role": role, "content": _texts(content, path,
                                                 ("output_text", "input_text", "refusal"), "")}
    if role == "system" or not isinstance(content, list) or all(
            isinstance(p, dict) and p.get("type") == "input_text" for p in content):
        return {"role": role, "content": _texts(content, path, ("input_text",), "\n")}
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{path}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text":
            parts.append({"type": "text", "text": _string(part, "text", at)})
        elif kind == "input_image":
            parts.append(_image(part, at))
        elif kind == "input_file":
            raise fail(f"{at}: input_file parts are not supported (send the file's text as "
                       f"input_text)", f"{at}.type")
        else:
            raise fail(f"{at} must be a part of type input_text, input_image or input_file, "
                       f"got {shown(kind)}", f"{at}.type")
    return {"role": role, "content": parts}


# ---------------------------------------------------------------------------- tools
HOSTED = ("web_search", "file_search", "code_interpreter", "computer", "image_generation", "mcp",
          "local_shell", "tool_search", "shell")
CODEX_HINTS = {"web_search": 'web_search = "disabled" in config.toml',
               "image_generation": "[features] image_generation = false in config.toml"}
GRAMMAR_CAP = 2000  # characters of a custom tool's grammar shown to the model, at most
INPUT = {"type": "string", "description": "The tool's raw input (free-form text, not JSON)."}


def chat_tools(tools: Any) -> tuple[list[dict[str, Any]] | None, dict[str, ToolName]]:
    """The request's tools as chat functions, and what each function name stands for.

    ``function`` tools pass as they are; each function (or custom tool) of a ``namespace`` is
    flattened to ``flat_name(namespace, name)`` (the namespace's own description is not
    repeated on each); a ``custom`` (free-form) tool is a function of one string, ``input``,
    its grammar (when short enough) told in its description. Hosted tools are a 400 that says
    how to turn them off."""
    if tools is None:
        return None, {}
    if not isinstance(tools, list):
        raise fail("'tools' must be an array", "tools")
    out: list[dict[str, Any]] = []
    names: dict[str, ToolName] = {}
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise fail(f"{where} must be an object", where)
        if tool.get("type") != "namespace":
            out.append(_tool(tool, where, None, names))
            continue
        namespace = _string(tool, "name", where)
        inner = tool.get("tools")
        if not isinstance(inner, list) or not inner:
            raise fail(f"{where}.tools must be a non-empty array", f"{where}.tools")
        for j, each in enumerate(inner):
            if not isinstance(each, dict):
                raise fail(f"{where}.tools[{j}] must be an object", f"{where}.tools[{j}]")
            out.append(_tool(each, f"{where}.tools[{j}]", namespace, names))
    return out, names


def _tool(tool: dict[str, Any], where: str, namespace: str | None,
          names: dict[str, ToolName]) -> dict[str, Any]:
    kind = tool.get("type")
    if isinstance(kind, str) and kind.startswith(HOSTED):
        hint = next((h for k, h in CODEX_HINTS.items() if kind.startswith(k)),
                    "; ".join(CODEX_HINTS.values()))
        raise fail(f"{where} is the hosted tool {kind!r}, which lkn cannot serve: lkn's models "
                   f"run locally, without OpenAI's hosted tools. Leave it out of 'tools' (in "
                   f"Codex: {hint})", f"{where}.type")
    if kind not in ("function", "custom"):
        raise fail(f"{where} has type {shown(kind)}, which is not supported (supported: function, "
                   f"custom{'' if namespace else ', namespace'})", f"{where}.type")
    name = _string(tool, "name", where)
    flat = flat_name(namespace, name)
    if flat in names:
        raise fail(f"{where}: the tool name {flat!r} is declared twice", f"{where}.name")
    names[flat] = ToolName(name, namespace, kind == "custom")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise fail(f"{where}.description must be a string", f"{where}.description")
    function: dict[str, Any] = {"name": flat}
    if kind == "custom":
        description = _custom_description(description, tool.get("format"), where)
        function["parameters"] = {"type": "object", "properties": {"input": INPUT},
                                  "required": ["input"]}
    else:
        parameters = tool.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        problem = schema_problem(parameters, f"{where}.parameters")
        if problem:
            raise fail(f"invalid JSON schema: {problem}", f"{where}.parameters")
        function["parameters"] = parameters
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise fail(f"{where}.strict must be a boolean", f"{where}.strict")
        if strict is not None:
            function["strict"] = strict
    if description:
        function["description"] = description
    return {"type": "function", "function": function}


def _custom_description(description: str | None, fmt: Any, where: str) -> str:
    """A custom tool's description, with what its ``format`` asks of the input."""
    if fmt is None or isinstance(fmt, dict) and fmt.get("type") == "text":
        return description or ""
    if not isinstance(fmt, dict) or fmt.get("type") != "grammar":
        raise fail(f"{where}.format must be {{\"type\": \"text\"}} or {{\"type\": \"grammar\", "
                   f"\"syntax\", \"definition\"}}", f"{where}.format")
    syntax, definition = fmt.get("syntax"), fmt.get("definition")
    if not isinstance(syntax, str) or not isinstance(definition, str):
        raise fail(f"{where}.format.syntax and .definition must be strings", f"{where}.format")
    note = (f"The input must follow this {syntax} grammar:\n{definition}"
            if len(definition) <= GRAMMAR_CAP else
            f"The input must follow the tool's {syntax} grammar (too long to show here).")
    return f"{description}\n\n{note}" if description else note

