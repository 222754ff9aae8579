"""The planner against the policy before it, on real engines: two SmolLM2 models, one slot.

lkn's own ``serve()`` runs in this process with two models on llama-server (``--threads 1``)
that each take the whole VRAM budget, so every change of model is a real swap (stop one
llama-server, start the other). A recorded trace (``bench/data/scheduler_real.jsonl``: arrival
second, model, answer tokens and which of 10 client keys sends it, 1 request/s;
``scheduler_real_busy.jsonl``: 2.5/s, near what one engine answers; ``--record`` writes a new
one) is replayed twice, streaming:

- **planner**: lkn as it ships (swap costs learnt from the engines' own starts and stops,
  arrival rates, residence, holds);
- **before**: the same daemon with ``scheduler.decide`` given no costs, rates or classes,
  which is the policy before the planner (collation and the wait bound).

Wait = seconds from sending a request to its first streamed token. Prints a table.

    .venv/bin/python bench/scheduler_real.py [--record --seconds 180 --rate 1.0]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lkn import ROOT, free_port, smollm2  # noqa: E402

from lkn.config.build import load_config  # noqa: E402
from lkn.fleet import scheduler  # noqa: E402
from lkn.gateway.server import serve  # noqa: E402

TRACE = os.path.join(ROOT, "bench", "data", "scheduler_real.jsonl")
SHARES = {"m0": 0.7, "m1": 0.3}
USERS = 10  # client keys: a team
CONFIG = """
server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = "{tmp}", state_dir = "{tmp}/state",
           vram_budget_mb = 1000, max_loaded_engines = 1, max_queue_wait_s = 30,
           max_queue_per_model = 500, queue_timeout_s = 600, stop_grace_s = 5,
           api_keys = {{ {keys} }} }}
models = {{
  {{ name = "m0", model_file = {model}, gpu_layers = 0, default_max_tokens = 32,
    variants = {{ {{ ctx_size = 512, vram_mb = 900 }} }}, args = {{ "--threads", 1 }} }},
  {{ name = "m1", model_file = {model}, gpu_layers = 0, default_max_tokens = 32,
    variants = {{ {{ ctx_size = 512, vram_mb = 900 }} }}, args = {{ "--threads", 1 }} }},
}}
"""
ORIGINAL = scheduler.decide


def before(slots: Any, waiters: Any, **kw: Any) -> Any:
    """The policy before the planner: no swap costs, no arrival rates, one class."""
    slots = [replace(s, stop_s=0.0) for s in slots]
    waiters = [replace(w, options=tuple(replace(o, start_s=0.0) for o in w.options),
                       priority=50.0, key="") for w in waiters]
    return ORIGINAL(slots, waiters, **{**kw, "rates": None})


def record(path: str, seconds: float, rate: float, seed: int) -> None:
    rng = random.Random(seed)
    t, rows = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        model = rng.choices(list(SHARES), list(SHARES.values()))[0]
        rows.append({"at": round(t, 3), "model": model, "max_tokens": rng.choice([8, 16, 32]),
                     "key": f"user{rng.randrange(USERS)}"})
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"recorded {len(rows)} requests over {seconds:g}s to {path}")


async def one(session: aiohttp.ClientSession, url: str, row: dict, t0: float) -> float:
    await asyncio.sleep(max(0.0, t0 + row["at"] - time.monotonic()))
    sent = time.monotonic()
    body = {"model": row["model"], "stream": True, "max_tokens": row["max_tokens"],
            "temperature": 0, "messages": [{"role": "user", "content": "Name a colour."}]}
    headers = {"Authorization": f"Bearer {row['key']}"}
    async with session.post(url, json=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {await r.text()}")
        first = None
        async for line in r.content:
            if first is None and line.startswith(b"data: ") and b'"content"' in line:
                first = time.monotonic() - sent
        return first if first is not None else time.monotonic() - sent


async def replay(rows: list[dict], policy: str) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "real.cfg.lua")
        with open(path, "w") as f:
            keys = ", ".join(f'"user{i}"' for i in range(USERS))
            f.write(CONFIG.format(port=port, tmp=tmp, model=json.dumps(smollm2()), keys=keys))
        cfg = load_config(path)
        scheduler.decide = ORIGINAL if policy == "planner" else before  # type: ignore[assignment]
        stop, started = asyncio.Event(), asyncio.Event()
        apps: list[Any] = []
        server = asyncio.create_task(serve(cfg, stop=stop, install_signals=False,
                                           on_started=lambda app: (apps.append(app),
                                                                   started.set())))
        await asyncio.wait_for(started.wait(), 60)
        from lkn.request.state import STATE
        manager = apps[0][STATE].manager
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        t0 = time.monotonic()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as s:
                waits = await asyncio.gather(*(one(s, url, row, t0) for row in rows))
        finally:
            took = time.monotonic() - t0
            starts = manager.starts
            stop.set()
            await server
            scheduler.decide = ORIGINAL  # type: ignore[assignment]
    w = np.array(waits)
    return {"policy": policy, "requests": len(w), "swaps": starts, "took_s": took,
            "p50": float(np.percentile(w, 50)), "p95": float(np.percentile(w, 95)),
            "max": float(w.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", action="store_true", help="record a new trace first")
    ap.add_argument("--seconds", type=float, default=180.0)
    ap.add_argument("--rate", type=float, default=1.0, help="arrivals per second")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--trace", default=TRACE, help="the recorded trace to replay (or write)")
    args = ap.parse_args()
    if args.record or not os.path.exists(args.trace):
        record(args.trace, args.seconds, args.rate, args.seed)
    with open(args.trace) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    results = [asyncio.run(replay(rows, policy)) for policy in ("before", "planner")]
    print(f"\n{len(rows)} requests over {rows[-1]['at']:.0f}s, "
          f"{sum(r['model'] == 'm0' for r in rows)} for m0 and "
          f"{sum(r['model'] == 'm1' for r in rows)} for m1; one engine fits at a time")
    print(f"{'policy':<9}{'requests':>9}{'swaps':>7}{'p50 s':>8}{'p95 s':>8}{'max s':>8}"
          f"{'took s':>8}")
    for r in results:
        print(f"{r['policy']:<9}{r['requests']:>9}{r['swaps']:>7}{r['p50']:>8.2f}"
              f"{r['p95']:>8.2f}{r['max']:>8.2f}{r['took_s']:>8.0f}")


if __name__ == "__main__":
    main()
