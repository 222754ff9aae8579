"""lkn's resident memory at idle and after its first answers, and which heavy libraries it has
mapped then (numpy, llama-cpp-python): the RSS goal of issue 9.

Starts ``lkn serve`` with bench/overhead.py's config (the fast fake engine, the SmolLM2 GGUF as
the model file) from ``--root`` (default: this checkout), waits ``--settle`` seconds for the
start-up work to finish, reads RSS, sends 100 answers and reads it again.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/idle_rss.py'
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import targets  # noqa: E402
from _lkn import ROOT  # noqa: E402

HEAVY = ("numpy", "llama_cpp", "libllama", "jinja2", "tokenizers")


def mapped(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        text = f.read()
    return [name for name in HEAVY if name in text]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default=ROOT, help="the lkn checkout to run")
    ap.add_argument("--settle", type=float, default=3.0)
    args = ap.parse_args()
    body = json.dumps({"model": "fast", "max_tokens": 8,
                       "messages": [{"role": "user", "content": "hello"}]}).encode()
    with tempfile.TemporaryDirectory() as tmp, \
            targets.running_lkn(tmp, "", root=args.root) as (url, proc):
        pid = psutil.Process(proc.pid)
        lkn = next((p for p in [pid, *pid.children(recursive=True)]
                    if "lkn" in " ".join(p.cmdline())), pid)
        time.sleep(args.settle)
        idle = lkn.memory_info().rss / 2**20
        idle_libs = mapped(lkn.pid)
        for _ in range(100):
            req = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
        busy = lkn.memory_info().rss / 2**20
        print(f"root={args.root}\nidle RSS {idle:.1f} MB (mapped: {', '.join(idle_libs) or '-'})"
              f"\nafter 100 answers {busy:.1f} MB (mapped: {', '.join(mapped(lkn.pid)) or '-'})")


if __name__ == "__main__":
    main()
