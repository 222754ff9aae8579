"""A cheap upper bound on a request's prompt tokens: exact counting only when it can matter.

Counting exactly costs two calls to the engine (``/apply-template`` + ``/tokenize``) or a local
tokenization. Most requests are far from every context limit, and then the count cannot change
which variant serves them. The bound decides those for free:

- byte-level BPE tokenizers (GPT-2, Llama 3, Qwen, SmolLM …) never make more tokens than the
  UTF-8 bytes they encode, SentencePiece with byte fallback at most one more (its dummy prefix);
  special tokens the template writes as text (``<|im_start|>``) are one token for many bytes. So
  tokens(prompt) <= bytes(rendered prompt) + 2 (BOS and the prefix);
- the rendered prompt's bytes are bounded without rendering it: the contents' bytes, plus what
  the model's own chat template writes around them, measured once per model by rendering it
  (``TemplateShape``: the fixed part — default system prompt, generation prompt — and the most
  one more message of any role adds).

Only plain messages (``role`` + string ``content``) are bounded; tools, content parts, tool calls
or a chat template passed to the engine on its command line (``--chat-template…``) make the
bound unknown, and lkn counts exactly. ``tests/test_real_engine.py`` checks the bound against
llama-server's own count on real prompts.
"""
from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from lkn.config import ModelConfig
from lkn.engines.chat_template import read_template_info
from lkn.engines.tokens import _render_template, local_source

SLACK = 16  # date strings some templates render (Llama 3's "Today Date") vary a little
_EMPTY = {"role": "user", "content": ""}


@dataclass(frozen=True)
class TemplateShape:
    fixed: int         # bytes a one-message conversation adds around its (empty) content
    per_message: int   # the most bytes one more (empty) message of any role adds


def custom_template(model: ModelConfig) -> bool:
    args = [a for v in model.variants for a in v.args]
    return any(a.startswith("--chat-template") for a in args)


_SHAPES: dict[tuple[str, str], TemplateShape | None] = {}


def template_shape(path: str, kind: str) -> TemplateShape | None:
    """Blocking: call from a worker thread. Measured once per tokenizer."""
    key = (path, kind)
    if key not in _SHAPES:
        _SHAPES[key] = _measure(path, kind)
    return _SHAPES[key]


def _measure(path: str, kind: str) -> TemplateShape | None:
    """Render the template around empty messages. None: no usable template."""
    if not os.path.exists(path):
        return None
    try:
        tok = read_template_info(path, kind)
    except Exception:  # unreadable files: count exactly instead
        return None
    template = tok.template
    if not template:
        return None

    def size(messages: list[dict[str, str]]) -> int | None:
        try:
            return len(_render_template(template, messages, bos=tok.bos, eos=tok.eos,
                                        extra={}).encode("utf-8"))
        except Exception:  # templates may refuse some role orders
            return None

    fixed = size([_EMPTY])
    if fixed is None:
        return None
    steps = []
    for role in ("assistant", "user", "system", "tool"):
        grown = size([_EMPTY, {"role": role, "content": ""}])
        if grown is not None:
            steps.append(grown - fixed)
    pair = size([_EMPTY, {"role": "assistant", "content": ""}, _EMPTY])
    if pair is not None:
        steps.append(-(-(pair - fixed) // 2))  # a whole turn of two, in case a role alone is refused
    if not steps:
        return None
    return TemplateShape(fixed=fixed + SLACK, per_message=max(0, max(steps)))


async def model_shape(model: ModelConfig) -> TemplateShape | None:
    """The model's template shape; the first call per tokenizer measures it in a thread."""
    if custom_template(model):
        return None
    key = local_source(model)
    if key in _SHAPES:
        return _SHAPES[key]
    return await asyncio.to_thread(template_shape, *key)


def prompt_bound(route: str, body: dict[str, Any], shape: TemplateShape | None) -> int | None:
    """An upper bound on the prompt's tokens, or None when lkn cannot bound it cheaply."""
    if route == "chat":
        messages = body.get("messages")
        if shape is None or not isinstance(messages, list) or body.get("tools") \
                or body.get("chat_template_kwargs"):
            return None
        content = 0
        for m in messages:
            if not isinstance(m, dict) or set(m) - {"role", "content"} \
                    or not isinstance(m.get("content"), str):
                return None
            content += len(m["content"].encode("utf-8"))
        return content + shape.fixed + shape.per_message * len(messages) + 2
    prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8")) + 2
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return len(prompt)
        if all(isinstance(p, str) for p in prompt):
            return max(len(p.encode("utf-8")) for p in prompt) + 2
    return None


def warm_shapes(models: list[ModelConfig]) -> None:
    """Measure every model's template ahead of the first request (blocking: a thread)."""
    for model in models:
        if not custom_template(model):
            template_shape(*local_source(model))
