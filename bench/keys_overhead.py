"""What sharing the box costs per request: lkn with no keys and the activity log off, against
lkn with named keys (a key with every limit set, so each request is admitted, queued in its
key's place and charged) and the activity log on (a row per request, written by its one
writer). Same engine (``bench/fast_engine.py``), same sitting, rounds interleaved (A B A B):

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/keys_overhead.py'

Prints lkn's CPU per answer and per 16-chunk stream (16 connections) and answers/s; the
issue's goal is < 5 % throughput. About 2 minutes on the 2-core box.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402
from overhead import BODY  # noqa: E402
from targets import running_lkn  # noqa: E402

OFF = "activity = { enabled = false }"
ON = ('keys = { { id = "bench", key = "sk-bench", max_concurrent = 64, '
      'requests_per_minute = 100000000, tokens_per_minute = 1000000000, '
      'tokens_per_day = 1000000000 } }, activity = { enabled = true }')
KEY = {"Authorization": "Bearer sk-bench"}


def measure(base: str, body: dict, seconds: float, pid: int,
            headers: dict[str, str]) -> tuple[float, float]:
    """(lkn's CPU µs per request, requests per second) at 16 connections."""
    url = f"{base}/v1/chat/completions"
    proc = psutil.Process(pid)
    loadgen.builtin(url, body, conns=16, duration_s=1.0, headers=headers)  # the engine starts
    before = sum(proc.cpu_times()[:2])
    result = loadgen.builtin(url, body, conns=16, duration_s=seconds, headers=headers)
    if result.errors:
        raise RuntimeError(f"{result.errors} errors")
    cpu = (sum(proc.cpu_times()[:2]) - before) / max(1, result.requests) * 1e6
    return cpu, result.requests / result.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float, float, float]]] = {"off": [], "keys+activity": []}
    for i in range(args.rounds):
        for name, server_lua, headers in (("off", OFF, {}), ("keys+activity", ON, KEY)):
            with tempfile.TemporaryDirectory() as tmp, \
                    running_lkn(tmp, "", server_lua=server_lua) as (base, proc):
                answer = measure(base, BODY, args.seconds, proc.pid, headers)
                stream = measure(base, {**BODY, "stream": True}, args.seconds, proc.pid,
                                 headers)
            rows[name].append((*answer, *stream))
            print(f"round {i + 1} {name}: {answer[0]:.0f} µs/answer, {answer[1]:.0f}/s; "
                  f"{stream[0]:.0f} µs/stream, {stream[1]:.0f}/s", flush=True)
    print("\n| lkn | CPU µs per answer | answers/s | CPU µs per stream | streams/s |\n"
          "|---|---|---|---|---|")
    med = {name: [statistics.median(v[j] for v in values) for j in range(4)]
           for name, values in rows.items()}
    for name, (a, ar, s, sr) in med.items():
        print(f"| {name} | {a:.0f} | {ar:.0f} | {s:.0f} | {sr:.0f} |")
    off, on = med["off"], med["keys+activity"]
    print(f"\nthroughput: answers {100 * (on[1] / off[1] - 1):+.1f} %, "
          f"streams {100 * (on[3] / off[3] - 1):+.1f} % (goal: within -5 %)")


if __name__ == "__main__":
    main()
