"""Swap overhead: what lkn adds to llama-server's own cold start, with the real SmolLM2 engine.

Three measurements, interleaved, time to the first byte of a streamed 1-token answer:

- **direct cold**: spawn llama-server (lkn's own argv) -> poll /health every 2 ms -> stream;
  also the time from SIGTERM until it exited (**direct stop**);
- **lkn cold**: a fresh lkn with no engine running gets the request (spawn, health, forward);
- **lkn swap**: lkn with one engine slot, the other model loaded: stop it, start this one.

overhead(cold) = lkn cold - direct cold; overhead(swap) = lkn swap - (direct cold + direct stop).
Every llama-server runs with --threads 1. Prints a table; writes bench/out/swap_overhead.png.

    .venv/bin/python bench/swap_overhead.py [--rounds 10]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lkn import ROOT, free_port, running_lkn, smollm2  # noqa: E402

sys.path.insert(0, ROOT)
from lkn.engines.llamacpp import default_binary  # noqa: E402

BODY = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "stream": True,
        "temperature": 0}


def first_byte(url: str, body: dict) -> float:
    """Seconds from sending ``body`` until the first byte of the answer arrived."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read(1)
        elapsed = time.perf_counter() - t0
        resp.read()
    return elapsed


def direct_cold() -> tuple[float, float]:
    port = free_port()
    argv = [default_binary(), "--model", smollm2(), "--host", "127.0.0.1", "--port", str(port),
            "-c", "512", "-np", "1", "-ngl", "0", "--alias", "smol", "--threads", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.002)
        first = time.perf_counter() - t0 + first_byte(
            f"http://127.0.0.1:{port}/v1/chat/completions", BODY)
    finally:
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        stop = time.perf_counter() - t1
    return first, stop


MODELS = ('{ { name = "a", model_file = MODEL, ctx_size = 512, gpu_layers = 0, '
          'args = { "--threads", 1 } }, '
          '{ name = "b", model_file = MODEL, ctx_size = 512, gpu_layers = 0, '
          'args = { "--threads", 1 } } }')


def lkn_cold() -> float:
    with running_lkn(MODELS, "max_loaded_engines = 1") as base:
        time.sleep(1.0)  # an idle lkn: its start-up work (tokenizer warm-up) is done
        return first_byte(f"{base}/chat/completions", {**BODY, "model": "a"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    direct: list[float] = []
    stops: list[float] = []
    cold: list[float] = []
    swap: list[float] = []
    direct_cold()  # warm the page cache: the model file and the binary
    with running_lkn(MODELS, "max_loaded_engines = 1") as base:
        first_byte(f"{base}/chat/completions", {**BODY, "model": "a"})
        for i in range(args.rounds):
            d, s = direct_cold()
            direct.append(d)
            stops.append(s)
            # each request for the other model stops the loaded one and starts its own
            swap.append(first_byte(f"{base}/chat/completions",
                                   {**BODY, "model": "b" if i % 2 == 0 else "a"}))
    for _ in range(args.rounds):
        cold.append(lkn_cold())
    med = statistics.median
    rows = [("direct cold (spawn -> first byte)", direct), ("direct stop (SIGTERM -> exit)", stops),
            ("lkn cold (no engine running)", cold), ("lkn swap (stop one, start other)", swap)]
    print(f"SmolLM2-135M on llama-server (CPU, 1 thread), {args.rounds} rounds, ms")
    print(f"{'':38} {'median':>8} {'min':>8} {'max':>8}")
    for name, values in rows:
        print(f"{name:38} {med(values) * 1000:8.1f} {min(values) * 1000:8.1f} "
              f"{max(values) * 1000:8.1f}")
    print(f"overhead, cold: {(med(cold) - med(direct)) * 1000:+.1f} ms; "
          f"swap: {(med(swap) - med(direct) - med(stops)) * 1000:+.1f} ms (medians)")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.boxplot([[v * 1000 for v in values] for _, values in rows], orientation="horizontal")
    ax.set_yticks(range(1, len(rows) + 1), [name for name, _ in rows])
    ax.set_xlabel("ms")
    ax.set_title("time to first byte: llama-server alone vs through lkn")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, "bench", "out", "swap_overhead.png"), dpi=120)


if __name__ == "__main__":
    main()
