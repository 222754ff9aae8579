"""The operator's commands over the admin API: ``lkn ps``, ``load``, ``unload``, ``logs``,
``reload``, and who used the box: ``lkn usage`` (sums per key, model, day or API) and
``lkn activity`` (the durable log, newest first).

Each talks to a running lkn at ``--address`` (default ``127.0.0.1:8080``) with the admin key from
``LKN_ADMIN_KEY`` (when the server sets ``admin_keys``). When lkn is not running or refuses, the
command prints one clear line on stderr and exits with status 1.
"""
from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator, Sequence

from lkn import fastjson
from lkn.config import parse_listen

DEFAULT_ADDRESS = "127.0.0.1:8080"


class CommandFailed(Exception):
    """One line for stderr; the command exits with status 1."""


def base_url(address: str) -> str:
    host, port = parse_listen(address)
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def _request(address: str, method: str, path: str) -> urllib.request.Request:
    try:
        url = base_url(address) + path
    except ValueError as exc:
        raise CommandFailed(f"--address {address}: {exc}") from None
    headers = {"Accept": "application/json"}
    key = os.environ.get("LKN_ADMIN_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return urllib.request.Request(url, method=method, headers=headers,
                                  data=b"" if method == "POST" else None)


# lkn is local or named by --address: never through an http_proxy from the environment (the
# admin key would go to the proxy, and lkn would see the proxy's address, not loopback).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _open(req: urllib.request.Request, address: str, timeout: float | None) -> Any:
    try:
        return _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            message = fastjson.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw.decode("utf-8", "replace").strip()[:300]
        raise CommandFailed(f"lkn refused ({exc.code}): {message}") from None
    except TimeoutError:
        raise CommandFailed(f"lkn on {address} did not answer within {timeout:g}s") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandFailed(f"lkn is not running on {address} ({reason})") from None


def call(address: str, method: str, path: str, timeout: float | None = 30) -> Any:
    """One admin call; ``timeout`` None for calls that wait for engines (load, unload)."""
    with _open(_request(address, method, path), address, timeout) as resp:
        try:
            return fastjson.loads(resp.read())
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise CommandFailed(f"lkn on {address} sent an unreadable answer ({exc})") from None


def follow(address: str, path: str) -> Iterator[dict[str, Any]]:
    """The data events of an SSE stream, as JSON."""
    with _open(_request(address, "GET", path), address, None) as resp:
        try:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith("data: "):
                    yield fastjson.loads(line[6:])
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise CommandFailed(f"the stream from lkn on {address} broke off ({exc})") from None


# ------------------------------------------------------------------ commands

