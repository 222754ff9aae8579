"""The Response object and its event stream, built from lkn's canonical chat answer.

One ``ResponseFrame`` per request holds what every Response object of that request repeats
(its id, creation time, the client's model name and the request parameters the API echoes);
``response_object`` fills in the rest. ``ResponsesStream`` re-emits the canonical
``chat.completion.chunk`` stream as the Responses API's named events.

The openai SDK's ``responses.stream()`` assembles a snapshot from these events and asserts as it
goes (notes 1.4): ``response.created`` first, with ``output: []``; every content event names an
``output_index`` that an earlier ``output_item.added`` opened, of the right item type; an item's
identity (its id, a function call's ``call_id``) is the same in ``.added`` and ``.done``; the id
of the response never changes; and ``get_final_response()`` takes ``response.completed``'s
object as it is, so that one carries the whole output. Items are therefore opened lazily (the
first non-empty text of a kind) and closed when another kind starts or the answer ends, so at
most one item is open at a time and ``output_index`` follows the order of ``.added``. A call of a
free-form (``custom``) tool is a ``custom_tool_call`` item whose input is sent whole, as one
``custom_tool_call_input.delta`` and its ``.done``, once the call is complete: the engine streams
the JSON arguments ``{"input": ...}``, not the input itself.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from lkn import fastjson
from lkn.request.inbound.base import PING, StreamTranscoder
from lkn.request.inbound.responses_input import ToolName

# finish_reason -> (status, incomplete_details)
FINISHED: dict[str | None, tuple[str, dict[str, str] | None]] = {
    "length": ("incomplete", {"reason": "max_output_tokens"}),
    "content_filter": ("incomplete", {"reason": "content_filter"}),
}
COMPLETED: tuple[str, dict[str, str] | None] = ("completed", None)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` where it is an object, else an empty one: answers are read leniently."""
    return value if isinstance(value, dict) else {}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def outcome(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    """A chat finish_reason as the Response's ``status`` and ``incomplete_details``."""
    return FINISHED.get(finish_reason if isinstance(finish_reason, str) else None, COMPLETED)


@dataclass(frozen=True)
class ResponseFrame:
    """What every Response object of one request repeats."""
    id: str
    model: str
    echo: dict[str, Any]  # the request parameters the API echoes (instructions, tools, ...)
    created_at: int = field(default_factory=lambda: int(time.time()))


def response_object(frame: ResponseFrame, *, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None = None,
                    incomplete: dict[str, str] | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    done = status in ("completed", "incomplete", "failed")
    return {"id": frame.id, "object": "response", "created_at": frame.created_at,
            "status": status, "completed_at": int(time.time()) if done else None,
            "model": frame.model, "output": output, "usage": usage, "error": error,
            "incomplete_details": incomplete, **frame.echo}


def response_usage(usage: Any) -> dict[str, Any] | None:
    """Chat usage (``prompt_tokens``, ``completion_tokens``, details) as Responses usage."""
    if not isinstance(usage, dict):
        return None
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    details = usage.get("completion_tokens_details")
    prompt_details = usage.get("prompt_tokens_details")
    return {"input_tokens": input_tokens,
            "input_tokens_details": {
                "cached_tokens": _count(prompt_details.get("cached_tokens")
                                        if isinstance(prompt_details, dict) else 0),
                "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {
                "reasoning_tokens": _count(details.get("reasoning_tokens")
                                           if isinstance(details, dict) else 0)},
            "total_tokens": input_tokens + output_tokens}


def _count(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


# ---------------------------------------------------------------------------- output items
def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [], "status": status,
            "content": [{"type": "reasoning_text", "text": text}] if text else []}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [] if text is None else [text_part(text)]}


def custom_input(arguments: str) -> str:
    """A free-form tool's input from the arguments it was called with (``{"input": ...}``,
    how lkn declares it to the engine); arguments of any other shape are the input as they are."""
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):  # an engine's JSON may nest past the parser's limit
        return arguments
    value = parsed.get("input") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else arguments


