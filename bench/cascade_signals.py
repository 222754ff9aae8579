"""Which deferral signal predicts SmolLM2's wrong answers? Collect, then measure.

``collect``: starts two llama-servers directly (not through lkn: this measures the models, the
cascade through lkn is bench/cascade.py), SmolLM2-135M (``-np 5``, so one request can carry
``n = 5`` samples) and Qwen2.5-Coder-1.5B (from scripts/bench-models.sh), each ``--threads 1``,
and asks every question of bench/data/cascade_{calib,heldout}.jsonl:

- small, temperature 0, ``max_tokens`` 16, top-10 logprobs of every answer token;
- small, ``n = 5`` samples at temperature 1.0 in one request (self-consistency);
- strong, temperature 0, ``max_tokens`` 16.

Raw answers go to bench/out/cascade_signals.jsonl. ``analyze`` (the default after collecting)
computes every candidate signal with lkn's own math (lkn/probe.py) and prints the AUROC for
"the small model is wrong" with 95 % bootstrap intervals and the paired difference to the
first-token entropy, on the calibration split and on the held-out split. The candidate is
chosen on the calibration split only; the held-out split reports it.

    .venv/bin/python bench/cascade_signals.py collect
    .venv/bin/python bench/cascade_signals.py analyze
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from _lkn import child, smollm2  # noqa: E402
from lkn.homeostat.answers import matches  # noqa: E402
from lkn.homeostat.calibration import auroc, bootstrap  # noqa: E402
from lkn.engines.llamacpp import default_binary  # noqa: E402
from lkn.homeostat.probe import aggregate, answer_position, disagreement, token_uncertainty  # noqa: E402

STRONG = os.path.join(os.path.dirname(HERE), ".models", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
OUT = os.path.join(HERE, "out")
RAW = os.path.join(OUT, "cascade_signals.jsonl")
SAMPLES = 5


def load(split: str) -> list[dict[str, Any]]:
    with open(os.path.join(HERE, "data", f"cascade_{split}.jsonl")) as f:
        return [{**json.loads(line), "split": split} for line in f if line.strip()]


def post(base: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        out: dict[str, Any] = json.load(resp)
        return out


def wait_health(base: str, proc: Any) -> None:
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server for {base} exited")
        time.sleep(0.2)
    raise RuntimeError(f"llama-server for {base} did not start")


def ask_small(base: str, q: dict[str, Any]) -> dict[str, Any]:
    msgs = [{"role": "user", "content": q["question"]}]
    r = post(base, {"messages": msgs, "max_tokens": 16, "temperature": 0, "logprobs": True,
                    "top_logprobs": 10, "cache_prompt": True})
    ch = r["choices"][0]
    content = ch["logprobs"]["content"]
    s = post(base, {"messages": msgs, "max_tokens": 16, "temperature": 1.0, "n": SAMPLES,
                    "cache_prompt": True, "seed": 13})
    return {"small": ch["message"]["content"] or "", "small_finish": ch["finish_reason"],
            "tokens": [c["token"] for c in content],
            "top": [[t["logprob"] for t in c["top_logprobs"]] for c in content],
            "samples": [c["message"]["content"] or "" for c in s["choices"]]}


def ask_strong(base: str, q: dict[str, Any]) -> dict[str, Any]:
    r = post(base, {"messages": [{"role": "user", "content": q["question"]}], "max_tokens": 16,
                    "temperature": 0, "cache_prompt": True})
    return {"strong": r["choices"][0]["message"]["content"] or ""}


def collect(args: argparse.Namespace) -> None:
    if not os.path.exists(STRONG):
        sys.exit(f"{STRONG} is missing: run scripts/bench-models.sh first")
    qs = load("calib") + load("heldout")
    os.makedirs(OUT, exist_ok=True)
    results: dict[str, dict[str, Any]] = {q["id"]: dict(q) for q in qs}
    binary = default_binary()

    def run(name: str, model: str, port: int, np_: int,
            ask: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        base = f"http://127.0.0.1:{port}"
        argv = [binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
                "-c", str(512 * np_), "-np", str(np_), "--threads", "1", "-ngl", "0"]
        with child(argv, os.path.join(OUT, f"cascade_signals_{name}.log")) as proc:
            wait_health(base, proc)
            t0 = time.monotonic()
            for i, q in enumerate(qs):
                results[q["id"]].update(ask(base, q))
                if (i + 1) % 50 == 0:
                    print(f"  {name}: {i + 1}/{len(qs)} ({time.monotonic() - t0:.0f}s)",
                          file=sys.stderr)

    threads = [threading.Thread(target=run, args=("small", smollm2(), args.port, SAMPLES,
                                                  ask_small)),
               threading.Thread(target=run, args=("strong", STRONG, args.port + 1, 1,
                                                  ask_strong))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(RAW, "w") as f:
        for q in qs:
            f.write(json.dumps(results[q["id"]]) + "\n")
    print(f"wrote {RAW}")


# ---------------------------------------------------------------- analysis

def candidates() -> dict[str, Callable[[dict[str, Any]], float | None]]:
    """Every candidate signal: higher = less sure. Names are what the tables print."""
    def per_token(r: dict[str, Any], how: str) -> list[float | None]:
        return [token_uncertainty(lps, how) for lps in r["top"]] or [None]

    c: dict[str, Callable[[dict[str, Any]], float | None]] = {
        "first-token entropy": lambda r: aggregate(per_token(r, "entropy"), "first"),
        "first-token margin": lambda r: aggregate(per_token(r, "margin"), "first"),
        "first answer-token entropy": lambda r: aggregate(per_token(r, "entropy"), "answer",
                                                          r["tokens"]),
        "first answer-token margin": lambda r: aggregate(per_token(r, "margin"), "answer",
                                                         r["tokens"]),
    }
    for how in ("entropy", "margin", "surprise"):
        for agg in ("mean", "max", "q50", "q75", "q90"):
            c[f"answer {how} {agg}"] = (lambda h, a: lambda r: aggregate(per_token(r, h), a))(
                how, agg)
    c["self-consistency (5 samples)"] = lambda r: disagreement(r["samples"])
    c["self-consistency + greedy (6)"] = lambda r: disagreement([r["small"], *r["samples"]])
    # Agreement in meaning, not wording: compare what the matching rule reads from each answer
    # (the last number, the first yes/no). An upper bound for lkn, which does not know the
    # answer's format; "contains" questions keep the whole normalized text.
    c["self-consistency, extracted (6)"] = lambda r: disagreement(
        [extracted(r["match"], t) for t in (r["small"], *r["samples"])])
    return c


def extracted(rule: str, text: str) -> str:
    low = text.lower().replace(",", "")
    if rule == "number":
        found = re.findall(r"-?\d+(?:\.\d+)?", low)
        return found[-1] if found else low
    if rule == "yesno":
        m = re.search(r"\b(yes|no)\b", low)
        return m.group(1) if m else low
    return low


def analyze(args: argparse.Namespace) -> None:
    with open(RAW) as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r["small_right"] = matches(r["match"], r["answer"], r["small"])
        r["strong_right"] = matches(r["match"], r["answer"], r["strong"])
    sig = candidates()
    splits = {s: [r for r in rows if r["split"] == s] for s in ("calib", "heldout")}
    print(f"{len(rows)} questions ({len(splits['calib'])} calibration, "
          f"{len(splits['heldout'])} held out)")
    for s, rs in splits.items():
        print(f"  {s}: small {np.mean([r['small_right'] for r in rs]):.3f}, strong "
              f"{np.mean([r['strong_right'] for r in rs]):.3f}")
    kinds = sorted({r["kind"] for r in rows})
    print("by kind (all questions): small / strong")
    for k in kinds:
        rs = [r for r in rows if r["kind"] == k]
        print(f"  {k:<11} n={len(rs):>3}  {np.mean([r['small_right'] for r in rs]):.2f} / "
              f"{np.mean([r['strong_right'] for r in rs]):.2f}")
    table: dict[str, dict[str, Any]] = {}
    for s, rs in splits.items():
        wrong = np.array([not r["small_right"] for r in rs])
        scores = {n: np.array([1.0 if (v := f(r)) is None else v for r in rs])
                  for n, f in sig.items()}
        base = scores["first-token entropy"]
        for n, sc in scores.items():
            table.setdefault(n, {})[s] = (auroc(sc, wrong), *bootstrap(sc, wrong, base))
    print("\nAUROC for 'the small model is wrong' (95 % bootstrap interval; paired difference "
          "to first-token entropy)")
    print(f"{'signal':<32}{'calibration':>36}{'held out':>36}")
    for n, v in sorted(table.items(), key=lambda kv: -kv[1]["calib"][0]):
        cells = []
        for s in ("calib", "heldout"):
            a, lo, hi, dlo, dhi = v[s]
            cells.append(f"{a:.3f} [{lo:.2f},{hi:.2f}] Δ[{dlo:+.2f},{dhi:+.2f}]")
        print(f"{n:<32}{cells[0]:>36}{cells[1]:>36}")
    positions = [answer_position(r["tokens"]) for r in rows]
    found = [p for p in positions if p is not None]
    print(f"\nanswer tokens: median {np.median([len(r['tokens']) for r in rows]):.0f}, "
          f"finished within 16: {np.mean([r['small_finish'] == 'stop' for r in rows]):.0%}; "
          f"first answer-bearing token at position {np.mean(found):.2f} on average")
    with open(os.path.join(OUT, "cascade_signals_table.json"), "w") as f:
        json.dump(table, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["collect", "analyze", "both"], nargs="?", default="both")
    ap.add_argument("--port", type=int, default=21010)
    args = ap.parse_args()
    if args.what in ("collect", "both"):
        collect(args)
    if args.what in ("analyze", "both"):
        analyze(args)


if __name__ == "__main__":
    main()
