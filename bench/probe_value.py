"""Probe value: does the entropy probe predict wrong answers, and does intervening help?

A generated set of questions with known, easily scored answers (capitals, yes/no size
comparisons, yes/no category questions; SmolLM2-135M gets these partly right) runs through lkn.
For each question:

1. passthrough, temperature 0, with top-10 logprobs of every answer token: the answer's
   correctness, and probe variants computed from the same logprobs (the first generated token is
   exactly what a 1-token probe sees): ``first`` token, ``mean``/``max`` over the first 3, and
   the first ``answer``-bearing token;
2. the same question forced ANALYTIC through lkn's homeostat with the ``verify_prompt``
   intervention (threshold 0), which also reports lkn's own probe entropy (``x-lkn-entropy``).

Reports the AUROC of each variant for predicting a wrong answer, and accuracy of passthrough vs
"intervene when entropy >= t" for several thresholds. ``escalate`` needs a stronger model and
``reasoning`` a thinking model; with SmolLM2 alone neither can be measured (both columns say so).
Writes bench/out/probe_value.png and bench/out/probe_value.csv.

    .venv/bin/python bench/probe_value.py [--limit 300]
"""
from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from _lkn import running_lkn  # noqa: E402
from cascade_questions import (  # noqa: E402
    CAPITALS as CASCADE_CAPITALS, FRUITS, NOT_FRUITS, SIZES)
from lkn.homeostat.probe import aggregate, answer_position, normalized_entropy  # noqa: E402

# One source of facts for both question sets (probe_value asks about the first 50 capitals)
CAPITALS = {country: (city if isinstance(city, str) else city[0])
            for country, city in list(CASCADE_CAPITALS.items())[:50]}
ALIASES = {city[0]: tuple(a.lower() for a in city[1:])
           for city in CASCADE_CAPITALS.values() if not isinstance(city, str)}