def call_item(item_id: str, call_id: str, name: str, arguments: str,
              status: str = "completed", tool: ToolName | None = None) -> dict[str, Any]:
    """A tool call as the client declared its tool: a ``function_call`` (with its short name and
    ``namespace`` when the tool was in one), or a ``custom_tool_call`` with its ``input``."""
    item: dict[str, Any]
    if tool is not None and tool.custom:
        item = {"type": "custom_tool_call", "id": item_id, "call_id": call_id, "name": tool.name,
                "input": custom_input(arguments) if arguments else "", "status": status}
    else:
        item = {"type": "function_call", "id": item_id, "call_id": call_id,
                "name": tool.name if tool is not None else name, "arguments": arguments,
                "status": status}
    if tool is not None and tool.namespace is not None:
        item["namespace"] = tool.namespace
    return item


# ---------------------------------------------------------------------------- the stream
Finished = Callable[[dict[str, Any]], None]  # the final Response object (to store it)


@dataclass
class _Item:
    kind: str  # reasoning, message, function_call or custom_tool_call
    index: int  # output_index
    id: str
    text: str = ""  # reasoning or message text, or a call's arguments
    call_id: str = ""
    name: str = ""  # a call's chat function name
    tool: ToolName | None = None  # what the client declared behind that name
    done: bool = False

    def final(self, status: str = "completed") -> dict[str, Any]:
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text, status)
        if self.kind == "message":
            return message_item(self.id, self.text, status)
        return call_item(self.id, self.call_id, self.name, self.text, status, self.tool)


