"""Token usage of one answer, as the engine reported it, for the metrics (pure).

Tokens per second are completion tokens over the generation time: the engine's own decode time
when it reports one (llama-server's ``timings.predicted_ms``), else the wall time lkn saw (from
the first streamed event, or from sending the request for a whole answer, to the end).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lkn import fastjson


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None  # None: no completion tokens or no usable time
    reasoning_tokens: int = 0  # of the completion tokens (completion_tokens_details)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def read_usage(usage: Any, timings: Any, wall_s: float | None) -> Usage | None:
    """``usage`` and ``timings`` as the engine sent them (any shape); None without usage."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(
        usage.get("completion_tokens"))
    seconds = wall_s
    if isinstance(timings, dict):
        predicted_ms = timings.get("predicted_ms")
        if isinstance(predicted_ms, (int, float)) and predicted_ms > 0:
            seconds = predicted_ms / 1000
    rate = completion / seconds if completion and seconds and seconds > 0 else None
    details = usage.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else 0
    return Usage(prompt, completion, rate, reasoning)


def answer_usage(raw: bytes, wall_s: float) -> Usage | None:
    """The usage of a whole JSON answer as the engine sent it."""
    try:
        data = fastjson.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return read_usage(data.get("usage"), data.get("timings"), wall_s)
