"""A Messages request's ``system`` and ``messages`` as chat messages (pure): the content blocks of
each role translated, and checked as Anthropic checks them (a precise 400 for a malformed one).

Decisions where Anthropic and the engines differ:

- ``system`` (a string or text blocks, joined with "\\n" as Anthropic and SGLang do) becomes the
  one leading system message. A ``system`` role message anywhere in ``messages`` (Claude Code
  sends them mid-conversation) is appended to it, after ``system``, with "\\n\\n": many chat
  templates refuse a system message that is not the first ("System message must be at the
  beginning"), and there is then one system message only. (A new one changes the prompt's
  start, so the engine's prompt cache is recomputed once, when it first appears.)
- A user message's ``tool_result`` blocks become ``tool`` messages placed before the rest of that
  message (OpenAI wants them right after the assistant's calls). Their text is the tool
  message's content; their images go into the user message that follows, since engines take
  images in user messages only. ``is_error: true`` prefixes the text with "Error: " (chat has
  no flag for it, and the model should know the call failed).
- ``document`` blocks (in a user message or a ``tool_result``): a plain-text source is a text
  part (after the document's ``title``, if any), a content source its text and image blocks.
  A PDF (base64), a URL or a Files API source is a short text placeholder that says what was
  left out, never a 400: Claude Code keeps such blocks in its history, and a 400 would refuse
  every later turn of the session.
- ``thinking`` blocks in an assistant's history become ``reasoning_content`` (templates that
  render past thinking use it); ``redacted_thinking`` is dropped: it is Anthropic's ciphertext.
- Other block types (search_result, server tools' blocks) are a 400 naming them: there is
  nothing on the chat side that could carry them.
"""
from __future__ import annotations

import json
from typing import Any

from lkn.engines.anthropic_blocks import image_url
from lkn.errors import BadRequest


def obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object", param=where)
    return value


def string(block: dict[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{where}.{key}: expected a string", param=f"{where}.{key}")
    return value


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}: expected a string or an array of content blocks",
                         param=where)
    return [obj(b, f"{where}[{j}]") for j, b in enumerate(content)]