def questions(seed: int, limit: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    qs: list[dict[str, Any]] = []
    for country, capital in CAPITALS.items():
        qs.append({"kind": "capital", "q": f"What is the capital of {country}? Answer with the "
                   f"name of the city only.", "answer": capital})
    animals = [a for a in SIZES]
    pairs = [(a, b) for a in animals for b in animals if a != b and SIZES[a] != SIZES[b]]
    rng.shuffle(pairs)
    for a, b in pairs[:120]:
        qs.append({"kind": "bigger", "q": f"Is a {a} bigger than a {b}? Answer yes or no.",
                   "answer": "yes" if SIZES[a] > SIZES[b] else "no"})
    for item in FRUITS + NOT_FRUITS:
        qs.append({"kind": "fruit", "q": f"Is a {item} a fruit? Answer yes or no.",
                   "answer": "yes" if item in FRUITS else "no"})
        qs.append({"kind": "fruit", "q": f"Is a {item} a vegetable, animal or object rather "
                   f"than a fruit? Answer yes or no.", "answer": "no" if item in FRUITS
                   else "yes"})
    rng.shuffle(qs)
    return qs[:limit]


def correct(q: dict[str, Any], text: str) -> bool:
    low = text.lower()
    if q["kind"] == "capital":
        names = (q["answer"].lower(), *ALIASES.get(q["answer"], ()))
        return any(n in low for n in names)
    m = re.search(r"\b(yes|no)\b", low)
    return bool(m) and m.group(1) == q["answer"]


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """P(score of a wrong answer > score of a right one), ties counted half."""
    pos, neg = scores[wrong], scores[~wrong]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def ask(client: Any, q: dict[str, Any], lkn: dict[str, Any], logprobs: bool) -> Any:
    extra: dict[str, Any] = {"lkn": lkn}
    kw: dict[str, Any] = {}
    if logprobs:
        kw.update(logprobs=True, top_logprobs=10)
    return client.chat.completions.with_raw_response.create(
        model="smol", messages=[{"role": "user", "content": q["q"]}], max_tokens=16,
        temperature=0, extra_body=extra, **kw)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = ap.parse_args()
    import openai
    qs = questions(args.seed, args.limit)
    models = '{ { name = "smol", model_file = MODEL, ctx_size = 1024, gpu_layers = 0, ' \
             'default_max_tokens = 16, args = { "--threads", 1 } } }'
    rows = []
    with running_lkn(models) as base:
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=120)
        for i, q in enumerate(qs):
            plain = ask(client, q, {"mode": "passthrough"}, logprobs=True)
            r = plain.parse()
            text = r.choices[0].message.content or ""
            content = r.choices[0].logprobs.content or []
            toks = [c.token for c in content]
            ents = [normalized_entropy([t.logprob for t in c.top_logprobs]) for c in content]
            verify = ask(client, q, {"mode": "homeostatic", "threshold": 0,
                                     "intervention": "verify_prompt"}, logprobs=False)
            vtext = verify.parse().choices[0].message.content or ""
            rows.append({
                "kind": q["kind"], "question": q["q"], "expected": q["answer"],
                "answer": text, "right": correct(q, text),
                "verify_answer": vtext, "verify_right": correct(q, vtext),
                "first": aggregate(ents, "first"), "mean3": aggregate(ents[:3], "mean"),
                "max3": aggregate(ents[:3], "max"), "answer_tok": aggregate(ents, "answer", toks),
                "lkn_probe": float(verify.headers["x-lkn-entropy"]),
                "tokens": toks,
            })
            if (i + 1) % 50 == 0:
                print(f"  {i + 1}/{len(qs)} questions", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "probe_value.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "tokens"],
                           extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    right = np.array([r["right"] for r in rows])
    vright = np.array([r["verify_right"] for r in rows])
    wrong = ~right
    variants = ["first", "mean3", "max3", "answer_tok"]
    scores = {v: np.array([r[v] if r[v] is not None else 1.0 for r in rows]) for v in variants}
    lkn_probe = np.array([r["lkn_probe"] for r in rows])
    print(f"\n{len(rows)} questions; SmolLM2-135M-Instruct Q4_1, temperature 0, top-10 logprobs")
    print(f"accuracy: passthrough {right.mean():.3f}; verify_prompt on every question "
          f"{vright.mean():.3f}")
    for kind in sorted({r["kind"] for r in rows}):
        idx = np.array([r["kind"] == kind for r in rows])
        print(f"  {kind:<8} n={idx.sum():>3}  passthrough {right[idx].mean():.3f}  "
              f"verify_prompt {vright[idx].mean():.3f}")
    print(f"lkn's own probe (x-lkn-entropy) vs first-token entropy of the answer: max |diff| "
          f"{np.abs(lkn_probe - scores['first']).max():.4f}")
    print("\nAUROC of entropy for predicting a wrong answer (0.5 = no signal), with 95% bootstrap "
          "intervals; 'vs first' is the paired difference to the 1-token probe")
    rng = np.random.default_rng(0)
    boots = [rng.integers(0, len(rows), len(rows)) for _ in range(500)]
    base_b = np.array([auroc(scores["first"][b], wrong[b]) for b in boots])
    for v in variants:
        vb = np.array([auroc(scores[v][b], wrong[b]) for b in boots])
        lo, hi = np.nanpercentile(vb, [2.5, 97.5])
        dlo, dhi = np.nanpercentile(vb - base_b, [2.5, 97.5])
        print(f"  {v:<11}{auroc(scores[v], wrong):.3f}  [{lo:.3f}, {hi:.3f}]   vs first "
              f"[{dlo:+.3f}, {dhi:+.3f}]")
    positions = [answer_position(r["tokens"]) for r in rows]
    found = [p for p in positions if p is not None]
    print(f"answer-bearing token position: mean {np.mean(found):.2f}, within the first 4 tokens "
          f"for {np.mean([p < 4 for p in found]):.0%} of answers (the cost of that variant)")
    best = max(variants, key=lambda v: auroc(scores[v], wrong))
    print(f"\nbest variant: {best}. Accuracy when intervening at entropy >= t ({best}):")
    print(f"{'t':>5}{'analytic %':>12}{'verify_prompt':>15}{'escalate':>10}{'reasoning':>11}")
    thresholds = [round(0.1 * i, 1) for i in range(0, 11)]
    acc = []
    for t in thresholds:
        analytic = scores[best] >= t
        a = np.where(analytic, vright, right).mean()
        acc.append(a)
        print(f"{t:>5.1f}{100 * analytic.mean():>11.0f}%{a:>15.3f}{'n/a':>10}{'n/a':>11}")
    print(f"{'pass':>5}{0:>11.0f}%{right.mean():>15.3f}   (passthrough)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for v in variants:
        order = np.argsort(-scores[v])
        tpr = np.cumsum(wrong[order]) / max(1, wrong.sum())
        fpr = np.cumsum(~wrong[order]) / max(1, (~wrong).sum())
        ax1.plot(np.r_[0, fpr], np.r_[0, tpr], label=f"{v} (AUROC {auroc(scores[v], wrong):.2f})")
    ax1.plot([0, 1], [0, 1], color="grey", ls=":")
    ax1.set_xlabel("false alarm rate (right answers flagged)")
    ax1.set_ylabel("wrong answers flagged")
    ax1.set_title("entropy as a predictor of a wrong answer")
    ax1.legend(fontsize=8)
    ax2.plot(thresholds, acc, marker="o", label=f"verify_prompt when {best} >= t")
    ax2.axhline(right.mean(), color="grey", ls="--", label="passthrough")
    ax2.set_xlabel("threshold t")
    ax2.set_ylabel("accuracy")
    ax2.set_title("accuracy by intervention threshold")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "probe_value.png"), dpi=110)
    print(f"\nplot: {os.path.join(args.out, 'probe_value.png')}")


if __name__ == "__main__":
    main()
