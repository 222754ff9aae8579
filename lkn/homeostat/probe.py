"""The probe's math and the FLUID/ANALYTIC decision (pure, numpy).

A probe generates one token (or a short answer, ``probe_tokens``) with top-k logprobs; each
position gets an uncertainty in [0, 1] (``token_uncertainty``), and the positions are combined
into one score (``aggregate``) that is compared with the threshold.

Per-token uncertainties (``probe_score``):
- ``entropy``: the normalized entropy below;
- ``margin``: ``1 - (p1 - p2)``, the two most likely candidates' probabilities as the engine
  gave them (not renormalized): a near-tie is uncertain however the tail looks;
- ``surprise``: ``1 - p1``: the probability the most likely token is not the one.

The entropy:

numpy is imported by the first probe, not with lkn: a gateway whose models all pass through
never pays its ~15 MB.

From the top-k logprobs of a probed token: renormalize over the k candidates,
``H = -sum(p * log p)``, normalized ``H / log k`` in [0, 1].

Defined edge cases:
- k = 1: a single candidate carries no measurable uncertainty -> 0.0;
- ``-inf`` (and llama.cpp's ``float lowest`` for probability 0) are candidates with p = 0: they
  count in k but add nothing to H;
- duplicated candidates (the same token listed twice) count once, when tokens are given;
- NaN, ``+inf``, an empty list, or all candidates at p = 0 -> ``None``: a failed probe, never a
  number.
"""
from __future__ import annotations

import math
from typing import Sequence

FLUID, ANALYTIC, PASSTHROUGH = "FLUID", "ANALYTIC", "PASSTHROUGH"
ZERO_PROB_LOGPROB = -1e30  # at or below this a logprob means "probability 0"


def normalized_entropy(logprobs: Sequence[float],
                       tokens: Sequence[str | int] | None = None) -> float | None:
    import numpy as np

    values = list(logprobs)
    if tokens is not None and len(tokens) == len(values):
        seen: set[str | int] = set()
        unique = []
        for tok, lp in zip(tokens, values):
            if tok not in seen:
                seen.add(tok)
                unique.append(lp)
        values = unique
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0 or np.isnan(arr).any() or np.isposinf(arr).any():
        return None
    k = arr.size
    alive = arr[arr > ZERO_PROB_LOGPROB]
    if alive.size == 0:
        return None
    if k == 1:
        return 0.0
    p = np.exp(alive - alive.max())
    p /= p.sum()
    p = p[p > 0]
    h = float(-(p * np.log(p)).sum())
    return min(1.0, max(0.0, h / math.log(k)))


FILLER_WORDS = frozenset({"the", "a", "an", "answer", "is", "it", "its", "of", "to", "sure",
                          "well", "so", "okay", "ok", "i", "think", "that", "this"})


def answer_position(tokens: Sequence[str]) -> int | None:
    """Index of the first answer-bearing token: not whitespace or punctuation, not a filler
    word ("The", "Answer", "is" ...). None if there is none among ``tokens``."""
    for i, tok in enumerate(tokens):
        word = "".join(ch for ch in tok if ch.isalnum()).lower()
        if word and word not in FILLER_WORDS:
            return i
    return None


def token_uncertainty(logprobs: Sequence[float], how: str = "entropy",
                      tokens: Sequence[str | int] | None = None) -> float | None:
    """One position's uncertainty in [0, 1] (see the module docstring); None for a failed
    position (no candidates, NaN, +inf)."""
    if how == "entropy":
        return normalized_entropy(logprobs, tokens)
    import numpy as np

    arr = np.asarray(list(logprobs), dtype=np.float64)
    if arr.size == 0 or np.isnan(arr).any() or np.isposinf(arr).any():
        return None
    p = np.sort(np.exp(np.minimum(arr, 0.0)))[::-1]  # a logprob above 0 is rounding: p = 1
    if how == "surprise":
        return float(min(1.0, max(0.0, 1.0 - p[0])))
    if how == "margin":
        second = p[1] if p.size > 1 else 0.0
        return float(min(1.0, max(0.0, 1.0 - (p[0] - second))))
    raise ValueError(f"unknown token score {how!r}")


QUANTILES = {"q50": 0.5, "q75": 0.75, "q90": 0.9}


def aggregate(entropies: Sequence[float | None], how: str,
              tokens: Sequence[str] | None = None) -> float | None:
    """Combine per-position uncertainties: ``first``, ``mean`` or ``max`` over valid positions,
    a quantile (``q50``, ``q75``, ``q90``: linear interpolation, numpy's default), or
    ``answer``: the first answer-bearing token (falls back to the first position)."""
    valid = [e for e in entropies if e is not None]
    if not valid or entropies[0] is None and how == "first":
        return None
    if how == "answer":
        pos = answer_position(tokens or ())
        if pos is not None and pos < len(entropies) and entropies[pos] is not None:
            return entropies[pos]
        return entropies[0]
    if how == "first":
        return valid[0]
    if how == "max":
        return max(valid)
    if how in QUANTILES:
        import numpy as np
        return float(np.quantile(valid, QUANTILES[how]))
    return sum(valid) / len(valid)


def normalized_answer(text: str) -> str:
    """An answer reduced for comparison: lower case, words only ("Paris." == "paris")."""
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split())


def disagreement(answers: Sequence[str]) -> float | None:
    """Self-consistency as an uncertainty: 1 - the share of answers that agree with the most
    common one, after ``normalized_answer``. 0 when all agree; None without answers."""
    if not answers:
        return None
    counts: dict[str, int] = {}
    for a in answers:
        key = normalized_answer(a)
        counts[key] = counts.get(key, 0) + 1
    return 1.0 - max(counts.values()) / len(answers)


def classify(entropy: float, threshold: float) -> str:
    return ANALYTIC if entropy >= threshold else FLUID
