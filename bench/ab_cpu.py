"""lkn's CPU per answer and per 16-chunk stream, two checkouts interleaved (A B A B ...), so a
slow minute of the shared box hits both: a before/after comparison finer than one overhead.py
run (whose rows run one after the other).

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/ab_cpu.py /tmp/lkn-before .'
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
from overhead import BODY, UVLOOP_LKN, post  # noqa: E402
from targets import running_lkn  # noqa: E402


def cpu_per_request(base: str, body: dict, seconds: float, pid: int) -> float:
    url = f"{base}/v1/chat/completions"
    proc = psutil.Process(pid)
    run = loadgen.wrk if loadgen.wrk_path() else loadgen.builtin
    run(url, body, conns=16, duration_s=1.0)  # warm up
    before = sum(proc.cpu_times()[:2])
    result = run(url, body, conns=16, duration_s=seconds)
    return (sum(proc.cpu_times()[:2]) - before) / max(1, result.requests) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("roots", nargs="+", help="lkn checkouts; 'uvloop:ROOT' runs it on uvloop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    found: dict[str, list[tuple[float, float]]] = {r: [] for r in args.roots}
    for i in range(args.rounds):
        for spec in args.roots:
            _, uvloop, root = spec.rpartition("uvloop:")
            python = (sys.executable, "-c", UVLOOP_LKN) if uvloop else (sys.executable,)
            with tempfile.TemporaryDirectory() as tmp, \
                    running_lkn(tmp, "", python, os.path.abspath(root)) as (base, proc):
                post(f"{base}/v1/chat/completions", BODY)
                answer = cpu_per_request(base, BODY, args.seconds, proc.pid)
                stream = cpu_per_request(base, {**BODY, "stream": True}, args.seconds, proc.pid)
            found[spec].append((answer, stream))
            print(f"round {i + 1} {spec}: {answer:.0f} µs per answer, {stream:.0f} µs per stream",
                  flush=True)
    print("\n| lkn | CPU µs per answer (median, min) | CPU µs per stream (median, min) |\n"
          "|---|---|---|")
    for spec, values in found.items():
        a, s = [v[0] for v in values], [v[1] for v in values]
        print(f"| {spec} | {statistics.median(a):.0f} ({min(a):.0f}) | "
              f"{statistics.median(s):.0f} ({min(s):.0f}) |")


if __name__ == "__main__":
    main()
