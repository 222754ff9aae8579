"""What one request learned about itself on its way: the model that answers, how its prompt was
counted, the engine's variant and backend, the homeostat's mode. Written as the request learns
it; the response headers (``x-lkn-*``) and the ``request`` event are both built from it once,
so no fact is kept as a header string and parsed back."""
from __future__ import annotations

from dataclasses import dataclass, field

from lkn.engines.probe_answer import ProbeResult


@dataclass
class Outcome:
    request_id: str
    cache: str | None = None           # hit, miss or bypass, when the model caches
    model: str | None = None           # the model whose engine answers (escalation moves it)
    prompt_tokens: int | None = None
    counted_by: str | None = None      # how the prompt was counted (tokenizer, estimate, ...)
    variant: int | None = None         # the granted engine's context size
    backend: str | None = None         # the upstream backend, for a model with several
    mode: str | None = None            # FLUID, ANALYTIC or PASSTHROUGH
    entropy: float | None = None       # the probe's score
    # What the decision cost: prompt tokens the probe had evaluated, tokens it generated, and
    # how many of those the answer kept (continued from, not generated again).
    probe_prefill: int | None = None
    probe_decode: int | None = None
    probe_kept: int = 0
    verifier_prefill: int | None = None  # the verifier's prompt tokens evaluated, if one judged
    intervention: str | None = None
    escalated_from: str | None = None
    fallback_from: str | None = None
    # Not headers: what the relay saw, for the traffic statistics and the event.
    ttft_s: float | None = None           # time to the first streamed event
    completion_tokens: int | None = None  # from the engine's usage, when it reported one
    usage_prompt_tokens: int | None = None  # the engine's own count of the prompt, likewise
    reasoning_tokens: int = 0             # of the completion tokens, likewise
    key_id: str = ""                      # the client key's id (server.keys), '' for none
    # headers a policy adds (the key's x-ratelimit-* ones; what a key's policy skipped)
    extra_headers: dict[str, str] = field(default_factory=dict)
    client_gone: bool = False             # the client left mid-stream (counted as 499)
    queued_at: float | None = None        # when it first queued for an engine (escalation
    #                                       keeps its place: it is not the newest request)
    client_key: str = ""                  # who asks (request.caller): fair share between keys
    priority: float = 50.0                # planner.BATCH 0 .. INTERACTIVE 50 .. TOP 100

    def forget_engine(self) -> None:
        """A model or backend tried before this one learned these; they are not this one's."""
        self.backend = self.mode = self.entropy = self.intervention = None
        self.escalated_from = self.probe_prefill = self.probe_decode = None
        self.verifier_prefill = None
        self.probe_kept = 0

    def take_engine(self, other: Outcome) -> None:
        """What ``other``'s lease learned, now this request's (the verifier's lease answers)."""
        self.model, self.variant, self.backend = other.model, other.variant, other.backend
        self.prompt_tokens, self.counted_by = other.prompt_tokens, other.counted_by

    def note_probe(self, probe: ProbeResult | None, verifier: ProbeResult | None) -> None:
        """What the decision cost: the probe's tokens, the verifier's prefill."""
        if probe is not None:
            self.probe_prefill, self.probe_decode = probe.prefilled, probe.decoded
        if verifier is not None:
            self.verifier_prefill = verifier.prefilled if verifier.prefilled is not None \
                else 0

    @property
    def entropy_text(self) -> str | None:
        return None if self.entropy is None else f"{self.entropy:.4f}"

    @property
    def probe_cost(self) -> str | None:
        if self.probe_decode is None:
            return None
        prefill = "?" if self.probe_prefill is None else str(self.probe_prefill)
        cost = f"prefill={prefill}, decode={self.probe_decode}, kept={self.probe_kept}"
        if self.verifier_prefill is not None:
            cost += f", verifier_prefill={self.verifier_prefill}, verifier_decode=1"
        return cost

    def headers(self) -> dict[str, str]:
        """The response headers: the same names and values whichever way the answer goes out."""
        out = {"x-request-id": self.request_id}
        for name, value in (("x-lkn-cache", self.cache), ("x-lkn-model", self.model),
                            ("x-lkn-prompt-tokens", None if self.prompt_tokens is None
                             else f"{self.prompt_tokens};{self.counted_by}"),
                            ("x-lkn-variant", None if self.variant is None
                             else str(self.variant)),
                            ("x-lkn-backend", self.backend), ("x-lkn-mode", self.mode),
                            ("x-lkn-entropy", self.entropy_text),
                            ("x-lkn-probe-cost", self.probe_cost),
                            ("x-lkn-intervention", self.intervention),
                            ("x-lkn-escalated-from", self.escalated_from),
                            ("x-lkn-fallback-from", self.fallback_from)):
            if value is not None:
                out[name] = value
        out.update(self.extra_headers)
        return out


def parse_probe_cost(header: str | None) -> dict[str, int]:
    """``x-lkn-probe-cost`` back as numbers (``prefill``, ``decode``, ``kept``,
    ``verifier_prefill``, ``verifier_decode``); an unknown count (``?``) is left out."""
    out: dict[str, int] = {}
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if value.isdigit():
            out[name] = int(value)
    return out
