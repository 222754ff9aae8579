"""Reading a profile of lkn for bench/overhead.py: where its CPU goes per request.

``PROFILED_LKN`` runs ``python -m lkn`` under cProfile timed by the main thread's CPU clock, on
only between SIGUSR1 and SIGUSR2 (the dump). py-spy, or cProfile on the wall clock, would also
count the time lkn waits for a core after waking the engine (three processes share two cores
here) and put it on whichever call woke it: a socket send. ``cprofile_report`` groups the CPU by
area and by step of a request; ``spy_report`` reads py-spy's raw stacks (wall clock) instead.
"""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROFILED_LKN = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = ["lkn", *sys.argv[sys.argv.index("lkn") + 1:]]
prof = cProfile.Profile(time.thread_time)
signal.signal(signal.SIGUSR1, lambda *_: prof.enable())  # only the timed window counts
signal.signal(signal.SIGUSR2, lambda *_: (prof.disable(), prof.dump_stats(out)))
try:
    runpy.run_module("lkn", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
"""


def _frame_name(frame: str) -> str:
    # py-spy: "function (path/to/module.py:123)"
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.11/", ROOT + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{func}"


# Where a sample of lkn's main thread goes, first rule that matches its stack (inner parts first).
COMPONENTS = (
    ("logging (the per-request log line)", ("logging/",)),
    ("metrics (prometheus_client)", ("prometheus_client/", "lkn/metrics.py")),
    ("token count: /apply-template + /tokenize calls", ("count_prompt", "count_tokens")),
    ("homeostat probe", ("_homeostat",)),
    ("stream relay (parse + re-frame SSE events)", ("_relay_stream",)),
    ("forward: the engine call and its answer", ("_forward",)),
    ("lease: scheduler, manager, engine records", ("_lease", "manager.py", "scheduler.py")),
    ("rest of the handler (parse, validate, resolve)", ("lkn/handler.py", "lkn/server.py")),
    ("aiohttp server: read requests, write answers", ("web_protocol.py", "web_response.py",
                                                      "http_writer.py", "http_parser.py")),
    ("aiohttp client: send to and read from the engine", ("client_proto.py", "client_reqrep.py",
                                                   "streams.py")),
)


def spy_report(path: str, per_request_us: float, top: int = 15) -> list[str]:
    """py-spy's raw stacks -> shares of the main thread's busy samples (the event loop waiting
    in select and the idle worker threads are left out)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    parts: dict[str, int] = {}
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, n_text = line.rstrip().rpartition(" ")
            if not stack or not n_text.isdigit() or stack.startswith("Thread._bootstrap"):
                continue
            frames = [_frame_name(fr) for fr in stack.split(";")]
            if frames[-1].endswith("EpollSelector.select"):
                continue
            n = int(n_text)
            total += n
            own[frames[-1]] = own.get(frames[-1], 0) + n
            for name in set(frames):
                inclusive[name] = inclusive.get(name, 0) + n
            part = next((label for label, keys in COMPONENTS
                         if any(k in stack for k in keys)), "event loop and the rest")
            parts[part] = parts.get(part, 0) + n
    if not total:
        return ["(no samples)"]

    def share(n: int) -> str:
        return f"  {n / total * 100:5.1f} %  {n / total * per_request_us:6.1f} µs  "
    lines = [f"{total} busy samples of the main thread; µs/request = share × "
             f"{per_request_us:.0f} µs", "by component:"]
    lines += [share(n) + name for name, n in sorted(parts.items(), key=lambda kv: -kv[1])]
    lines.append(f"top {top} by own time:")
    lines += [share(n) + name for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    lines.append(f"top {top} by inclusive time (below the request handler's own frames):")
    ranked = [(name, n) for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])
              if n < 0.5 * total]
    lines += [share(n) + name for name, n in ranked[:top]]
    return lines


