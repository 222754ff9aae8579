"""What each client API costs lkn: the same small answer asked through OpenAI chat, the
Responses API, Anthropic Messages and Ollama's chat, whole and streamed (16 chunks), from the
fast fake engine (``bench/fast_engine.py``) behind one ``lkn serve``.

For each API: lkn's CPU per request (16 connections, its process's user+system time over the
answers it served) and the p50 latency on one connection. The rounds interleave the APIs, so a
slow minute of the shared box hits all of them; the table shows medians and each API's cost
over OpenAI chat's (the translation at the edge: ``lkn/request/inbound/``).

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/client_apis.py'

About 2 minutes on the 2-core box with the defaults.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402
from overhead import MESSAGES, post  # noqa: E402
from targets import running_lkn  # noqa: E402

SYSTEM, USER = MESSAGES[0]["content"], MESSAGES[1:]
# temperature 1: never deterministic, so never a cache hit
WHOLE: dict[str, tuple[str, dict[str, Any]]] = {
    "openai chat": ("/v1/chat/completions", {"model": "fast", "messages": MESSAGES,
                                             "max_tokens": 32, "temperature": 1.0}),
    "responses": ("/v1/responses", {"model": "fast", "instructions": SYSTEM, "input": USER,
                                    "max_output_tokens": 32, "temperature": 1.0}),
    "anthropic": ("/v1/messages", {"model": "fast", "system": SYSTEM, "messages": USER,
                                   "max_tokens": 32, "temperature": 1.0}),
    "ollama": ("/api/chat", {"model": "fast", "messages": MESSAGES, "stream": False,
                             "options": {"num_predict": 32, "temperature": 1.0}}),
}


def streamed(api: str) -> dict[str, Any]:
    body = dict(WHOLE[api][1])
    body["stream"] = True
    return body


def cpu_per_request(url: str, body: dict[str, Any], seconds: float, pid: int) -> float:
    proc = psutil.Process(pid)
    loadgen.builtin(url, body, conns=16, duration_s=0.5)  # warm up
    before = sum(proc.cpu_times()[:2])
    result = loadgen.builtin(url, body, conns=16, duration_s=seconds)
    if result.errors:
        raise RuntimeError(f"{url}: {result.errors} errors")
    return (sum(proc.cpu_times()[:2]) - before) / max(1, result.requests) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    cpu: dict[tuple[str, str], list[float]] = {}
    p50: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, running_lkn(tmp, "") as (base, proc):
        for api, (path, body) in WHOLE.items():
            post(base + path, body)  # the engine is up; every route answers
        for i in range(args.rounds):
            for api, (path, body) in WHOLE.items():
                for kind, sent in (("whole", body), ("stream", streamed(api))):
                    key = (api, kind)
                    cpu.setdefault(key, []).append(
                        cpu_per_request(base + path, sent, args.seconds, proc.pid))
                    one = loadgen.builtin(base + path, sent, conns=1, count=200)
                    p50.setdefault(key, []).append(one.p50_s * 1000)
            print(f"round {i + 1}: " + ", ".join(
                f"{a}/{k} {v[-1]:.0f} µs" for (a, k), v in cpu.items()), flush=True)
    print("\n| API | CPU µs per answer | vs chat | p50 ms | CPU µs per stream | vs chat "
          "| p50 ms |\n|---|---|---|---|---|---|---|")
    base_whole = statistics.median(cpu[("openai chat", "whole")])
    base_stream = statistics.median(cpu[("openai chat", "stream")])
    for api in WHOLE:
        w, s = statistics.median(cpu[(api, "whole")]), statistics.median(cpu[(api, "stream")])
        print(f"| {api} | {w:.0f} | {100 * (w / base_whole - 1):+.0f} % | "
              f"{statistics.median(p50[(api, 'whole')]):.2f} | {s:.0f} | "
              f"{100 * (s / base_stream - 1):+.0f} % | "
              f"{statistics.median(p50[(api, 'stream')]):.2f} |")


if __name__ == "__main__":
    main()
