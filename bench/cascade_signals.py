"""Which deferral signal predicts SmolLM2's wrong answers, and what does deciding cost?

``collect``: starts two llama-servers directly (not through lkn: this measures the models, the
cascade through lkn is bench/cascade.py), SmolLM2-135M (``-np 5``, so one request can carry
``n = 5`` samples) and Qwen2.5-Coder-1.5B (from scripts/bench-models.sh), each ``--threads 1``,
and asks every question of bench/data/cascade_{calib,heldout}.jsonl (bench/cascade_questions.py;
the two splits hold DIFFERENT kinds of question):

- small, temperature 0, ``max_tokens`` 16, top-10 logprobs of every answer token (the answer a
  kept request returns), and ``n = 5`` samples at temperature 1.0 (self-consistency);
- small as its own 1-token verifier, two phrasings (``VERIFY_TURN``: a follow-up user turn
  after its answer, whose prefix is the answer request plus the answer, so it reuses the KV
  cache; ``VERIFY_ONE``: one user message quoting question and answer);
- strong as a 1-token verifier of small's answer, the same two phrasings, ``max_tokens`` 1, top-20
  logprobs. The follow-up turn's prefix IS the escalated request's prompt, so the escalated
  request is sent right after it and its ``timings.prompt_n`` measures what an escalation has
  to prefill beyond the verifier's cache;
- strong, temperature 0, ``max_tokens`` 16 (the escalated answer); its first 8 tokens are the
  8-token draft (temperature 0, so a ``max_tokens = 8`` request would give the same tokens).

Every request records ``usage`` and llama-server's ``timings``. Raw rows go to
bench/out/cascade_signals.jsonl as they complete (a cut run still analyzes).

``analyze`` (the default after collecting) prints, for every candidate signal, the AUROC for
"the small model is wrong" on both splits (95 % bootstrap interval on the held-out one, and the
paired difference to the median token entropy adopted before), the held-out cascade accuracy at
50 % escalated (threshold = the 50 % quantile of the held-out scores themselves, which needs
no labels, ties split at random; and the threshold from the calibration split, to show the
shift), the share needed
for 95 % of strong's held-out accuracy, the tokens each decision costs and the cascade's compute
relative to always-strong, each token weighted by its model's measured prefill/decode time.
Logistic models over token features are fitted on the calibration split only.

    .venv/bin/python bench/cascade_signals.py collect [--limit N]
    .venv/bin/python bench/cascade_signals.py analyze
"""
from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import queue
import re
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from _lkn import child, smollm2  # noqa: E402
from cascade_questions import family  # noqa: E402
from lkn.engines.llamacpp import default_binary  # noqa: E402
from lkn.homeostat.answers import matches  # noqa: E402
from lkn.homeostat.calibration import auroc, bootstrap  # noqa: E402
from lkn.homeostat.probe import (  # noqa: E402
    aggregate, answer_position, disagreement, normalized_answer, token_uncertainty)

STRONG = os.path.join(os.path.dirname(HERE), ".models", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
OUT = os.path.join(HERE, "out")
RAW = os.path.join(OUT, "cascade_signals.jsonl")
SAMPLES = 5
DRAFT = 8
VERIFY_TURN = "Is your answer above correct? Reply with yes or no only."
VERIFY_ONE = ("Question: {q}\nProposed answer: {a}\nIs the proposed answer correct? Reply with "
              "yes or no only.")


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


def cost(r: dict[str, Any]) -> dict[str, Any]:
    """What one request cost: tokens by ``usage`` (all prompt tokens, cached or not) and what
    the engine actually computed by ``timings``."""
    u, t = r.get("usage", {}), r.get("timings", {})
    return {"prompt": u.get("prompt_tokens", 0), "completion": u.get("completion_tokens", 0),
            **{k: t.get(k) for k in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms",
                                     "prompt_per_token_ms", "predicted_per_token_ms")}}


