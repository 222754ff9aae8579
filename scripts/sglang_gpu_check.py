"""Real-GPU check of lkn's SGLang engine: start lkn with an SGLang model from a local path, send
a chat request, a streaming request and a probe, let the engine sleep (release its GPU memory)
and wake it with the same greedy request, and print a short table. The woken answer must equal
the one before the sleep: a woken engine that lost its weights answers garbage.

    python scripts/sglang_gpu_check.py --model-path /models/Qwen2.5-0.5B-Instruct \
        [--python /opt/sglang/bin/python] [--ctx 4096] [--mem-fraction 0.5]

Where there is no NVIDIA GPU or the interpreter has no SGLang, it prints why and exits with
status 0 without starting anything (status 1 only when a started check fails).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from lkn.__main__ import wait_until_up  # noqa: E402


def gpu_used_mb() -> int | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    out = subprocess.run([smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        return None
    return sum(int(x) for x in out.stdout.split() if x.strip().isdigit())


def skip(reason: str) -> None:
    print(f"SKIPPED: {reason}")
    sys.exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_state(port: int) -> str:
    health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status"))
    return str(health["engines"][0]["state"]) if health.get("engines") else "none"


def sleep_wake_check(client: Any, port: int, msg: list[dict[str, str]], sleep_after: float,
                     rows: list[tuple[str, str]]) -> bool:
    """Greedy answer, sleep (release), wake (resume), the same greedy answer again."""
    def greedy() -> str:
        r = client.chat.completions.create(model="sg", messages=msg, max_tokens=32,
                                           temperature=0)
        return r.choices[0].message.content or ""

    before = greedy()
    deadline = time.monotonic() + sleep_after + 60
    while engine_state(port) != "asleep" and time.monotonic() < deadline:
        time.sleep(0.5)
    state = engine_state(port)
    rows.append(("state after idle", state))
    rows.append(("VRAM asleep (MiB)", str(gpu_used_mb())))
    t0 = time.monotonic()
    after = greedy()
    rows.append(("wake + answer (s)", f"{time.monotonic() - t0:.1f}"))
    same = state == "asleep" and after == before
    rows.append(("sleep -> wake same answer", "yes" if same else
                 f"NO: {before[:40]!r} then {after[:40]!r}"))
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", required=True, help="local Hugging Face model directory")
    ap.add_argument("--python", default=sys.executable, help="interpreter that has sglang")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--mem-fraction", type=float, default=0.5)
    ap.add_argument("--start-timeout", type=float, default=480)
    ap.add_argument("--sleep-after", type=float, default=5,
                    help="idle seconds before the engine releases its GPU memory")
    args = ap.parse_args()

    if gpu_used_mb() is None:
        skip("no NVIDIA GPU here (nvidia-smi is missing or failing)")
    probe = subprocess.run([args.python, "-c", "import sglang, sys; print(sglang.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        skip(f"{args.python} cannot import sglang")
    if not os.path.isfile(os.path.join(args.model_path, "config.json")):
        skip(f"{args.model_path} is not a local model directory (no config.json)")
    sglang_version = probe.stdout.strip()

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="lkn-sglang-check-")
    cfg = os.path.join(tmp, "check.cfg.lua")
    with open(cfg, "w") as f:
        f.write(f"""
server = {{ listen = {{ "127.0.0.1:{port}" }}, log_dir = {json.dumps(tmp)},
           engine_start_timeout_s = {args.start_timeout}, stop_grace_s = 20 }}
models = {{ {{ name = "sg", engine = "sglang", python = {json.dumps(args.python)},
              model_file = {json.dumps(args.model_path)}, ctx_size = {args.ctx},
              mem_fraction_static = {args.mem_fraction}, default_max_tokens = 64,
              sleep_when_idle_s = {args.sleep_after},
              tokenizer_path = {json.dumps(args.model_path)} }} }}
""")
    import openai

    before = gpu_used_mb()
    lkn = subprocess.Popen([sys.executable, "-m", "lkn", "serve", "--config", cfg], cwd=ROOT,
                           stdout=open(os.path.join(tmp, "lkn.log"), "w"),
                           stderr=subprocess.STDOUT)
    rows: list[tuple[str, str]] = [("sglang", sglang_version), ("VRAM before (MiB)", str(before))]
    ok = True
    try:
        if wait_until_up(f"127.0.0.1:{port}", 30, lambda: lkn.poll() is None) is None:
            raise RuntimeError(f"lkn did not start; see {tmp}/lkn.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                               max_retries=0, timeout=args.start_timeout + 60)
        msg = [{"role": "user", "content": "What is the capital of France?"}]
        t0 = time.monotonic()
        r = client.chat.completions.create(model="sg", messages=msg, max_tokens=32)
        rows.append(("first request incl. start (s)", f"{time.monotonic() - t0:.1f}"))
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/status"))
        rows.append(("engine state", health["engines"][0]["state"]))
        rows.append(("chat answer", repr((r.choices[0].message.content or "")[:60])))
        rows.append(("VRAM running (MiB)", str(gpu_used_mb())))
        t0 = time.monotonic()
        ttft = None
        parts = []
        for chunk in client.chat.completions.create(model="sg", messages=msg, max_tokens=32,
                                                    stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = ttft or time.monotonic() - t0
                parts.append(chunk.choices[0].delta.content)
        rows.append(("stream TTFT (ms)", f"{1000 * (ttft or float('nan')):.0f}"))
        rows.append(("stream chunks", str(len(parts))))
        raw = client.chat.completions.with_raw_response.create(
            model="sg", messages=msg, max_tokens=8,
            extra_body={"lkn": {"mode": "homeostatic", "threshold": 0.6,
                                "intervention": "none"}})
        rows.append(("probe mode / entropy", f"{raw.headers.get('x-lkn-mode')} / "
                     f"{raw.headers.get('x-lkn-entropy')}"))
        rows.append(("prompt tokens (lkn count)", raw.headers.get("x-lkn-prompt-tokens", "")))
        rows.append(("prompt tokens (engine usage)", str(raw.parse().usage.prompt_tokens)))
        ok = sleep_wake_check(client, port, msg, args.sleep_after, rows)
    except Exception as exc:  # report, then still stop lkn and measure the VRAM
        ok = False
        rows.append(("FAILED", f"{type(exc).__name__}: {exc}"))
    finally:
        lkn.send_signal(signal.SIGTERM)
        try:
            lkn.wait(120)
        except subprocess.TimeoutExpired:
            lkn.kill()
        time.sleep(2)
        rows.append(("VRAM after stop (MiB)", str(gpu_used_mb())))
        rows.append(("lkn exit status", str(lkn.returncode)))
        rows.append(("logs", tmp))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
