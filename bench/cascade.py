"""The confidence cascade through lkn: does escalating only the uncertain requests pay?

Starts ``lkn serve --config bench/cascade.cfg.lua`` (SmolLM2-135M ``small`` with the calibrated
answer-then-decide homeostat escalating to Qwen2.5-Coder-1.5B ``strong``; run
scripts/bench-models.sh first) and asks every held-out question (bench/data/cascade_heldout.jsonl,
never used for calibration) three ways, one pass over all questions each (so that no way of
asking finds the prompt of another in an engine's cache), temperature 0, ``max_tokens`` 16:

- small only (``"lkn": {"mode": "passthrough"}`` on ``small``);
- strong only (passthrough on ``strong``);
- the cascade (``small`` with its configured homeostasis: probe, then FLUID -> small,
  ANALYTIC -> strong, as ``x-lkn-model`` reports).

From the same answers: random escalation at the cascade's share (expected accuracy and latency
of sending a random share of the requests to strong directly, no probe) and the perfect choice
(escalate exactly the questions small gets wrong and strong gets right). Accuracy intervals are
95 % bootstrap intervals over questions. A streamed subset measures the time to first token of
the cascade (the probe's answer budget is generated before the first byte) against small only.
Prints the table, writes bench/out/cascade.png and bench/out/cascade.jsonl.

    .venv/bin/python bench/cascade.py [--limit N] [--stream 40]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from _lkn import child, wait_until_up  # noqa: E402
from lkn.homeostat.answers import matches  # noqa: E402
from lkn.homeostat.calibration import auroc, curve  # noqa: E402
from lkn.config import load_config  # noqa: E402
from lkn.request.outcome import parse_probe_cost  # noqa: E402

CONFIG = os.path.join(HERE, "cascade.cfg.lua")
OUT = os.path.join(HERE, "out")


def load(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(HERE, "data", name)) as f:
        return [json.loads(line) for line in f if line.strip()]


def _request(base: str, model: str, q: dict[str, Any], lkn: dict[str, Any] | None,
             stream: bool = False) -> urllib.request.Request:
    body: dict[str, Any] = {"model": model, "temperature": 0, "max_tokens": 16,
                            "messages": [{"role": "user", "content": q["question"]}]}
    if stream:
        body["stream"] = True
    if lkn is not None:
        body["lkn"] = lkn
    return urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                  headers={"Content-Type": "application/json"})


def ask(base: str, model: str, q: dict[str, Any], lkn: dict[str, Any] | None) -> dict[str, Any]:
    req = _request(base, model, q, lkn)
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        data = json.load(resp)
        headers = dict(resp.headers)
    text = data["choices"][0]["message"]["content"] or ""
    timings = data.get("timings") or {}
    usage = data.get("usage") or {}
    return {"text": text, "right": matches(q["match"], q["answer"], text),
            "seconds": time.perf_counter() - t0, "model": headers.get("x-lkn-model"),
            "score": float(headers["x-lkn-entropy"]) if "x-lkn-entropy" in headers else None,
            "mode": headers.get("x-lkn-mode"),
            "cost": parse_probe_cost(headers.get("x-lkn-probe-cost")),
            # what the answering call made its engine do (llama-server's timings)
            "prompt_n": timings.get("prompt_n"), "predicted_n": timings.get("predicted_n"),
            "prefill_ms": timings.get("prompt_per_token_ms"),
            "decode_ms": timings.get("predicted_per_token_ms"),
            "completion_tokens": usage.get("completion_tokens")}


def per_token_ms(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """A model's median prefill and decode time per token, from its passthrough answers."""
    pre = [r[key]["prefill_ms"] for r in rows if r[key].get("prefill_ms") and
           (r[key].get("prompt_n") or 0) >= 4]  # a one-token prefill is a decode step
    dec = [r[key]["decode_ms"] for r in rows if r[key].get("decode_ms")]
    return float(np.median(pre)), float(np.median(dec))


