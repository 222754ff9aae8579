"""Swap scheduling on simulated traces: lkn's planner against FIFO swapping and collation alone.

Every model needs the whole VRAM budget, so one engine runs at a time. A swap costs its stop
(a fifth of ``--swap-s``) plus its start (the rest); an engine answers ``--parallel`` requests at
once. The policies, driven by the same event loop over the same trace:

- **fifo**: requests strictly in arrival order; when the head of the queue wants another model,
  nothing else is dispatched until the running engine drained and was swapped (llama-swap
  without collation).
- **collate**: ``lkn.fleet.scheduler.decide`` with no wait bound, no swap costs, no arrival
  rates and no classes: queued requests for the ready model always go first.
- **bound**: the same with the wait bound (``--max-wait-s``): the policy before the planner.
- **lkn**: ``decide`` with everything the manager gives it: the wait bound, swap costs learned
  from each engine's own starts and stops (``lkn.fleet.learned.SwapCost``, a default of
  ``--default-swap-s`` before the first), arrival rates (``ArrivalRates``), priority classes
  and client keys.
- **lkn-noclass** (two-class trace only): lkn with every request interactive and one key.

Traces (``--requests`` each, ``--seed``): ``poisson-3`` (3 models 60/30/10 %, Poisson arrivals
at ``--rate``; answers ``--service-s`` +-50 %), ``bursty-3`` (arrivals in bursts at three times
the rate, quiet between), ``zipf-5`` (5 models with Zipf shares, log-normal answer times: a heavy
tail), ``hot-3`` (one model gets 94 % of the requests, two rare ones 3 % each: the case
the wait bound is for), ``swap-5s`` and ``swap-60s`` (poisson-3 with those swap costs; the 60 s
one at a fifth of the rate), ``two-class`` (a batch flood from one key for two models at
``--rate`` plus a trickle of interactive requests from 8 keys for all three, a tenth as many).
The one-class traces' requests come from 20 client keys (a team). ``--rates`` runs poisson-3
from light to overloaded.

Wait = time from arrival to the start of the answer. Prints a table per trace; writes
bench/out/scheduler.png. With ``--summary`` the last line is
``swaps lkn=N fifo=M collate=K p95 lkn=A fifo=B collate=C`` for the trace the options choose
(Poisson arrivals; ``--models`` 3 or 5; ``--swap-s``).

    .venv/bin/python bench/scheduler_trace.py [--requests 800] [--rate 0.25] [--seed 7]
"""
from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from lkn.fleet import planner  # noqa: E402
from lkn.fleet import scheduler as sched  # noqa: E402
from lkn.fleet.learned import ArrivalRates, SwapCost  # noqa: E402
from lkn.fleet.waiters import FairTurns  # noqa: E402

BUDGET = 8000
STOP_SHARE = 0.2  # of a swap's cost, the stop; the rest is the start


@dataclass(order=True)
class Request:
    arrival: float
    id: int
    model: str = field(compare=False)
    service: float = field(compare=False)
    cls: str = field(default="interactive", compare=False)
    key: str = field(default="", compare=False)


@dataclass
class Trace:
    name: str
    requests: list[Request]
    swap_s: float
    models: tuple[str, ...]


SHARES = {3: (0.6, 0.3, 0.1), 5: (0.44, 0.22, 0.15, 0.11, 0.08)}
USERS = 20  # client keys of the one-class traces (a team)


def model_names(n: int) -> tuple[str, ...]:
    return tuple(f"m{i}" for i in range(n))


def arrivals(n: int, rate: float, rng: random.Random, bursty: bool) -> list[float]:
    """Poisson at ``rate``; bursty: on phases (mean 30 s) at 3x the rate, off phases (mean 60 s)
    silent, the same mean rate."""
    t, out = 0.0, []
    on_until = rng.expovariate(1 / 30) if bursty else math.inf
    while len(out) < n:
        t += rng.expovariate(rate * (3 if bursty else 1))
        while t > on_until:  # the burst ended: skip the quiet phase
            quiet = rng.expovariate(1 / 60)
            t += quiet
            on_until += quiet + rng.expovariate(1 / 30)
        out.append(t)
    return out


def service(rng: random.Random, mean: float, heavy: bool) -> float:
    if heavy:  # log-normal, sigma 1, capped at 20x the mean
        return min(20 * mean, rng.lognormvariate(math.log(mean) - 0.5, 1.0))
    return mean * rng.uniform(0.5, 1.5)


