"""A verifier as the deferral signal (pure): another model (usually the one requests escalate
to) reads the conversation, the small model's answer as the assistant's turn, and one question
("is your answer above correct?"), and generates one token; its probability of "no" among "yes"
and "no" is the score. It costs the verifier one prefill and no decoding, and when the request
escalates to the verifier, its answer's prompt is a prefix of the verification's, already in the
verifier's prompt cache. Measured against the probe's own token uncertainty in bench/RESULTS.md.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

UNDECIDED = 0.5  # the verifier said neither yes nor no among its top candidates


def verification_body(route: str, body: dict[str, Any], answer: str,
                      question: str) -> dict[str, Any] | None:
    """The verifier's chat request: the client's conversation (a raw prompt as the user's
    message), the answer as the assistant's, then the question; greedy. Only the messages
    travel: tools, formats and sampling settings are the answer's, not the judgement's. None
    for a prompt of token ids (another model's ids mean nothing to the verifier)."""
    if route == "chat":
        messages = list(body.get("messages") or [])
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompt = prompt[0]  # a batch is answered by its first prompt's probe
        if not isinstance(prompt, str):
            return None
        messages = [{"role": "user", "content": prompt}]
    return {"model": body.get("model"), "temperature": 0,
            "messages": [*messages, {"role": "assistant", "content": answer},
                         {"role": "user", "content": question}]}


def _word(token: str) -> str:
    return "".join(ch for ch in token if ch.isalpha()).lower()


def no_probability(candidates: Sequence[str], logprobs: Sequence[float]) -> float:
    """P("no") / (P("yes") + P("no")) over the verifier's top candidates of its first token
    (any case, spacing or punctuation: "Yes", " no", "No."); ``UNDECIDED`` when it offers
    neither."""
    yes = no = 0.0
    for token, lp in zip(candidates, logprobs):
        word = _word(token)
        if word in ("yes", "no") and math.isfinite(lp):
            if word == "yes":
                yes += math.exp(lp)
            else:
                no += math.exp(lp)
    return UNDECIDED if yes + no <= 0 else no / (yes + no)
