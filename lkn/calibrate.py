"""``lkn calibrate``: measure a model's homeostasis signal against right answers, pick a threshold.

    lkn calibrate --config lkn.cfg.lua --model small --questions qs.jsonl
                  [--strong strong] [--share 0.5 | --accuracy 0.9] [--plot out.png]

Runs the gateway in this process with the config (engines start as for ``serve``), sends every
question of the JSONL file (``{"question", "answer", "match"}``, see homeostat/answers.py) to
``--model`` at temperature 0 in homeostatic mode with ``intervention = "none"``, so the score is
exactly what lkn computes for that model's settings (``probe_tokens``, ``probe_aggregate``,
``probe_score``, ``top_k``), and scores the answer. With ``--strong`` the same question also
goes to that model (passthrough), and the table shows the cascade's accuracy. Prints the AUROC
of the score for "the answer is wrong", a table of thresholds by share escalated, and the
threshold for the target: the largest share not above ``--share``, or the smallest share
reaching ``--accuracy`` (the cascade's accuracy with ``--strong``, else the kept answers').
``--plot`` writes accuracy vs share escalated and the ROC curve (needs matplotlib; skipped with
a message without it).
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp
import numpy as np

from lkn import fastjson
from lkn.homeostat.answers import matches, parse_item
from lkn.homeostat.calibration import Point, auroc, bootstrap, curve, threshold_for_accuracy
from lkn.homeostat.calibration import threshold_for_share
from lkn.config import Config, load_config
from lkn.errors import ConfigError
from lkn.request.outcome import parse_probe_cost

SHARES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("calibrate", help="measure the homeostasis signal against "
                              "right answers and pick a threshold")
    p.add_argument("--config", required=True, help="the Lua config file")
    p.add_argument("--model", required=True, help="the model whose signal is measured")
    p.add_argument("--questions", required=True, help="JSONL: question, answer, match")
    p.add_argument("--strong", help="the model escalated to (adds the cascade's accuracy)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--share", type=float, help="target share escalated (0..1)")
    target.add_argument("--accuracy", type=float, help="target accuracy (0..1)")
    p.add_argument("--match", default="contains", help="rule for lines without 'match'")
    p.add_argument("--max-tokens", type=int, default=16, help="answer budget per question")
    p.add_argument("--plot", help="write the plot here (PNG)")
    p.set_defaults(func=run)


def load_questions(path: str, default_rule: str) -> list[dict[str, Any]]:
    items = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    obj = fastjson.loads(line)
                except ValueError as exc:
                    raise ValueError(f"line {i}: not JSON ({exc})") from None
                items.append(parse_item(i, obj, default_rule))
    if not items:
        raise ValueError("no questions")
    return items


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        questions = load_questions(args.questions, args.match)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"lkn calibrate: {exc}", file=sys.stderr)
        return 1
    for name in (args.model, args.strong):
        if name is not None and cfg.resolve(name) is None:
            print(f"lkn calibrate: no model {name!r} in {cfg.path}", file=sys.stderr)
            return 1
    rows = asyncio.run(measure(cfg, args.model, args.strong, questions, args.max_tokens))
    print(report(rows, args.share, args.accuracy))
    if args.plot:
        print(plot(rows, args.plot))
    return 0


async def measure(cfg: Config, model: str, strong: str | None,
                  questions: Sequence[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """Every question through an in-process gateway: score, answer, right (and strong_right)."""
    from lkn.gateway.server import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop, started = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(cfg, listen=[f"127.0.0.1:{port}"], stop=stop,
                                       install_signals=False,
                                       on_started=lambda app: started.set()))
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if server.done():
        waiter.cancel()
        server.result()  # raises why the gateway did not start
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            for i, q in enumerate(questions, 1):
                text, headers = await _ask(session, url, model, q["question"], max_tokens, {
                    "mode": "homeostatic", "threshold": 1.0, "intervention": "none",
                    "cache": False})
                score = headers.get("x-lkn-entropy")
                row = {"question": q["question"], "answer": text,
                       "score": None if score is None else float(score),
                       "right": matches(q["match"], q["answer"], text),
                       "cost": parse_probe_cost(headers.get("x-lkn-probe-cost"))}
                if strong is not None:
                    stext, _ = await _ask(session, url, strong, q["question"], max_tokens,
                                          {"mode": "passthrough", "cache": False})
                    row["strong_right"] = matches(q["match"], q["answer"], stext)
                rows.append(row)
                if i % 50 == 0:
                    print(f"  {i}/{len(questions)} questions", file=sys.stderr)
    finally:
        stop.set()
        await server
    return rows


async def _ask(session: aiohttp.ClientSession, url: str, model: str, question: str,
               max_tokens: int, lkn: dict[str, Any]) -> tuple[str, dict[str, str]]:
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "lkn": lkn}
    async with session.post(url, json=body) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status}: {data}")
        return data["choices"][0]["message"].get("content") or "", dict(resp.headers)


@dataclass(frozen=True)
class Scored:
    """The rows whose probe gave a score, as columns: lists for ``curve`` (which takes
    sequences) and arrays for the numpy math (AUROC, bootstrap, the ROC plot)."""
    scores: list[float]
    right: list[bool]
    strong: list[bool] | None  # with --strong: whether the strong model answered right

    @classmethod
    def of(cls, rows: Sequence[dict[str, Any]]) -> Scored:
        scored = [r for r in rows if r["score"] is not None]
        return cls(scores=[float(r["score"]) for r in scored],
                   right=[bool(r["right"]) for r in scored],
                   strong=([bool(r["strong_right"]) for r in scored]
                           if scored and "strong_right" in scored[0] else None))

    def points(self) -> list[Point]:
        return curve(self.scores, self.right, self.strong)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The scores, and whether each answer was wrong (what the score should predict)."""
        return (np.array(self.scores, dtype=np.float64),
                ~np.array(self.right, dtype=bool))


