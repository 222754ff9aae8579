"""Gateway overhead: a fast fake OpenAI engine alone vs the same engine behind lkn, in one run.

Starts ``bench/fast_engine.py`` directly (the engine row) and a real ``lkn serve`` child whose one
model spawns that same script as its engine (``binary``), then measures each target with the
same load generator (wrk when on PATH, else the built-in one in ``bench/loadgen.py``):

- latency p50/p99 of a small chat answer on 1 connection; answers/s on 16 connections;
- a 16-chunk stream: p50 of the whole stream on 1 connection; streams/s on 16 connections;
- lkn's RSS: idle, after the first request, and after ``--soak`` more requests (growth);
- a cache-hit row, only if lkn answers ``x-lkn-cache: hit`` for a repeated temperature-0 request;
- a LiteLLM proxy row, only if ``litellm`` is importable (never a dependency).

``--baseline ROOT`` adds the rows of another lkn checkout (e.g. the commit before a change) in the
same run, for a before/after table; ``--uvloop`` adds lkn with uvloop's loop policy set (for a
checkout that does not pick uvloop itself; lkn does since lkn/loop.py).

With ``--profile`` lkn runs once more, under cProfile on the CPU clock (``--profile py-spy``:
py-spy on the wall clock), while it serves plain answers on 16 connections; its CPU per request
is printed by area, by step and by function (see ``bench/profile_report.py``).

The load generator shares the 2 cores with the engine and lkn; run it in a private network
namespace so nothing else on the box talks on loopback:

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/overhead.py --profile'

About 3 minutes on the 2-core box, most of it the 100k-request soak (``--soak`` to change).
Prints a table, the issue's goals next to the measured values; writes bench/out/overhead.png.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loadgen  # noqa: E402
from _lkn import ROOT, free_port  # noqa: E402
from profile_report import PROFILED_LKN, cprofile_report, spy_report  # noqa: E402
from targets import ENGINE, child, running_litellm, running_lkn, wait_http  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in five words, please."}]
# temperature 1: never deterministic, so never a cache hit in the plain rows
BODY = {"model": "fast", "messages": MESSAGES, "max_tokens": 32, "temperature": 1.0}
CACHED = {**BODY, "temperature": 0}
# Per model; the cache is being built (issue 9 item 4): a key lkn rejects is left out.
DEFAULT_CACHE_LUA = "cache = { enabled = true, max_mb = 64, ttl_s = 600 }"
# lkn under uvloop: the loop policy set before ``python -m lkn`` runs (lkn itself is unchanged).
UVLOOP_LKN = """
import runpy, sys, uvloop
uvloop.install()
sys.argv = ["lkn", *sys.argv[sys.argv.index("lkn") + 1:]]
runpy.run_module("lkn", run_name="__main__", alter_sys=True)
"""
GOALS = {"added p50 ms": 0.3, "added p99 ms": 1.0, "req/s @16": 5000, "streams/s @16": 2500,
         "RSS MB": 64, "cache hit p50 ms": 0.3}


@dataclass
class Row:
    target: str
    p50_ms: float
    p99_ms: float
    rps16: float
    stream_p50_ms: float
    sps16: float
    errors: int
    rss: str = "—"
    cpu_answer_us: float = 0.0  # lkn's CPU per answer / per stream at 16 connections
    cpu_stream_us: float = 0.0


@dataclass
class RssLog:
    """lkn's RSS sampled every 0.25 s over the whole run, with named marks for the plot."""
    pid: int
    samples: list[tuple[float, float]] = field(default_factory=list)
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    def now(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def mark(self, name: str) -> float:
        mb = self.now()
        self.marks[name] = (time.monotonic() - self.t0, mb)
        return mb

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic() - self.t0, self.now()))


