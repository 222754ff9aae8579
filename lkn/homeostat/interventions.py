"""Interventions the homeostat applies to an ANALYTIC request (pure body rewrites).

- ``verify_prompt``: a verification instruction as a system message, merged into an existing
  system message or inserted first; for ``/v1/completions`` the prompt is prefixed;
- ``reasoning``: turn the engine's thinking on and raise the reasoning effort for this request;
  a FLUID request of such a model gets thinking turned off (``without_reasoning``), so only
  ANALYTIC requests pay for it. Either way the client gets a clean answer: thinking is split
  off by the engine or by lkn (``thinking``);
- ``escalate``: serve the request with another model (decided by the handler, not a rewrite).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from lkn.config import HomeostasisConfig, HOMEOSTASIS_MODES, INTERVENTIONS
from lkn.errors import BadRequest


def with_verify_prompt(route: str, body: dict[str, Any], text: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    if route == "completions":
        prompt = out.get("prompt")
        if isinstance(prompt, str):
            out["prompt"] = f"{text}\n\n{prompt}"
        elif isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            out["prompt"] = [f"{text}\n\n{p}" for p in prompt]
        return out
    messages = out.get("messages") or []
    for message in messages:
        if isinstance(message, dict) and message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, list):
                message["content"] = [{"type": "text", "text": text}, *content]
            else:
                message["content"] = f"{text}\n\n{content}" if content else text
            return out
    out["messages"] = [{"role": "system", "content": text}, *messages]
    return out


def with_reasoning(body: dict[str, Any], effort: str) -> dict[str, Any]:
    out = copy.deepcopy(body)
    out["reasoning_effort"] = effort
    kwargs = dict(out.get("chat_template_kwargs") or {})
    kwargs.update(enable_thinking=True, reasoning_effort=effort)
    out["chat_template_kwargs"] = kwargs
    return out


def without_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """Thinking off, unless the client asked for it itself."""
    kwargs = body.get("chat_template_kwargs")
    if body.get("reasoning_effort") is not None or body.get("reasoning") is not None or (
            isinstance(kwargs, dict) and "enable_thinking" in kwargs):
        return body
    out = copy.deepcopy(body)
    out["chat_template_kwargs"] = {**(kwargs or {}), "enable_thinking": False}
    return out


def request_overrides(settings: HomeostasisConfig, lkn_field: Any,
                      header_mode: str | None) -> HomeostasisConfig:
    """Apply a request's ``"lkn": {"mode", "threshold", "intervention"}`` field and its
    ``x-lkn-mode`` header (the header wins) on top of the model's settings."""
    from dataclasses import replace

    if lkn_field is not None and not isinstance(lkn_field, Mapping):
        raise BadRequest("'lkn' must be an object", param="lkn")
    fields = dict(lkn_field or {})
    unknown = set(fields) - {"mode", "threshold", "intervention"}
    if unknown:
        raise BadRequest(f"'lkn.{sorted(unknown)[0]}' is not a known option", param="lkn")
    if header_mode:
        fields["mode"] = header_mode.lower()
    if "mode" in fields and fields["mode"] not in HOMEOSTASIS_MODES:
        raise BadRequest(f"lkn mode must be one of {', '.join(HOMEOSTASIS_MODES)}, "
                         f"got {fields['mode']!r}", param="lkn.mode")
    if "threshold" in fields:
        t = fields["threshold"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
            raise BadRequest(f"lkn threshold must be a number in [0, 1], got {t!r}",
                             param="lkn.threshold")
        fields["threshold"] = float(t)
        fields["analytic_share"] = None  # the client's threshold, not the one holding a share
    if "intervention" in fields and fields["intervention"] not in INTERVENTIONS:
        raise BadRequest(f"lkn intervention must be one of {', '.join(INTERVENTIONS)}, "
                         f"got {fields['intervention']!r}", param="lkn.intervention")
    return replace(settings, **fields)
