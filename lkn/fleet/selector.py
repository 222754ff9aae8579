"""What a request needs, and which context variants can hold it (pure rules of ModelSelector).

need = prompt tokens + answer budget + margin, where the answer budget is ``max_completion_tokens``
or ``max_tokens`` or the model's ``default_max_tokens``. The candidate variants are those whose
context holds ``need`` and whose VRAM estimate fits the budget, smallest context first; the
scheduler then reuses a running one or starts the smallest it can. If none holds the request the
client gets a 400 ``context_length_exceeded`` with the numbers, instead of the engine silently
cutting the answer at the end of its context (llama-server answers 200 with ``finish_reason:
"length"`` in that case).

Only what the client asked for can be refused: ``default_max_tokens`` steers which variant to
start, but a request without ``max_tokens`` whose prompt fits a variant is served by it even when
prompt + default does not fit; the engine then answers until its context is full, as OpenAI does
when ``max_tokens`` is absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lkn.errors import ContextLengthExceeded
from lkn.fleet.scheduler import Option


@dataclass(frozen=True)
class VariantInfo:
    key: str
    ctx: int
    vram_mb: int
    local: bool = True  # False: a remote upstream (no memory, no engine slot here)
    group: str = ""     # its backend, for a model with several


def explicit_answer_budget(body: dict[str, Any]) -> int | None:
    """``max_completion_tokens`` or ``max_tokens`` as the client sent it, None if absent."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def need(prompt_tokens: int, answer_tokens: int | None, *, default_max_tokens: int, margin: int,
         embeddings: bool = False) -> int:
    """Context a request needs: prompt + answer budget (none for embeddings) + margin."""
    if embeddings:
        return prompt_tokens + margin
    answer = default_max_tokens if answer_tokens is None else answer_tokens
    return prompt_tokens + answer + margin


def options_for(model: str, variants: Sequence[VariantInfo], *, prompt_tokens: int,
                answer_tokens: int | None, default_max_tokens: int, margin: int,
                budget_mb: int, embeddings: bool = False) -> tuple[Option, ...]:
    """The variants that hold a request, smallest first (see the module's docstring)."""
    wanted = need(prompt_tokens, answer_tokens, default_max_tokens=default_max_tokens,
                  margin=margin, embeddings=embeddings)
    try:
        return candidate_options(model, variants, wanted, budget_mb=budget_mb,
                                 prompt_tokens=prompt_tokens)
    except ContextLengthExceeded:
        if answer_tokens is not None or embeddings:
            raise  # what the client asked for cannot fit
    # The default answer budget only steers: any variant that holds the prompt and one token.
    return candidate_options(model, variants, prompt_tokens + margin + 1, budget_mb=budget_mb,
                             prompt_tokens=prompt_tokens)


def candidate_options(model: str, variants: Sequence[VariantInfo], need: int, *,
                      budget_mb: int, prompt_tokens: int) -> tuple[Option, ...]:
    fitting = [v for v in variants if v.vram_mb <= budget_mb]
    options = tuple(Option(v.key, v.ctx, v.vram_mb, v.local, v.group)
                    for v in sorted(fitting, key=lambda v: v.ctx) if v.ctx >= need)
    if options:
        return options
    largest = max((v.ctx for v in fitting), default=0)
    if not fitting:
        raise ContextLengthExceeded(
            f"no variant of model '{model}' fits the VRAM budget of {budget_mb} MiB "
            f"(smallest needs {min(v.vram_mb for v in variants)} MiB)", param="model")
    raise ContextLengthExceeded(
        f"This request needs {need} tokens ({prompt_tokens} in the prompt plus the answer "
        f"budget), but the largest context of model '{model}' that fits the VRAM budget holds "
        f"{largest} tokens. Shorten the prompt or lower max_tokens.", param="messages")


def bound_decides(variants: Sequence[VariantInfo], bound: int, *, answer_tokens: int | None,
                  default_max_tokens: int, margin: int, budget_mb: int,
                  embeddings: bool = False) -> bool:
    """Whether an upper bound on the prompt's tokens already makes the choice: it fits the
    smallest variant within the budget, so every exact count (<= bound) gets the same options
    (all of them) and needs no counting."""
    fitting = [v.ctx for v in variants if v.vram_mb <= budget_mb]
    wanted = need(bound, answer_tokens, default_max_tokens=default_max_tokens, margin=margin,
                  embeddings=embeddings)
    return bool(fitting) and wanted <= min(fitting)