def verify(base: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    """A 1-token yes/no verdict: P(no) / (P(yes) + P(no)) over the top-20 tokens (0.5 when
    neither appears), with the request's cost."""
    r = post(base, {"messages": messages, "max_tokens": 1, "temperature": 0, "logprobs": True,
                    "top_logprobs": 20, "cache_prompt": True})
    top = r["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    p = {"yes": 0.0, "no": 0.0}
    for t in top:
        key = t["token"].strip().lower()
        if key in p:
            p[key] += math.exp(t["logprob"])
    score = 0.5 if p["yes"] + p["no"] == 0 else p["no"] / (p["yes"] + p["no"])
    return {"score": score, "p_yes": p["yes"], "p_no": p["no"], "cost": cost(r)}


def turn_messages(q: dict[str, Any], answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q["question"]}, {"role": "assistant", "content": answer},
            {"role": "user", "content": VERIFY_TURN}]


def one_message(q: dict[str, Any], answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": VERIFY_ONE.format(q=q["question"], a=answer.strip())}]


def ask_small(base: str, q: dict[str, Any]) -> dict[str, Any]:
    msgs = [{"role": "user", "content": q["question"]}]
    r = post(base, {"messages": msgs, "max_tokens": 16, "temperature": 0, "logprobs": True,
                    "top_logprobs": 10, "cache_prompt": True})
    ch = r["choices"][0]
    content = ch["logprobs"]["content"]
    answer = ch["message"]["content"] or ""
    s = post(base, {"messages": msgs, "max_tokens": 16, "temperature": 1.0, "n": SAMPLES,
                    "cache_prompt": True, "seed": 13})
    return {"small": answer, "small_finish": ch["finish_reason"],
            "tokens": [c["token"] for c in content],
            "top": [[t["logprob"] for t in c["top_logprobs"]] for c in content],
            "samples": [c["message"]["content"] or "" for c in s["choices"]],
            "cost_small": cost(r), "cost_samples": cost(s),
            "small_verify_turn": verify(base, turn_messages(q, answer)),
            "small_verify_one": verify(base, one_message(q, answer))}


def ask_strong(base: str, q: dict[str, Any]) -> dict[str, Any]:
    """Verifier (follow-up turn) first, then the escalated request, which finds the verifier's
    prompt in the slot's cache; then the one-message verifier."""
    v_turn = verify(base, turn_messages(q, q["small"]))
    r = post(base, {"messages": [{"role": "user", "content": q["question"]}], "max_tokens": 16,
                    "temperature": 0, "logprobs": True, "top_logprobs": 1, "cache_prompt": True})
    ch = r["choices"][0]
    tokens = [c["token"] for c in (ch["logprobs"] or {}).get("content") or []]
    v_one = verify(base, one_message(q, q["small"]))
    return {"strong": ch["message"]["content"] or "", "strong_tokens": tokens,
            "draft": "".join(tokens[:DRAFT]), "cost_strong": cost(r),
            "strong_verify_turn": v_turn, "strong_verify_one": v_one}


def interleave(a: list[Any], b: list[Any]) -> list[Any]:
    out: list[Any] = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


def collect(args: argparse.Namespace) -> None:
    if not os.path.exists(STRONG):
        sys.exit(f"{STRONG} is missing: run scripts/bench-models.sh first")
    # Alternate the splits, so that a run cut short (or --limit) still has both
    qs = interleave(load("calib"), load("heldout"))[:args.limit or None]
    os.makedirs(OUT, exist_ok=True)
    binary = default_binary()
    ready: queue.Queue[dict[str, Any] | None] = queue.Queue()
    errors: list[BaseException] = []

    def server(model: str, port: int, np_: int, name: str) -> tuple[str, list[str], str]:
        argv = [binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
                "-c", str(1024 * np_), "-np", str(np_), "--threads", "1", "-ngl", "0"]
        return f"http://127.0.0.1:{port}", argv, os.path.join(OUT, f"cascade_signals_{name}.log")

    def small() -> None:
        base, argv, log = server(smollm2(), args.port, SAMPLES, "small")
        try:
            with child(argv, log) as proc:
                wait_health(base, proc)
                for q in qs:
                    ready.put({**q, **ask_small(base, q)})
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            ready.put(None)

    def strong() -> None:
        base, argv, log = server(STRONG, args.port + 1, 1, "strong")
        t0 = time.monotonic()
        try:
            with child(argv, log) as proc, open(RAW, "w") as f:
                wait_health(base, proc)
                for i in range(len(qs)):
                    row = ready.get()
                    if row is None:
                        return
                    row.update(ask_strong(base, row))
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    if (i + 1) % 10 == 0:
                        print(f"  {i + 1}/{len(qs)} ({time.monotonic() - t0:.0f}s)",
                              file=sys.stderr, flush=True)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=small), threading.Thread(target=strong)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    print(f"wrote {RAW}")


# ---------------------------------------------------------------- signals

def extracted(rule: str, text: str) -> str:
    """What the matching rule reads from an answer: the last number, the first yes/no, else the
    first word (an upper bound for lkn, which does not know an answer's format)."""
    low = text.lower().replace(",", "")
    if rule == "number":
        found = re.findall(r"-?\d+(?:\.\d+)?", low)
        return found[-1] if found else low
    if rule == "yesno":
        m = re.search(r"\b(yes|no)\b", low)
        return m.group(1) if m else low
    words = normalized_answer(text).split()
    return words[0] if words else ""


def contained(a: str, b: str) -> bool:
    """Whether one normalized text occurs in the other as whole words (the strong draft is
    often the bare answer, "Paris", that the small one puts in a sentence)."""
    x, y = f" {normalized_answer(a)} ", f" {normalized_answer(b)} "
    return x.strip() != "" and y.strip() != "" and (x in y or y in x)


def text_disagrees(small: str, draft: str) -> float:
    """1 unless one normalized text contains the other (format-blind: what lkn could do)."""
    return 0.0 if contained(small, draft) else 1.0


def extracted_disagrees(rule: str, small: str, draft: str) -> float:
    """By what the matching rule reads (the last number, the first yes/no); text containment
    for the others. An upper bound: lkn does not know an answer's format."""
    if rule in ("number", "yesno"):
        return float(extracted(rule, small) != extracted(rule, draft))
    return text_disagrees(small, draft)


def soft_disagreement(small: str, draft: str) -> float:
    a, b = normalized_answer(small), normalized_answer(draft)
    n = min(len(a), len(b))
    return 1.0 - difflib.SequenceMatcher(None, a[:max(n, 1)], b[:max(n, 1)]).ratio()


def per_token(r: dict[str, Any], how: str) -> list[float | None]:
    return [token_uncertainty(lps, how) for lps in r["top"]] or [None]


def features(r: dict[str, Any]) -> list[float]:
    """Token-level features of the small answer (what the logistic models see)."""
    ent = [e for e in per_token(r, "entropy") if e is not None] or [1.0]
    mar = [e for e in per_token(r, "margin") if e is not None] or [1.0]
    sur = [e for e in per_token(r, "surprise") if e is not None] or [1.0]
    return [ent[0], float(np.mean(ent)), float(np.median(ent)), float(np.quantile(ent, 0.9)),
            max(ent), float(np.mean(mar)), float(np.mean(sur)), float(len(r["tokens"])),
            1.0 if r["small_finish"] == "stop" else 0.0]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> Callable[[np.ndarray],
                                                                            np.ndarray]:
    """L2-regularized logistic regression by Newton's method (plain numpy); features are
    standardized with the training split's mean and spread; the intercept is not penalized."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = np.c_[np.ones(len(x)), (x - mu) / sd]
    w = np.zeros(z.shape[1])
    reg = l2 * np.eye(z.shape[1])
    reg[0, 0] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        grad = z.T @ (p - y) + reg @ w
        hess = (z * (p * (1 - p))[:, None]).T @ z + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return lambda xn: 1 / (1 + np.exp(-(np.c_[np.ones(len(xn)), (xn - mu) / sd] @ w)))


Tokens = tuple[float, float, float, float]  # small prefill, small decode, strong prefill, decode


@dataclass(frozen=True)
class Candidate:
    """A deferral signal (higher = less sure) and what deciding with it costs per request."""
    score: Callable[[dict[str, Any]], float | None]
    decide: Callable[[dict[str, Any]], Tokens]      # beyond the small answer itself
    escalate: Callable[[dict[str, Any]], Tokens]    # the strong answer, given that decision


def _c(r: dict[str, Any], key: str) -> dict[str, Any]:
    c: dict[str, Any] = r[key]["cost"] if "cost" in r[key] else r[key]
    return c


def nothing(r: dict[str, Any]) -> Tokens:
    return (0.0, 0.0, 0.0, 0.0)


def strong_full(r: dict[str, Any]) -> Tokens:
    c = r["cost_strong"]
    return (0.0, 0.0, float(c["prompt"]), float(c["completion"]))


def strong_after_turn(r: dict[str, Any]) -> Tokens:
    """The escalated request after the follow-up-turn verifier: only what was not cached."""
    c = r["cost_strong"]
    return (0.0, 0.0, float(c["prompt_n"]), float(c["completion"]))


def strong_after_draft(r: dict[str, Any]) -> Tokens:
    """The escalated request continues the draft: no prefill, the remaining tokens only."""
    c = r["cost_strong"]
    return (0.0, 0.0, 0.0, float(max(0, c["completion"] - DRAFT)))


def draft_cost(r: dict[str, Any]) -> Tokens:
    c = r["cost_strong"]
    return (0.0, 0.0, float(c["prompt"]), float(min(DRAFT, c["completion"])))


def small_verify_cost(r: dict[str, Any], key: str) -> Tokens:
    c, a = r[key]["cost"], r["cost_small"]
    if key == "small_verify_turn":  # its prefix is the answer request plus the answer
        return (float(max(1, c["prompt"] - a["prompt"] - a["completion"])), 1.0, 0.0, 0.0)
    return (float(c["prompt"]), 1.0, 0.0, 0.0)


def strong_verify_cost(r: dict[str, Any], key: str) -> Tokens:
    return (0.0, 0.0, float(r[key]["cost"]["prompt"]), 1.0)


def add(*fs: Callable[[dict[str, Any]], Tokens]) -> Callable[[dict[str, Any]], Tokens]:
    return lambda r: tuple(float(sum(x)) for x in zip(*(f(r) for f in fs)))  # type: ignore


def candidates(rows: list[dict[str, Any]]) -> dict[str, Candidate]:
    """Every candidate signal: higher = less sure. Names are what the tables print. The
    logistic models are fitted here, on the calibration rows only."""
    c: dict[str, Candidate] = {}

    def tok(f: Callable[[dict[str, Any]], float | None]) -> Candidate:
        return Candidate(f, nothing, strong_full)

    c["first-token entropy"] = tok(lambda r: aggregate(per_token(r, "entropy"), "first"))
    c["first-token margin"] = tok(lambda r: aggregate(per_token(r, "margin"), "first"))
    c["first answer-token entropy"] = tok(
        lambda r: aggregate(per_token(r, "entropy"), "answer", r["tokens"]))
    for how in ("entropy", "margin", "surprise"):
        for agg in ("mean", "max", "q50", "q90"):
            c[f"answer {how} {agg}"] = tok((lambda h, a: lambda r: aggregate(
                per_token(r, h), a))(how, agg))
    samples: Callable[[dict[str, Any]], Tokens] = lambda r: (  # noqa: E731
        0.0, float(r["cost_samples"]["completion"]), 0.0, 0.0)
    c["self-consistency, extracted (6)"] = Candidate(lambda r: disagreement(
        [extracted(r["match"], t) for t in (r["small"], *r["samples"])]), samples, strong_full)
    for phrase in ("turn", "one"):
        key = f"small_verify_{phrase}"
        c[f"small self-verifier ({phrase})"] = Candidate(
            (lambda k: lambda r: r[k]["score"])(key),
            (lambda k: lambda r: small_verify_cost(r, k))(key), strong_full)
    c["strong verifier (turn)"] = Candidate(lambda r: r["strong_verify_turn"]["score"],
                                            lambda r: strong_verify_cost(r, "strong_verify_turn"),
                                            strong_after_turn)
    c["strong verifier (one)"] = Candidate(lambda r: r["strong_verify_one"]["score"],
                                           lambda r: strong_verify_cost(r, "strong_verify_one"),
                                           strong_full)
    c["strong draft disagrees (text)"] = Candidate(
        lambda r: text_disagrees(r["small"], r["draft"]), draft_cost, strong_after_draft)
    c["strong draft disagrees (extracted)"] = Candidate(
        lambda r: extracted_disagrees(r["match"], r["small"], r["draft"]),
        draft_cost, strong_after_draft)
    c["strong draft disagrees (soft)"] = Candidate(
        lambda r: soft_disagreement(r["small"], r["draft"]), draft_cost, strong_after_draft)

    calib = [r for r in rows if r["split"] == "calib"]
    y = np.array([0.0 if r["small_right"] else 1.0 for r in calib])
    extras: dict[str, tuple[list[str], Callable[[dict[str, Any]], Tokens],
                            Callable[[dict[str, Any]], Tokens]]] = {
        "logistic: token features": ([], nothing, strong_full),
        "logistic: tokens + small verifiers": (
            ["small_verify_turn", "small_verify_one"],
            add(lambda r: small_verify_cost(r, "small_verify_turn"),
                lambda r: small_verify_cost(r, "small_verify_one")), strong_full),
        "logistic: tokens + strong verifier (turn)": (
            ["strong_verify_turn"], lambda r: strong_verify_cost(r, "strong_verify_turn"),
            strong_after_turn),
    }
    for name, (keys, decide, escalate) in extras.items():
        def feats(r: dict[str, Any], ks: list[str] = keys) -> list[float]:
            return features(r) + [r[k]["score"] for k in ks]
        model = fit_logistic(np.array([feats(r) for r in calib]), y)
        c[name] = Candidate((lambda m, fs: lambda r: float(m(np.array([fs(r)]))[0]))(
            model, feats), decide, escalate)
    return c


# ---------------------------------------------------------------- analysis

def share_rule(scores: np.ndarray, share: float) -> tuple[float, float]:
    """``(t, f)``: escalate every score above ``t`` and the fraction ``f`` of those equal to it
    (ties split at random), so that exactly ``share`` of these scores is escalated. Needs no
    labels: on unlabeled traffic, ``t`` is the scores' own quantile."""
    values = np.unique(scores)[::-1]
    for t in values:
        above, at = np.mean(scores > t), np.mean(scores == t)
        if above + at >= share - 1e-12:
            return float(t), float((share - above) / at)
    return float(values[-1]), 1.0


def escalation(scores: np.ndarray, rule: tuple[float, float]) -> np.ndarray:
    """The expected share of each request escalated under ``rule`` (1, 0, or the tie share)."""
    t, f = rule
    return np.where(scores > t, 1.0, np.where(scores == t, f, 0.0))


def cascade_accuracy(esc: np.ndarray, small: np.ndarray, strong: np.ndarray) -> float:
    return float((esc * strong + (1 - esc) * small).mean())


def share_for(scores: np.ndarray, small: np.ndarray, strong: np.ndarray,
              target: float) -> float:
    """The least share (in steps of 0.5 %) whose cascade reaches ``target``."""
    for share in np.linspace(0, 1, 201):
        if cascade_accuracy(escalation(scores, share_rule(scores, share)), small,
                            strong) >= target - 1e-12:
            return float(share)
    return 1.0


def per_token_ms(rows: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Median prefill and decode ms per token of each model, from llama-server's timings:
    prefill over requests that prefilled >= 8 tokens (batched), decode over >= 4 tokens."""
    out = {}
    for model, keys in (("small", ["cost_small", "small_verify_one"]),
                        ("strong", ["cost_strong", "strong_verify_turn", "strong_verify_one"])):
        cs = [_c(r, k) for r in rows for k in keys]
        pf = [c["prompt_per_token_ms"] for c in cs if (c["prompt_n"] or 0) >= 8]
        dc = [c["predicted_per_token_ms"] for c in cs if (c["predicted_n"] or 0) >= 4]
        out[model] = (float(np.median(pf)), float(np.median(dc)))
    return out


def analyze(args: argparse.Namespace) -> None:
    with open(RAW) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for r in rows:
        r["small_right"] = matches(r["match"], r["answer"], r["small"])
        r["strong_right"] = matches(r["match"], r["answer"], r["strong"])
    splits = {s: [r for r in rows if r["split"] == s] for s in ("calib", "heldout")}
    print(f"{len(rows)} questions ({len(splits['calib'])} calibration, "
          f"{len(splits['heldout'])} held out; the splits hold different kinds)")
    for s, rs in splits.items():
        sm = np.array([r["small_right"] for r in rs])
        st = np.array([r["strong_right"] for r in rs])
        print(f"  {s:<8} small {sm.mean():.3f}, strong {st.mean():.3f}, small or strong "
              f"(oracle) {np.mean(sm | st):.3f}")
    print("by kind: split, family, n, small / strong accuracy")
    split_of = {r["kind"]: r["split"] for r in rows}
    for k in sorted(split_of, key=lambda k: (split_of[k], family(k), k)):
        rs = [r for r in rows if r["kind"] == k]
        print(f"  {k:<13}{split_of[k]:<9}{family(k):<12}n={len(rs):>3}  "
              f"{np.mean([r['small_right'] for r in rs]):.2f} / "
              f"{np.mean([r['strong_right'] for r in rs]):.2f}")

    ms = per_token_ms(rows)
    print("\nper-token ms (medians of llama-server timings, --threads 1): " + "; ".join(
        f"{m} prefill {p:.2f}, decode {d:.2f}" for m, (p, d) in ms.items()))
    weight = np.array([ms["small"][0], ms["small"][1], ms["strong"][0], ms["strong"][1]])

    held, cal = splits["heldout"], splits["calib"]
    small = np.array([r["small_right"] for r in held])
    strong = np.array([r["strong_right"] for r in held])
    wrong = ~small
    target = 0.95 * strong.mean()
    small_answer = np.array([[r["cost_small"]["prompt"], r["cost_small"]["completion"], 0, 0]
                             for r in held], dtype=float)
    always_strong = float(sum(strong_full(r)[2] * weight[2] + strong_full(r)[3] * weight[3]
                              for r in held))

    cands = candidates(rows)
    oracle_score = {id(r): (1.0 if not r["small_right"] and r["strong_right"] else
                            0.5 if not r["small_right"] else 0.0) for r in rows}
    cands["oracle (perfect signal)"] = Candidate(lambda r: oracle_score[id(r)], nothing,
                                                 strong_full)
    scores = {n: {s: np.array([1.0 if (x := c.score(r)) is None else x for r in rs])
                  for s, rs in splits.items()} for n, c in cands.items()}
    ref = scores["answer entropy q50"]["heldout"]

    table: dict[str, dict[str, Any]] = {}
    for n, c in cands.items():
        sh, sc = scores[n]["heldout"], scores[n]["calib"]
        a, lo, hi, dlo, dhi = auroc(sh, wrong), *bootstrap(sh, wrong, ref)
        esc = escalation(sh, share_rule(sh, 0.5))
        esc_cal = escalation(sh, share_rule(sc, 0.5))
        decide = np.array([c.decide(r) for r in held])
        escal = np.array([c.escalate(r) for r in held])
        total = small_answer + decide + escal * esc[:, None]
        table[n] = {
            "auroc_heldout": a, "ci": [lo, hi], "diff_vs_median_entropy": [dlo, dhi],
            "auroc_calib": auroc(sc, ~np.array([r["small_right"] for r in cal])),
            "share_q50": float(esc.mean()), "acc_q50": cascade_accuracy(esc, small, strong),
            "share_calthr": float(esc_cal.mean()),
            "acc_calthr": cascade_accuracy(esc_cal, small, strong),
            "share_for_95": share_for(sh, small, strong, target),
            "decision_tokens": decide.mean(0).tolist(),
            "compute_vs_strong": float((total @ weight).sum() / always_strong),
        }
    print(f"\nheld-out: small {small.mean():.3f}, strong {strong.mean():.3f}; 95 % of strong = "
          f"{target:.3f}. Candidates sorted by calibration AUROC (the choice is made there; "
          "logistic models are fitted on calibration, so their calibration AUROC is in-sample).")
    print("AUROC ho: held-out AUROC [95 % bootstrap]; Δ q50: paired difference to 'answer "
          "entropy q50'; acc@50 %: cascade accuracy, threshold = the held-out scores' own 50 % "
          "quantile, ties split at random, expected value (share escalated); calthr: threshold "
          "and tie share from the calibration split's 50 % quantile; need: least share "
          "escalated to reach 95 % of strong; decide: mean tokens per request for the decision "
          "beyond the small answer (small prefill/decode | strong prefill/decode); compute: "
          "cascade at acc@50 % over always-strong, time-weighted")
    head = (f"{'signal':<43}{'AUROC ho [95 %]':>20}{'Δ q50':>15}{'cal':>6}{'acc@50% (esc)':>15}"
            f"{'calthr (esc)':>14}{'need':>6}{'decide sp/sd|Sp/Sd':>22}{'compute':>9}")
    print(head)
    for n, v in sorted(table.items(), key=lambda kv: -kv[1]["auroc_calib"]):
        d = v["decision_tokens"]
        print(f"{n:<43}{v['auroc_heldout']:>7.3f} [{v['ci'][0]:.2f},{v['ci'][1]:.2f}]"
              f"  [{v['diff_vs_median_entropy'][0]:+.2f},{v['diff_vs_median_entropy'][1]:+.2f}]"
              f"{v['auroc_calib']:>6.3f}{v['acc_q50']:>8.3f} ({v['share_q50']:>3.0%})"
              f"{v['acc_calthr']:>7.3f} ({v['share_calthr']:>3.0%}){v['share_for_95']:>6.0%}"
              f"{d[0]:>6.1f}/{d[1]:<4.1f}|{d[2]:>5.1f}/{d[3]:<4.1f}"
              f"{v['compute_vs_strong']:>9.1%}")
    small_only = float((small_answer @ weight).sum() / always_strong)
    print(f"{'always small':<43}{'':>41}{small.mean():>8.3f} (  0%){'':>27}{small_only:>9.1%}")
    print(f"{'always strong':<43}{'':>41}{strong.mean():>8.3f} (100%){'':>27}{1:>9.1%}")
    positions = [answer_position(r["tokens"]) for r in rows]
    found = [p for p in positions if p is not None]
    print(f"\nsmall answer tokens: median {np.median([len(r['tokens']) for r in rows]):.0f}, "
          f"finished within 16: {np.mean([r['small_finish'] == 'stop' for r in rows]):.0%}; "
          f"first answer-bearing token at position {np.mean(found):.2f} on average; escalation "
          f"after the strong follow-up verifier prefilled {np.mean([r['cost_strong']['prompt_n'] for r in held]):.1f} "  # noqa: E501
          f"of {np.mean([r['cost_strong']['prompt'] for r in held]):.1f} prompt tokens")
    with open(os.path.join(OUT, "cascade_signals_table.json"), "w") as f:
        json.dump({"per_token_ms": ms, "candidates": table}, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["collect", "analyze", "both"], nargs="?", default="both")
    ap.add_argument("--port", type=int, default=21010)
    ap.add_argument("--limit", type=int, default=0, help="ask only the first N questions")
    args = ap.parse_args()
    if args.what in ("collect", "both"):
        collect(args)
    if args.what in ("analyze", "both"):
        analyze(args)


if __name__ == "__main__":
    main()