def _align(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ps_table(status: dict[str, Any]) -> str:
    """Like ``ollama ps``: one row per engine, with its model's traffic."""
    rows = [("ENGINE", "STATE", "CONTEXT", "VRAM", "IN FLIGHT", "IDLE FOR", "REQ/MIN",
             "P95", "NOTES")]
    models = status.get("models", {})
    breakers = {b["backend"]: b["breaker"]["state"] for m in models.values()
                for b in m.get("backends", [])}
    for e in status.get("engines", []):
        traffic = models.get(e["model"], {}).get("traffic", {}).get("300s", {})
        notes = [n for n, on in (("pinned", e.get("pinned")), ("unloading", e.get("unloading")),
                                 ("retired", e.get("retired"))) if on]
        failures = e.get("failures") or {}
        if failures.get("failed") and e["state"] != "ready":
            notes.append("FAILED")
        if e.get("backend"):
            breaker = breakers.get(e["backend"], "closed")
            notes.append(f"backend {e['backend']}" + ("" if breaker == "closed"
                                                      else f", circuit {breaker}"))
        p95 = traffic.get("p95_latency_s")
        rows.append((e["key"], e["state"], str(e.get("ctx_size", "-")),
                     f"~{e['vram_mb']} MiB", str(e["in_flight"]), _ago(e.get("idle_s")),
                     f"{traffic.get('per_minute', 0):g}",
                     f"{p95 * 1000:.0f}ms" if p95 is not None else "-", ",".join(notes)))
    lines = _align(rows)
    vram = status.get("vram", {})
    lines.append(f"VRAM ~{vram.get('estimated_mb', 0)} of {vram.get('budget_mb', 0)} MiB; "
                 f"{status.get('in_flight', 0)} in flight, {status.get('queued', 0)} queued")
    idle = [c["key"] for c in status.get("unload_candidates", [])]
    if idle:
        lines.append(f"idle, could be unloaded: {', '.join(idle)}")
    return "\n".join(lines)


def _ps(args: argparse.Namespace) -> None:
    print(ps_table(call(args.address, "GET", "/status")))


def _model_path(name: str, action: str) -> str:
    return f"/admin/models/{urllib.parse.quote(name, safe='')}/{action}"


def _load(args: argparse.Namespace) -> None:
    query = f"?ctx={args.ctx}" if args.ctx else ""
    done = call(args.address, "POST", _model_path(args.model, "load") + query, timeout=None)
    print(f"{done['key']}: {done['state']}")


def _unload(args: argparse.Namespace) -> None:
    query = "?force=1" if args.force else ""
    done = call(args.address, "POST", _model_path(args.model, "unload") + query, timeout=None)
    stopped = [e["key"] for e in done["stopped"]]
    print(f"{done['model']}: " + (f"stopped {', '.join(stopped)}" if stopped
                                  else "no engine was running"))


def _logs(args: argparse.Namespace) -> None:
    path = (f"/admin/engines/{urllib.parse.quote(args.engine, safe='')}/logs"
            f"?lines={args.lines}")
    if not args.follow:
        for line in call(args.address, "GET", path)["lines"]:
            print(line)
        return
    for event in follow(args.address, path + "&follow=1"):
        if "line" in event:
            print(event["line"], flush=True)
        else:  # this reader fell behind the engine's output
            print(f"lkn logs: {event.get('dropped')} lines dropped", file=sys.stderr)


def _reload(args: argparse.Namespace) -> None:
    done = call(args.address, "POST", "/admin/reload", timeout=120)
    print(f"reloaded: config generation {done['generation']}, models "
          f"{', '.join(done['models'])}")


# ------------------------------------------------------------------ usage and activity

GROUPS = ("key", "model", "day", "api")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_epoch(text: str, now: float) -> float:
    """``--since`` as epoch seconds: a duration back from ``now`` ("30m", "1h", "7d"; also
    "s" and "w") or epoch seconds as they are (what ``/admin/activity`` rows carry in
    ``ts``, so a script can page on from the last row it saw)."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], 0)
    try:
        value = float(t[:-1] if unit else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise CommandFailed(f"--since {text!r}: give a duration (30m, 1h, 7d) or epoch seconds")
    return now - value * unit if unit else value


def _query(**params: Any) -> str:
    """A query string of the params that are set."""
    given = {k: v for k, v in params.items() if v is not None}
    return "?" + urllib.parse.urlencode(given) if given else ""


def _num(value: Any) -> str:
    return "-" if value is None else str(value)


def _millis(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def usage_table(payload: dict[str, Any]) -> str:
    """One row per group (key, model, day or API) with its sums, and a total when there are
    several groups."""
    group = payload.get("group_by", "key")
    header = ("DAY (UTC)" if group == "day" else group.upper(), "REQUESTS", "ERRORS", "PROMPT",
              "COMPLETION", "REASONING", "TOTAL TOKENS", "AVG LATENCY", "AVG TTFT")
    data = payload.get("data", [])
    if not data:
        return "no requests in this window"
    rows = [header] + [(_num(r.get(group)), _num(r.get("requests")), _num(r.get("errors")),
                        _num(r.get("prompt_tokens")), _num(r.get("completion_tokens")),
                        _num(r.get("reasoning_tokens")), _num(r.get("total_tokens")),
                        _millis(r.get("avg_latency_ms")), _millis(r.get("avg_ttft_ms")))
                       for r in data]
    if len(data) > 1:
        def total(name: str) -> str:
            return str(sum(r.get(name) or 0 for r in data))
        rows.append(("total", total("requests"), total("errors"), total("prompt_tokens"),
                     total("completion_tokens"), total("reasoning_tokens"),
                     total("total_tokens"), "", ""))
    return "\n".join(_align(rows))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _activity_notes(r: dict[str, Any]) -> str:
    notes = [f"user {r['user']}" if r.get("user") else "",
             f"backend {r['backend']}" if r.get("backend") else "",
             r.get("mode") or "", r.get("intervention") or "",
             f"cache {r['cache']}" if r.get("cache") else "",
             " ".join(str(r.get("error") or "").split())[:80]]
    return "; ".join(n for n in notes if n)


def activity_table(payload: dict[str, Any]) -> str:
    """The log's rows as lkn sends them (newest first), times local."""
    data = payload.get("data", [])
    if not data:
        return "no requests match"
    rows = [("TIME", "REQUEST", "KEY", "API", "MODEL", "STATUS", "PROMPT", "COMPLETION",
             "LATENCY", "TTFT", "NOTES")]
    for r in data:
        model = _num(r.get("model")) + (f"@{r['variant']}" if r.get("variant") else "")
        rows.append((_when(r["ts"]), _num(r.get("request_id")), _num(r.get("key_id")),
                     _num(r.get("api")), model, _num(r.get("status")),
                     _num(r.get("prompt_tokens")), _num(r.get("completion_tokens")),
                     _millis(r.get("latency_ms")), _millis(r.get("ttft_ms")),
                     _activity_notes(r)))
    return "\n".join(_align(rows))


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2, ensure_ascii=False))