def report(rows: Sequence[dict[str, Any]], share: float | None,
           accuracy: float | None) -> str:
    scored = Scored.of(rows)
    failed = len(rows) - len(scored.scores)
    lines = [f"{len(rows)} questions, {len(scored.scores)} scored"
             + (f" ({failed} probes failed and are left out)" if failed else "")]
    if not scored.scores:
        return "\n".join(lines + ["nothing to calibrate: every probe failed"])
    lines.append(f"accuracy of the model: {np.mean(scored.right):.3f}"
                 + ("" if scored.strong is None
                    else f"; of the strong model: {np.mean(scored.strong):.3f}"))
    scores, wrong = scored.arrays()
    a = auroc(scores, wrong)
    lo, hi, _, _ = bootstrap(scores, wrong)
    lines.append(f"AUROC of the score for a wrong answer: {a:.3f} (95 % bootstrap "
                 f"[{lo:.3f}, {hi:.3f}])")
    costs = [r["cost"] for r in rows if r.get("cost")]
    if costs:
        def mean(name: str) -> float:
            return float(np.mean([c.get(name, 0) for c in costs]))
        line = (f"what the decision cost per request (x-lkn-probe-cost): {mean('prefill'):.1f} "
                f"prompt tokens prefilled and {mean('decode'):.1f} tokens decoded by the model")
        if any("verifier_prefill" in c for c in costs):
            line += (f", {mean('verifier_prefill'):.1f} prefilled and "
                     f"{mean('verifier_decode'):.1f} decoded by the verifier")
        lines.append(line)
    points = scored.points()
    header = f"{'escalate':>9}{'threshold':>11}{'kept acc':>10}"
    header += "" if scored.strong is None else f"{'cascade acc':>13}"
    lines += ["", header]
    for s in SHARES:
        lines.append(_row(threshold_for_share(points, s)))
    pick: Point | None = None
    if share is not None:
        pick = threshold_for_share(points, share)
        lines += ["", f"for at most {share:.0%} escalated:"]
    elif accuracy is not None:
        pick = threshold_for_accuracy(points, accuracy)
        lines += ["", f"for accuracy >= {accuracy:.3f}:"]
        if pick is None:
            lines.append("  no threshold reaches it on these questions")
    if pick is not None:
        note = " (above every score: nothing escalated)" if pick.escalated == 0 else ""
        lines += [header, _row(pick), f"  threshold = {pick.threshold:.4f}{note}"]
    return "\n".join(lines)


def _row(p: Point) -> str:
    row = f"{p.escalated:>8.0%} {p.threshold:>10.4f}{p.kept_accuracy:>10.3f}"
    return row if p.cascade_accuracy is None else row + f"{p.cascade_accuracy:>13.3f}"


def plot(rows: Sequence[dict[str, Any]], path: str) -> str:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed in this environment"
    scored = Scored.of(rows)
    if not scored.scores:
        return "plot skipped: nothing was scored"
    points = scored.points()
    scores, wrong = scored.arrays()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    esc = [p.escalated for p in points]
    ax1.plot(esc, [p.kept_accuracy for p in points], label="kept answers")
    if scored.strong is not None:
        ax1.plot(esc, [p.cascade_accuracy for p in points], label="cascade")
        ax1.axhline(float(np.mean(scored.strong)), color="grey", ls="--", label="strong model")
    ax1.set_xlabel("share escalated")
    ax1.set_ylabel("accuracy")
    ax1.legend(fontsize=8)
    order = np.argsort(-scores, kind="stable")
    tpr = np.r_[0, np.cumsum(wrong[order]) / max(1, wrong.sum())]
    fpr = np.r_[0, np.cumsum(~wrong[order]) / max(1, (~wrong).sum())]
    ax2.plot(fpr, tpr, label=f"AUROC {auroc(scores, wrong):.3f}")
    ax2.plot([0, 1], [0, 1], color="grey", ls=":")
    ax2.set_xlabel("right answers escalated")
    ax2.set_ylabel("wrong answers escalated")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"
