"""Thinking per request (pure): what lkn asks the engine for, and how it reshapes the answer.

A model's ``reasoning`` mode (config) says who separates thinking from the answer:

- ``engine``: the engine does (llama-server by default; SGLang with ``--reasoning-parser``);
- ``lkn``: the engine returns raw text and ``reasoning.ReasoningParser`` splits it here, for
  chat answers whole and streamed;
- ``none``: nobody does; clients get the raw text.

Request fields lkn consumes (chat only):

- ``separate_thinking`` (default true): false returns the thinking inline, as the model wrote it;
- ``reasoning``: ``"low" | "medium" | "high"`` or ``{"effort": ...}``, an alias of
  ``reasoning_effort`` (which wins when both are given). Either becomes the chat template's
  ``enable_thinking`` (false only for ``"none"``) and ``reasoning_effort`` (harmony templates
  render it as ``Reasoning: high``); values the client set in ``chat_template_kwargs`` win;
- ``include_channels``: any of ``analysis``, ``commentary``, ``final``; where lkn splits, the
  message (or delta) gains ``channels: {name: text}`` for those channels, and the usage
  ``completion_tokens_details.channel_tokens: {name: tokens}``;
- ``developer_instructions``: harmony's developer message. Chat templates of harmony models
  render the first system message as the developer message, so the text becomes (or leads) it.

With a JSON ``response_format`` llama-server always splits, whatever the mode: its grammar must
know where the thinking ends.
"""
from __future__ import annotations

import json
from typing import Any

from lkn.relay.reasoning import Piece, ReasoningParser, join

EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")  # OpenAI's values
# Templates (harmony's "Reasoning: ..." line included) know three levels.
TEMPLATE_EFFORT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                   "xhigh": "high"}
CHANNELS = ("analysis", "commentary", "final")
LKN_FIELDS = ("separate_thinking", "reasoning", "include_channels", "developer_instructions")


def requested_effort(body: dict[str, Any]) -> str | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        alias = body.get("reasoning")
        effort = alias.get("effort") if isinstance(alias, dict) else alias
    return effort if isinstance(effort, str) else None


