"""A request that keeps its probe's answer (``homeostat.keep`` decides whether it may): what to
send the engine instead of the request, and how to stitch the answer (``relay.continued``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lkn.engines.probe_answer import ProbeResult
from lkn.fleet.records import Lease
from lkn.homeostat import keep
from lkn.relay.continued import Continued

# What decides the generated text: the probe must have seen exactly this of the engine's payload
# (the thinking relay may fold instructions in or set a reasoning effort after the probe).
_GENERATIVE = ("messages", "prompt", "chat_template_kwargs", "reasoning_effort")


@dataclass(frozen=True)
class Kept:
    route: str
    body: dict[str, Any]
    probe: ProbeResult
    asked: int   # the tokens the probe asked for
    engine: str  # the engine process that probed (its prompt cache holds the answer's start)

    @classmethod
    def of(cls, route: str, body: dict[str, Any], probe: ProbeResult | None, asked: int,
           lease: Lease) -> Kept | None:
        if probe is None or keep.why_not(route, body, probe) is not None:
            return None
        return cls(route, body, probe, asked, lease.process.key)

    def plan(self, lease: Lease, payload: dict[str, Any],
             probed: dict[str, Any]) -> tuple[Continued, dict[str, Any] | None] | None:
        """The stitcher and the payload continuing the probe's answer (None: the probe wrote
        the whole answer, nothing to send), for ``payload`` as the engine would get it;
        ``probed``: what the probe sent. None: the answer is generated again (another engine
        than the one that probed answers, the probe saw another prompt, or this engine cannot
        continue)."""
        client = lease.client
        if lease.process.key != self.engine or client.continuation_refused or any(
                payload.get(k) != probed.get(k) for k in _GENERATIVE):
            return None
        stitcher = Continued(self.route, self.probe, client.repeats_prefill(self.route))
        if keep.complete(self.body, self.probe, self.asked):
            return stitcher, None
        continuing = client.continuation(self.route, payload, self.probe)
        if continuing is None:
            return None
        continuing.pop("max_completion_tokens", None)
        left = keep.remaining(self.body, self.probe)
        if left is None:
            continuing.pop("max_tokens", None)
        else:
            continuing["max_tokens"] = left
        return stitcher, continuing
