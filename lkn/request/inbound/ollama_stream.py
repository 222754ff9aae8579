"""Ollama's answer shapes: a canonical (OpenAI) answer as Ollama's whole object, and the
canonical SSE stream as Ollama's NDJSON stream (one JSON object a line, ``application/x-ndjson``).

Two flavours share every rule: ``chat`` (``/api/chat``: text in ``message.content``) and
``generate`` (``/api/generate``: text in ``response``, the final object adds ``context: []``).
The canonical answer may be a chat completion (``message``/``delta``) or, for a raw generate, a
text completion (``text``); both are read.

Where Ollama and lkn differ:

- ``done_reason`` is ``stop`` or ``length``; a tool call ends with ``stop`` (as Ollama does) and
  so does ``content_filter`` (Ollama has no such reason).
- Tool-call ``arguments`` are a JSON *object* in Ollama: the canonical argument fragments are
  gathered per index and the complete calls go out in one object when the finish chunk (or
  ``[DONE]``) comes; arguments that are not a JSON object become ``{}``.
- Durations are nanoseconds. ``total_duration`` is measured from the adapter's creation (the
  request's arrival) on the monotonic clock. With llama-server's ``timings`` (``prompt_ms``,
  ``predicted_ms``) the prompt and eval durations are the engine's and ``load_duration`` is the
  rest (queueing and loading in lkn); without them a stream splits at its first generated token
  (``prompt_eval_duration`` = time to it, ``eval_duration`` = the rest, ``load_duration`` 0) and
  a whole answer puts everything in ``eval_duration``.
- A stream cut without ``[DONE]`` (rare: lkn sends its own error event then) ends with the final
  object when the finish reason had already come, else with an ``{"error": ...}`` line, so an
  Ollama client never waits for a ``done: true`` that will not come.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from lkn import fastjson
from lkn.request.inbound.base import StreamTranscoder

Clock = Callable[[], int]  # nanoseconds, monotonic

DONE_REASONS = {"length": "length"}  # every other finish reason is Ollama's "stop"


def created_at(epoch_ns: int | None = None) -> str:
    """UTC RFC 3339 with nanoseconds, trailing zeros trimmed: Go's ``time.RFC3339Nano``."""
    ns = time.time_ns() if epoch_ns is None else epoch_ns
    seconds, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{frac:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def done_reason(finish: Any) -> str:
    return DONE_REASONS.get(finish, "stop") if isinstance(finish, str) else "stop"


def arguments_object(raw: Any) -> dict[str, Any]:
    """A tool call's canonical ``arguments`` (a JSON string) as the object Ollama sends."""
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        return {}
    try:
        value = fastjson.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def tool_calls_out(calls: Any) -> list[dict[str, Any]]:
    """Canonical ``tool_calls`` (``{id, function: {name, arguments: str}}``) in Ollama's shape."""
    out: list[dict[str, Any]] = []
    for i, call in enumerate(calls if isinstance(calls, list) else []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        name = function.get("name")
        item: dict[str, Any] = {"function": {
            "index": i, "name": name if isinstance(name, str) else "",
            "arguments": arguments_object(function.get("arguments"))}}
        if isinstance(call.get("id"), str) and call["id"]:
            item["id"] = call["id"]
        out.append(item)
    return out


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _ms(timings: Any, key: str) -> float | None:
    value = timings.get(key) if isinstance(timings, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def stats(total_ns: int, usage: Any, timings: Any = None,
          first_token_ns: int | None = None) -> dict[str, int]:
    """The final object's counts and durations (see the module's docstring)."""
    total = max(total_ns, 0)
    prompt_ms, predicted_ms = _ms(timings, "prompt_ms"), _ms(timings, "predicted_ms")
    if prompt_ms is not None and predicted_ms is not None:
        prompt_eval, evaluation = int(prompt_ms * 1e6), int(predicted_ms * 1e6)
        load = max(total - prompt_eval - evaluation, 0)
    elif first_token_ns is not None:
        prompt_eval = min(max(first_token_ns, 0), total)
        evaluation, load = total - prompt_eval, 0
    else:
        prompt_eval, evaluation, load = 0, total, 0
    return {"total_duration": total, "load_duration": load,
            "prompt_eval_count": _count(usage, "prompt_tokens") or _count(timings, "prompt_n"),
            "prompt_eval_duration": prompt_eval,
            "eval_count": _count(usage, "completion_tokens") or _count(timings, "predicted_n"),
            "eval_duration": evaluation}


def whole_answer(obj: dict[str, Any], *, model: str, flavour: str,
                 total_ns: int) -> dict[str, Any]:
    """A canonical whole answer (chat or text completion) as Ollama's one object."""
    choices = obj.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content") if message else choice.get("text")
    thinking = message.get("reasoning_content")
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    text = content if isinstance(content, str) else ""
    if flavour == "chat":
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if isinstance(thinking, str) and thinking:
            msg["thinking"] = thinking
        calls = tool_calls_out(message.get("tool_calls"))
        if calls:
            msg["tool_calls"] = calls
        out["message"] = msg
    else:
        out["response"] = text
        if isinstance(thinking, str) and thinking:
            out["thinking"] = thinking
    out.update(done=True, done_reason=done_reason(choice.get("finish_reason")))
    if flavour == "generate":
        out["context"] = []
    out.update(stats(total_ns, obj.get("usage"), obj.get("timings")))
    return out


def load_answer(*, model: str, flavour: str, reason: str) -> dict[str, Any]:
    """Ollama's answer to a load (or unload) call: no text, no counts."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    if flavour == "chat":
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    return out | {"done": True, "done_reason": reason}


def embeddings(obj: dict[str, Any]) -> list[list[Any]]:
    """The vectors of a canonical embeddings list, in input order."""
    data = obj.get("data")
    items = [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []
    items.sort(key=lambda d: d["index"] if isinstance(d.get("index"), int) else 0)
    return [d["embedding"] for d in items if isinstance(d.get("embedding"), list)]


def embed_answer(obj: dict[str, Any], *, model: str, total_ns: int,
                 load_only: bool) -> dict[str, Any]:
    """``/api/embed``'s answer (an empty input is a load call: no vectors)."""
    count = 0 if load_only else _count(obj.get("usage"), "prompt_tokens")
    return {"model": model, "embeddings": [] if load_only else embeddings(obj),
            "total_duration": max(total_ns, 0), "load_duration": 0,
            "prompt_eval_count": count}


def ndjson(obj: dict[str, Any]) -> bytes:
    return fastjson.dumps(obj) + b"\n"


class OllamaStream(StreamTranscoder):
    """The canonical chat (or text) completion stream as Ollama's NDJSON stream."""

    def __init__(self, *, model: str, flavour: str, started_ns: int,
                 clock: Clock = time.monotonic_ns) -> None:
        super().__init__()
        self.model = model
        self.flavour = flavour  # "chat" or "generate"
        self._started = started_ns
        self._clock = clock
        self._first_token: int | None = None  # ns after the start
        self._finish: str | None = None
        self._usage: Any = None
        self._timings: Any = None
        self._calls: dict[int, dict[str, Any]] = {}  # index -> {id, name, arguments (text)}

    def _piece(self, content: str, thinking: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": created_at()}
        if self.flavour == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            out["message"] = message
        else:
            out["response"] = content
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        return out

    def chunk(self, obj: dict[str, Any]) -> bytes:
        if obj.get("usage") is not None:
            self._usage = obj["usage"]
        if obj.get("timings") is not None:
            self._timings = obj["timings"]
        choices = obj.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return b""
        delta = choice.get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content = delta.get("content") if delta else choice.get("text")
        thinking = delta.get("reasoning_content")
        content = content if isinstance(content, str) else ""
        thinking = thinking if isinstance(thinking, str) else ""
        self._gather(delta.get("tool_calls"))
        out = b""
        if content or thinking:
            if self._first_token is None:
                self._first_token = self._clock() - self._started
            out = ndjson(self._piece(content, thinking))
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish = finish
            out += self._flush_calls()
        return out

    def _gather(self, deltas: Any) -> None:
        for position, delta in enumerate(deltas if isinstance(deltas, list) else []):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index")
            index = index if isinstance(index, int) else position
            call = self._calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            if isinstance(delta.get("id"), str):
                call["id"] = delta["id"]
            function = delta.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["name"] += function["name"]
                if isinstance(function.get("arguments"), str):
                    call["arguments"] += function["arguments"]
            if self._first_token is None:
                self._first_token = self._clock() - self._started

    def _flush_calls(self) -> bytes:
        if not self._calls or self.flavour != "chat":
            self._calls.clear()
            return b""
        calls = [{"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for _, c in sorted(self._calls.items())]
        self._calls.clear()
        piece = self._piece("", "")
        piece["message"]["tool_calls"] = tool_calls_out(calls)
        return ndjson(piece)

    def done(self) -> bytes:
        out = self._flush_calls()
        final = self._piece("", "")
        final.update(done=True, done_reason=done_reason(self._finish))
        if self.flavour == "generate":
            final["context"] = []
        final.update(stats(self._clock() - self._started, self._usage, self._timings,
                           self._first_token))
        return out + ndjson(final)

    def error(self, body: dict[str, Any]) -> bytes:
        return ndjson(error_body(body))

    def comment(self) -> bytes:
        return b""  # NDJSON has no comment; an empty line would break clients' JSON parsing

    def close(self) -> bytes:
        if self._finish is not None:
            return self.done()
        return ndjson({"error": "the answer ended before it was complete"})


def error_body(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-shaped error as Ollama's ``{"error": "message"}``."""
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else error
    if not isinstance(message, str) or not message:
        message = "the request failed"
    return {"error": message}
