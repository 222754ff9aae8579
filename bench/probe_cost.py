"""Probe cost: end-to-end time of a 64-token answer on SmolLM2 with and without the entropy probe.

The 1-token probe is a request with top-k logprobs sent before the real one; the answer-then-
decide probe (a second model entry with ``probe_tokens = 16``) writes the answer's first 16
tokens, which the kept answer continues from (issue 24) instead of generating them again. With
llama-server's prompt caching the answer reuses the probe's prefill. Runs the modes interleaved
(same prompts, temperature 0, ignore_eos so every answer has exactly 64 tokens) and prints the
medians, their ratios, and the tokens each kept answer continued from (``x-lkn-probe-cost``).

    .venv/bin/python bench/probe_cost.py [--rounds 20]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lkn import running_lkn  # noqa: E402

PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about the sea.",
    "What are the benefits of regular exercise?", "Describe how a bicycle works.",
    "Give advice to a student starting university.",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    import openai
    models = '{ { name = "smol", model_file = MODEL, ctx_size = 1024, gpu_layers = 0, ' \
             'args = { "--threads", 1 } }, ' \
             '{ name = "smol16", model_file = MODEL, ctx_size = 1024, gpu_layers = 0, ' \
             'args = { "--threads", 1 }, homeostasis = { probe_tokens = 16, ' \
             'probe_aggregate = "q50" } } }'
    with running_lkn(models) as base:
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0)
        times: dict[str, list[float]] = {"passthrough": [], "probe": [], "probe16": []}
        probe_headers: list[float] = []
        kept: list[str] = []

        def once(mode: str, prompt: str) -> None:
            lkn = {"mode": "passthrough"} if mode == "passthrough" else \
                {"mode": "homeostatic", "threshold": 1.0, "intervention": "none"}
            t0 = time.perf_counter()
            raw = client.chat.completions.with_raw_response.create(
                model="smol16" if mode == "probe16" else "smol",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=args.tokens, temperature=0,
                extra_body={"lkn": lkn, "ignore_eos": True, "cache_prompt": True})
            r = raw.parse()
            assert r.usage.completion_tokens == args.tokens, r.usage
            times[mode].append(time.perf_counter() - t0)
            if mode == "probe":
                probe_headers.append(float(raw.headers["x-lkn-entropy"]))
            if mode == "probe16":
                kept.append(raw.headers["x-lkn-probe-cost"])

        once("passthrough", "warm up")  # engine starts are not part of the measurement
        once("probe16", "warm up")
        orders = [("passthrough", "probe", "probe16"), ("probe16", "probe", "passthrough"),
                  ("probe", "probe16", "passthrough")]
        for i in range(args.rounds):
            prompt = f"{PROMPTS[i % len(PROMPTS)]} (request {i})"
            for mode in orders[i % len(orders)]:
                once(mode, prompt)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"SmolLM2-135M Q4_1 on llama-server (CPU, 1 thread), {args.tokens}-token answers, "
          f"{args.rounds} rounds, prompt caching on")
    print(f"{'mode':<14}{'median s':>10}{'p90 s':>10}{'min s':>10}")
    for m, v in times.items():
        q = statistics.quantiles(v, n=10)[-1]
        print(f"{m:<14}{med[m]:>10.3f}{q:>10.3f}{min(v):>10.3f}")
    print(f"ratio probe/passthrough (median): {med['probe'] / med['passthrough']:.3f}")
    print(f"ratio probe16/passthrough (median): {med['probe16'] / med['passthrough']:.3f} "
          f"(16-token probe, kept answer continues from it; x-lkn-probe-cost of the first: "
          f"{kept[0]})")
    print(f"entropy of probed requests: {min(probe_headers):.3f}..{max(probe_headers):.3f}")


if __name__ == "__main__":
    main()