# ---------------------------------------------------------------------------- measuring
def post(url: str, body: dict) -> tuple[dict[str, str], bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return {k.lower(): v for k, v in resp.headers.items()}, resp.read()


def check_answers(url: str, body: dict) -> None:
    """Both shapes arrive whole before anything is timed (wrk does not look at bodies)."""
    _, raw = post(url, body)
    assert json.loads(raw)["choices"][0]["message"]["content"], raw
    headers, raw = post(url, {**body, "stream": True})
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    tokens = [c["delta"].get("content") for e in events[:-1] for c in json.loads(e)["choices"]]
    assert events[-1] == b"[DONE]", raw
    if headers.get("x-lkn-cache") != "hit":  # a replayed answer comes as one content chunk
        assert sum(1 for t in tokens if t and t.startswith(" w")) == 16, raw


def load(args: argparse.Namespace, url: str, body: dict, conns: int, duration_s: float,
         ) -> loadgen.Result:
    if args.loadgen == "wrk":
        return loadgen.wrk(url, body, conns=conns, duration_s=duration_s)
    expect = b"[DONE]" if body.get("stream") else None
    return loadgen.builtin(url, body, conns=conns, duration_s=duration_s, expect=expect)


def measure(args: argparse.Namespace, name: str, base: str, body: dict,
            pid: int | None = None) -> Row:
    """The table's columns for one target; with ``pid``, also that process's CPU per request."""
    url = f"{base}/v1/chat/completions"
    check_answers(url, body)
    stream = {**body, "stream": True}
    proc = psutil.Process(pid) if pid else None

    def cpu() -> float:
        return sum(proc.cpu_times()[:2]) if proc else 0.0
    load(args, url, body, 16, 1.0)  # warm up: connections, caches, the engine's pool
    one = load(args, url, body, 1, args.seconds)
    c0 = cpu()
    many = load(args, url, body, 16, args.seconds)
    c1 = cpu()
    s_one = load(args, url, stream, 1, args.seconds)
    c2 = cpu()
    s_many = load(args, url, stream, 16, args.seconds)
    c3 = cpu()
    row = Row(name, one.p50_s * 1e3, one.p99_s * 1e3, many.rate, s_one.p50_s * 1e3,
              s_many.rate, one.errors + many.errors + s_one.errors + s_many.errors,
              cpu_answer_us=(c1 - c0) / max(1, many.requests) * 1e6,
              cpu_stream_us=(c3 - c2) / max(1, s_many.requests) * 1e6)
    print(f"  {name}: p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, {row.rps16:,.0f} req/s, "
          f"stream p50 {row.stream_p50_ms:.2f} ms, {row.sps16:,.0f} streams/s, "
          f"{row.errors} errors" + (f"; CPU {row.cpu_answer_us:.0f} µs per answer, "
                                     f"{row.cpu_stream_us:.0f} µs per stream" if pid else ""),
          flush=True)
    return row


def soak(base: str, count: int) -> loadgen.Result:
    """``count`` plain answers on 16 connections (the built-in generator counts exactly)."""
    return loadgen.builtin(f"{base}/v1/chat/completions", BODY, conns=16, count=count)


def variant_rows(args: argparse.Namespace, tmp: str, name: str, *, root: str = ROOT,
                 python: tuple[str, ...] = (sys.executable,)) -> list[Row]:
    """Another lkn (an older checkout, another event loop): its plain and cache-hit rows and
    idle RSS, without the soak."""
    with running_lkn(tmp, args.cache_lua, python, root) as (base, proc):
        time.sleep(1.0)
        idle = psutil.Process(proc.pid).memory_info().rss / 2**20
        post(f"{base}/v1/chat/completions", BODY)
        row = measure(args, name, base, BODY, proc.pid)
        row.rss = f"{idle:.0f} MB idle, {psutil.Process(proc.pid).memory_info().rss / 2**20:.0f}" \
                  f" MB after the timed phases"
        rows = [row]
        post(f"{base}/v1/chat/completions", CACHED)
        headers, _ = post(f"{base}/v1/chat/completions", CACHED)
        if headers.get("x-lkn-cache") == "hit":
            rows.append(measure(args, f"{name}, cache hit", base, CACHED, proc.pid))
    return rows


def alternate(args: argparse.Namespace, tmp: str) -> list[str]:
    """Before and after, ``args.alternate`` times in turn: the medians of lkn's CPU per plain
    answer and per stream (the cache-hit rows too), and the change."""
    runs: dict[str, list[Row]] = {"before": [], "after": []}
    for i in range(args.alternate):
        for name, root in (("before", args.baseline), ("after", ROOT)):
            print(f"  round {i + 1}/{args.alternate}: {name}", flush=True)
            runs[name] += variant_rows(args, tmp, name, root=root)
    lines = [f"CPU per request, medians of {args.alternate} alternating rounds (µs):",
             "| row | before | after | change |", "|---|---|---|---|"]
    for suffix in ("", ", cache hit"):
        for label, field in (("answer", "cpu_answer_us"), ("stream", "cpu_stream_us")):
            values = {name: statistics.median(getattr(r, field) for r in rows
                                              if r.target == name + suffix)
                      for name, rows in runs.items()
                      if any(r.target == name + suffix for r in rows)}
            if len(values) == 2:
                change = (values["after"] / values["before"] - 1) * 100
                lines.append(f"| {label}{suffix} | {values['before']:.0f} | "
                             f"{values['after']:.0f} | {change:+.1f} % |")
    return lines


# ---------------------------------------------------------------------------- profile
def profile(args: argparse.Namespace, tmp: str, cpu_per_request_us: float) -> list[str]:
    """Serve plain answers on 16 connections under a profiler; return the report: where lkn's
    CPU goes per request, by area and by function, scaled to ``cpu_per_request_us`` (measured
    without the profiler)."""
    seconds = max(args.seconds, 10.0)
    out = os.path.join(tmp, "profile")
    spy = None
    if args.profile == "py-spy":
        spy = shutil.which("py-spy") or shutil.which("py-spy",
                                                     path=os.path.dirname(sys.executable))
        if spy is None:
            print("(py-spy is not installed: profiling with cProfile)")
    python = (sys.executable,) if spy else (sys.executable, "-c", PROFILED_LKN, out + ".pstats")
    with running_lkn(tmp, "", python) as (base, proc):
        url = f"{base}/v1/chat/completions"
        post(url, BODY)
        load(args, url, BODY, 16, 1.0)
        recorder = None
        if spy:
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(proc.pid), "--rate", "500", "--nonblocking",
                 "--format", "raw", "--duration", str(int(seconds) + 1),
                 "--output", out + ".txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)  # py-spy attaches
        else:
            proc.send_signal(signal.SIGUSR1)
        result = load(args, url, BODY, 16, seconds)
        if recorder is not None:
            recorder.wait(60)
        else:
            proc.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not os.path.exists(out + ".pstats") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # the dump is written at once, but let it finish
    head = [f"{result.requests:,} plain answers at 16 connections under "
            f"{'py-spy (500 Hz, wall clock)' if spy else 'cProfile (CPU time of the main thread)'}"
            f" ({result.rate:,.0f} req/s while profiled); µs per request = share × "
            f"{cpu_per_request_us:.0f} µs, lkn's CPU per answer measured without the profiler"]
    if spy and os.path.exists(out + ".txt"):
        return head + spy_report(out + ".txt", cpu_per_request_us)
    if not spy and os.path.exists(out + ".pstats"):
        return head + cprofile_report(out + ".pstats", cpu_per_request_us)
    return head + ["(the profiler wrote nothing: py-spy may lack ptrace permission)"]


# ---------------------------------------------------------------------------- report
def table(rows: list[Row]) -> list[str]:
    lines = ["| target | p50, 1 conn | p99, 1 conn | req/s @16 conns | 16-chunk stream p50 | "
             "streams/s @16 | CPU µs per answer / stream @16 | RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cpu = f"{r.cpu_answer_us:.0f} / {r.cpu_stream_us:.0f}" if r.cpu_answer_us else "—"
        lines.append(f"| {r.target} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {r.rps16:,.0f} | "
                     f"{r.stream_p50_ms:.2f} ms | {r.sps16:,.0f} | {cpu} | {r.rss} |")
    return lines


def goals(direct: Row, lkn: Row, rss_max: float, growth: float, cache: Row | None
          ) -> list[str]:
    def line(name: str, value: float, goal: float, unit: str, low_is_good: bool = True) -> str:
        ok = value <= goal if low_is_good else value >= goal
        sign = "≤" if low_is_good else "≥"
        return f"  {name:34} {value:10,.2f} {unit:6} goal {sign} {goal:,} {unit}  " \
               f"{'met' if ok else 'MISSED'}"
    out = ["goals (issue 9), measured in this run:",
           line("added latency p50", lkn.p50_ms - direct.p50_ms, GOALS["added p50 ms"], "ms"),
           line("added latency p99", lkn.p99_ms - direct.p99_ms, GOALS["added p99 ms"], "ms"),
           line("answers/s @16", lkn.rps16, GOALS["req/s @16"], "req/s", False),
           line("streams/s @16", lkn.sps16, GOALS["streams/s @16"], "/s", False),
           line("RSS, largest sample", rss_max, GOALS["RSS MB"], "MB"),
           f"  {'RSS growth over the soak':34} {growth:+10.1f} MB     goal: flat"]
    if cache is not None:
        out.append(line("cache hit p50", cache.p50_ms, GOALS["cache hit p50 ms"], "ms"))
    return out


def plot(rows: list[Row], rss: RssLog, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    names = [r.target for r in rows]
    y = range(len(rows))
    ax = axes[0]
    ax.barh([i + 0.2 for i in y], [r.p50_ms for r in rows], 0.4, label="p50")
    ax.barh([i - 0.2 for i in y], [r.p99_ms for r in rows], 0.4, label="p99")
    ax.set_yticks(list(y), names)
    ax.set_xlabel("ms, 1 connection")
    ax.legend()
    ax.set_title("answer latency")
    for ax, attr, goal, title in ((axes[1], "rps16", GOALS["req/s @16"], "answers/s @16"),
                                  (axes[2], "sps16", GOALS["streams/s @16"], "streams/s @16")):
        ax.barh(list(y), [getattr(r, attr) for r in rows])
        ax.axvline(goal, color="red", linestyle="--", label="goal")
        ax.set_yticks(list(y), [""] * len(rows))
        ax.set_title(title)
        ax.legend()
    ax = axes[3]
    if rss.samples:
        ax.plot([t for t, _ in rss.samples], [mb for _, mb in rss.samples])
    for name, (t, mb) in rss.marks.items():
        ax.plot([t], [mb], "o")
        ax.annotate(name, (t, mb), fontsize=7)
    ax.axhline(GOALS["RSS MB"], color="red", linestyle="--", label="goal")
    ax.set_ylim(0, max([mb for _, mb in rss.samples] + [GOALS["RSS MB"]]) * 1.15)
    ax.set_xlabel("s since lkn was up")
    ax.set_ylabel("MB")
    ax.set_title("lkn RSS")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each timed phase")
    ap.add_argument("--soak", type=int, default=100_000,
                    help="requests between the RSS samples 'after first' and 'after soak'")
    ap.add_argument("--loadgen", choices=["wrk", "builtin"],
                    default="wrk" if loadgen.wrk_path() else "builtin")
    ap.add_argument("--cache-lua", default=DEFAULT_CACHE_LUA,
                    help="Lua fields that turn lkn's response cache on for the model ('' = off)")
    ap.add_argument("--profile", nargs="?", const="cprofile", choices=["cprofile", "py-spy"],
                    help="afterwards, profile lkn serving plain answers (default cProfile on "
                         "CPU time; py-spy samples the wall clock)")
    ap.add_argument("--baseline", metavar="ROOT",
                    help="also measure the lkn checked out at ROOT (e.g. the commit before a "
                         "change), in the same run: a before/after table")
    ap.add_argument("--alternate", type=int, default=0, metavar="N",
                    help="with --baseline: N more rounds of before, after, each a fresh lkn, "
                         "then the medians of lkn's CPU per answer and per stream (a box's "
                         "noise moves single runs by 20 %%; alternating cancels its drift)")
    ap.add_argument("--uvloop", action="store_true",
                    help="also measure lkn running on uvloop (when installed)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the logs, config and raw profile (the directory is printed)")
    args = ap.parse_args()
    print(f"load generator: {args.loadgen}; {psutil.cpu_count()} CPUs; "
          f"{args.seconds:g} s per phase; load average {os.getloadavg()[0]:.2f} before "
          f"(other work on the box competes for the same cores)", flush=True)
    rows: list[Row] = []
    cache_row = None
    with (contextlib.nullcontext(tempfile.mkdtemp(prefix="lkn-overhead-")) if args.keep else
          tempfile.TemporaryDirectory(prefix="lkn-overhead-")) as tmp:
        if args.keep:
            print(f"logs and profiles stay in {tmp}")
        engine_port = free_port()
        engine_url = f"http://127.0.0.1:{engine_port}"
        with child([sys.executable, ENGINE, "--port", str(engine_port)],
                   os.path.join(tmp, "engine.log")):
            wait_http(f"{engine_url}/health")
            rows.append(measure(args, "the engine directly", engine_url, BODY))
            with running_litellm(tmp, engine_url) as litellm:
                if litellm is not None:
                    rows.append(measure(args, "LiteLLM proxy (1 worker)", litellm,
                                        {**BODY, "model": "openai/fast"}))
        extra: list[Row] = []
        if args.baseline:
            extra += variant_rows(args, tmp, f"lkn before ({os.path.basename(args.baseline)})",
                                  root=args.baseline)
        if args.uvloop:
            if importlib.util.find_spec("uvloop") is None:
                print("(uvloop is not installed: no uvloop row)")
            else:
                extra += variant_rows(args, tmp, "lkn on uvloop",
                                      python=(sys.executable, "-c", UVLOOP_LKN))
        with running_lkn(tmp, args.cache_lua) as (base, proc):
            rss = RssLog(proc.pid)
            time.sleep(1.0)
            idle = rss.mark("idle")
            stop = threading.Event()
            sampler = threading.Thread(target=rss.run, args=(stop,), daemon=True)
            sampler.start()
            try:
                post(f"{base}/v1/chat/completions", BODY)  # starts the engine
                first = rss.mark("first request")
                lkn_row = measure(args, "lkn", base, BODY, proc.pid)
                before = rss.mark("before soak")
                t0 = time.monotonic()
                soaked = soak(base, args.soak)
                after = rss.mark(f"after {args.soak:,}")
                print(f"  soak: {soaked.requests:,} answers in {time.monotonic() - t0:.1f} s "
                      f"({soaked.rate:,.0f}/s, {soaked.errors} errors); RSS idle {idle:.1f} MB, "
                      f"after the first request {first:.1f} MB, before the soak {before:.1f} MB, "
                      f"after it {after:.1f} MB", flush=True)
                headers, _ = post(f"{base}/v1/chat/completions", CACHED)
                headers, _ = post(f"{base}/v1/chat/completions", CACHED)
                if headers.get("x-lkn-cache") == "hit":
                    cache_row = measure(args, "lkn, cache hit", base, CACHED, proc.pid)
                else:
                    print(f"  (no cache-hit row: x-lkn-cache is "
                          f"{headers.get('x-lkn-cache', 'absent')})")
            finally:
                stop.set()
                sampler.join()
        rss_max = max([mb for _, mb in rss.samples] + [after])
        lkn_row.rss = (f"{idle:.0f} MB idle, {first:.0f} MB after the first request, "
                       f"{before:.0f} MB after the timed phases, {after:.0f} MB after "
                       f"{args.soak:,} more")
        rows.insert(1, lkn_row)
        if cache_row is not None:
            rows.insert(2, cache_row)
        rows += extra
        report = profile(args, tmp, lkn_row.cpu_answer_us) if args.profile else []
        alternated = alternate(args, tmp) if args.baseline and args.alternate else []
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(goals(rows[0], lkn_row, rss_max, after - before, cache_row)))
    if report:
        print()
        print("profile of lkn:")
        print("\n".join(report))
    if alternated:
        print()
        print("\n".join(alternated))
    print(f"\nload average {os.getloadavg()[0]:.2f} after the run")
    path = os.path.join(ROOT, "bench", "out", "overhead.png")
    plot(rows, rss, path)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
