"""The canonical chat stream as Anthropic's named events, in the order the anthropic SDK's
``messages.stream()`` needs them (client-apis notes, 2.3 and 2.6).

``message_start`` goes out with the first chunk (input tokens 0: the usage chunk comes last);
then one block per kind of content in the order it arrives: reasoning is a ``thinking`` block
(closed with an empty ``signature_delta``, as llama-server does: there is no signature to give),
content a ``text`` block, each tool call index its own ``tool_use`` block (its argument
fragments ``input_json_delta``). Indices count from 0 in start order. A fragment for a tool call
whose block is already closed (an engine interleaving parallel calls) still goes to that
block's index: the SDK accumulates by index. At ``[DONE]``: ``message_delta`` with the stop
reason and the usage chunk's counts, and ``message_stop``.

A comment (lkn's keepalive or loading notes) is a ``ping``. An error event is Anthropic's
``error`` event; its type comes from the OpenAI error's code or type (no status mid-stream),
its message from ``error_message`` (as the whole answer's error).
A stream that ends without ``[DONE]`` is closed as a finished message if its finish reason had
come, and otherwise with an ``error`` event: a cut answer must not look complete.
"""
from __future__ import annotations

import uuid
from typing import Any

from lkn import fastjson
from lkn.engines.anthropic_blocks import as_dict, count, error_type_of, stop_reason
from lkn.request.inbound.base import StreamTranscoder


def message_id(chat_id: Any) -> str:
    """An Anthropic message id for a chat completion's id (the same answer, the same id)."""
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def event(name: str, data: dict[str, Any]) -> bytes:
    # lkn's codec: an engine's lone surrogate (a cut emoji) is escaped, never an error
    return b"event: " + name.encode() + b"\ndata: " + fastjson.dumps({"type": name, **data}) \
        + b"\n\n"


PING = event("ping", {})
TOO_LONG = "prompt is too long: "


def error_message(err: dict[str, Any]) -> str:
    """An OpenAI error's message for an Anthropic client. A prompt that no context holds is
    said Anthropic's way, "prompt is too long: ...": those are the words Claude Code looks for
    before it compacts the conversation and tries again. lkn's refusal for the VRAM budget
    (``param: model``) keeps its words: a shorter prompt would not help."""
    message = str(err.get("message") or "error")
    if (err.get("code") == "context_length_exceeded" and err.get("param") != "model"
            and not message.lower().startswith(TOO_LONG.strip())):
        return TOO_LONG + message
    return message


class AnthropicStream(StreamTranscoder):
    def __init__(self, model: str) -> None:
        super().__init__()
        self.model = model
        self.started = False
        self.open: tuple[str, int] | None = None  # the open block: (kind, its index)
        self.next_index = 0
        self.tool_blocks: dict[int, int] = {}  # a tool call's index -> its block's index
        self.finish_reason: Any = None
        self.input_tokens = 0
        self.output_tokens = 0

    def _start(self, obj: dict[str, Any]) -> bytes:
        if self.started:
            return b""
        self.started = True
        return event("message_start", {"message": {
            "id": message_id(obj.get("id")), "type": "message", "role": "assistant",
            "content": [], "model": self.model, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        kind, index = self.open
        self.open = None
        out = b""
        if kind == "thinking":
            out = event("content_block_delta", {"index": index, "delta": {
                "type": "signature_delta", "signature": ""}})
        return out + event("content_block_stop", {"index": index})

    def _open(self, kind: str, block: dict[str, Any]) -> tuple[bytes, int]:
        """Bytes that close the open block and start a new one of ``kind``; its index."""
        out = self._close()
        index = self.next_index
        self.next_index += 1
        self.open = (kind, index)
        return out + event("content_block_start", {"index": index,
                                                   "content_block": block}), index

    def _delta(self, kind: str, block: dict[str, Any], delta: dict[str, Any]) -> bytes:
        out = b""
        if self.open is None or self.open[0] != kind:
            out, _ = self._open(kind, block)
        assert self.open is not None
        return out + event("content_block_delta", {"index": self.open[1], "delta": delta})

    def _tool(self, call: dict[str, Any]) -> bytes:
        key = call.get("index", 0)
        key = key if isinstance(key, int) else 0
        fn = as_dict(call.get("function"))
        out = b""
        if key not in self.tool_blocks:
            out, self.tool_blocks[key] = self._open(f"tool:{key}", {
                "type": "tool_use", "id": str(call.get("id") or "toolu_" + uuid.uuid4().hex),
                "name": str(fn.get("name") or ""), "input": {}})
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            out += event("content_block_delta", {"index": self.tool_blocks[key], "delta": {
                "type": "input_json_delta", "partial_json": args}})
        return out

    def chunk(self, obj: dict[str, Any]) -> bytes:
        out = [self._start(obj)]
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = count(usage.get("prompt_tokens"))
            self.output_tokens = count(usage.get("completion_tokens"))
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return b"".join(out)
        delta = as_dict(choice.get("delta"))
        thinking = delta.get("reasoning_content")
        if isinstance(thinking, str) and thinking:
            out.append(self._delta("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""},
                                   {"type": "thinking_delta", "thinking": thinking}))
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.append(self._delta("text", {"type": "text", "text": ""},
                                   {"type": "text_delta", "text": text}))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            if isinstance(call, dict):
                out.append(self._tool(call))
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def done(self) -> bytes:
        return self._start({}) + self._close() + event("message_delta", {
            "delta": {"stop_reason": stop_reason(self.finish_reason, bool(self.tool_blocks)),
                      "stop_sequence": None},
            "usage": {"input_tokens": self.input_tokens,
                      "output_tokens": self.output_tokens}}) + event("message_stop", {})

    def error(self, body: dict[str, Any]) -> bytes:
        err = body.get("error")
        err = err if isinstance(err, dict) else {"message": str(err)}
        data: dict[str, Any] = {"type": error_type_of(err), "message": error_message(err)}
        if err.get("source") is not None:
            data["source"] = err["source"]
        extra = {"request_id": err["request_id"]} if err.get("request_id") else {}
        return event("error", {"error": data, **extra})

    def comment(self) -> bytes:
        return PING

    def close(self) -> bytes:
        if self.finish_reason is not None:
            return self.done()
        return self.error({"error": {"message": "the answer ended before it was complete",
                                     "type": "api_error", "source": "lkn"}})