def system_text(content: Any, where: str) -> str:
    parts = []
    for j, block in enumerate(_blocks(content, where)):
        if block.get("type") != "text":
            raise BadRequest(f"{where}[{j}]: system content must be text blocks, got "
                             f"{block.get('type')!r}", param=where)
        parts.append(string(block, "text", f"{where}[{j}]"))
    return "\n".join(parts)


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = obj(block.get("source"), f"{where}.source")
    url = image_url(source)
    if url is None:
        raise BadRequest(f"{where}.source: expected {{type: base64, media_type, data}} or "
                         f"{{type: url, url}}", param=f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _omitted(source: dict[str, Any], title: str) -> str:
    """The placeholder for a document lkn cannot give a local model (what, and why)."""
    name = f" {title!r}" if title else ""
    kind = source.get("type")
    if kind == "url":
        url = source.get("url")
        what, why = (url if isinstance(url, str) else "a URL"), "lkn fetches no document"
    elif kind == "file":
        what, why = "a Files API file", "lkn has no Files API"
    else:  # base64: Anthropic takes PDFs only
        media = source.get("media_type")
        what = media if isinstance(media, str) and media else "application/pdf"
        why = "lkn's local models read no PDF" if "pdf" in what else \
            "lkn's local models read no such document"
    return f"[document{name} ({what}) omitted: {why}]"


def document_parts(block: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A document block as chat content parts (text and image_url; see the module's
    docstring)."""
    source = obj(block.get("source"), f"{where}.source")
    title = block.get("title")
    if title is not None and not isinstance(title, str):
        raise BadRequest(f"{where}.title: expected a string", param=f"{where}.title")
    title = title or ""
    kind = source.get("type")
    if kind == "text":
        data = string(source, "data", f"{where}.source")
        return [_text(f"{title}\n\n{data}" if title else data)]
    if kind == "content":
        at = f"{where}.source.content"
        parts = [_text(title)] if title else []
        for j, part in enumerate(_blocks(source.get("content"), at)):
            if part.get("type") == "text":
                parts.append(_text(string(part, "text", f"{at}[{j}]")))
            elif part.get("type") == "image":
                parts.append(_image_part(part, f"{at}[{j}]"))
            else:
                raise BadRequest(f"{at}[{j}]: a content source holds text and image blocks, "
                                 f"got {part.get('type')!r}", param=f"{at}[{j}].type")
        return parts
    if kind in ("base64", "url", "file"):
        return [_text(_omitted(source, title))]
    raise BadRequest(f"{where}.source.type: expected text, content, base64, url or file, got "
                     f"{kind!r}", param=f"{where}.source.type")


def _tool_result(block: dict[str, Any], where: str) -> tuple[dict[str, Any], list[Any]]:
    """A tool_result block as a tool message, and the images it carried."""
    call_id = string(block, "tool_use_id", where)
    content = block.get("content", "")
    texts, images = [], []
    for j, part in enumerate(_blocks(content, f"{where}.content")):
        kind, at = part.get("type"), f"{where}.content[{j}]"
        if kind == "text":
            texts.append(string(part, "text", at))
        elif kind == "image":
            images.append(_image_part(part, at))
        elif kind == "document":
            for p in document_parts(part, at):
                if p["type"] == "text":
                    texts.append(p["text"])
                else:
                    images.append(p)
        else:
            raise BadRequest(f"{at}: a tool_result holds text, image and document blocks, "
                             f"got {kind!r}", param=f"{where}.content")
    text = "\n".join(texts)
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise BadRequest(f"{where}.is_error: expected a boolean", param=f"{where}.is_error")
    if is_error and not text.lower().startswith("error"):
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}, images


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at, kind = f"{where}.content[{j}]", block.get("type")
        if kind == "text":
            parts.append(_text(string(block, "text", at)))
        elif kind == "image":
            parts.append(_image_part(block, at))
        elif kind == "document":
            parts.extend(document_parts(block, at))
        elif kind == "tool_result":
            message, images = _tool_result(block, at)
            tools.append(message)
            parts.extend(images)
        else:
            raise _unknown(kind, at, "user")
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _assistant(content: Any, where: str) -> dict[str, Any]:
    texts, thinking, calls = [], [], []
    for j, block in enumerate(_blocks(content, f"{where}.content")):
        at, kind = f"{where}.content[{j}]", block.get("type")
        if kind == "text":
            texts.append(string(block, "text", at))
        elif kind == "thinking":
            thinking.append(string(block, "thinking", at))
        elif kind == "redacted_thinking":
            continue  # Anthropic's ciphertext: nothing a local model can read
        elif kind == "tool_use":
            name = string(block, "name", at)
            args = block.get("input", {})
            if not isinstance(args, dict):
                raise BadRequest(f"{at}.input: expected an object", param=f"{at}.input")
            calls.append({"id": string(block, "id", at), "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args)}})
        else:
            raise _unknown(kind, at, "assistant")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _unknown(kind: Any, where: str, role: str) -> BadRequest:
    return BadRequest(f"{where}: content block type {kind!r} is not supported in a {role} "
                      f"message by lkn", param=f"{where}.type")


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as chat messages: one leading system message (every system
    text, ``system`` first), then the conversation."""
    raw = body.get("messages")
    if raw is None:
        raise BadRequest("messages: field required", param="messages")
    if not isinstance(raw, list):
        raise BadRequest("messages: expected an array of messages", param="messages")
    system = [system_text(body["system"], "system")] if body.get("system") is not None else []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        role = obj(m, where).get("role")
        content = m.get("content")
        if content is None:
            raise BadRequest(f"{where}.content: field required", param=f"{where}.content")
        if content in ("", []) and not (role == "assistant" and i == len(raw) - 1):
            raise BadRequest(f"{where}: all messages must have non-empty content except for "
                             f"the optional final assistant message", param=f"{where}.content")
        if role == "user":
            out.extend(_user(content, where))
        elif role == "assistant":
            out.append(_assistant(content, where))
        elif role == "system":
            system.append(system_text(content, f"{where}.content"))
        else:
            raise BadRequest(f"{where}.role: expected 'user' or 'assistant', got {role!r}",
                             param=f"{where}.role")
    text = "\n\n".join(t for t in system if t)
    return [{"role": "system", "content": text}, *out] if text else out