def make_trace(name: str, n: int, rate: float, service_s: float, swap_s: float, seed: int,
               n_models: int = 3, bursty: bool = False, heavy: bool = False,
               shares: tuple[float, ...] | None = None) -> Trace:
    rng, users = random.Random(seed), random.Random(seed + 1)
    models = model_names(n_models)
    weights = shares or SHARES[n_models]
    out = [Request(t, i, rng.choices(models, weights)[0], service(rng, service_s, heavy),
                   key=f"user{users.randrange(USERS)}")
           for i, t in enumerate(arrivals(n, rate, rng, bursty))]
    return Trace(name, out, swap_s, models)


def make_two_class(n: int, rate: float, service_s: float, swap_s: float, seed: int) -> Trace:
    """A batch flood (one key, m0 and m1 at 70/30) and interactive requests from 8 keys for all
    three models (60/30/10) at a tenth of the flood's rate."""
    rng = random.Random(seed)
    models = model_names(3)
    n_inter = n // 11
    flood = [(t, "batch") for t in arrivals(n - n_inter, rate, rng, False)]
    trickle = [(t, "interactive") for t in arrivals(n_inter, rate / 10, rng, False)]
    out = []
    for i, (t, cls) in enumerate(sorted(flood + trickle)):
        if cls == "batch":
            model, key = rng.choices(models[:2], (0.7, 0.3))[0], "nightly"
        else:
            model, key = rng.choices(models, SHARES[3])[0], f"user{rng.randrange(8)}"
        out.append(Request(t, i, model, service(rng, service_s, False), cls, key))
    return Trace("two-class", out, swap_s, models)


# ---------------------------------------------------------------------------- policies
Result = tuple[dict[int, float], int, float]  # waits by request id, swaps, seconds swapping


def run_fifo(trace: Trace, parallel: int) -> Result:
    waits: dict[int, float] = {}
    queue = list(trace.requests)
    running: list[float] = []  # end times
    model, ready_at, now, swaps = None, 0.0, 0.0, 0
    qi = 0
    while qi < len(queue):
        head = queue[qi]
        now = max(now, head.arrival, ready_at)
        if model != head.model:
            now = max(now, max(running, default=now))  # drain, then swap
            running = []
            swaps += 1
            model, ready_at = head.model, now + trace.swap_s
            continue
        running = [e for e in running if e > now]
        if len(running) >= parallel:
            now = min(running)
            continue
        waits[head.id] = now - head.arrival
        running.append(now + head.service)
        qi += 1
    return waits, swaps, swaps * trace.swap_s


@dataclass
class Mode:
    bound: bool = True
    costs: bool = True
    rates: bool = True
    classes: bool = True


MODES = {"collate": Mode(False, False, False, False), "bound": Mode(True, False, False, False),
         "lkn": Mode(), "lkn-noclass": Mode(classes=False)}