# Own CPU time grouped by where the code lives (first match wins); together they add to 100 %.
AREAS = (
    ("socket send/recv syscalls", ("_socket.socket",)),
    ("lkn: token count (tokens, engine clients)", ("lkn/tokens.py", "lkn/engines/base.py",
                                                  "lkn/engines/llamacpp.py")),
    ("lkn: lease (manager, scheduler, records)", ("lkn/engines/", "lkn/scheduler.py",
                                                 "lkn/selector.py", "lkn/vram.py")),
    ("lkn: metrics + prometheus_client", ("lkn/metrics.py", "prometheus_client/")),
    ("lkn: handler, server, validation, relay", ("lkn/",)),
    ("logging (one line per request)", ("logging/",)),
    ("json", ("json/", "_json")),
    ("aiohttp server", ("aiohttp/web_",)),
    ("aiohttp client", ("aiohttp/client", "aiohttp/connector.py")),
    ("aiohttp shared (HTTP parser/writer, streams, helpers)", ("aiohttp/", "multidict", "yarl")),
    ("asyncio event loop", ("asyncio/", "selectors.py", "select.epoll", "_asyncio",
                            "contextvars")),
)
# Inclusive CPU of the steps of one request (an indented step is part of the one above it).
STEPS = (
    ("lkn/handler.py", "_generate", "RequestHandler._generate: the request in lkn's handler"),
    ("lkn/tokens.py", "count_prompt", "  count_prompt: /apply-template + /tokenize on the engine"),
    ("lkn/engines/manager.py", "acquire", "  EngineManager.acquire: the scheduler's lease"),
    ("lkn/handler.py", "_forward", "  _forward: the engine call and relaying its answer"),
    ("logging/__init__.py", "info", "  log.info: the request's log line"),
    ("aiohttp/client.py", "_request", "aiohttp ClientSession._request (3 per answer)"),
    ("aiohttp/web_protocol.py", "data_received", "aiohttp server: parse requests"),
    ("aiohttp/web_protocol.py", "finish_response", "aiohttp server: write answers"),
)


def _short(file: str, func: str) -> str:
    return _frame_name(f"{func} ({file}:0)")


def cprofile_report(path: str, per_request_us: float, top: int = 20) -> list[str]:
    import pstats

    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    total = sum(st[2] for st in stats.values()) or 1.0

    def share(t: float) -> str:
        return f"  {t / total * 100:5.1f} %  {t / total * per_request_us:6.1f} µs  "

    def area_of(key: tuple[str, int, str]) -> str:
        where = f"{key[0]}:{key[2]}"
        return next((label for label, keys in AREAS if any(k in where for k in keys)), "")
    areas: dict[str, float] = {}
    for key, st in stats.items():
        area = area_of(key)
        if area:
            areas[area] = areas.get(area, 0.0) + st[2]
            continue
        # builtins and stdlib helpers (getattr, dataclasses.replace ...): their callers' area
        for caller, cst in st[4].items():
            name = area_of(caller) or "other"
            areas[name] = areas.get(name, 0.0) + cst[2]
    lines = ["own CPU by area (builtins and stdlib helpers counted with their callers):"]
    lines += [share(t) + name for name, t in sorted(areas.items(), key=lambda kv: -kv[1])]
    lines.append("inclusive CPU of the steps:")
    for file, func, label in STEPS:
        picked = [st for (f, _l, fn), st in stats.items() if f.endswith(file) and fn == func]
        if any(st[0] != st[1] for st in picked):
            # cProfile takes a coroutine resumed while another of its kind is on the stack for
            # recursion and drops its time
            lines.append(f"  {'n/a':>7}  {'':9} {label.strip()} (interleaved coroutines)")
            continue
        lines.append(share(sum(st[3] for st in picked)) + label)
    lines.append(f"top {top} functions by own CPU:")
    ranked = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines += [share(st[2]) + _short(file, func) for (file, _line, func), st in ranked]
    return lines