def constrained(body: dict[str, Any]) -> bool:
    """A JSON response format: the engine's grammar decides the answer's shape."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def with_instructions(messages: list[Any], text: str) -> list[Any]:
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") in ("system", "developer") \
            and isinstance(first.get("content"), str):
        return [{**first, "content": f"{text}\n\n{first['content']}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def engine_body(body: dict[str, Any], *, engine: str, mode: str) -> dict[str, Any]:
    """The request as the engine should see it (``body`` is not changed)."""
    out = {k: v for k, v in body.items() if k not in LKN_FIELDS}
    if engine not in ("llamacpp", "sglang"):
        return out  # an OpenAI-compatible server takes reasoning_effort as OpenAI defines it
    instructions = body.get("developer_instructions")
    if isinstance(instructions, str) and instructions and isinstance(out.get("messages"), list):
        out["messages"] = with_instructions(out["messages"], instructions)
    effort = requested_effort(body)
    if effort is not None:
        kwargs = dict(out.get("chat_template_kwargs") or {})
        kwargs.setdefault("enable_thinking", effort != "none")
        if effort in TEMPLATE_EFFORT:
            kwargs.setdefault("reasoning_effort", TEMPLATE_EFFORT[effort])
            out["reasoning_effort"] = TEMPLATE_EFFORT[effort]
        elif engine == "sglang":
            out.pop("reasoning_effort", None)  # SGLang knows low|medium|high only
        else:
            out["reasoning_effort"] = effort  # llama-server: "none" turns thinking off
        out["chat_template_kwargs"] = kwargs
    separate = body.get("separate_thinking") is not False
    if engine == "llamacpp" and constrained(body):
        # llama-server starts the grammar after the thinking only when it splits itself; in
        # its raw mode a grammar with an opened <think> fails ("Failed to initialize samplers").
        out["reasoning_format"] = "deepseek"
    elif engine == "llamacpp" and (mode != "engine" or not separate):
        # Per request too: a --reasoning-format in the model's args must not split for lkn.
        out["reasoning_format"] = "none"
    if engine == "sglang" and mode == "engine" and not separate:
        out["separate_reasoning"] = False
    return out


def channel_texts(pieces: list[Piece], wanted: tuple[str, ...]) -> dict[str, str]:
    texts: dict[str, str] = {}
    for p in pieces:
        if p.channel in wanted:
            texts[p.channel] = texts.get(p.channel, "") + p.text
    return texts


def split_message(message: dict[str, Any], *, think_opened: bool,
                  channels: tuple[str, ...] = ()) -> str:
    """Split a chat ``message`` in place; returns its reasoning text."""
    content = message.get("content")
    if not isinstance(content, str) or message.get("reasoning_content"):
        return ""  # nothing to split, or the engine already did
    parser = ReasoningParser(think_opened=think_opened)
    pieces = parser.feed(content) + parser.finish()
    reasoning, answer = join(pieces)
    message["content"] = answer
    if reasoning:
        message["reasoning_content"] = reasoning
    if channels:
        message["channels"] = channel_texts(pieces, channels)
    return reasoning


def _details(usage: dict[str, Any]) -> dict[str, Any]:
    details = usage.get("completion_tokens_details")
    if not isinstance(details, dict):
        details = usage["completion_tokens_details"] = {}
    return details


def set_reasoning_tokens(usage: dict[str, Any], tokens: int) -> None:
    _details(usage)["reasoning_tokens"] = tokens


def set_channel_tokens(usage: dict[str, Any], tokens: dict[str, int]) -> None:
    """Per channel, for the channels a request asked for with ``include_channels``."""
    _details(usage)["channel_tokens"] = tokens


class StreamShaper:
    """Rewrites a chat stream's ``data:`` payloads one by one: ``feed`` returns the payloads to
    send now (none while a tag may be cut), ``finish`` what is left when the stream ends."""

    def __init__(self, *, think_opened: bool, channels: tuple[str, ...] = ()) -> None:
        self._think_opened = think_opened
        self._channels = channels
        self._parsers: dict[int, ReasoningParser] = {}
        self._open: set[int] = set()  # choices whose finish_reason has not come yet
        self._template: dict[str, Any] = {}
        self.reasoning: list[str] = []  # all reasoning text sent, for the usage count
        self.channel_texts: dict[str, str] = {}  # the requested channels' text, likewise

    def feed(self, data: str) -> list[str]:
        try:
            obj = json.loads(data)
        except ValueError:
            return [data]
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) \
                or not obj["choices"]:
            return [data]  # the usage chunk, an error, or something lkn does not know
        self._template = {k: v for k, v in obj.items() if k not in ("choices", "usage")}
        out: list[dict[str, Any]] = []
        for choice in obj["choices"]:
            out += self._choice(choice) if isinstance(choice, dict) else [choice]
        if not out:
            return []
        chunks = [{**obj, "choices": [c]} for c in out]
        if "usage" in obj:  # older llama-server puts usage on the finish chunk: keep it last
            for c in chunks[:-1]:
                c.pop("usage", None)
        return [json.dumps(c, ensure_ascii=False) for c in chunks]

    def finish(self) -> list[str]:
        """The stream ended (``[DONE]`` or EOF): release what the parsers still hold."""
        out = []
        for index in sorted(self._open):
            for choice in self._pieces(index, self._parsers[index].finish(), {}, {}):
                out.append(json.dumps({**self._template, "choices": [choice]},
                                      ensure_ascii=False))
        self._open.clear()
        return out

    def _choice(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        index = choice.get("index", 0)
        sent = choice.get("delta")
        delta: dict[str, Any] = sent if isinstance(sent, dict) else {}
        parser = self._parsers.get(index)
        if parser is None:
            parser = self._parsers[index] = ReasoningParser(think_opened=self._think_opened)
            self._open.add(index)
        text = delta.get("content")
        pieces = parser.feed(text) if isinstance(text, str) and index in self._open else []
        finish = choice.get("finish_reason")
        if finish is not None and index in self._open:
            pieces += parser.finish()
            self._open.discard(index)
        lead = {k: v for k, v in choice.items() if k not in ("delta", "finish_reason")}
        carry = {k: v for k, v in delta.items() if not (k == "content" and isinstance(v, str))}
        out = self._pieces(index, pieces, lead, carry)
        if out:
            lead, carry = {}, {}
        if finish is not None or carry or any(v is not None for k, v in lead.items()
                                              if k != "index"):
            out.append({**lead, "index": index, "delta": carry, "finish_reason": finish})
        return out

    def _pieces(self, index: int, pieces: list[Piece], lead: dict[str, Any],
                carry: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for p in pieces:
            delta = dict(carry)
            delta["reasoning_content" if p.is_reasoning else "content"] = p.text
            if p.channel in self._channels:
                delta["channels"] = {p.channel: p.text}
                self.channel_texts[p.channel] = self.channel_texts.get(p.channel, "") + p.text
            if p.is_reasoning:
                self.reasoning.append(p.text)
            out.append({**lead, "index": index, "delta": delta, "finish_reason": None})
            lead, carry = {}, {}
        return out
