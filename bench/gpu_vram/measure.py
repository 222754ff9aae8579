"""Measure llama-server's GPU memory per (ctx, cache type): its own buffer report vs nvidia-smi.

Usage: python3 measure.py --server BIN --model GGUF --out DIR [--ctxprobe BIN] [--ngl 99]
Writes DIR/results.json, DIR/results.csv and DIR/server_logs.txt; prints progress.
Mirrors lkn's argv (lkn/engines/llamacpp.py): -c CTX -np 1 -ngl N [--cache-type-k T --cache-type-v T].
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

BUF_RE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")


def smi(args: list[str]) -> list[list[str]] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except Exception as exc:  # noqa: BLE001
        print("nvidia-smi failed:", exc)
        return None
    return [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]


def gpu_used_mib() -> int | None:
    rows = smi(["--query-gpu=memory.used"])
    return int(rows[0][0]) if rows else None


def proc_mib(pid: int) -> tuple[int | None, list]:
    rows = smi(["--query-compute-apps=pid,used_memory"]) or []
    mine = None
    for r in rows:
        try:
            if int(r[0]) == pid:
                mine = int(r[1])
        except (ValueError, IndexError):
            pass
    return mine, rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: dict | None = None, timeout: float = 60) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:  # noqa: BLE001
        return 0, ""


def settle(baseline: int | None, limit_s: float = 8) -> int | None:
    """Wait until the GPU's used memory is back to the baseline (the last server has gone)."""
    end = time.time() + limit_s
    used = gpu_used_mib()
    while baseline is not None and used is not None and used > baseline + 2 and time.time() < end:
        time.sleep(0.3)
        used = gpu_used_mib()
    return used


def ctx_probe(binary: str | None) -> dict:
    if not binary or not os.path.exists(binary):
        return {}
    before = gpu_used_mib()
    p = subprocess.Popen([binary], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    time.sleep(0.5)
    mine, rows = proc_mib(p.pid)
    during = gpu_used_mib()
    p.wait()
    res = {"probe_line": line, "proc_mib": mine, "gpu_used_before": before,
           "gpu_used_during": during, "apps": rows}
    print("ctxprobe:", res, flush=True)
    return res


def run_one(args, ctx: int, ct: str, logf, baseline: int | None) -> dict:
    port = free_port()
    argv = [args.server, "--model", args.model, "--host", "127.0.0.1", "--port", str(port),
            "-c", str(ctx), "-np", str(args.np), "-ngl", str(args.ngl), "--alias", "smollm2"]
    if ct != "f16":
        argv += ["--cache-type-k", ct, "--cache-type-v", ct]
    argv += args.extra
    logpath = os.path.join(args.work, f"server_{ctx}_{ct}.log")
    row: dict = {"ctx": ctx, "cache_type": ct, "np": args.np, "argv": " ".join(argv[1:])}
    used_before = settle(baseline)
    row["gpu_used_before"] = used_before
    t0 = time.time()
    with open(logpath, "w") as lf:
        p = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
    ok = False
    while time.time() - t0 < args.health_s:
        if p.poll() is not None:
            break
        code, _ = http(f"http://127.0.0.1:{port}/health", timeout=2)
        if code == 200:
            ok = True
            break
        time.sleep(0.2)
    row["healthy"] = ok
    row["start_s"] = round(time.time() - t0, 2)
    if ok:
        time.sleep(0.5)
        row["proc_mib_idle"], apps = proc_mib(p.pid)
        row["gpu_used_idle"] = gpu_used_mib()
        row["apps_idle"] = apps
        # one real request: a ~300-token prompt and 16 generated tokens
        prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 30)
        code, body = http(f"http://127.0.0.1:{port}/completion",
                          {"prompt": prompt, "n_predict": 16, "temperature": 0}, timeout=60)
        row["request_http"] = code
        try:
            timings = json.loads(body).get("timings", {})
            row["prompt_n"] = timings.get("prompt_n")
            row["predicted_n"] = timings.get("predicted_n")
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.3)
        row["proc_mib_after_req"], _ = proc_mib(p.pid)
        row["gpu_used_after_req"] = gpu_used_mib()
    # stop it
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    with open(logpath, errors="replace") as lf:
        text = lf.read()
    logf.write(f"\n===== ctx={ctx} cache={ct} argv={' '.join(argv)}\n")
    logf.write(text)
    logf.flush()
    bufs: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    for dev, kind, mib in BUF_RE.findall(text):
        key = f"{kind}_{dev}"
        seen.setdefault(key, []).append(float(mib))
        bufs[key] = float(mib)  # the last report wins (a dry run may print earlier ones)
    row["buffers"] = bufs
    row["buffer_reports"] = seen
    row["log_lines"] = [ln for ln in text.splitlines()
                        if re.search(r"buffer size|offloaded|flash_attn|n_ctx|CUDA0|fit|type_k|"
                                     r"using device|graph|error|warn", ln, re.I)][:60]
    print(json.dumps({k: v for k, v in row.items() if k not in ("log_lines", "apps_idle")}),
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/measure-work")
    ap.add_argument("--ctxprobe")
    ap.add_argument("--ngl", type=int, default=99)
    ap.add_argument("--np", type=int, default=1)
    ap.add_argument("--health-s", type=float, default=60)
    ap.add_argument("--configs", default="512:f16,512:q8_0,512:q4_0,2048:f16,2048:q8_0,2048:q4_0,"
                    "8192:f16,8192:q8_0,8192:q4_0,32768:f16,32768:q8_0,32768:q4_0")
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    info = {"gpu": smi(["--query-gpu=name,memory.used,memory.total,driver_version"]),
            "apps_before": smi(["--query-compute-apps=pid,used_memory"])}
    print("gpu:", info, flush=True)
    baseline = gpu_used_mib()
    info["gpu_used_baseline"] = baseline
    info["ctxprobe"] = ctx_probe(args.ctxprobe)
    rows = []
    with open(os.path.join(args.out, "server_logs.txt"), "w") as logf:
        for spec in args.configs.split(","):
            ctx, ct = spec.split(":")
            rows.append(run_one(args, int(ctx), ct, logf, baseline))
            with open(os.path.join(args.out, "results.json"), "w") as f:
                json.dump({"info": info, "rows": rows}, f, indent=1)
    info["gpu_used_end"] = settle(baseline)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    keys = sorted({k for r in rows for k in r["buffers"]})
    cols = ["ctx", "cache_type", "np", "healthy", "start_s", "gpu_used_before", "proc_mib_idle",
            "gpu_used_idle", "proc_mib_after_req", "gpu_used_after_req", "request_http", *keys]
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, r["buffers"].get(c, "")) for c in cols])
    print("done; baseline", baseline, "end", info["gpu_used_end"], flush=True)


if __name__ == "__main__":
    main()