def compute_ms(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per request, the engine time each way of asking costs: tokens each model prefilled and
    decoded, weighted by that model's measured per-token times (the decision's tokens from
    x-lkn-probe-cost, the answer's from llama-server's timings)."""
    small_pre, small_dec = per_token_ms(rows, "small")
    strong_pre, strong_dec = per_token_ms(rows, "strong")
    times = {"small": (small_pre, small_dec), "strong": (strong_pre, strong_dec)}

    def answer(r: dict[str, Any], model: str) -> float:
        pre, dec = times[model]
        return (r.get("prompt_n") or 0) * pre + (r.get("predicted_n") or 0) * dec

    def cascade(r: dict[str, Any]) -> float:
        cost = r["cost"]
        decision = cost.get("prefill", 0) * small_pre + cost.get("decode", 0) * small_dec + \
            cost.get("verifier_prefill", 0) * strong_pre + cost.get("verifier_decode", 0) * \
            strong_dec
        whole_from_probe = cost.get("kept", 0) and r.get("completion_tokens") == cost["kept"]
        return decision + (0.0 if whole_from_probe else answer(r, r["model"] or "small"))

    return {"small": np.array([answer(r["small"], "small") for r in rows]),
            "strong": np.array([answer(r["strong"], "strong") for r in rows]),
            "cascade": np.array([cascade(r["cascade"]) for r in rows]),
            "per_token": np.array([small_pre, small_dec, strong_pre, strong_dec])}


def first_byte(base: str, model: str, q: dict[str, Any], lkn: dict[str, Any] | None
               ) -> tuple[float, str | None]:
    """Seconds to the first content event of a streamed answer, and the model that answered."""
    req = _request(base, model, q, lkn, stream=True)
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=300) as resp:
        for line in resp:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line:
                first = time.perf_counter() - t0
        model_used = resp.headers.get("x-lkn-model")
    return (first if first is not None else time.perf_counter() - t0), model_used


def boot_acc(right: np.ndarray, rounds: int = 1000) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    vals = [right[rng.integers(0, len(right), len(right))].mean() for _ in range(rounds)]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions")
    ap.add_argument("--stream", type=int, default=40, help="streamed questions for the TTFT")
    ap.add_argument("--port", type=int, default=21080)
    ap.add_argument("--config", default=CONFIG, help="the cascade's lkn config")
    ap.add_argument("--tag", default="", help="suffix of the output files (another config)")
    args = ap.parse_args()
    qs = load("cascade_heldout.jsonl")
    if args.limit:
        qs = qs[:args.limit]
    h = load_config(args.config).resolve("small").homeostasis  # type: ignore[union-attr]
    os.makedirs(OUT, exist_ok=True)
    address = f"127.0.0.1:{args.port}"
    base = f"http://{address}"
    argv = [sys.executable, "-m", "lkn", "serve", "--config", args.config, "--listen", address]
    rows: list[dict[str, Any]] = []
    ttft: dict[str, list[float]] = {"small only": [], "cascade, kept": [],
                                    "cascade, escalated": [], "strong only": []}
    with child(argv, os.path.join(OUT, "cascade-lkn.log")) as proc:
        if wait_until_up(address, 60, lambda: proc.poll() is None) is None:
            sys.exit("lkn did not start; see bench/out/cascade-lkn.log")
        for model in ("small", "strong"):  # engine starts are not part of the measurement
            ask(base, model, {"question": "Hi", "answer": "", "match": "contains"},
                {"mode": "passthrough"})
        # One pass per way of asking, not interleaved by question: each engine holds one slot
        # whose prompt cache would otherwise give the second way the first one's prefill.
        rows = [{"id": q["id"], "kind": q["kind"]} for q in qs]
        for key, model, lkn in (("small", "small", {"mode": "passthrough"}),
                                ("cascade", "small", None),
                                ("strong", "strong", {"mode": "passthrough"})):
            t_start = time.monotonic()
            for row, q in zip(rows, qs):
                row[key] = ask(base, model, q, lkn)
            print(f"  {key}: {len(qs)} questions in {time.monotonic() - t_start:.0f}s",
                  file=sys.stderr)
        streamed = qs[:args.stream]
        for q in streamed:
            ttft["small only"].append(first_byte(base, "small", q, {"mode": "passthrough"})[0])
        for q in streamed:
            seconds, used = first_byte(base, "small", q, None)
            ttft["cascade, kept" if used == "small" else "cascade, escalated"].append(seconds)
        for q in streamed:
            ttft["strong only"].append(first_byte(base, "strong", q, {"mode": "passthrough"})[0])
    with open(os.path.join(OUT, f"cascade{args.tag}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report(rows, ttft, h, args.tag)


def report(rows: list[dict[str, Any]], ttft: dict[str, list[float]], h: Any,
           tag: str = "") -> None:
    n = len(rows)
    small = np.array([r["small"]["right"] for r in rows])
    strong = np.array([r["strong"]["right"] for r in rows])
    casc = np.array([r["cascade"]["right"] for r in rows])
    esc = np.array([r["cascade"]["model"] == "strong" for r in rows])
    t_small = np.array([r["small"]["seconds"] for r in rows])
    t_strong = np.array([r["strong"]["seconds"] for r in rows])
    t_casc = np.array([r["cascade"]["seconds"] for r in rows])
    share = esc.mean()
    perfect_esc = ~small & strong
    perfect = small | strong
    print(f"\n{n} held-out questions through lkn; small = SmolLM2-135M Q4_1, strong = "
          f"Qwen2.5-Coder-1.5B Q4_K_M, llama-server --threads 1 each, temperature 0, "
          f"max_tokens 16")
    print(f"cascade signal: probe_tokens {h.probe_tokens}, probe_score {h.probe_score}, "
          f"probe_aggregate {h.probe_aggregate}, threshold {h.threshold}, analytic_share "
          f"{h.analytic_share}, verifier {h.verifier}")
    ms = compute_ms(rows)
    base = ms["strong"].sum()
    sp, sd, gp, gd = ms["per_token"]
    print(f"per-token engine time (ms, medians of the passthrough answers): small prefill "
          f"{sp:.2f}, decode {sd:.2f}; strong prefill {gp:.2f}, decode {gd:.2f}")
    print("\n| | accuracy [95 % CI] | share of strong's accuracy | escalated | "
          "compute vs strong only | mean latency s | p50 s | p90 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")

    def line(name: str, right: np.ndarray | float, escalated: float, lat: np.ndarray | None,
             compute: float, note: str = "") -> None:
        if isinstance(right, np.ndarray):
            lo, hi = boot_acc(right)
            acc = f"{right.mean():.3f} [{lo:.3f}, {hi:.3f}]"
            value = right.mean()
        else:
            acc, value = f"{right:.3f} (expected)", right
        lats = ("— | — | —" if lat is None else
                f"{lat.mean():.3f} | {np.median(lat):.3f} | {np.percentile(lat, 90):.3f}")
        print(f"| {name}{note} | {acc} | {value / strong.mean():.0%} | {escalated:.0%} | "
              f"{compute / base:.0%} | {lats} |")
    line("small only", small, 0.0, t_small, ms["small"].sum())
    line("strong only", strong, 1.0, t_strong, base)
    rand_acc = (1 - share) * small.mean() + share * strong.mean()
    rand_lat = (1 - share) * t_small + share * t_strong
    rand_ms = ((1 - share) * ms["small"] + share * ms["strong"]).sum()
    line("random escalation", rand_acc, share, rand_lat, rand_ms, " (same share, simulated)")
    line("adopted cascade", casc, share, t_casc, ms["cascade"].sum())
    line("perfect choice", perfect, perfect_esc.mean(),
         np.where(perfect_esc, t_strong, t_small),
         np.where(perfect_esc, ms["strong"], ms["small"]).sum(), " (oracle, no decision cost)")
    kept = [r["cascade"]["cost"] for r in rows if r["cascade"]["model"] == "small"]
    if kept:
        small_kept = np.array([ms["small"][i] for i, r in enumerate(rows)
                               if r["cascade"]["model"] == "small"])
        casc_kept = np.array([ms["cascade"][i] for i, r in enumerate(rows)
                              if r["cascade"]["model"] == "small"])
        small_part = casc_kept - np.array([c.get("verifier_prefill", 0) * gp +
                                           c.get("verifier_decode", 0) * gd for c in kept])
        print(f"\na kept request costs the small model {small_part.sum() / small_kept.sum():.2f}x "
              f"an unprobed answer ({len(kept)} kept; the probe's tokens continued from: "
              f"{np.mean([c.get('kept', 0) for c in kept]):.1f} per request)")
    scores = np.array([r["cascade"]["score"] if r["cascade"]["score"] is not None else 1.0
                       for r in rows])
    a = auroc(scores, ~small)
    rng = np.random.default_rng(0)
    boots = [auroc(scores[idx], ~small[idx])
             for idx in (rng.integers(0, n, n) for _ in range(1000))]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    helps = ~small & strong
    print(f"\nAUROC of the cascade's score (x-lkn-entropy) for 'small is wrong': {a:.3f} "
          f"[{lo:.3f}, {hi:.3f}]; for 'escalating fixes it' (small wrong, strong right): "
          f"{auroc(scores, helps):.3f}")
    kept_same = [r["cascade"]["text"] == r["small"]["text"] for r in rows
                 if r["cascade"]["model"] == "small"]
    esc_same = [r["cascade"]["text"] == r["strong"]["text"] for r in rows
                if r["cascade"]["model"] == "strong"]
    print(f"the cascade's answer equals small-only's on {np.mean(kept_same or [np.nan]):.0%} "
          f"of kept questions and strong-only's on {np.mean(esc_same or [np.nan]):.0%} of "
          f"escalated ones (temperature 0: differences are batch/cache numerics)")
    goal_acc = 0.95 * strong.mean()
    print(f"goal: >= {goal_acc:.3f} (95 % of strong) escalating <= 50 %, AUROC >= 0.85, "
          f"compute <= 60 % of strong only: accuracy {casc.mean():.3f} at {share:.0%} "
          f"escalated, AUROC {a:.3f}, compute {ms['cascade'].sum() / base:.0%}")
    pts = curve(scores, small, strong)
    print("\nthe same score at other thresholds (held-out answers re-scored, not re-run):")
    print("| escalated | cascade accuracy | random | perfect |")
    print("|---:|---:|---:|---:|")
    useful = perfect_esc.sum()
    for target in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        fit = [p for p in pts if p.escalated <= target + 1e-9]
        p = max(fit, key=lambda p: p.escalated)
        k = int(round(target * n))
        perfect_acc = (small.sum() + min(k, useful)) / n
        rand = (1 - target) * small.mean() + target * strong.mean()
        print(f"| {target:.0%} (got {p.escalated:.0%}) | {p.cascade_accuracy:.3f} | "
              f"{rand:.3f} | {perfect_acc:.3f} |")
    if any(ttft.values()):
        print("\ntime to first token, streamed (s):")
        print("| | n | median | p90 |")
        print("|---|---:|---:|---:|")
        for name, v in ttft.items():
            if v:
                print(f"| {name} | {len(v)} | {np.median(v):.3f} | {np.percentile(v, 90):.3f} |")
    plot(pts, small, strong, casc, share, perfect, tag)


def plot(pts: list[Any], small: np.ndarray, strong: np.ndarray, casc: np.ndarray,
         share: float, perfect: np.ndarray, tag: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed")
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.plot([p.escalated for p in pts], [p.cascade_accuracy for p in pts],
            label="cascade score, all thresholds")
    ax.plot([0, 1], [small.mean(), strong.mean()], ls=":", color="grey", label="random")
    n, useful = len(small), int((~small & strong).sum())
    xs = np.linspace(0, 1, 101)
    ax.plot(xs, [(small.sum() + min(int(round(x * n)), useful)) / n for x in xs], ls="--",
            color="green", label="perfect choice")
    ax.scatter([share], [casc.mean()], color="red", zorder=3, label="adopted cascade (run)")
    ax.axhline(0.95 * strong.mean(), color="orange", lw=0.8, label="95 % of strong")
    ax.axvline(0.5, color="black", lw=0.5)
    ax.set_xlabel("share escalated to strong")
    ax.set_ylabel("accuracy (held-out)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(OUT, f"cascade{tag}.png")
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
