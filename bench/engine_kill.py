"""An engine killed mid-stream, and the next request sent at once (issue #25's sequence).

A real lkn serves SmolLM2 on llama-server (--threads 1). Each run streams an answer, SIGKILLs
the engine after the first content delta, and sends the next request the moment the broken
stream ends. lkn must answer that request (200) from a restarted engine: the broken stream
is the only casualty. Prints one line per run and a summary table.

    .venv/bin/python bench/engine_kill.py [--runs 20]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _lkn import running_lkn  # noqa: E402

MODELS = """{
  { name = "smol", model_file = MODEL, gpu_layers = 0, ctx_size = 512,
    default_max_tokens = 64, args = { "--threads", 1 } },
}"""
ASK = {"model": "smol", "messages": [{"role": "user", "content": "Count from one to fifty."}],
       "max_tokens": 200, "temperature": 0}


def post(url: str, body: dict) -> urllib.request.Request:
    return urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                  headers={"Content-Type": "application/json"})


def engine_pid(base: str) -> int:
    with urllib.request.urlopen(base.removesuffix("/v1") + "/status", timeout=10) as r:
        engines = json.load(r)["engines"]
    return next(e["pid"] for e in engines if e["state"] == "ready")


def one_run(base: str) -> dict:
    url = base + "/chat/completions"
    urllib.request.urlopen(post(url, {**ASK, "max_tokens": 1}), timeout=120).read()  # warm
    pid = engine_pid(base)
    with urllib.request.urlopen(post(url, {**ASK, "stream": True}), timeout=120) as stream:
        for line in stream:
            if line.startswith(b"data: ") and b'"content"' in line:
                os.kill(pid, signal.SIGKILL)
                break
        rest = stream.read().decode()
        broken = "error event" if '"error"' in rest else (
            "[DONE]" if "[DONE]" in rest else "cut")
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(post(url, {**ASK, "max_tokens": 8}), timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return {"stream": broken, "next": status, "next_s": time.monotonic() - t0,
            "new_pid": engine_pid(base) != pid if status == 200 else False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with running_lkn(MODELS) as base:
        results = []
        for i in range(args.runs):
            r = one_run(base)
            results.append(r)
            print(f"run {i + 1:2d}: broken stream ended with {r['stream']:<11} next request "
                  f"{r['next']} in {r['next_s']:.2f}s, engine restarted: {r['new_pid']}",
                  flush=True)
    ok = sum(1 for r in results if r["next"] == 200 and r["new_pid"])
    times = [r["next_s"] for r in results if r["next"] == 200]
    print()
    print("| runs | next request 200 | broken stream ends with an error event "
          "| next answer p50 | max |")
    print("|---|---|---|---|---|")
    print(f"| {len(results)} | {ok}/{len(results)} | "
          f"{sum(r['stream'] == 'error event' for r in results)}/{len(results)} | "
          f"{statistics.median(times):.2f} s | {max(times):.2f} s |" if times else
          f"| {len(results)} | 0/{len(results)} | - | - | - |")


if __name__ == "__main__":
    main()
