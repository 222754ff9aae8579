"""Keeping the probe's answer (pure): a request the homeostat lets through unchanged continues
from the tokens its probe generated instead of generating them again, so a kept answer costs the
small model about what an unprobed one does, and a streamed one starts with the probe's text.

``why_not`` says why a request cannot keep it (None: it can): the answer must be plain text that
continuing cannot change. Fields that shape the whole answer (tools, a grammar or JSON schema,
logprobs, several choices, echo) would restart or lose their state at the seam, and a stop
string whose start the probe's text ends with could straddle it; such requests are generated
again, as before. ``complete``: the probe wrote the whole answer (it stopped, or used the
client's whole budget), so no second call is made at all. ``remaining``: the budget left."""
from __future__ import annotations

from typing import Any

from lkn.engines.probe_answer import ProbeResult
from lkn.fleet.selector import explicit_answer_budget

# Set (not None, not False, not 0), any of these makes the answer more than plain continued text.
SHAPING_FIELDS = ("tools", "functions", "tool_choice", "function_call", "response_format",
                  "grammar", "json_schema", "logprobs", "top_logprobs", "n_probs", "echo",
                  "suffix", "best_of", "logit_bias",
                  # penalties that count generated tokens (the probe's become prompt), a floor
                  # on the answer's length (counted again), llama-server's own budget
                  "presence_penalty", "frequency_penalty", "repetition_penalty",
                  "repeat_penalty", "dry_multiplier", "min_tokens", "n_predict")


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []


def straddles(text: str, stops: list[str]) -> bool:
    """Whether ``text`` ends with a proper start of a stop string (the rest could follow)."""
    return any(stop[:i] and text.endswith(stop[:i]) for stop in stops
               for i in range(1, len(stop)))


def why_not(route: str, body: dict[str, Any], probe: ProbeResult) -> str | None:
    """Why the request cannot continue from the probe's answer; None when it can."""
    if route not in ("chat", "completions"):
        return f"{route} are not generated"
    if probe.text is None:
        return "the probe's answer is not plain text the engine gave token by token"
    if route == "completions" and not isinstance(body.get("prompt"), str):
        return "a batch or token-id prompt"
    if probe.finish_reason is None:
        return "the probe's answer does not say why it ended"
    if body.get("n") not in (None, 1):
        return "several choices"
    for name in SHAPING_FIELDS:
        if body.get(name) not in (None, False, 0, [], {}):
            return f"the request sets {name}"
    if body.get("seed") is not None and body.get("temperature") != 0:
        return "a seeded sample (the seed would restart at the seam)"
    if straddles(probe.text, _stops(body)):
        return "a stop string could straddle the probe's end"
    return None


def complete(body: dict[str, Any], probe: ProbeResult, asked: int) -> bool:
    """The probe's answer is the whole answer: it stopped on its own (end of text, a stop
    string), the engine ended it short of the ``asked`` tokens, or it used the client's budget."""
    if probe.finish_reason != "length" or probe.decoded < asked:
        return True
    budget = explicit_answer_budget(body)
    return budget is not None and probe.decoded >= budget


def remaining(body: dict[str, Any], probe: ProbeResult) -> int | None:
    """The answer budget left after the probe's tokens; None: the client set none."""
    budget = explicit_answer_budget(body)
    return None if budget is None else max(1, budget - probe.decoded)