class ResponsesStream(StreamTranscoder):
    """The canonical chat stream as Responses API events (see the module's docstring)."""

    def __init__(self, frame: ResponseFrame, finished: Finished | None = None,
                 names: dict[str, ToolName] | None = None) -> None:
        super().__init__()
        self._frame = frame
        self._names = names or {}  # chat function name -> the client's tool
        self._finished = finished
        self._seq = 0
        self._started = False
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # chat tool call index -> its item
        self._finish_reason: str | None = None
        self._usage: dict[str, Any] | None = None

    # ------------------------------------------------------------------ framing
    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + fastjson.dumps(payload) + b"\n\n"

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        snapshot = response_object(self._frame, status="in_progress", output=[])
        return (self._event("response.created", response=snapshot)
                + self._event("response.in_progress", response=snapshot))

    # ------------------------------------------------------------------ items
    def _open_item(self, kind: str, prefix: str) -> tuple[_Item, bytes]:
        out = self._close()
        item = _Item(kind, len(self._items), new_id(prefix))
        self._items.append(item)
        self._open = item
        return item, out

    def _open_text(self, kind: str) -> tuple[_Item, bytes]:
        item, out = self._open_item(kind, "rs" if kind == "reasoning" else "msg")
        out += self._event("response.output_item.added", output_index=item.index,
                           item=item.final("in_progress") if kind == "reasoning"
                           else message_item(item.id, None, "in_progress"))
        if kind == "message":
            out += self._event("response.content_part.added", item_id=item.id,
                               output_index=item.index, content_index=0, part=text_part(""))
        return item, out

    def _text(self, kind: str, delta: str) -> bytes:
        out = b""
        item = self._open
        if item is None or item.kind != kind:
            item, out = self._open_text(kind)
        item.text += delta
        if kind == "reasoning":
            return out + self._event("response.reasoning_text.delta", item_id=item.id,
                                     output_index=item.index, content_index=0, delta=delta)
        return out + self._event("response.output_text.delta", item_id=item.id,
                                 output_index=item.index, content_index=0, delta=delta,
                                 logprobs=[])

    def _call(self, delta: dict[str, Any]) -> bytes:
        index = delta.get("index")
        key = index if isinstance(index, int) else len(self._calls)
        function = as_dict(delta.get("function"))
        name, fragment = function.get("name"), function.get("arguments")
        out = b""
        item = self._calls.get(key)
        if item is None:
            item, out = self._open_item("function_call", "fc")
            call_id = delta.get("id")
            item.call_id = call_id if isinstance(call_id, str) and call_id else new_id("call")
            item.name = name if isinstance(name, str) else ""
            item.tool = self._names.get(item.name)
            if item.tool is not None and item.tool.custom:
                item.kind = "custom_tool_call"  # its input is sent whole when it is complete
            self._calls[key] = item
            out += self._event("response.output_item.added", output_index=item.index,
                               item=item.final("in_progress"))
        elif isinstance(name, str) and name and name != item.name:
            item.name += name  # a name split over fragments (the item's kind stays)
            tool = self._names.get(item.name)
            if tool is not None and tool.custom == (item.kind == "custom_tool_call"):
                item.tool = tool
        if isinstance(fragment, str) and fragment:
            item.text += fragment
            # a late fragment of a closed call: the final object has it
            if not item.done and item.kind == "function_call":
                out += self._event("response.function_call_arguments.delta", item_id=item.id,
                                   output_index=item.index, delta=fragment)
        return out

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        item.done = True
        out = b""
        if item.kind == "reasoning":
            out += self._event("response.reasoning_text.done", item_id=item.id,
                               output_index=item.index, content_index=0, text=item.text)
        elif item.kind == "message":
            out += self._event("response.output_text.done", item_id=item.id,
                               output_index=item.index, content_index=0, text=item.text,
                               logprobs=[])
            out += self._event("response.content_part.done", item_id=item.id,
                               output_index=item.index, content_index=0,
                               part=text_part(item.text))
        elif item.kind == "custom_tool_call":
            text = item.final()["input"]
            if text:
                out += self._event("response.custom_tool_call_input.delta", item_id=item.id,
                                   output_index=item.index, delta=text)
            out += self._event("response.custom_tool_call_input.done", item_id=item.id,
                               output_index=item.index, input=text)
        else:
            out += self._event("response.function_call_arguments.done", item_id=item.id,
                               output_index=item.index, name=item.final()["name"],
                               arguments=item.text)
        return out + self._event("response.output_item.done", output_index=item.index,
                                 item=item.final())

    # ------------------------------------------------------------------ canonical events
    def chunk(self, obj: dict[str, Any]) -> bytes:
        out = self._start()
        usage = response_usage(obj.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return out
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                out += self._text("reasoning", reasoning)
            content = delta.get("content")
            if isinstance(content, str) and content:
                out += self._text("message", content)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    out += self._call(call)
        if isinstance(choice.get("finish_reason"), str):
            self._finish_reason = choice["finish_reason"]
        return out

    def done(self) -> bytes:
        out = self._start() + self._close()
        if all(item.kind == "reasoning" for item in self._items):
            out += self._open_text("message")[1] + self._close()  # an empty answer's message
        status, incomplete = outcome(self._finish_reason)
        response = response_object(self._frame, status=status, usage=self._usage,
                                   incomplete=incomplete,
                                   output=[item.final() for item in self._items])
        out += self._event(f"response.{status}", response=response)
        if self._finished is not None:
            self._finished(response)
        return out

    def error(self, body: dict[str, Any]) -> bytes:
        error = body.get("error")
        error = error if isinstance(error, dict) else {}
        message = error.get("message")
        message = message if isinstance(message, str) and message else "the answer failed"
        code = error.get("code") or error.get("type") or "server_error"
        code = code if isinstance(code, str) else str(code)
        param = error.get("param") if isinstance(error.get("param"), str) else None
        return self._failed(code, message, param)

    def _failed(self, code: str, message: str, param: str | None) -> bytes:
        out = self._start()
        output = [item.final("completed" if item.done else "incomplete") for item in self._items]
        response = response_object(self._frame, status="failed", output=output,
                                   usage=self._usage, error={"code": code, "message": message})
        out += self._event("error", code=code, message=message, param=param)
        return out + self._event("response.failed", response=response)

    def comment(self) -> bytes:
        return PING  # an SSE comment: the SDK's decoder skips it

    def close(self) -> bytes:
        """The canonical stream ended without ``[DONE]``: an answer whose end was seen
        (a finish_reason) completes; anything else failed."""
        if self._finish_reason is not None:
            return self.done()
        return self._failed("stream_ended", "the answer ended before it was complete", None)