def _since(args: argparse.Namespace) -> float | None:
    return None if args.since is None else since_epoch(args.since, time.time())


def _usage(args: argparse.Namespace) -> None:
    payload = call(args.address, "GET", "/admin/usage" + _query(
        group_by=args.group_by, since=_since(args), key=args.key, model=args.model))
    if args.json:
        _print_json(payload)
    else:
        print(usage_table(payload))


def _activity(args: argparse.Namespace) -> None:
    payload = call(args.address, "GET", "/admin/activity" + _query(
        key=args.key, model=args.model, status=args.status, since=_since(args),
        limit=args.limit))
    if args.json:
        _print_json(payload)
    else:
        print(activity_table(payload))


def _status_filter(text: str) -> str:
    if text == "error" or (text.isdigit() and 100 <= int(text) <= 599):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is neither an HTTP status nor 'error'")


def _positive(text: str) -> int:
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")


def register(sub: Any) -> None:
    """Add the operator commands to lkn's argument parser."""
    def add(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        p.add_argument("--address", default=DEFAULT_ADDRESS,
                       help=f"where lkn listens (default {DEFAULT_ADDRESS})")
        p.set_defaults(func=lambda args: run(func, args))
        return p

    add("ps", "engines, their state and traffic", _ps)
    p = add("load", "start (or swap in) a model's engine", _load)
    p.add_argument("model")
    p.add_argument("--ctx", type=int, help="the context variant (default: the smallest)")
    p = add("unload", "stop a model's engines once their requests are done", _unload)
    p.add_argument("model")
    p.add_argument("--force", action="store_true", help="stop now, cutting requests in flight")
    p = add("logs", "an engine's output", _logs)
    p.add_argument("engine", help="model@ctx, an engine id, or a model with one variant")
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")
    add("reload", "re-read the config file (like SIGHUP)", _reload)
    since = "from when: a duration back from now (30m, 1h, 7d) or epoch seconds"
    p = add("usage", "requests and tokens per key, model, day or API (the activity log)",
            _usage)
    p.add_argument("--group-by", choices=GROUPS, default="key")
    p.add_argument("--since", help=since + " (default: all the log keeps)")
    p.add_argument("--key", help="only this key id")
    p.add_argument("--model", help="only this model")
    p.add_argument("--json", action="store_true", help="lkn's answer as JSON")
    p = add("activity", "the last requests from the activity log, newest first", _activity)
    p.add_argument("--key", help="only this key id")
    p.add_argument("--model", help="only this model")
    p.add_argument("--status", type=_status_filter, metavar="CODE|error",
                   help="only this HTTP status, or every error (>= 400)")
    p.add_argument("--since", help=since)
    p.add_argument("--limit", type=_positive, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="lkn's answer as JSON")


def run(func: Any, args: argparse.Namespace) -> int:
    try:
        func(args)
    except CommandFailed as exc:
        print(f"lkn {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
