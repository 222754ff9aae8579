"""Swap scheduling on a simulated 3-model trace with one VRAM slot: lkn vs plain FIFO swapping.

The trace: interleaved Poisson arrivals for three models (60/30/10 % of the traffic), each model
needing the whole VRAM budget, so only one runs at a time. A swap costs ``--load-s`` (stop +
load), each answer ``--service-s`` (+-50 %), and an engine answers ``--parallel`` requests at once
(llama-server slots; more wait inside the engine).

- **fifo**: requests are handled strictly in arrival order; when the head of the queue wants
  another model, nothing else is dispatched until the running engine drained and was swapped
  (llama-swap without collation).
- **collate**: ``lkn.fleet.scheduler.decide`` with no wait bound: queued requests for the ready model
  are always served first (what a collating swapper without a bound does).
- **lkn**: ``lkn.fleet.scheduler.decide`` itself, driven by the same event loop: collation of queued
  requests for the ready model, bounded by ``max_queue_wait_s``.

Wait = time from arrival to the start of the answer. Prints a table; writes bench/out/scheduler.png.

    .venv/bin/python bench/scheduler_trace.py [--requests 600] [--rate 0.2] [--seed 1]
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import sys
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from lkn.fleet import scheduler as sched  # noqa: E402

MODELS = ("big", "mid", "small")
SHARE = (0.6, 0.3, 0.1)
BUDGET = 8000


@dataclass(order=True)
class Request:
    arrival: float
    id: int
    model: str = field(compare=False)
    service: float = field(compare=False)


SCENARIOS = {
    # name: (share of each model, multiplier of --rate)
    "mixed": (SHARE, 1.0),
    # one model keeps its engine busy all the time; the others send a request now and then
    "hot": ((0.94, 0.03, 0.03), 2.0),
}


def make_trace(n: int, rate: float, service_s: float, seed: int,
               shares: tuple[float, ...] = SHARE) -> list[Request]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(rate)
        model = rng.choices(MODELS, shares)[0]
        out.append(Request(t, i, model, service_s * rng.uniform(0.5, 1.5)))
    return out


class Engine:
    """One engine with ``parallel`` slots; requests beyond them queue inside it."""

    def __init__(self, model: str, parallel: int) -> None:
        self.model, self.parallel = model, parallel
        self.running: list[tuple[float, int]] = []
        self.backlog: list[Request] = []

    def admit(self, req: Request, now: float, waits: dict[int, float]) -> None:
        self.backlog.append(req)
        self.pump(now, waits)

    def pump(self, now: float, waits: dict[int, float]) -> None:
        while self.backlog and len(self.running) < self.parallel:
            req = self.backlog.pop(0)
            waits[req.id] = now - req.arrival
            self.running.append((now + req.service, req.id))

    def finish(self, now: float, waits: dict[int, float]) -> list[int]:
        done = [rid for end, rid in self.running if end <= now + 1e-9]
        self.running = [(end, rid) for end, rid in self.running if end > now + 1e-9]
        self.pump(now, waits)
        return done

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.backlog)

    def next_end(self) -> float:
        return min((end for end, _ in self.running), default=float("inf"))


def run_fifo(trace: list[Request], load_s: float, parallel: int) -> tuple[dict[int, float], int]:
    waits: dict[int, float] = {}
    queue: list[Request] = []
    engine: Engine | None = None
    swaps, now, i = 0, 0.0, 0
    ready_at = 0.0
    while i < len(trace) or queue or (engine and engine.busy):
        candidates = [trace[i].arrival if i < len(trace) else float("inf"),
                      engine.next_end() if engine else float("inf")]
        if engine is None or now < ready_at:
            candidates.append(ready_at if now < ready_at else float("inf"))
        now = max(now, min(candidates))
        while i < len(trace) and trace[i].arrival <= now:
            queue.append(trace[i])
            i += 1
        if engine:
            engine.finish(now, waits)
        while queue and now >= ready_at:
            head = queue[0]
            if engine and engine.model == head.model:
                engine.admit(queue.pop(0), now, waits)
            elif engine is None or engine.busy == 0:
                engine = Engine(head.model, parallel)
                swaps += 1
                ready_at = now + load_s
                break
            else:
                break
    return waits, swaps


def run_lkn(trace: list[Request], load_s: float, parallel: int,
            max_wait_s: float) -> tuple[dict[int, float], int]:
    waits: dict[int, float] = {}
    engines: dict[str, Engine] = {}
    slots: dict[str, sched.Slot] = {}
    queue: dict[int, tuple[sched.Waiter, Request]] = {}
    timers: list[tuple[float, str, str]] = []  # (time, kind, key)
    swaps, now, i = 0, 0.0, 0
    option = {m: sched.Option(f"{m}@4096", 4096, BUDGET) for m in MODELS}
    while i < len(trace) or queue or any(e.busy for e in engines.values()) or timers:
        nxt = [trace[i].arrival if i < len(trace) else float("inf")]
        nxt += [e.next_end() for e in engines.values()]
        nxt += [t for t, _, _ in timers[:1]]
        nxt += [w.arrived + max_wait_s for w, _ in queue.values() if w.arrived + max_wait_s > now]
        now = max(now, min(nxt))
        while i < len(trace) and trace[i].arrival <= now:
            r = trace[i]
            queue[r.id] = (sched.Waiter(r.id, r.model, (option[r.model],), r.arrival), r)
            i += 1
        while timers and timers[0][0] <= now:
            _, kind, key = heapq.heappop(timers)
            if kind == "ready":
                s = slots[key]
                slots[key] = sched.Slot(key, s.model, s.ctx, s.vram_mb, sched.READY, 0, now,
                                        capacity=parallel)
            else:
                del slots[key]
                del engines[key]
        for key, e in engines.items():
            for _ in e.finish(now, waits):
                s = slots[key]
                slots[key] = sched.Slot(key, s.model, s.ctx, s.vram_mb, s.state,
                                        s.in_flight - 1, now, capacity=parallel)
        for action in sched.decide(list(slots.values()), [w for w, _ in queue.values()],
                                   budget_mb=BUDGET, max_engines=0, max_wait_s=max_wait_s,
                                   now=now):
            if isinstance(action, sched.Grant):
                _, req = queue.pop(action.waiter)
                s = slots[action.key]
                slots[action.key] = sched.Slot(s.key, s.model, s.ctx, s.vram_mb, s.state,
                                               s.in_flight + 1, now, capacity=parallel)
                engines[action.key].admit(req, now, waits)
            elif isinstance(action, sched.Start):
                model = action.key.split("@")[0]
                slots[action.key] = sched.Slot(action.key, model, 4096, BUDGET, sched.STARTING,
                                               capacity=parallel)
                engines[action.key] = Engine(model, parallel)
                heapq.heappush(timers, (now + load_s, "ready", action.key))
                swaps += 1
            elif isinstance(action, sched.Stop):
                s = slots[action.key]
                slots[action.key] = sched.Slot(s.key, s.model, s.ctx, s.vram_mb, sched.STOPPING,
                                               capacity=parallel)
                heapq.heappush(timers, (now, "stopped", action.key))
    return waits, swaps


def summarize(name: str, waits: dict[int, float], swaps: int,
              trace: list[Request]) -> dict[str, float | str]:
    w = np.array(list(waits.values()))
    by_model = {m: np.array([waits[r.id] for r in trace if r.model == m]) for m in MODELS}
    return {"policy": name, "swaps": swaps, "p50": float(np.percentile(w, 50)),
            "p95": float(np.percentile(w, 95)), "max": float(w.max()),
            "max_small": float(by_model["small"].max()), "served": len(w)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rate", type=float, default=0.2, help="arrivals per second")
    ap.add_argument("--service-s", type=float, default=3.0)
    ap.add_argument("--load-s", type=float, default=8.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--max-wait-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
    args = ap.parse_args()
    results = {}
    for scenario, (shares, factor) in SCENARIOS.items():
        rate = args.rate * factor
        trace = make_trace(args.requests, rate, args.service_s, args.seed, shares)
        runs = {"fifo": run_fifo(trace, args.load_s, args.parallel),
                "collate": run_lkn(trace, args.load_s, args.parallel, float("inf")),
                "lkn": run_lkn(trace, args.load_s, args.parallel, args.max_wait_s)}
        results[scenario] = runs
        print(f"\nscenario {scenario}: {args.requests} requests at {rate:g}/s, shares "
              f"{dict(zip(MODELS, shares))}; load {args.load_s}s, service {args.service_s}s, "
              f"{args.parallel} slots, max_queue_wait_s {args.max_wait_s}, seed {args.seed}")
        print(f"{'policy':<9}{'served':>7}{'swaps':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}"
              f"{'max small s':>13}")
        for name, (waits, swaps) in runs.items():
            r = summarize(name, waits, swaps, trace)
            print(f"{r['policy']:<9}{r['served']:>7}{r['swaps']:>7}{r['p50']:>9.1f}"
                  f"{r['p95']:>9.1f}{r['max']:>9.1f}{r['max_small']:>13.1f}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot")
        return
    os.makedirs(args.out, exist_ok=True)
    fig, axes = plt.subplots(1, len(results), figsize=(12, 4))
    for ax, (scenario, runs) in zip(axes, results.items()):
        for name, (waits, swaps) in runs.items():
            w = np.sort(np.array(list(waits.values())))
            ax.plot(w, np.arange(1, len(w) + 1) / len(w), label=f"{name} ({swaps} swaps)")
        ax.axvline(args.max_wait_s, color="grey", ls=":", label="max_queue_wait_s")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        ax.set_xlabel("wait before the answer starts (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{scenario}: 3 models, one VRAM slot")
        ax.legend()
    fig.tight_layout()
    path = os.path.join(args.out, "scheduler.png")
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