def run_decide(trace: Trace, parallel: int, max_wait_s: float, mode: Mode,
               default_swap_s: float) -> Result:
    waits: dict[int, float] = {}
    wait_bound = max_wait_s if mode.bound else math.inf
    stop_s, start_s = trace.swap_s * STOP_SHARE, trace.swap_s * (1 - STOP_SHARE)
    costs = {m: SwapCost() for m in trace.models}
    default = default_swap_s if mode.costs else 0.0
    rates = ArrivalRates()
    turns = FairTurns()
    slots: dict[str, sched.Slot] = {}
    ends: dict[str, list[float]] = {}
    queue: dict[int, tuple[sched.Waiter, Request]] = {}
    timers: list[tuple[float, int, str, str]] = []  # (time, seq, kind, key)
    seq = 0
    swaps, swap_time, now, i = 0, 0.0, 0.0, 0
    reqs = trace.requests

    def push(at: float, kind: str, key: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(timers, (at, seq, kind, key))

    def option(model: str) -> sched.Option:
        return sched.Option(f"{model}@4096", 4096, BUDGET, start_s=costs[model].start_s(default))

    def slot(key: str, **kw: object) -> None:
        s = slots[key]
        fields = dict(in_flight=s.in_flight, last_used=s.last_used, state=s.state,
                      since=s.since, stop_s=costs[s.model].stop_s(default))
        fields.update(kw)
        slots[key] = sched.Slot(key, s.model, s.ctx, s.vram_mb, capacity=parallel,
                                **fields)  # type: ignore[arg-type]

    while i < len(reqs) or queue or any(ends.values()) or timers:
        nxt = [reqs[i].arrival if i < len(reqs) else math.inf]
        nxt += [min(e) for e in ends.values() if e]
        nxt += [timers[0][0]] if timers else []
        nxt += [w.arrived + wait_bound for w, _ in queue.values() if w.arrived + wait_bound > now]
        now = max(now, min(nxt))
        while i < len(reqs) and reqs[i].arrival <= now:
            r = reqs[i]
            prio = planner.CLASSES[r.cls] if mode.classes else planner.INTERACTIVE
            key = r.key if mode.classes else ""
            queue[r.id] = (sched.Waiter(r.id, r.model, (option(r.model),), r.arrival, key=key,
                                        priority=prio, tag=turns.tag(r.model, prio, key)), r)
            rates.arrive(r.model, now, planner.weight(prio), key)
            i += 1
        while timers and timers[0][0] <= now:
            _, _, kind, key = heapq.heappop(timers)
            if kind == "ready":
                slot(key, state=sched.READY, last_used=now, since=now)
                if mode.costs:  # learned when the start is over, as the manager does
                    costs[slots[key].model].started(start_s)
            elif kind == "stopped":
                if mode.costs:
                    costs[slots[key].model].stopped(stop_s)
                del slots[key]
                ends.pop(key, None)
        for key, e in ends.items():
            done = [t for t in e if t <= now + 1e-9]
            if done:
                ends[key] = [t for t in e if t > now + 1e-9]
                slot(key, in_flight=slots[key].in_flight - len(done), last_used=now)
        # the same snapshot the manager builds: every waiter's options carry the current costs
        waiters = [sched.Waiter(w.id, w.model, (option(w.model),), w.arrived, key=w.key,
                                priority=w.priority, tag=w.tag) for w, _ in queue.values()]
        for action in sched.decide(list(slots.values()), waiters, budget_mb=BUDGET,
                                   max_engines=0, max_wait_s=wait_bound, now=now,
                                   rates=rates.rates(now) if mode.rates else None):
            if isinstance(action, sched.Grant):
                granted, req = queue.pop(action.waiter)
                turns.served(granted.model, granted.priority, granted.tag)
                slot(action.key, in_flight=slots[action.key].in_flight + 1, last_used=now)
                waits[req.id] = now - req.arrival
                ends.setdefault(action.key, []).append(now + req.service)
            elif isinstance(action, sched.Start):
                model = action.key.split("@")[0]
                slots[action.key] = sched.Slot(action.key, model, 4096, BUDGET, sched.STARTING,
                                               capacity=parallel)
                push(now + start_s, "ready", action.key)
                swaps += 1
                swap_time += start_s
            elif isinstance(action, sched.Stop):
                slot(action.key, state=sched.STOPPING)
                push(now + stop_s, "stopped", action.key)
                swap_time += stop_s
            elif isinstance(action, sched.Recheck):
                push(action.at, "recheck", "")
    return waits, swaps, swap_time


# ---------------------------------------------------------------------------- report
def stats(trace: Trace, result: Result, cls: str | None = None) -> dict[str, float]:
    waits, swaps, swap_time = result
    w = np.array([waits[r.id] for r in trace.requests
                  if r.id in waits and (cls is None or r.cls == cls)])
    span = max(r.arrival for r in trace.requests)
    return {"served": len(w), "swaps": swaps, "swap_pct": 100 * swap_time / max(span, 1e-9),
            "p50": float(np.percentile(w, 50)) if len(w) else math.nan,
            "p95": float(np.percentile(w, 95)) if len(w) else math.nan,
            "max": float(w.max()) if len(w) else math.nan}


def run_all(trace: Trace, args: argparse.Namespace) -> dict[str, Result]:
    policies: dict[str, Callable[[], Result]] = {
        "fifo": lambda: run_fifo(trace, args.parallel)}
    names = ["collate", "bound", "lkn"] + (["lkn-noclass"] if trace.name == "two-class" else [])
    for name in names:
        policies[name] = (lambda m=MODES[name]: run_decide(
            trace, args.parallel, args.max_wait_s, m, args.default_swap_s))
    return {name: run() for name, run in policies.items()}


def print_table(trace: Trace, rate: float, runs: dict[str, Result], max_wait_s: float) -> None:
    classes = sorted({r.cls for r in trace.requests})
    print(f"\n{trace.name}: {len(trace.requests)} requests at {rate:g}/s, {len(trace.models)} "
          f"models, swap {trace.swap_s:g}s")
    head = f"{'policy':<12}{'served':>7}{'swaps':>7}{'swap %':>8}"
    for cls in (classes if len(classes) > 1 else ["all"]):
        head += f"{cls[:5] + ' p50':>11}{'p95':>8}{'max':>8}"
    print(head + f"{'fifo/x':>8}")
    fifo_swaps = runs["fifo"][1]
    for name, result in runs.items():
        total = stats(trace, result)
        line = f"{name:<12}{total['served']:>7}{total['swaps']:>7}{total['swap_pct']:>8.1f}"
        for cls in (classes if len(classes) > 1 else [None]):
            s = stats(trace, result, cls)
            line += f"{s['p50']:>11.1f}{s['p95']:>8.1f}{s['max']:>8.1f}"
        print(line + f"{fifo_swaps / max(total['swaps'], 1):>8.2f}")
    lkn, fifo, coll = (stats(trace, runs[n]) for n in ("lkn", "fifo", "collate"))
    verdict = [f"swaps {fifo['swaps'] / max(lkn['swaps'], 1):.2f}x fewer than fifo (goal 3x)",
               f"p95 {'<=' if lkn['p95'] <= fifo['p95'] + 1e-9 else '>'} fifo's",
               f"{lkn['p95'] / max(coll['p95'], 1e-9):.2f}x collate's (goal <= 1.25)"]
    if "lkn-noclass" in runs:
        inter = stats(trace, runs["lkn"], "interactive")["p95"]
        plain = stats(trace, runs["lkn-noclass"], "interactive")["p95"]
        batch = stats(trace, runs["lkn"], "batch")["max"]
        verdict.append(f"interactive p95 {inter / max(plain, 1e-9):.2f}x without classes "
                       f"(goal <= 0.25); batch max {batch:.0f}s vs bound {max_wait_s:g}s")
    print("goal: " + "; ".join(verdict))


def plot(results: dict[str, tuple[Trace, dict[str, Result]]], sweep: list[tuple[float, dict]],
         path: str, max_wait_s: float) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    panels = len(results) + 1
    cols = 4
    rows = math.ceil(panels / cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax, (name, (trace, runs)) in zip(axes, results.items()):
        for policy, (waits, swaps, _) in runs.items():
            w = np.sort(np.array(list(waits.values())))
            ax.plot(w, np.arange(1, len(w) + 1) / len(w), label=f"{policy} ({swaps})")
        ax.axvline(max_wait_s, color="grey", ls=":")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_title(name)
        ax.set_xlabel("wait (s)")
        ax.legend(fontsize=7)
    ax = axes[panels - 1]
    for policy in ("fifo", "collate", "bound", "lkn"):
        ax.plot([r for r, _ in sweep], [runs[policy][1] for _, runs in sweep], "o-",
                label=policy)
    ax.set_title("poisson-3: swaps by rate")
    ax.set_xlabel("arrivals per second")
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=800)
    ap.add_argument("--rate", type=float, default=0.25, help="arrivals per second")
    ap.add_argument("--rates", default="0.05,0.15,0.25,0.4",
                    help="poisson-3 sweep from light to overloaded ('' to skip)")
    ap.add_argument("--models", type=int, choices=(3, 5), default=3)
    ap.add_argument("--service-s", type=float, default=3.0)
    ap.add_argument("--swap-s", type=float, default=8.0, help="stop + start of one swap")
    ap.add_argument("--default-swap-s", type=float, default=10.0,
                    help="lkn's swap cost before it has seen one (server.swap_cost_s)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--max-wait-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--summary", action="store_true",
                    help="only the trace the options choose, ending with the summary line")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = ap.parse_args()
    n, rate, sv, sw, seed = args.requests, args.rate, args.service_s, args.swap_s, args.seed
    if args.summary:
        trace = make_trace(f"poisson-{args.models}", n, rate, sv, sw, seed, args.models)
        runs = run_all(trace, args)
        print_table(trace, rate, runs, args.max_wait_s)
        p = {k: stats(trace, runs[k]) for k in ("lkn", "fifo", "collate")}
        print(f"swaps lkn={p['lkn']['swaps']} fifo={p['fifo']['swaps']} "
              f"collate={p['collate']['swaps']} p95 lkn={p['lkn']['p95']:.1f} "
              f"fifo={p['fifo']['p95']:.1f} collate={p['collate']['p95']:.1f}")
        return
    traces = [
        (make_trace("poisson-3", n, rate, sv, sw, seed), rate),
        (make_trace("bursty-3", n, rate, sv, sw, seed, bursty=True), rate),
        (make_trace("zipf-5", n, rate, sv, sw, seed, 5, heavy=True), rate),
        (make_trace("hot-3", n, rate, sv, sw, seed, shares=(0.94, 0.03, 0.03)), rate),
        (make_trace("swap-5s", n, rate, sv, 5.0, seed), rate),
        (make_trace("swap-60s", n, rate / 5, sv, 60.0, seed), rate / 5),
        (make_two_class(n, rate, sv, sw, seed), rate),
    ]
    results = {}
    for trace, r in traces:
        runs = run_all(trace, args)
        results[trace.name] = (trace, runs)
        print_table(trace, r, runs, args.max_wait_s)
    sweep = []
    for r in [float(x) for x in args.rates.split(",") if x]:
        trace = make_trace(f"poisson-3 @ {r:g}/s", n, r, sv, sw, seed)
        runs = run_all(trace, args)
        sweep.append((r, runs))
        print_table(trace, r, runs, args.max_wait_s)
    plot(results, sweep, os.path.join(args.out, "scheduler.png"), args.max_wait_s)


if __name__ == "__main__":
    main()
